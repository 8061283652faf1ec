"""Learning curves of one method as trained by different revisions of the code, overlaid.

    python benchmarks/overlay.py --groups cd16159=runs/cd16159/dynamite now=runs/benchmark_gridworld_table1/dynamite \
        --output docs/gridworld_dynamite_old_new

benchmarks/compare.py compares methods trained by the current code; this reads runs whatever revision made them,
e.g. the same method before and after a change that should not alter what it learns (a speed-up). Each group is
LABEL=FOLDER: the finished runs in FOLDER's seed*/ folders (their eval.json; runs still in progress are left out).
The figure has the greedy return against env steps (does it learn the same per step?) and against training time
(how much sooner?), mean ± std over seeds; the table the final returns, per seed, the training time and, for each
group after the first, Welch's test of its final returns against the first group's. Writes <output>.md,
<output>_curves.png and <output>_runs.json (the evaluations it read, by run folder, to commit with the report).
"""

from __future__ import annotations

import glob
import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import tyro

from benchmarks.compare import exact_reference, record, save, write_report
from benchmarks.table1 import welch


@dataclass
class Args:
    groups: list[str] = field(default_factory=list)
    """LABEL=FOLDER pairs: each folder holds a method's runs, one seed*/ folder per seed"""
    output: str = "docs/overlay"
    """the report, without .md"""


def parse_groups(groups: list[str]) -> dict[str, str]:
    """LABEL=FOLDER pairs -> {label: folder}; SystemExit with what to write where one is malformed."""
    parsed = {}
    for group in groups:
        label, sep, folder = group.partition("=")
        if not sep or not label or not folder:
            raise SystemExit(f"error: group {group!r} is not LABEL=FOLDER, e.g. now=runs/benchmark/dynamite")
        parsed[label] = folder
    if len(parsed) < 2:
        raise SystemExit("error: give at least two groups to overlay (--groups LABEL=FOLDER LABEL=FOLDER)")
    return parsed


def load_group(folder: str) -> list[dict]:
    """The eval.json of every finished run in ``folder``'s seed*/ folders, by seed."""
    runs = []
    for path in sorted(glob.glob(os.path.join(folder, "seed*", "eval.json"))):
        evaluation = json.load(open(path))
        if evaluation.get("finished") and evaluation.get("evaluations"):
            runs.append(evaluation)
    return sorted(runs, key=lambda run: run["args"]["seed"])


def curves(runs: list[dict], x: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, mean, std) of the greedy return over ``runs`` at their common evaluations; x is the first run's
    ``global_step`` or its ``train_time`` in minutes."""
    length = min(len(run["evaluations"]) for run in runs)
    returns = np.array([[e["return"] for e in run["evaluations"][:length]] for run in runs])
    xs = np.array([e[x] for e in runs[0]["evaluations"][:length]], dtype=float)
    return (xs / 60 if x == "train_time" else xs), returns.mean(0), returns.std(0)


def table(results: dict[str, list[dict]], reference: dict | None) -> list[str]:
    lines = ["| code | seeds | final return | per seed | train time per seed | Welch's test against the first |",
             "| --- | ---: | ---: | --- | ---: | --- |"]
    first = [run["evaluations"][-1]["return"] for run in next(iter(results.values()))]
    for i, (label, runs) in enumerate(results.items()):
        finals = [run["evaluations"][-1]["return"] for run in runs]
        minutes = np.mean([run["evaluations"][-1]["train_time"] for run in runs]) / 60
        verdict = welch(finals, first) if i else None
        test = f"difference {verdict.difference:+.2f}, t = {verdict.t:.2f}: {verdict.word}" if verdict else ""
        lines.append(f"| {label} | {len(runs)} | {np.mean(finals):.2f} ± {np.std(finals):.2f} | "
                     f"{', '.join(f'{r:.2f}' for r in finals)} | {minutes:.1f} min | {test} |")
    if reference is not None:
        lines += ["", f"Bayes-optimal {reference['bayes']['total']:.3f}; best without memory across sessions "
                      f"{reference['memoryless']['total']:.3f}."]
    return lines + ["", "Returns are greedy, over each run's final evaluation episodes; ± is the std over seeds; the "
                        "train time excludes evaluations, and compares between groups only where their runs shared "
                        "the same machine under the same load."]


def plot(results: dict[str, list[dict]], reference: dict | None, output: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, x, xlabel in zip(axes, ("global_step", "train_time"), ("environment steps", "training time (min)")):
        for i, (label, runs) in enumerate(results.items()):
            xs, mean, std = curves(runs, x)
            ax.plot(xs, mean, color=f"C{i}", label=f"{label} ({len(runs)} seeds)")
            ax.fill_between(xs, mean - std, mean + std, color=f"C{i}", alpha=0.2)
        if reference is not None:
            ax.axhline(reference["bayes"]["total"], color="k", ls="--", lw=1, label="Bayes-optimal")
            ax.axhline(reference["memoryless"]["total"], color="gray", ls=":", lw=1, label="no memory across sessions")
            ax.set_ylim(bottom=max(ax.get_ylim()[0], -5))
        ax.set(xlabel=xlabel, ylabel="return (greedy)", title=f"learning curves against {xlabel.split(' (')[0]}")
        ax.legend(fontsize=8)
    return save(fig, f"{output}_curves.png")


def main(args: Args) -> None:
    folders = parse_groups(args.groups)
    results = {label: load_group(folder) for label, folder in folders.items()}
    empty = [f"{label} ({folder})" for label, folder in folders.items() if not results[label]]
    if empty:
        raise SystemExit(f"error: no finished run in {', '.join(empty)}: each folder needs seed*/eval.json of "
                         "finished runs")
    env_ids = {run["args"]["env_id"] for runs in results.values() for run in runs}
    if len(env_ids) > 1:
        raise SystemExit(f"error: the groups trained on different environments ({', '.join(sorted(env_ids))})")
    reference = exact_reference(SimpleNamespace(env_id=env_ids.pop()), results)
    figure = plot(results, reference, args.output)
    recorded = record(f"{args.output}_runs.json", {os.path.join(folders[label], f"seed{run['args']['seed']}"): run
                                                   for label, runs in results.items() for run in runs})
    lines = table(results, reference) + ["", f"The runs' evaluations: [{os.path.basename(recorded)}]"
                                             f"({os.path.basename(recorded)})."]
    ran = ", ".join(f"{label}: {len(runs)} finished runs in {folders[label]}" for label, runs in results.items())
    write_report(args.output, "Learning curves overlaid", "python benchmarks/overlay.py " + shlex.join(sys.argv[1:]),
                 ran, lines, [figure], {})


if __name__ == "__main__":
    main(tyro.cli(Args))
