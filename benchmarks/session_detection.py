"""How well DynaMITE-RL's termination head finds session ends after the fact, on each session schedule.

    python benchmarks/session_detection.py                     # fixed, Bernoulli (p = 1/15) and Poisson (K = 4)
    python benchmarks/session_detection.py --updates 1500 --extra "--session-encoder"
    python benchmarks/session_detection.py --schedules bernoulli --save-encoders tests/data   # the tests' trained head
    python benchmarks/session_detection.py --checkpoints runs/benchmark_reacher/dynamite/seed*/checkpoint.pt \
        --output docs/session_detection_trained          # the heads of trained agents, on their own episodes

dynamite_rl.py's VAE (its networks and update, set by --extra) trains offline on uniformly random-action Gridworld
episodes of each schedule; every --probe-every updates the head's precision and recall at the exact step are
measured on held-out episodes of the same schedule: at step t it says whether the transition into s_t ended a
session, against the true end. The episodes are encoded with the true ends (teacher forcing), as the VAE trains;
a trained agent's own rollouts log the same numbers (TensorBoard charts/session_*, eval.json session_detection).

With --checkpoints it trains nothing: each trained dynamite_rl.py agent plays --test-episodes greedy episodes of its
own task (its evaluation settings), and the head's logits at the steps where it should fire (after a true end, and
--head-delay steps more) are ranked against those at every other step. The AUC is the chance that such a step gets
the higher logit (1: the head separates them, 0.5: it knows no more than the rate of ends); beside it the recall and
precision at the threshold the agent acts on (logit > 0), and the recall within 5 steps. A fresh MLP probe trained on
half of the episodes to find the ends from the head's inputs (h_{t-1}, a_{t-1}, r, s_t) says, on the other half,
how much those inputs hold at the step after an end (0 late) and a step later (1 late).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import tyro

import dynamite_rl as dm
import envs.protocol
import envs.runs

SCHEDULES = {"fixed": {"schedule": "fixed"}, "bernoulli": {"schedule": "bernoulli", "session_prob": 1 / 15},
             "poisson": {"schedule": "poisson", "num_sessions": 4}}


@dataclass
class Args:
    schedules: list[str] = field(default_factory=lambda: list(SCHEDULES))
    """the session schedules of the Gridworld (fixed: 4 of 15 steps; bernoulli: p = 1/15; poisson: K = 4)"""
    extra: str = ""
    """flags of dynamite_rl.py that set the VAE"""
    updates: int = 3000
    """VAE gradient steps per schedule"""
    probe_every: int = 500
    """measure the head every this many updates"""
    train_episodes: int = 4096
    """random-action episodes the VAE trains on"""
    test_episodes: int = 1024
    """held-out episodes the head is measured on"""
    seed: int = 1
    """seed of the episodes and the networks"""
    output: str = "docs/session_detection"
    """stem of the .md and .json results"""
    save_encoders: str | None = None
    """a folder to write each schedule's trained encoder into (session_head_<schedule>.pt: its weights and --extra)"""
    checkpoints: list[str] = field(default_factory=list)
    """instead: measure the heads of these trained dynamite_rl.py runs (checkpoint.pt) on their own greedy episodes"""


def random_episodes(env_kwargs: dict, num_episodes: int, seed: int):
    """Uniformly random-action episodes as dynamite_rl's buffer gives them: (obs, actions, rewards, next obs, ends)."""
    vector_env = envs.protocol.make_vector_env("dynamite/Gridworld-v0", num_episodes, env_kwargs)
    vector_env.reset(seed=seed)
    np.random.seed(seed)
    steps = envs.protocol.random_episode(vector_env, envs.protocol.horizon(vector_env))
    scaling = dm.ObservationScaling(vector_env.single_observation_space)
    stack = lambda i: torch.as_tensor(np.stack([step[i] for step in steps]))  # noqa: E731
    return (scaling(stack(0)), torch.nn.functional.one_hot(stack(1).long(), 5).float(), stack(2).float(),
            scaling(stack(3)), stack(4))


def detection(encoder, args, data) -> dict:
    with torch.no_grad():
        logits = dm.encode_episodes(encoder, data[0], data[1], data[2], data[4], args, "cpu")[2]
    counts = envs.protocol.SessionDetection()
    for t in range(1, logits.shape[0]):  # step t against the end of the transition before it
        counts.add(logits[t] > 0, data[4][t - 1])
    return counts.rates()


def ranking_auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """The chance that a positive scores above a negative (ties count half); nan without both."""
    if not len(positives) or not len(negatives):
        return float("nan")
    _, group, counts = np.unique(np.concatenate([positives, negatives]), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[group]  # 1-based ranks, tied values sharing their mean rank
    return float((ranks[: len(positives)].sum() - len(positives) * (len(positives) + 1) / 2)
                 / (len(positives) * len(negatives)))


def probe_auc(features: np.ndarray, targets: np.ndarray, seed: int, updates: int = 1500) -> float:
    """What ``features`` (B, T, F) hold about ``targets`` (B, T): the held-out AUC of a fresh two-layer MLP trained
    with cross-entropy on the first half of the episodes and tested on the second half."""
    torch.manual_seed(seed)
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(targets, dtype=torch.float32)
    half = len(x) // 2
    mean, std = x[:half].flatten(0, 1).mean(0), x[:half].flatten(0, 1).std(0) + 1e-6
    x = (x - mean) / std
    probe = torch.nn.Sequential(torch.nn.Linear(x.shape[-1], 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(updates):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(probe(x[:half]).squeeze(-1), y[:half])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        scores = probe(x[half:]).squeeze(-1).numpy()
    tested = targets[half:].astype(bool)
    return ranking_auc(scores[tested], scores[~tested])


def trained_head(path: str, episodes: int, seed: int, within: int = 5) -> dict:
    """The termination head of a trained dynamite_rl.py agent on ``episodes`` greedy episodes of its task: the AUC of
    its logit at the steps where it should fire (a true end --head-delay steps before the last transition) against
    all other steps, its recall and precision at logit > 0, and what a fresh probe of the head's inputs finds at the
    step after an end and a step later."""
    from benchmarks.trained import load_agent

    run = load_agent(path, ("dynamite_rl.py",))
    delay = getattr(run["args"], "head_delay", 0)
    vector_env = envs.protocol.make_vector_env(run["args"].env_id, episodes, run["eval_env_kwargs"])
    policy = run["algo"].GreedyPolicy(episodes, run["encoder"], run["agent"], run["obs_scaling"], run["space"],
                                      run["horizon"], run["args"], "cpu")
    logits, inputs, dones = [], [], []
    encode = policy.state.encode

    def recording(encoder, obs, *rest):  # the policy's own encoding step: the head's inputs and logit kept
        state = policy.state
        inputs.append(torch.cat([state.hidden, state.prev_action, state.reward, obs], -1).numpy())
        out = encode(encoder, obs, *rest)
        logits.append(out[2].numpy())
        return out

    policy.state.encode = recording
    obs, _ = vector_env.reset(seed=seed)
    for t in range(run["horizon"]):
        action = policy.act(obs, t)
        obs, reward, _, _, info = vector_env.step(action)
        policy.observe(reward, info)
        dones.append(np.asarray(info["session_done"], dtype=bool))
    vector_env.close()
    dones, inputs = np.array(dones), np.array(inputs)
    # at step t the head is asked about the end of transition t - 1 - delay (step 0 follows none)
    logits, ends = np.array(logits)[1 + delay:], dones[: len(dones) - 1 - delay]
    fired = logits > 0
    found = []  # each true end: fired at its step or within the next ``within`` steps, before the next end
    for t, b in np.argwhere(ends):
        later = np.nonzero(ends[t + 1:, b])[0]
        stop = min(t + within, t + 1 + later[0]) if len(later) else t + within
        found.append(fired[t:stop, b].any())
    probes = {f"probe AUC, {d} late": probe_auc(inputs[1 + d:].swapaxes(0, 1), dones[: len(dones) - 1 - d].T, seed)
              for d in (0, 1)}
    return {"checkpoint": path, "env_id": run["args"].env_id, "head delay": delay, "ends": int(ends.sum()),
            "auc": ranking_auc(logits[ends], logits[~ends]),
            "recall": float(fired[ends].mean()) if ends.any() else float("nan"),
            "precision": float(ends[fired].mean()) if fired.any() else float("nan"),
            f"recall within {within}": float(np.mean(found)) if found else float("nan"), **probes}


def measure_trained(args: Args) -> dict:
    rows = []
    for path in args.checkpoints:
        rows.append({k: round(v, 3) if isinstance(v, float) else v
                     for k, v in trained_head(path, args.test_episodes, args.seed).items()})
        print(rows[-1], flush=True)
    command = " ".join(["python benchmarks/session_detection.py", *map(shlex.quote, sys.argv[1:])])
    result = {"command": command, "args": vars(args), "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(f"{args.output}.json", "w") as f:
        json.dump(result, f, indent=1)
    keys = [k for k in rows[0] if k not in ("checkpoint", "env_id")]
    with open(f"{args.output}.md", "w") as f:
        f.write(f"# The termination heads of trained agents\n\n`{command}`\n\nEach trained DynaMITE-RL agent plays "
                f"{args.test_episodes} greedy episodes of its task (seed {args.seed}). AUC: the chance that the head's "
                "logit at a step where it should fire (after a true session end, and --head-delay steps more) is "
                "above its logit at another step (0.5: it knows no more than how often ends come). Recall and "
                "precision at that step and logit > 0, the threshold the agent acts on; recall within 5: the ends "
                "found by then. Probe AUC: a fresh MLP trained on half of the episodes to find the ends from the "
                "head's inputs, tested on the other half, at the step after an end (0 late) and a step later (1 "
                "late).\n\n"
                "| run | task | " + " | ".join(keys) + " |\n|---|---|" + "---:|" * len(keys) + "\n")
        for row in rows:
            f.write(f"| {row['checkpoint']} | {row['env_id']} | " + " | ".join(str(row[k]) for k in keys) + " |\n")
    print(f"wrote {args.output}.md and {args.output}.json")
    return result


def main(args: Args) -> dict:
    if args.checkpoints:
        return measure_trained(args)
    vae_args = tyro.cli(dm.Args, args=shlex.split(args.extra))
    envs_ = envs.protocol.make_vector_env("dynamite/Gridworld-v0", 1, {})
    envs.runs.fill_family_defaults(vae_args, envs_)
    torch.set_num_threads(vae_args.num_threads)
    rows, start = [], time.time()
    for name in args.schedules:
        torch.manual_seed(args.seed)
        train = random_episodes(SCHEDULES[name], args.train_episodes, args.seed)
        test = random_episodes(SCHEDULES[name], args.test_episodes, args.seed + 1)
        obs_dim = train[0].shape[-1]
        encoder, decoder, prior_net = dm.Encoder(obs_dim, 5, vae_args), dm.Decoder(obs_dim, 5, vae_args), \
            dm.LatentDynamicsPrior(vae_args)
        optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters(), *prior_net.parameters()],
                                     lr=vae_args.encoder_learning_rate)
        for update in range(1, args.updates + 1):
            index = torch.randint(args.train_episodes, (vae_args.encoder_batch_episodes,))
            dm.vae_update(encoder, decoder, prior_net, optimizer, tuple(x[:, index] for x in train), vae_args, "cpu",
                          update)
            if update % args.probe_every == 0 or update == args.updates:
                rates = detection(encoder, vae_args, test)
                rows.append({"schedule": name, "updates": update, "seconds": round(time.time() - start, 1),
                             **{k: round(v, 3) for k, v in rates.items()}})
                print(" | ".join(f"{k} {v}" for k, v in rows[-1].items()), flush=True)
        if args.save_encoders:
            os.makedirs(args.save_encoders, exist_ok=True)
            path = os.path.join(args.save_encoders, f"session_head_{name}.pt")
            torch.save({"extra": args.extra, "schedule": SCHEDULES[name], "updates": args.updates, "seed": args.seed,
                        "encoder": encoder.state_dict()}, path)
            print(f"wrote {path}")
    command = " ".join(["python benchmarks/session_detection.py", *map(shlex.quote, sys.argv[1:])])
    result = {"command": command, "args": vars(args), "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(f"{args.output}.json", "w") as f:
        json.dump(result, f, indent=1)
    with open(f"{args.output}.md", "w") as f:
        f.write(f"# Session detection\n\n`{command}`\n\nPrecision and recall of DynaMITE-RL's termination head at the "
                "exact step, on held-out random-action Gridworld episodes of each schedule, as the VAE trains on "
                "such episodes; seconds: wall time since the start.\n\n| schedule | updates | seconds | precision | "
                "recall |\n|---|---:|---:|---:|---:|\n")
        for row in rows:
            f.write(f"| {row['schedule']} | {row['updates']} | {row['seconds']} | {row['precision']} | {row['recall']} |\n")
    print(f"wrote {args.output}.md and {args.output}.json")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
