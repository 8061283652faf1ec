"""Environment steps per second of the Gridworld: one env, gymnasium's SyncVectorEnv, the batched env.

    python benchmarks/env_throughput.py            # writes docs/env_throughput.md

Random actions, whole episodes, one process; the batched rows include autoreset at every horizon.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers the environments)
from envs.gridworld import GridworldEnv, GridworldVectorEnv


@dataclass
class Args:
    seconds: float = 3.0
    """how long to time each configuration"""
    output: str = "docs/env_throughput.md"
    """markdown file to write the table to"""


def steps_per_second(env, num_envs: int, seconds: float) -> float:
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    actions = rng.integers(5, size=(1000, num_envs)) if num_envs > 1 else rng.integers(5, size=1000)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for action in actions[:100]:
            _, _, _, truncated, _ = env.step(action)
            if num_envs == 1 and truncated:
                env.reset()
        steps += 100 * num_envs
    return steps / (time.perf_counter() - start)


def main(args: Args) -> None:
    rows = [
        ("GridworldEnv (plain)", 1, lambda: GridworldEnv()),
        ('gym.make("dynamite/Gridworld-v0") (with checker wrappers)', 1, lambda: gym.make("dynamite/Gridworld-v0")),
        ("SyncVectorEnv of 256 GridworldEnv", 256,
         lambda: gym.vector.SyncVectorEnv([GridworldEnv] * 256, autoreset_mode="SameStep")),
        ("GridworldVectorEnv, 16 envs", 16, lambda: GridworldVectorEnv(16, autoreset_mode="SameStep")),
        ("GridworldVectorEnv, 256 envs", 256, lambda: GridworldVectorEnv(256, autoreset_mode="SameStep")),
        ("GridworldVectorEnv, 2048 envs", 2048, lambda: GridworldVectorEnv(2048, autoreset_mode="SameStep")),
    ]
    lines = [
        "# Gridworld environment throughput",
        "",
        "Command: `python benchmarks/env_throughput.py` (random actions, one process, "
        f"{args.seconds:g} s per row). Machine: {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"numpy {np.__version__}, gymnasium {gym.__version__}.",
        "",
        "| environment | env steps/s |",
        "| --- | ---: |",
    ]
    for name, num_envs, make in rows:
        rate = steps_per_second(make(), num_envs, args.seconds)
        lines.append(f"| {name} | {rate:,.0f} |")
        print(lines[-1], flush=True)
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
