"""How much of the true latent a trained agent's belief holds, on the agent's own episodes and on random ones.

    python benchmarks/latent_probe.py --checkpoints runs/benchmark_reacher/varibad/seed*/checkpoint.pt \
        runs/benchmark_reacher/dynamite/seed*/checkpoint.pt --output docs/reacher_latent_probe

For each checkpoint of a dynamite_rl.py or varibad.py run this plays --episodes evaluation episodes twice with the
same seed: with the trained greedy policy (``greedy``), and with uniformly random actions (``random``; the encoder
is shown the actions taken, so its belief is what it makes of random behaviour). At every step at least --skip
steps into its session (from session --first-session on) it records the belief the policy reads (mean and log-variance) and the true latent of the
session (``envs.protocol.current_latents``). A ridge regression from the belief to each latent coordinate is fitted
on half of the episodes; its R^2 on the other half says how much of the latent the belief holds in a form a linear
read-out finds: 1 is all of it, 0 is nothing beyond the latent's mean. Meant for continuous latents (a target's
position, a velocity); the Gridworld's latent is a goal index, for which a linear R^2 means little.

Writes --output.md (the table) and --output.json (the numbers).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import envs.protocol
from benchmarks.trained import load_agent

SCRIPTS = ("dynamite_rl.py", "varibad.py")
BEHAVIOURS = ("greedy", "random")


@dataclass
class Args:
    checkpoints: list[str] = field(default_factory=list)
    """checkpoints of dynamite_rl.py or varibad.py runs (--save-model)"""
    output: str = "docs/latent_probe"
    """the table (.md) and the numbers (.json)"""
    episodes: int = 64
    """episodes played side by side for each behaviour (half fit the read-out, half test it)"""
    skip: int = 10
    """use the steps at least this many steps into their session (the belief has had time to form)"""
    first_session: int = 0
    """use the sessions from this one on (1 leaves out a first session whose latent every episode shares)"""
    ridge: float = 1e-3
    """ridge penalty of the linear read-out"""
    seed: int = 11
    """seeds the tasks and the random actions"""


def linear_r2(features: np.ndarray, targets: np.ndarray, train: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """R^2 on the rows not in ``train`` of a ridge regression from ``features`` (N, F) to ``targets`` (N, T) fitted on
    the rows in ``train``; per target column, nan where the tested targets do not vary."""
    x = np.concatenate([features, np.ones((len(features), 1))], 1).astype(np.float64)
    y = targets.astype(np.float64)
    weights = np.linalg.solve(x[train].T @ x[train] + ridge * np.eye(x.shape[1]), x[train].T @ y[train])
    error = ((x[~train] @ weights - y[~train]) ** 2).sum(0)
    spread = ((y[~train] - y[~train].mean(0)) ** 2).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.ptp(y[~train], 0) > 0, 1.0 - error / spread, np.nan)


def play(run: dict, behaviour: str, args: Args) -> dict:
    """One batch of episodes: the policy's beliefs (H, B, F), the true latents (H, B, L), and the index of the current
    session and the steps into it (H, B)."""
    algo, space, n = run["algo"], run["space"], args.episodes
    vector_env = envs.protocol.make_vector_env(run["args"].env_id, n, run["eval_env_kwargs"])
    policy = algo.GreedyPolicy(n, run["encoder"], run["agent"], run["obs_scaling"], space, run["horizon"], run["args"],
                               "cpu")
    obs, _ = vector_env.reset(seed=args.seed)
    rng = np.random.default_rng(args.seed)
    beliefs, latents, into, sessions = [], [], [], []
    since, session = np.zeros(n, dtype=int), np.zeros(n, dtype=int)
    for t in range(run["horizon"]):
        action = policy.act(obs, t)
        if behaviour == "random":
            if isinstance(space, gym.spaces.Discrete):
                action = rng.integers(int(space.n), size=n)
            else:
                action = rng.uniform(space.low, space.high, size=(n, *space.shape)).astype(space.dtype)
            policy.action = torch.as_tensor(action)  # what the encoder is told was done
        beliefs.append(torch.cat([policy.mean, policy.logvar], -1).numpy())
        latents.append(envs.protocol.current_latents(vector_env))
        into.append(since.copy()), sessions.append(session.copy())
        obs, reward, _, _, info = vector_env.step(action)
        policy.observe(reward, info)
        since = np.where(info["session_done"], 0, since + 1)
        session = session + info["session_done"]
    vector_env.close()
    return {"beliefs": np.stack(beliefs), "latents": np.stack(latents), "into": np.stack(into),
            "sessions": np.stack(sessions)}


def probe(run: dict, behaviour: str, args: Args) -> list[float]:
    """R^2 of each latent coordinate from the belief, on held-out episodes of ``behaviour``."""
    played = play(run, behaviour, args)
    keep = (played["into"] >= args.skip) & (played["sessions"] >= args.first_session)  # (H, B)
    test_episodes = np.arange(args.episodes) >= args.episodes // 2
    train = ~np.broadcast_to(test_episodes, keep.shape)[keep]
    return linear_r2(played["beliefs"][keep], played["latents"][keep], train, args.ridge).tolist()


def main(args: Args) -> list[dict]:
    if not args.checkpoints:
        raise SystemExit("error: give --checkpoints, the checkpoint.pt of one or more dynamite_rl.py or varibad.py runs")
    if args.episodes < 4:
        raise SystemExit(f"error: --episodes must be at least 4 (half fit the read-out, half test it), got "
                         f"{args.episodes}")
    torch.set_num_threads(1)
    results = []
    for path in args.checkpoints:
        run = load_agent(path, SCRIPTS)
        for behaviour in BEHAVIOURS:
            results.append({"checkpoint": path, "script": run["script"], "behaviour": behaviour,
                            "r2": probe(run, behaviour, args)})
            print(results[-1], flush=True)
    rows = [f"| {r['checkpoint']} | {r['script']} | {r['behaviour']} | " + ", ".join(f"{v:.2f}" for v in r["r2"])
            + " |" for r in results]
    lines = ["# How much of the latent the belief holds", "",
             f"Command: `python benchmarks/latent_probe.py {shlex.join(sys.argv[1:])}`. {args.episodes} evaluation "
             f"episodes per run and behaviour (greedy: the trained policy; random: uniformly random actions, the "
             f"encoder told them); the steps at least {args.skip} steps into their session, from session "
             f"{args.first_session} on; R^2 of a ridge "
             "regression from the belief (mean, log-variance) to each coordinate of the true latent, fitted on half "
             "of the episodes and tested on the other half (1: all of it; 0: nothing beyond its mean).", "",
             "| run | script | behaviour | R^2 per latent coordinate |", "| --- | --- | --- | --- |", *rows]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(f"{args.output}.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(f"{args.output}.json", "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.output}.md and {args.output}.json")
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
