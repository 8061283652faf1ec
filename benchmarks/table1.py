"""The paper's Table 1, regenerated: RL², ContraBAR, VariBAD and DynaMITE-RL on every task, each read between the
task's two learned bounds, with the paper's values beside ours and a verdict on each of its claims.

    python benchmarks/table1.py --report-only          # the table from the runs recorded in docs/ (seconds)
    python benchmarks/table1.py --tasks Reacher        # train what one task is missing (hours), then the table
    python benchmarks/table1.py                        # every task: days on 2 cores; --ray-address auto on a cluster

Each task is one comparison of benchmarks/compare.py (its own report, plots and record of runs in docs/); this
script runs those comparisons as subprocesses (each trains only what its record lacks) and then reads every
finished run of every task into one table. A claim of the paper, "DynaMITE-RL returns more than X on this task", is
judged by Welch's two-sided t-test at the 5% level over the seeds: *confirmed* where DynaMITE-RL is ahead and the
test rejects equal means, *refuted* where it is behind and the test rejects them, *not separated* otherwise.
"""

from __future__ import annotations

import math
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import compare


@dataclass(frozen=True)
class Task:
    env_id: str
    report: str  # the comparison's report (under --docs) and the folder of its runs (under --runs-root)
    runs: str
    methods: tuple[str, ...]


BOUNDS = ("oracle", "no-inference")
BASELINES = ("rl2", "contrabar", "varibad")  # the paper's column order, DynaMITE-RL last
ALL = (*BASELINES, "dynamite", *BOUNDS)
TASKS = {
    "Gridworld": Task("dynamite/Gridworld-v0", "gridworld_table1", "benchmark_gridworld_table1", ALL),
    "Reacher": Task("dynamite/Reacher-v0", "reacher_comparison", "benchmark_reacher", ALL),
    "HalfCheetah-Dir": Task("dynamite/HalfCheetahDir-v0", "halfcheetah_dir_comparison", "benchmark_halfcheetah_dir",
                            ALL),
    "HalfCheetah-Vel": Task("dynamite/HalfCheetahVel-v0", "halfcheetah_vel_random_phase", "benchmark_halfcheetah_vel",
                            ALL),
    "HalfCheetah-Wind+Vel": Task("dynamite/HalfCheetahWindVel-v0", "halfcheetah_wind_vel_comparison",
                                 "benchmark_halfcheetah_wind_vel", ALL),
    # ScratchItch runs 2,200 env steps/s (docs/throughput_ScratchItch.md): ContraBAR is left out, as in its paper
    "ScratchItch": Task("dynamite/ScratchItch-v0", "scratchitch_random_phase", "benchmark_scratchitch_random_phase",
                        ("rl2", "varibad", "dynamite", *BOUNDS)),
}
# The paper's Table 1 (mean ± std over its seeds), read once; README.md quotes it and a test keeps the two equal
PAPER = {
    "Gridworld": {"rl2": (33.4, 1.6), "contrabar": (34.5, 0.9), "varibad": (31.8, 1.9), "dynamite": (42.9, 0.5)},
    "Reacher": {"rl2": (-150.6, 1.2), "contrabar": (-101.6, 3.2), "varibad": (-102.4, 4.2), "dynamite": (-8.4, 5.1)},
    "HalfCheetah-Dir": {"rl2": (-420.0, 4.6), "contrabar": (-256.5, 3.2), "varibad": (-242.5, 5.6),
                        "dynamite": (-68.5, 2.3)},
    "HalfCheetah-Vel": {"rl2": (-513.2, 8.7), "contrabar": (-312.3, 4.8), "varibad": (-363.5, 3.2),
                        "dynamite": (-146.0, 8.1)},
    "HalfCheetah-Wind+Vel": {"rl2": (-493.5, 1.8), "contrabar": (-243.4, 2.6), "varibad": (-188.5, 4.4),
                             "dynamite": (-42.8, 6.9)},
    "ScratchItch": {"rl2": (50.4, 16.8), "contrabar": (114.6, 24.4), "varibad": (81.8, 6.9), "dynamite": (231.2, 23.3)},
}
# two-sided 5% critical values of Student's t by degrees of freedom (1-30), and the normal's beyond
T_CRITICAL = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
              2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


@dataclass
class Args:
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    """the tasks to train: any of Gridworld, Reacher, HalfCheetah-Dir, HalfCheetah-Vel, HalfCheetah-Wind+Vel,
    ScratchItch (the table has a row for every task, read from what each has recorded)"""
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    """seeds of every method on every task"""
    report_only: bool = False
    """train nothing: the table from the finished runs (those in --runs-root and those recorded beside the reports)"""
    workers: int = 2
    """runs in parallel on this machine (ignored with --ray-address)"""
    ray_address: str | None = None
    """join a running Ray cluster ("auto", or "ray://host:port") for the training"""
    track: bool = False
    """every run logs to one wandb project, grouped by task"""
    docs: str = "docs"
    """where each task's report and record are, and where the script's own page is written"""
    runs_root: str = "runs"
    """where each task's runs folder is"""


@dataclass
class Verdict:
    difference: float  # DynaMITE-RL's mean return minus the other's
    t: float
    df: float
    word: str  # confirmed, refuted, not separated, or why there is no test
    ahead: int = 0  # pairs of seeds (one of each method) in which DynaMITE-RL's return is the higher
    pairs: int = 0


def critical_t(df: float) -> float:
    """The two-sided 5% critical value at ``df`` degrees of freedom, rounded down to a whole df (a stricter test)."""
    whole = max(1, int(math.floor(df)))
    return T_CRITICAL[whole - 1] if whole <= len(T_CRITICAL) else 1.960


def welch(mine: list[float], theirs: list[float]) -> Verdict:
    """Welch's t-test of "mean(mine) > mean(theirs)" at the 5% level, two-sided."""
    a, b = np.asarray(mine, float), np.asarray(theirs, float)
    difference = float(a.mean() - b.mean()) if len(a) and len(b) else float("nan")
    pairs = {"ahead": int((a[:, None] > b[None, :]).sum()), "pairs": len(a) * len(b)}
    if len(a) < 2 or len(b) < 2:
        word = "no finished run" if not len(a) or not len(b) else "fewer than 2 seeds"
        return Verdict(difference, float("nan"), float("nan"), word, **pairs)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        word = "not separated" if difference == 0 else ("confirmed" if difference > 0 else "refuted")
        return Verdict(difference, math.copysign(math.inf, difference) if difference else 0.0, float("nan"), word,
                       **pairs)
    t = difference / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    word = "not separated" if abs(t) < critical_t(df) else ("confirmed" if t > 0 else "refuted")
    return Verdict(difference, float(t), float(df), word, **pairs)


def finals(task: Task, args: Args) -> dict[str, list[float]]:
    """Each method's final greedy return per finished seed on ``task`` (runs restored from the task's record first)."""
    settings = compare.Args(env_id=task.env_id, methods=list(task.methods), seeds=args.seeds,
                            runs_dir=os.path.join(args.runs_root, task.runs), output=os.path.join(args.docs, task.report))
    compare.restore(f"{settings.output}_runs.json", settings.runs_dir, compare.make_runs(settings))
    return {method: [run["evaluations"][-1]["return"] for run in runs]
            for method, runs in compare.load(settings).items()}


def between(value: float, returns: dict[str, list[float]]) -> float:
    """Where ``value`` sits between the task's bounds: 0 at no inference, 1 at the oracle (nan without both)."""
    top, bottom = (np.mean(returns.get(b) or [np.nan]) for b in BOUNDS)
    return float((value - bottom) / (top - bottom)) if np.isfinite([top, bottom]).all() and top != bottom else np.nan


def cell(values: list[float], returns: dict[str, list[float]], seeds: int) -> str:
    """A method's final returns as "mean ± std (between the bounds)", with their number where seeds are missing."""
    if not values:
        return "–"
    fraction = between(float(np.mean(values)), returns)
    return (f"{np.mean(values):.1f} ± {np.std(values):.1f}" + (f" ({fraction:.0%})" if np.isfinite(fraction) else "")
            + ("" if len(values) == seeds else f" [{len(values)} of {seeds} seeds]"))


def order(means: dict[str, float]) -> str:
    return " > ".join(compare.METHODS[m][0] for m in sorted(means, key=means.get, reverse=True))


def summarize(results: dict[str, dict[str, list[float]]], seeds: int) -> list[str]:
    """The tables of table1.md from each task's final returns per method."""
    label = {m: compare.METHODS[m][0] for m in ALL}
    lines = ["## Final return, and where it sits between the bounds", "",
             "| environment | " + " | ".join(label[m] for m in ALL) + " |", "| --- |" + " ---: |" * len(ALL)]
    for task, returns in results.items():
        lines.append(f"| {task} | " + " | ".join(cell(returns.get(m, []), returns, seeds) if m in TASKS[task].methods
                                                 else "not run" for m in ALL) + " |")
    lines += ["", f"Greedy return of each run's final evaluation, mean ± std over {seeds} seeds (fewer where said); in brackets "
              "where the mean sits between the task's bounds: 0% at the no-inference bound (PPO on s, t/H), 100% at "
              "the oracle (PPO told the latent).", "",
              "## The paper's Table 1", "", "| environment | " + " | ".join(label[m] for m in PAPER["Reacher"]) + " |",
              "| --- |" + " ---: |" * 4]
    for task in results:
        lines.append(f"| {task} | " + " | ".join(f"{mean} ± {std}" for mean, std in PAPER[task].values()) + " |")
    lines += ["", "On the paper's own simulators and reward scales (Brax, assistive-gym): compare orders, not numbers.",
              "", "## Order of the methods", "", "| environment | here (best first) | in the paper |", "| --- | --- | --- |"]
    for task, returns in results.items():
        here = {m: float(np.mean(v)) for m, v in returns.items() if v and m not in BOUNDS}
        paper = {m: v[0] for m, v in PAPER[task].items() if m in TASKS[task].methods}
        lines.append(f"| {task} | {order(here) if here else 'no finished run'} | {order(paper)} |")
    lines += ["", "## The paper's claim: DynaMITE-RL returns more than each baseline", "",
              "| environment | " + " | ".join(f"over {label[m]}" for m in BASELINES) + " | DynaMITE-RL best |",
              "| --- |" + " --- |" * (len(BASELINES) + 1)]
    tally = {"confirmed": 0, "refuted": 0, "not separated": 0}
    for task, returns in results.items():
        verdicts = {m: welch(returns.get("dynamite", []), returns.get(m, [])) for m in BASELINES
                    if m in TASKS[task].methods}
        cells = []
        for m in BASELINES:
            if m not in verdicts:
                cells.append("not run")
                continue
            v = verdicts[m]
            tally[v.word] = tally.get(v.word, 0) + 1
            test = f"t {v.t:.1f}, df {v.df:.1f}; " if np.isfinite(v.df) else ""
            cells.append(v.word if not np.isfinite(v.difference) else
                         f"{v.word}: {v.difference:+.1f} ({test}ahead in {v.ahead}/{v.pairs} pairs)")
        words = {v.word for v in verdicts.values()}
        best = ("confirmed" if words == {"confirmed"} else "refuted" if "refuted" in words
                else "untested" if words - {"confirmed", "not separated"} else "not separated")
        lines.append(f"| {task} | " + " | ".join(cells) + f" | {best} |")
    lines += ["", "Each cell: the verdict, DynaMITE-RL's mean return minus the baseline's, and Welch's t with its degrees "
              "of freedom, and in how many pairs of seeds (one of each) DynaMITE-RL returned more; confirmed or refuted where the two-sided test rejects equal means at the 5% level (with 3 "
              "seeds each that needs |t| above 2.8-4.3). DynaMITE-RL best: confirmed if it is confirmed over every "
              "baseline, refuted if it is refuted over one.", "",
              f"Over all tasks, of the comparisons with 2 seeds or more on each side: {tally['confirmed']} confirmed, "
              f"{tally['refuted']} refuted, {tally['not separated']} not separated."]
    return lines


def plot(results: dict[str, dict[str, list[float]]], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = (*BASELINES, "dynamite")
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(results), 4))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        label = compare.METHODS[method][0]
        for j, (task, returns) in enumerate(results.items()):
            fractions = [between(v, returns) for v in returns.get(method, [])]
            if not fractions or not np.isfinite(fractions).all():
                continue
            x = j + (i - (len(methods) - 1) / 2) * width
            ax.bar(x, np.mean(fractions), width, color=f"C{i}", label=label)
            label = None  # one legend entry per method
            ax.plot([x] * len(fractions), fractions, "k.", ms=3)
    ax.axhline(1, color="k", ls="--", lw=1, label="oracle (PPO told the latent)")
    ax.axhline(0, color="gray", ls=":", lw=1, label="no inference (PPO on s, t/H)")
    ax.set_xticks(range(len(results)), list(results))
    ax.set(ylabel="between the bounds (mean, dots: seeds)", title="Where each method sits between its task's bounds")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(dict(zip(labels, handles)).values(), dict(zip(labels, handles)).keys(), fontsize=8,
              loc="center left", bbox_to_anchor=(1, 0.5))
    return compare.save(fig, path)


def train(task: Task, args: Args) -> int:
    """Run ``task``'s comparison (it trains only what its record and runs folder lack); its exit code."""
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "compare.py"), "--env-id", task.env_id,
               "--methods", *task.methods, "--seeds", *map(str, args.seeds), "--workers", str(args.workers),
               "--runs-dir", os.path.join(args.runs_root, task.runs), "--output", os.path.join(args.docs, task.report)]
    command += (["--ray-address", args.ray_address] if args.ray_address else []) + (["--track"] if args.track else [])
    print("$ " + shlex.join(command[1:]), flush=True)
    return subprocess.run(command).returncode


def main(args: Args) -> None:
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        raise SystemExit(f"error: unknown tasks {unknown}; known: {', '.join(TASKS)}")
    failed = [] if args.report_only else [t for t in args.tasks if train(TASKS[t], args) != 0]
    results = {task: finals(TASKS[task], args) for task in TASKS}  # every row, so one task's runs do not drop the rest
    table = summarize(results, len(args.seeds))
    figure = plot(results, os.path.join(args.docs, "table1.png"))
    commands = [f"- {task}: `python benchmarks/compare.py --env-id {TASKS[task].env_id} --methods "
                f"{' '.join(TASKS[task].methods)} --seeds {' '.join(map(str, args.seeds))} --runs-dir "
                f"{os.path.join(args.runs_root, TASKS[task].runs)} --output {os.path.join(args.docs, TASKS[task].report)}`"
                f" ([report]({TASKS[task].report}.md))" for task in TASKS]
    command = " ".join(["python benchmarks/table1.py", shlex.join(sys.argv[1:])]).strip()
    compare.write_report(os.path.join(args.docs, "table1"), "The paper's Table 1, regenerated", command,
                         "each task is the comparison below, with its own report of learning curves, returns per "
                         "session and five consecutive episodes, and its record of runs; every run at the scripts' "
                         "defaults, 6 M env steps", [*commands, "", *table], [figure], {})
    if failed:
        raise SystemExit(f"error: the comparisons of {', '.join(failed)} failed (see their output above)")


if __name__ == "__main__":
    main(tyro.cli(Args))
