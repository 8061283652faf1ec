"""Which reward terms a trained agent earns: greedy episodes of a saved DynaMITE-RL or VariBAD agent, every
``reward_*`` term that the environment reports in ``info`` averaged per step, with the itch distance and contact
figures where the environment is ScratchItch.

    python benchmarks/reward_terms.py runs/benchmark_scratchitch/dynamite/seed1/checkpoint.pt \
        runs/benchmark_scratchitch/varibad/seed1/checkpoint.pt --output docs/scratchitch_reward_terms.md

The script of a checkpoint is named in its header.
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import sys
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import envs.protocol  # registers the environments
import envs.runs


@dataclass
class Args:
    checkpoints: tyro.conf.Positional[tuple[str, ...]]
    """checkpoint.pt files written by dynamite_rl.py or varibad.py with --save-model"""
    episodes: int = 10
    """greedy episodes per checkpoint"""
    seed: int = 1_000_000
    """seed of the first episode (the next ones count up)"""
    output: str | None = None
    """markdown file to write the table to (default: print only)"""


def load(checkpoint_path: str):
    """The script module, its Args and the trained modules of a checkpoint (loaded as data, its header checked)."""
    checkpoint = envs.runs.load_checkpoint(checkpoint_path, "cpu")
    script = checkpoint["header"]["script"]
    if script not in ("dynamite_rl.py", "varibad.py"):
        raise SystemExit(f"error: checkpoint {checkpoint_path!r} is one of {script}; this needs dynamite_rl.py or varibad.py")
    algo = importlib.import_module(script[: -len(".py")])
    args = algo.Args(**checkpoint["args"])
    return algo, args, checkpoint["modules"]


@torch.no_grad()
def reward_terms(checkpoint_path: str, episodes: int, seed: int) -> tuple[str, dict[str, float]]:
    algo, args, weights = load(checkpoint_path)
    env = gym.make(args.env_id, **json.loads(args.env_kwargs))
    space, obs_dim, horizon = env.action_space, env.observation_space.shape[0], envs.protocol.horizon(env)
    modules = {"encoder": algo.Encoder(obs_dim, algo.action_size(space), args), "agent": algo.Agent(obs_dim, space, args),
               "obs_scaling": algo.ObservationScaling(env.observation_space)}
    for name, module in modules.items():
        module.load_state_dict(weights[name])
    encoder, agent, obs_scaling = modules["encoder"], modules["agent"], modules["obs_scaling"]
    sums: dict[str, list[float]] = {}
    for episode in range(episodes):
        policy = algo.GreedyPolicy(1, encoder, agent, obs_scaling, space, horizon, args, "cpu")  # as its evaluation acts
        obs, _ = env.reset(seed=seed + episode)
        for t in range(horizon):
            obs, reward, _, _, info = env.step(policy.act(obs[None], t)[0])
            seen = {k: float(v) for k, v in info.items() if k.startswith("reward_")}
            seen["reward (total)"] = float(reward)
            if "itch" in info:  # ScratchItch
                seen["distance to the itch (cm)"] = -100 * info["reward_distance"]
                seen["steps touching the person (%)"] = 100.0 * (info["itch_force"] + info["away_force"] > 0)
                seen["steps scratching (%)"] = 100.0 * (info["reward_scratch"] > 0)
            for key, value in seen.items():
                sums.setdefault(key, []).append(value)
            policy.observe(np.array([reward], dtype=np.float32), {"session_done": np.array([info["session_done"]])})
    env.close()
    label = f"{algo.__name__}.py, {os.path.relpath(checkpoint_path)}"
    return label, {key: float(np.mean(values)) for key, values in sums.items()}


def main(args: Args) -> None:
    rows = [reward_terms(path, args.episodes, args.seed) for path in args.checkpoints]
    keys = list(dict.fromkeys(key for _, terms in rows for key in terms))
    lines = [
        "# Reward terms of trained agents",
        "",
        f"Command: `python benchmarks/reward_terms.py {shlex.join(sys.argv[1:])}`. Mean per step over "
        f"{args.episodes} greedy episodes (seeds {args.seed}…{args.seed + args.episodes - 1}).",
        "",
        "| term | " + " | ".join(label for label, _ in rows) + " |",
        "| --- |" + " ---: |" * len(rows),
        *[f"| {key} | " + " | ".join(f"{terms.get(key, float('nan')):.4g}" for _, terms in rows) + " |" for key in keys],
    ]
    print("\n".join(lines))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(tyro.cli(Args))
