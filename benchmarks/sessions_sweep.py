"""The paper's Figure 8: how the methods hold up as an episode of H steps is cut into K sessions, from K = 1 (a
latent MDP: one latent per episode) to K = H (a POMDP whose latent may change at every step).

    python benchmarks/sessions_sweep.py          # Gridworld (H = 60): K = 1 2 4 6 12 30 60 fixed sessions of H / K
    python benchmarks/sessions_sweep.py --env-id dynamite/HalfCheetahVel-v0 --methods dynamite varibad oracle \
        no-inference --sessions 1 2 4 8 20 50 400 --runs-dir runs/sessions_halfcheetah_vel \
        --output docs/sessions_halfcheetah_vel
    python benchmarks/sessions_sweep.py --report-only     # the table and the figure of the runs already finished

On the Gridworld the K sessions are fixed, H / K steps each (K must divide H), and the exact Bayes-optimal and
memoryless returns of each K are drawn beside the boxes; on the other tasks they are Poisson sessions
(``schedule="poisson", num_sessions=K``: the first K - 1 lengths ~ Poisson(H / K) and the last the rest, redrawn
until all are positive; K = 1 is one fixed session). For each K every method trains with each seed through the same
runner as benchmarks/compare.py (resumable: the same command continues the sweep) and its final evaluation returns the
greedy return of each of --eval-episodes rollouts: the box of a (K, method) holds those of all its seeds. The
task's learned bounds, the methods ``oracle`` (PPO told the latent) and ``no-inference`` (PPO on s and t/H), are
drawn as lines at the mean over their seeds, and the table says where each method's mean sits between them.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from benchmarks.compare import (GRIDWORLD, METHODS, detection_summary, differing_settings, env_name, record, restore, save,
                                write_report)
from benchmarks.runner import Run, run_all


@dataclass
class Args:
    env_id: str = GRIDWORLD
    """the task, at its defaults but for its sessions"""
    sessions: list[int] = field(default_factory=lambda: [1, 2, 4, 6, 12, 30, 60])
    """the numbers of sessions K per episode"""
    methods: list[str] = field(default_factory=lambda: ["dynamite", "varibad", "rl2"])
    """methods of benchmarks/compare.py to train for each K ("oracle" and "no-inference" are drawn as the bounds)"""
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    """seeds of every method and K"""
    eval_episodes: int = 25
    """greedy rollouts of each trained policy (the boxes), and of every evaluation during training"""
    total_timesteps: int | None = None
    """env steps of every run (default: each script's own default)"""
    eval_every: int = 20
    """evaluate every this many iterations"""
    workers: int = 2
    """runs in parallel on this machine's cluster (ignored with --ray-address)"""
    ray_address: str | None = None
    """join a running Ray cluster ("auto", or "ray://host:port"); default: start one on this machine"""
    retries: int = 2
    """times a failed run is restarted from its checkpoint"""
    dry_run: bool = False
    """print the command of every run that is not finished, and stop"""
    report_only: bool = False
    """train nothing: write the table and the figure from the runs already in --runs-dir"""
    reuse: bool = True
    """count the finished runs recorded beside the report (--output's _runs.json) as done; --no-reuse trains them"""
    runs_dir: str = "runs/sessions_gridworld"
    """where the runs are written (one folder per K, method and seed)"""
    output: str = "docs/sessions_gridworld"
    """prefix of the written table (.md) and figure (.png)"""


def session_settings(env_id: str, k: int) -> dict:
    """The environment's constructor arguments for K sessions per episode (ValueError if K does not fit)."""
    import gymnasium as gym

    import envs.protocol

    env = gym.make(env_id)
    horizon = envs.protocol.horizon(gym.vector.SyncVectorEnv([lambda: env]))
    if not 1 <= k <= horizon:
        raise ValueError(f"--sessions {k}: K must be between 1 and the horizon H = {horizon}")
    if env_id == GRIDWORLD:
        if horizon % k:
            raise ValueError(f"--sessions {k}: on the Gridworld K must divide H = {horizon} (fixed sessions of H / K)")
        return {"schedule": "fixed", "session_length": horizon // k}
    return {"schedule": "fixed", "session_length": horizon} if k == 1 else {"schedule": "poisson", "num_sessions": k}


def make_runs(args: Args) -> list[Run]:
    import importlib

    runs = []
    for seed in args.seeds:
        for k in args.sessions:
            env_kwargs = json.dumps(session_settings(args.env_id, k))
            for method in args.methods:
                _, script, flags = METHODS[method]
                steps = args.total_timesteps or importlib.import_module(script[: -len(".py")]).Args().total_timesteps
                fresh = ["--seed", str(seed), "--exp-name", f"{method}-K{k}", "--env-id", args.env_id, "--env-kwargs",
                         env_kwargs, "--eval-episodes", str(args.eval_episodes), *flags, "--save-model"]
                resumable = ["--eval-every", str(args.eval_every), "--log-every", "1000000"]
                if args.total_timesteps:
                    resumable += ["--total-timesteps", str(args.total_timesteps)]
                run_dir = os.path.abspath(os.path.join(args.runs_dir, f"K{k}", method, f"seed{seed}"))
                runs.append(Run(f"K={k} {method} seed {seed}", script, fresh, run_dir, steps, resumable))
    return runs


def load(args: Args) -> tuple[dict[tuple[int, str], list[dict]], dict[str, dict]]:
    """The final evaluations of the finished runs, by (K, method), and those runs by folder (runs trained with other
    settings than their command sets are left out, as compare.py leaves them out)."""
    results, finished = {(k, method): [] for k in args.sessions for method in args.methods}, {}
    keys = [(seed, k, method) for seed in args.seeds for k in args.sessions for method in args.methods]
    for (seed, k, method), run in sorted(zip(keys, make_runs(args)), key=lambda pair: pair[0]):
        path = os.path.join(run.run_dir, "eval.json")
        evaluation = json.load(open(path)) if os.path.exists(path) else {}
        differ = differing_settings(run, evaluation.get("args", {})) if evaluation else ""
        if differ:
            print(f"{run.name} in {run.run_dir} left out: trained with {differ}", flush=True)
        elif evaluation.get("finished"):
            results[k, method].append(evaluation["evaluations"][-1])
            finished[f"K{k}/{method}/seed{seed}"] = evaluation
    return results, finished


def references(args: Args) -> dict[int, dict]:
    """The Gridworld's exact Bayes-optimal and memoryless returns for each K (empty elsewhere)."""
    if args.env_id != GRIDWORLD:
        return {}
    from envs.gridworld_reference import cached_solution

    out = {}
    for k in args.sessions:
        try:
            out[k] = {mode: cached_solution(session_settings(args.env_id, k), mode).total
                      for mode in ("bayes", "memoryless")}
        except ValueError as error:  # a reference that would not fit in memory
            print(f"K={k}: no exact reference ({error})")
    return out


BOUNDS = {"oracle": ("k", "--"), "no-inference": ("gray", ":")}  # learned bounds, drawn as lines: colour, style


def learned_bounds(results, k: int) -> dict[str, float]:
    """The mean final return over seeds of each learned bound that has finished runs at K."""
    return {name: float(np.mean([f["return"] for f in results[k, name]])) for name in BOUNDS
            if results.get((k, name))}


def summarize(args: Args, results, reference) -> list[str]:
    labels = [METHODS[m][0] for m in args.methods]
    lines = ["| K | " + " | ".join(labels) + (" | Bayes-optimal | no memory across sessions |" if reference else " |"),
             "| ---: |" + " ---: |" * (len(labels) + (2 if reference else 0))]
    for k in args.sessions:
        cells = []
        for method in args.methods:
            finals = results[k, method]
            if not finals:
                cells.append("–")
                continue
            means = np.array([f["return"] for f in finals])
            rollouts = np.concatenate([f.get("episode_returns", []) for f in finals])
            median = f", median {np.median(rollouts):.2f}" if len(rollouts) else ""
            head = detection_summary(finals)
            spread = f" ± {means.std():.2f}" if len(finals) > 1 else ""
            seeds = f"{len(finals)} seed{'s' if len(finals) > 1 else ''}"
            bounds = learned_bounds(results, k)
            if method not in BOUNDS and len(bounds) == 2 and bounds["oracle"] != bounds["no-inference"]:
                fraction = (means.mean() - bounds["no-inference"]) / (bounds["oracle"] - bounds["no-inference"])
                seeds += f", {fraction:.0%} between the bounds"
            cells.append(f"{means.mean():.2f}{spread} ({seeds}{median}" + (f"; head: {head})" if head else ")"))
        if reference:
            ref = reference.get(k)
            cells += [f"{ref['bayes']:.2f}", f"{ref['memoryless']:.2f}"] if ref else ["–", "–"]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", f"Each cell: the final greedy return over {args.eval_episodes} rollouts, mean ± std over seeds, and "
                  "the median of all the rollouts of its seeds (the box's line); for DynaMITE-RL, how its termination "
                  "head found the true session ends (precision and recall at the exact step, mean delay of late finds)."]
    if any(m in BOUNDS for m in args.methods):
        lines[-1] += (" Between the bounds: (mean − no inference) / (oracle − no inference), 0% at the no-inference "
                      "bound and 100% at the oracle's, both means over their seeds at the same K.")
    return lines


def plot(args: Args, results, reference) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 * len(args.sessions) + 2, 4.5))
    boxed = [m for m in args.methods if m not in BOUNDS]
    width = 0.8 / max(len(boxed), 1)
    for i, method in enumerate(boxed):
        positions, boxes = [], []
        for j, k in enumerate(args.sessions):
            rollouts = np.concatenate([f.get("episode_returns", [f["return"]]) for f in results[k, method]] or [[]])
            if len(rollouts):
                positions.append(j + (i - (len(boxed) - 1) / 2) * width)
                boxes.append(rollouts)
        if boxes:
            parts = ax.boxplot(boxes, positions=positions, widths=width * 0.9, patch_artist=True, showfliers=False)
            for box in parts["boxes"]:
                box.set(facecolor=f"C{i}", alpha=0.5)
            ax.plot([], [], color=f"C{i}", lw=6, alpha=0.5, label=METHODS[method][0])
    for j, k in enumerate(args.sessions):
        if k in reference:
            ax.hlines(reference[k]["bayes"], j - 0.45, j + 0.45, color="k", ls="--", lw=1,
                      label="Bayes-optimal" if j == 0 else None)
            ax.hlines(reference[k]["memoryless"], j - 0.45, j + 0.45, color="gray", ls=":", lw=1,
                      label="no memory across sessions" if j == 0 else None)
    labelled = set()
    for j, k in enumerate(args.sessions):
        for name, value in learned_bounds(results, k).items():
            color, style = BOUNDS[name]
            ax.hlines(value, j - 0.45, j + 0.45, color=color, ls=style, lw=1.5,
                      label=None if name in labelled else f"{METHODS[name][0]}, mean over seeds")
            labelled.add(name)
    counts = sorted({len(results[k, m]) for k in args.sessions for m in boxed if results[k, m]})
    if not counts:
        seeds = "no seeds"
    elif len(counts) > 1:
        seeds = f"{counts[0]}–{counts[-1]} seeds"
    else:
        seeds = f"{counts[0]} seed" + ("" if counts[0] == 1 else "s")
    ax.set_xticks(range(len(args.sessions)), [str(k) for k in args.sessions])
    ax.set(xlabel="sessions per episode K", ylabel="greedy return per rollout",
           title=f"{env_name(args.env_id)}: returns as the number of sessions grows ({seeds} per box)")
    ax.legend(fontsize=8)
    return save(fig, f"{args.output}.png")


def main(args: Args) -> None:
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"error: unknown methods {unknown}; known: {', '.join(METHODS)}")
    try:
        runs = [] if args.report_only else make_runs(args)
        for k in args.sessions:
            session_settings(args.env_id, k)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    restored = restore(f"{args.output}_runs.json", args.runs_dir, make_runs(args)) if args.reuse else 0
    if restored:
        print(f"{restored} finished run(s) restored from {args.output}_runs.json into {args.runs_dir}", flush=True)
    if args.dry_run:
        for run in runs:
            print(f"{run.name}: " + ("finished" if run.finished() else run.command()))
        return
    start = time.time()
    failures = run_all(runs, args.ray_address, args.workers, 0.0, args.retries) if runs else {}
    results, finished = load(args)
    if not any(results.values()):
        raise SystemExit(f"error: no finished run in {args.runs_dir}; run the command without --report-only to train them")
    reference = references(args)
    table = summarize(args, results, reference)
    recorded = os.path.basename(record(f"{args.output}_runs.json", finished))
    table += ["", f"The runs as this report read them: [{recorded}]({recorded}) (the same command restores the "
                  "finished ones and trains only what is missing)."]
    figure = plot(args, results, reference)
    command = "python benchmarks/sessions_sweep.py " + shlex.join(sys.argv[1:])
    ran = f"{len(runs)} runs, {(time.time() - start) / 60:.0f} min wall time for this invocation" if runs else \
        "table and figure of the runs in " + args.runs_dir
    write_report(args.output, f"{env_name(args.env_id)}: sessions per episode", command, ran, table, [figure], failures)


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
