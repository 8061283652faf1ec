"""How well DynaMITE-RL's termination head finds session ends after the fact, on each session schedule.

    python benchmarks/session_detection.py                     # fixed, Bernoulli (p = 1/15) and Poisson (K = 4)
    python benchmarks/session_detection.py --updates 1500 --extra "--session-encoder"
    python benchmarks/session_detection.py --schedules bernoulli --save-encoders tests/data   # the tests' trained head

dynamite_rl.py's VAE (its networks and update, set by --extra) trains offline on uniformly random-action Gridworld
episodes of each schedule; every --probe-every updates the head's precision and recall at the exact step are
measured on held-out episodes of the same schedule: at step t it says whether the transition into s_t ended a
session, against the true end. The episodes are encoded with the true ends (teacher forcing), as the VAE trains;
a trained agent's own rollouts log the same numbers (TensorBoard charts/session_*, eval.json session_detection).
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


def main(args: Args) -> dict:
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
