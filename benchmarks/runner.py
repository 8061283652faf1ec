"""Run training runs as Ray tasks: on this machine or on a cluster, with the same command.

Every run is one task with one CPU (and ``gpus_per_run`` GPUs) that runs an algorithm script as a subprocess in
its own run folder. Without an address, ``ray.init()`` starts a cluster on this machine sized by ``workers``;
``address="auto"`` or ``"ray://host:port"`` joins a running one. Run folders must be on storage that every node
sees (a shared filesystem; on one machine that is the local disk): a task checks that it sees the folder of its
comparison before it starts, and a run killed with its node resumes from its checkpoint on another one.

A run that exits with an error (or whose node is lost) is retried up to ``retries`` times, resuming from its
checkpoint; after that it is reported by name with the last lines of its output, and the other runs go on.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = ".runner"  # written by the head into every run folder's parent; a node that cannot see it cannot run there


@dataclass
class Run:
    """One training run: ``script`` with ``flags`` for a fresh start; ``resume_flags`` are given on every start."""

    name: str
    script: str
    flags: list[str]
    run_dir: str
    total_timesteps: int
    resume_flags: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # environment variables of the subprocess (e.g. WANDB_TAGS)

    def finished(self) -> bool:
        path = os.path.join(self.run_dir, "eval.json")
        return os.path.exists(path) and bool(json.load(open(path)).get("finished"))

    def steps_done(self) -> int:
        """Env steps of the run's last evaluation (what a resumed run would keep)."""
        try:
            return json.load(open(os.path.join(self.run_dir, "eval.json")))["evaluations"][-1]["global_step"]
        except (OSError, ValueError, KeyError, IndexError):
            return 0

    def arguments(self) -> list[str]:
        """The script's arguments: a fresh start, or --resume where the run left a checkpoint."""
        checkpoint = os.path.join(self.run_dir, "checkpoint.pt")
        start = ["--resume", checkpoint] if os.path.exists(checkpoint) else [*self.flags, "--run-dir", self.run_dir]
        return [*start, *self.resume_flags]

    def command(self) -> str:
        return shlex.join(["python", self.script, *self.arguments()])


def train(script: str, arguments: list[str], run_dir: str, env: dict[str, str]) -> tuple[int, str]:
    """The body of a task: run the script as a subprocess, its output appended to the run folder's stdout.log;
    returns its exit status and the last lines of that output."""
    if not os.path.exists(os.path.join(os.path.dirname(run_dir), MARKER)):
        return 2, (f"{os.path.dirname(run_dir)} is not visible on node {socket.gethostname()}: --runs-dir must be on "
                   "storage that every node of the cluster sees")
    os.makedirs(run_dir, exist_ok=True)
    log_path = os.path.join(run_dir, "stdout.log")
    with open(log_path, "a") as log:
        command = [sys.executable, os.path.join(ROOT, script), *arguments]
        status = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                stdin=subprocess.DEVNULL).returncode
    with open(log_path) as log:
        tail = "".join(log.readlines()[-8:])
    return status, tail


def run_all(runs: list[Run], address: str | None = None, workers: int = 2, gpus_per_run: float = 0.0,
            retries: int = 2, on_finished: Callable[[Run], None] | None = None) -> dict[str, str]:
    """Run every unfinished run of ``runs`` on Ray; returns the failures, name -> last lines of output. A progress
    bar shows runs finished / running / failed, env steps done, elapsed time and the estimated time left.
    ``on_finished(run)`` is called as soon as a run has finished (e.g. to record it before the others end)."""
    import ray
    from tqdm import tqdm

    todo = [run for run in runs if not run.finished()]
    if not todo:
        return {}
    for parent in {os.path.dirname(run.run_dir) for run in todo}:
        os.makedirs(parent, exist_ok=True)
        open(os.path.join(parent, MARKER), "w").write(f"{socket.gethostname()} {time.time()}\n")
    start = time.time()
    if address is None:  # a cluster of this machine only, with a small object store (tasks return a few lines)
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20)
    else:
        ray.init(address=address, log_to_driver=False)
    print(f"ray: {'started a local cluster of ' + str(workers) + ' CPUs' if address is None else 'joined ' + address} "
          f"in {time.time() - start:.1f}s", flush=True)
    task = ray.remote(num_cpus=1, num_gpus=gpus_per_run, max_retries=retries)(train)  # retries a lost node's task

    def submit(run: Run):
        return task.remote(run.script, run.arguments(), run.run_dir, run.env)

    pending = {submit(run): run for run in todo}
    attempts = {run.name: 1 for run in todo}
    failures: dict[str, str] = {}
    finished = 0
    total_steps = sum(run.total_timesteps for run in runs)
    try:
        with tqdm(total=total_steps, unit=" env steps", unit_scale=True, dynamic_ncols=True, mininterval=1.0,
                  disable=None) as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
                for ref in done:
                    run = pending.pop(ref)
                    try:
                        status, tail = ray.get(ref)
                    except ray.exceptions.RayError as error:  # the node or the worker was lost past its retries
                        status, tail = -1, f"{type(error).__name__}: {str(error).splitlines()[0]}"
                    if status == 0:
                        finished += 1
                        tqdm.write(f"{run.name}: finished ({attempts[run.name]} attempt(s))")
                        if on_finished is not None:
                            on_finished(run)
                    elif attempts[run.name] <= retries:
                        attempts[run.name] += 1
                        tqdm.write(f"{run.name}: exit {status}, retrying from its checkpoint "
                                   f"(attempt {attempts[run.name]} of {retries + 1})")
                        pending[submit(run)] = run
                    else:
                        failures[run.name] = tail
                        tqdm.write(f"{run.name}: FAILED after {attempts[run.name]} attempts (exit {status}); last lines "
                                   f"of {run.run_dir}/stdout.log:\n{tail.rstrip()}")
                bar.n = sum(run.total_timesteps if run.finished() else run.steps_done() for run in runs)
                bar.set_postfix_str(f"runs: {finished + len(runs) - len(todo)} finished, {len(pending)} running, "
                                    f"{len(failures)} failed of {len(runs)}")
                bar.refresh()
    finally:
        ray.shutdown()
    return failures
