"""Training throughput of an algorithm script on a simulated DLCMDP, beside the simulator's raw rate in the same run.

    python benchmarks/throughput.py                                   # DynaMITE-RL on HalfCheetah-Vel (MuJoCo)
    python benchmarks/throughput.py --env-id dynamite/ScratchItch-v0  # ... on ScratchItch (pybullet)
    python benchmarks/throughput.py --script varibad.py --env-id dynamite/Reacher-v0

First the raw rate: uniformly random actions in one environment and in the lock-step vector of --num-envs
environments the scripts use; then the script trains for --iterations iterations of the VAE phase at its
defaults, and its env steps/s and time split come from its own evaluation file. One core each, one at a time.
Writes a table to docs/throughput_<environment>.md (or --output).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import envs  # noqa: E402,F401  (registers the environments)


@dataclass
class Args:
    env_id: str = "dynamite/HalfCheetahVel-v0"
    """the environment"""
    script: str = "dynamite_rl.py"
    """the algorithm script whose training is timed"""
    num_envs: int = 64
    """environments stepped in lock-step, as the script's --num-envs"""
    iterations: int = 3
    """training iterations to time (each one episode of every environment)"""
    seconds: float = 5.0
    """how long to time each raw configuration"""
    extra: str = ""
    """extra flags for the script"""
    output: str | None = None
    """markdown file to write the table to (default: docs/throughput_<environment>.md)"""


def raw_rate(env, num_envs: int, seconds: float) -> float:
    """Env steps per second under uniformly random actions, resetting whole episodes at the horizon."""
    rng = np.random.default_rng(0)
    space = env.single_action_space if num_envs > 1 else env.action_space
    env.reset(seed=0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        _, _, _, truncated, _ = env.step(rng.uniform(space.low, space.high, (num_envs, *space.shape) if num_envs > 1
                                                     else space.shape).astype(space.dtype))
        steps += num_envs
        if np.all(truncated):
            env.reset()
    return steps / (time.perf_counter() - start)


def main(args: Args) -> None:
    single = raw_rate(gym.make(args.env_id), 1, args.seconds)
    vector = gym.make_vec(args.env_id, num_envs=args.num_envs, vectorization_mode="sync",
                          vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.DISABLED})
    batched = raw_rate(vector, args.num_envs, args.seconds)
    horizon = vector.envs[0].unwrapped.horizon
    vector.close()
    with tempfile.TemporaryDirectory() as run_dir:
        steps = args.iterations * args.num_envs * horizon
        command = [sys.executable, os.path.join(ROOT, args.script), "--env-id", args.env_id, "--num-envs",
                   str(args.num_envs), "--total-timesteps", str(steps), "--run-dir", run_dir, "--eval-every", "0",
                   *shlex.split(args.extra)]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"error: {args.script} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        evaluation = json.load(open(os.path.join(run_dir, "eval.json")))
    timing = {k: v for k, v in evaluation["time"].items() if k != "eval"}
    train_time = sum(timing.values())
    split = ", ".join(f"{name} {seconds / train_time:.0%}" for name, seconds in timing.items())
    rows = [
        ("raw: one environment", f"{single:,.0f}", ""),
        (f"raw: {args.num_envs} environments in lock-step (SyncVectorEnv)", f"{batched:,.0f}", ""),
        (f"training: {args.script}, {args.iterations} iterations ({steps:,} steps, evaluation excluded)",
         f"{steps / train_time:,.0f}", split),
    ]
    command_line = "python benchmarks/throughput.py " + shlex.join(sys.argv[1:])
    lines = [
        f"# Throughput on {args.env_id}",
        "",
        f"Command: `{command_line.strip()}`. Machine: {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}, one torch thread; measured in one run, one configuration at a time.",
        "",
        "| what | env steps/s | time split |",
        "| --- | ---: | --- |",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        f"Training runs at {steps / train_time / single:.0%} of the single environment's raw rate.",
    ]
    output = args.output or os.path.join(ROOT, "docs", f"throughput_{args.env_id.split('/')[-1].split('-v')[0]}.md")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
