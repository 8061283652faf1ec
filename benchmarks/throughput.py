"""Training throughput of an algorithm script on a simulated DLCMDP, beside the simulator's raw rate in the same run.

    python benchmarks/throughput.py                                   # DynaMITE-RL on HalfCheetah-Vel (MuJoCo)
    python benchmarks/throughput.py --env-id dynamite/ScratchItch-v0  # ... on ScratchItch (pybullet)
    python benchmarks/throughput.py --scripts varibad.py rl2.py --env-id dynamite/Reacher-v0
    python benchmarks/throughput.py --env-id dynamite/Gridworld-v0 --iterations 10 \
        --scripts dynamite_rl.py varibad.py rl2.py contrabar.py   # every method on the Gridworld (its VAE phase)
    python benchmarks/throughput.py --baseline cd16159 ...        # and the scripts of that revision, for the ratio

First the raw rate: uniformly random actions in one environment and in the lock-step vector of --num-envs
environments the scripts use; then each script trains for --iterations iterations of the VAE phase at its
defaults, and its env steps/s and time split come from its own evaluation file. One core each, one at a time.
With --baseline, each script of that git revision (with its own envs/) is timed too, alternating with the
current one --repeats times, and the table gives the speed-up as the ratio of the median rates.
Writes a table to docs/throughput_<environment>.md (or --output).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import envs.protocol  # (importing envs registers the environments)


@dataclass
class Args:
    env_id: str = "dynamite/HalfCheetahVel-v0"
    """the environment"""
    scripts: list[str] = field(default_factory=lambda: ["dynamite_rl.py"])
    """the algorithm scripts whose training is timed, one after the other"""
    num_envs: int = 64
    """environments stepped in lock-step, as the script's --num-envs"""
    iterations: int = 3
    """training iterations to time (each one episode of every environment)"""
    seconds: float = 5.0
    """how long to time each raw configuration"""
    extra: str = ""
    """extra flags for every script"""
    baseline: str | None = None
    """a git revision whose scripts are timed too, in the same run, for the speed-up (e.g. a commit before a change)"""
    repeats: int = 1
    """how many times each script is timed (alternating with the baseline's); the median rate counts"""
    output: str | None = None
    """markdown file to write the table to (default: docs/throughput_<environment>.md)"""


def raw_rate(env, num_envs: int, seconds: float) -> float:
    """Env steps per second under uniformly random actions, resetting whole episodes at the horizon."""
    rng = np.random.default_rng(0)
    space = env.single_action_space if num_envs > 1 else env.action_space
    batch = (num_envs,) if num_envs > 1 else ()
    env.reset(seed=0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        if isinstance(space, gym.spaces.Discrete):
            action = rng.integers(space.start, space.start + space.n, batch)
        else:
            action = rng.uniform(space.low, space.high, (*batch, *space.shape)).astype(space.dtype)
        _, _, _, truncated, _ = env.step(action)
        steps += num_envs
        if np.all(truncated):
            env.reset()
    return steps / (time.perf_counter() - start)


def children_cpu_seconds() -> float:
    """User + system CPU time of this process's finished child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def training_rate(args: Args, script: str, steps: int, root: str = ROOT) -> tuple[float, str, float]:
    """Env steps/s of ``script`` (of the tree at ``root``) training for ``steps`` steps, how its time splits, and
    the CPU seconds of the whole process (start and final evaluation included): the measure that other processes
    on the machine stretch least."""
    cpu_before = children_cpu_seconds()
    with tempfile.TemporaryDirectory() as run_dir:
        command = [sys.executable, os.path.join(root, script), "--env-id", args.env_id, "--num-envs",
                   str(args.num_envs), "--total-timesteps", str(steps), "--run-dir", run_dir, "--eval-every", "0",
                   *shlex.split(args.extra)]
        result = subprocess.run(command, cwd=root, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"error: {script} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        evaluation = json.load(open(os.path.join(run_dir, "eval.json")))
    timing = {k: v for k, v in evaluation["time"].items() if k != "eval"}
    train_time = sum(timing.values())
    split = ", ".join(f"{name} {seconds / train_time:.0%}" for name, seconds in timing.items())
    peak = evaluation["evaluations"][-1].get("peak_memory_mib")  # (older revisions do not report it)
    cpu = children_cpu_seconds() - cpu_before
    return steps / train_time, split + (f"; peak memory {peak:,.0f} MiB" if peak else "") + f"; {cpu:,.1f} CPU s", cpu


def median_run(results: list[tuple[float, str, float]]) -> tuple[float, str, float]:
    """The run of median rate among repeated timings of one script."""
    return sorted(results)[len(results) // 2]


def main(args: Args) -> None:
    env = gym.make(args.env_id)
    base = env.unwrapped
    horizon = base.config.horizon if hasattr(base, "config") else base.horizon  # the Gridworld keeps it in config
    single = raw_rate(env, 1, args.seconds)
    vector = envs.protocol.make_vector_env(args.env_id, args.num_envs, {})  # the vector env the scripts step
    batched = raw_rate(vector, args.num_envs, args.seconds)
    vector.close()
    rows = [("raw: one environment", f"{single:,.0f}", ""),
            (f"raw: {args.num_envs} environments in lock-step ({type(vector.unwrapped).__name__})", f"{batched:,.0f}", "")]
    steps = args.iterations * args.num_envs * horizon
    with tempfile.TemporaryDirectory() as baseline_root:
        if args.baseline:  # the revision's files, its envs/ included (a script imports the envs/ beside it)
            archive = subprocess.run(["git", "-C", ROOT, "archive", args.baseline], capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", baseline_root], input=archive.stdout, check=True)
        runs = {script: [] for script in args.scripts}
        baseline_runs = {script: [] for script in args.scripts}
        for _ in range(args.repeats):
            for script in args.scripts:
                runs[script].append(training_rate(args, script, steps))
                if args.baseline:
                    baseline_runs[script].append(training_rate(args, script, steps, baseline_root))
    rates = {script: median_run(result) for script, result in runs.items()}
    for script, (rate, split, cpu) in rates.items():
        what = f"training: {script}, {args.iterations} iterations ({steps:,} steps, evaluation excluded)"
        if args.baseline:
            old_rate, old_split, old_cpu = median_run(baseline_runs[script])
            rows.append((f"{what}, at {args.baseline}", f"{old_rate:,.0f}", old_split))
            rows.append((f"{what}, now: **{rate / old_rate:.2f}x** (in CPU time {old_cpu / cpu:.2f}x)", f"{rate:,.0f}",
                         split))
        else:
            rows.append((what, f"{rate:,.0f}", split))
    command_line = "python benchmarks/throughput.py " + shlex.join(sys.argv[1:])
    lines = [
        f"# Throughput on {args.env_id}",
        "",
        f"Command: `{command_line.strip()}`. Machine: {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}, one torch thread; measured in one run, one configuration at a time"
        + (f", each script {args.repeats} times (median)" if args.repeats > 1 else "") + ".",
        "",
        "| what | env steps/s | time split |",
        "| --- | ---: | --- |",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        *[f"{script} trains at {rate / single:.0%} of the single environment's raw rate." for script, (rate, _, _)
          in rates.items()],
        "",
        "The CPU seconds are the whole process's (start, observation fit and final evaluation included); their ratio "
        "is the speed-up that other processes sharing the machine distort least.",
    ]
    output = args.output or os.path.join(ROOT, "docs", f"throughput_{args.env_id.split('/')[-1].split('-v')[0]}.md")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
