"""The structured latent, measured: Gau(5), Dir(2, 4) and Dir(2, 4) + Gau(2) beliefs on the tasks where the latent is
which of a few base tasks pays (the structured-latent paper's claim: a structured latent infers tasks better).

    python benchmarks/structured_latent.py --report-only      # the table from the runs recorded in docs/ (seconds)
    python benchmarks/structured_latent.py --tasks PointRobot # train what one task is missing (hours), then the table
    python benchmarks/structured_latent.py                    # every task: 54 runs, many hours on 2 cores

Each task is one comparison of benchmarks/compare.py (its own report, curves and record of runs in docs/); this script
runs those comparisons as subprocesses (each trains only what its record lacks), reads every finished run into one
table beside the paper's PEARL values, and judges "the structured latent returns more than Gau(5)" per task and
script with Welch's two-sided t-test at the 5% level over the seeds (benchmarks/table1.py). Every task has two
learned bounds (PPO told the latent, PPO on (s, t/H)); each result is read between them, and per session where a
task has several. Where the seed-1 checkpoints of the static point robot are on disk, it also draws their
trajectories (benchmarks/pointrobot_trajectories.py: the paper's Figures 2-3), and where those of Dirichlet latents
are, it reads what their beliefs learned (benchmarks/dirichlet_belief.py).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import compare, table1

TEST_TASKS = "--eval-env-kwargs '{\"task_set\": \"test\"}'"  # the point robot is evaluated on its 10 held-out goals


@dataclass(frozen=True)
class Task:
    env_id: str
    report: str  # the comparison's report (under --docs) and the folder of its runs (under --runs-root)
    runs: str
    scripts: tuple[str, ...]  # method prefixes: "dynamite", "varibad"
    extra: str  # flags of every run of the task (its environment's settings)

    @property
    def latent_methods(self) -> list[str]:
        return [f"{script}-{latent}" for script in self.scripts for latent in LATENTS]

    @property
    def methods(self) -> list[str]:
        return self.latent_methods + list(BOUNDS)


LATENTS = {"gau5": "Gau(5)", "dir": "Dir(2, 4)", "dir-gau": "Dir(2, 4) + Gau(2)"}  # compare.py's method suffixes
SCRIPTS = {"dynamite": "DynaMITE-RL", "varibad": "VariBAD"}
# every task's learned bounds (compare.py's methods): PPO told the latent, and PPO on (s, t/H); none of these tasks has
# an exact reference that fits in memory
BOUNDS = {"oracle": "oracle", "no-inference": "no inference"}
TASKS = {
    # the paper's static task: one session of 20 steps, trained on the 30 training goals, evaluated on the 10 test ones
    "PointRobot": Task("dynamite/PointRobot-v0", "pointrobot_latents", "benchmark_pointrobot", ("dynamite", "varibad"),
                       TEST_TASKS),
    # its DLCMDP: 4 sessions of 20 steps, the mixture weights swapped with probability 0.8 at each session end
    "PointRobot, 4 sessions": Task("dynamite/PointRobot-v0", "pointrobot_sessions_latents",
                                   "benchmark_pointrobot_sessions", ("dynamite",),
                                   "--env-kwargs '{\"horizon\": 80}' " + TEST_TASKS),
    "Gridworld, 4 goals": Task("dynamite/Gridworld-v0", "gridworld_4goals_latents", "benchmark_gridworld_4goals",
                               ("dynamite",), "--env-kwargs '{\"num_goals\": 4}'"),
}
# the structured-latent paper's Table 1: PEARL's return on its point robot with each latent (one value each, read once)
PAPER = {"Gau(5)": 10.2, "Cat(2, 4)": 4.6, "Cat(2, 4) + Gau(2)": 9.5, "Dir(2, 4)": 11.3, "Dir(2, 4) + Gau(2)": 12.2}


@dataclass
class Args(table1.Args):  # the same settings as table1.py's, over these tasks
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    """the tasks to train and report: any of PointRobot, "PointRobot, 4 sessions", "Gridworld, 4 goals\""""


def settings(task: Task, args: Args) -> compare.Args:
    """The compare.py settings of ``task``'s comparison."""
    return compare.Args(env_id=task.env_id, methods=task.methods, seeds=args.seeds, extra=task.extra,
                        runs_dir=os.path.join(args.runs_root, task.runs), output=os.path.join(args.docs, task.report))


def command(task: Task, args: Args) -> list[str]:
    """compare.py's command line for ``task`` (without the interpreter)."""
    s = settings(task, args)
    return ["benchmarks/compare.py", "--env-id", s.env_id, "--methods", *s.methods, "--seeds", *map(str, s.seeds),
            f"--extra={s.extra}", "--runs-dir", s.runs_dir, "--output", s.output]


def shown(line: list[str]) -> str:
    """A command line as one would type it in bash: --extra's value in double quotes, the rest quoted by shlex."""
    return " ".join('--extra="' + word[len("--extra="):].replace('"', '\\"') + '"' if word.startswith("--extra=")
                    else shlex.quote(word) for word in line)


def finals(task: Task, args: Args) -> dict[str, list[dict]]:
    """Each method's final evaluation per finished seed on ``task`` (runs restored from the task's record first)."""
    s = settings(task, args)
    compare.restore(f"{s.output}_runs.json", s.runs_dir, compare.make_runs(s))
    return {method: [run["evaluations"][-1] for run in runs] for method, runs in compare.load(s).items()}


def returns_of(finals_: dict[str, list[dict]]) -> dict[str, list[float]]:
    return {method: [final["return"] for final in evaluations] for method, evaluations in finals_.items()}


def between(value: float, returns: dict[str, list[float]]) -> float:
    """Where ``value`` sits between the task's two learned bounds: 0 at no inference's mean, 1 at the oracle's (NaN
    while either has no finished run)."""
    if not returns.get("oracle") or not returns.get("no-inference"):
        return float("nan")
    top, bottom = np.mean(returns["oracle"]), np.mean(returns["no-inference"])
    return float((value - bottom) / (top - bottom)) if top != bottom else float("nan")


def mean_cell(values: list[float], seeds: int) -> str:
    return "–" if not values else (f"{np.mean(values):.2f} ± {np.std(values):.2f}"
                                   + ("" if len(values) == seeds else f" [{len(values)} of {seeds} seeds]"))


def summarize(results: dict[str, dict[str, list[dict]]], seeds: int) -> list[str]:
    """The tables of structured_latent.md from each task's final evaluations per method."""
    lines = ["## Final return per latent", "", "| task | script | " + " | ".join(LATENTS.values())
             + " | bounds: oracle / no inference |", "| --- | --- |" + " ---: |" * (len(LATENTS) + 1)]
    for task, finals_ in results.items():
        returns = returns_of(finals_)
        bounds = " / ".join(mean_cell(returns.get(bound, []), seeds) for bound in BOUNDS)
        for script in TASKS[task].scripts:
            cells = []
            for latent in LATENTS:
                values = returns.get(f"{script}-{latent}", [])
                fraction = between(np.mean(values), returns) if values else float("nan")
                cells.append(mean_cell(values, seeds) + ("" if np.isnan(fraction) else f" ({fraction:.0%})"))
            lines.append(f"| {task} | {SCRIPTS[script]} | " + " | ".join(cells) + f" | {bounds} |")
    lines += ["", f"Greedy return of each run's final evaluation (the point robot's on its 10 test goals), mean ± std "
              f"over {seeds} seeds (fewer where said); in brackets, where the mean sits between the task's learned "
              "bounds: (return − no inference) / (oracle − no inference), 0% at the no-inference bound and 100% at "
              "the oracle's.", "", "The paper's PEARL on its point robot (one value per latent; off-policy, where these "
              "learners are on-policy PPO): " + ", ".join(f"{name} {value}" for name, value in PAPER.items()) + ".", "",
              "## The paper's claim: a structured latent returns more than Gau(5)", "",
              "| task | script | " + " | ".join(f"{LATENTS[latent]} over Gau(5)" for latent in ("dir", "dir-gau"))
              + " |", "| --- | --- | --- | --- |"]
    for task, finals_ in results.items():
        returns = returns_of(finals_)
        for script in TASKS[task].scripts:
            cells = []
            for latent in ("dir", "dir-gau"):
                v = table1.welch(returns.get(f"{script}-{latent}", []), returns.get(f"{script}-gau5", []))
                test = f"t {v.t:.1f}, df {v.df:.1f}; " if np.isfinite(v.df) else ""
                cells.append(v.word if not np.isfinite(v.difference) else
                             f"{v.word}: {v.difference:+.2f} ({test}ahead in {v.ahead}/{v.pairs} pairs)")
            lines.append(f"| {task} | {SCRIPTS[script]} | " + " | ".join(cells) + " |")
    lines += ["", "Each cell: the verdict of Welch's two-sided t-test at the 5% level (confirmed: the structured "
              "latent returns more; refuted: less; not separated), the difference of the means, t with its degrees "
              "of freedom, and in how many pairs of seeds (one of each) the structured latent returned more."]
    return lines + sessions_table(results)


def sessions_table(results: dict[str, dict[str, list[dict]]]) -> list[str]:
    """Per task with several sessions: each method's mean return in every session. Inference across sessions shows
    as later sessions that return more than the first, as the oracle's do."""
    rows = []
    for task, finals_ in results.items():
        labels = {f"{script}-{latent}": f"{SCRIPTS[script]}, {name}" for script in TASKS[task].scripts
                  for latent, name in LATENTS.items()} | BOUNDS
        for method, label in labels.items():
            evaluations = [e for e in finals_.get(method, []) if len(e.get("return_per_session", [])) > 1]
            if evaluations:
                sessions = compare.per_session(evaluations).mean(0)
                rows.append(f"| {task} | {label} | {len(evaluations)} | " + " / ".join(f"{v:.2f}" for v in sessions)
                            + f" | {sessions[1:].mean() - sessions[0]:+.2f} |")
    if not rows:
        return []
    return ["", "## Return per session", "", "| task | method | seeds | per session | later sessions over the first |",
            "| --- | --- | ---: | --- | ---: |", *rows, "", "Mean over seeds of each session's greedy return in the "
            "final evaluation, and the mean of the later sessions' minus the first's. A belief carried across a session "
            "end can only help in the later sessions; the oracle, told the latent, shows what a session is worth "
            "when the latent is known."]


def kept(output: str, what: str) -> list[str]:
    """The lines that point to a page drawn from checkpoints that are not on disk (a fresh checkout holds the runs'
    records, not their weights): the page stays as it was made; none where it was never made."""
    name = os.path.basename(output)
    if not os.path.exists(output + ".md"):
        return []
    return ["", f"{what[0].upper() + what[1:]}: [{name}.md]({name}.md) (drawn from checkpoints not on disk now: "
                "its command redraws it where they are).", "", f"![{name}.png]({name}.png)"]


def trajectories(args: Args) -> list[str]:
    """Draw the static point robot's seed-1 agents (the paper's Figures 2-3) where their checkpoints are on disk;
    the lines that point to the figure (to the one drawn before where a checkpoint is missing, as on a fresh
    checkout)."""
    task = TASKS["PointRobot"]
    paths = [os.path.join(args.runs_root, task.runs, method, f"seed{min(args.seeds)}", "checkpoint.pt")
             for method in task.latent_methods]
    output = os.path.join(args.docs, "pointrobot_trajectories")
    if "PointRobot" not in args.tasks:
        return []
    if not all(os.path.exists(p) for p in paths):
        return kept(output, f"trajectories of the seed-{min(args.seeds)} agents")
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "pointrobot_trajectories.py"), "--checkpoints",
                    *paths, "--output", output], check=True)
    return ["", f"Trajectories of the seed-{min(args.seeds)} agents on the test goals and with latents drawn from the "
                f"prior: [{os.path.basename(output)}.md]({os.path.basename(output)}.md).", "",
            f"![{os.path.basename(output)}.png]({os.path.basename(output)}.png)"]


def dirichlet_beliefs(args: Args) -> list[str]:
    """Read what the Dirichlet beliefs of the seed-1 runs learned (benchmarks/dirichlet_belief.py), of every task and
    Dirichlet latent; the lines that point to that page (to the one drawn before where a checkpoint is missing)."""
    paths = [os.path.join(args.runs_root, TASKS[task].runs, method, f"seed{min(args.seeds)}", "checkpoint.pt")
             for task in args.tasks for method in TASKS[task].latent_methods if "-dir" in method]
    output = os.path.join(args.docs, "dirichlet_belief")
    if not all(os.path.exists(path) for path in paths):
        return kept(output, f"what the Dirichlet beliefs of the seed-{min(args.seeds)} runs learned")
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "dirichlet_belief.py"), "--checkpoints", *paths,
                    "--output", output], check=True)
    return ["", f"What the Dirichlet beliefs of the seed-{min(args.seeds)} runs learned (does the belief's mean name "
                f"the latent that pays?): [{os.path.basename(output)}.md]({os.path.basename(output)}.md).", "",
            f"![{os.path.basename(output)}.png]({os.path.basename(output)}.png)"]


def main(args: Args) -> None:
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        raise SystemExit(f"error: unknown tasks {unknown}; known: {', '.join(TASKS)}")
    failed = []
    for task in ([] if args.report_only else args.tasks):
        line = command(TASKS[task], args) + ["--workers", str(args.workers)]
        line += (["--ray-address", args.ray_address] if args.ray_address else []) + (["--track"] if args.track else [])
        print("$ python " + shown(line), flush=True)
        if subprocess.run([sys.executable, os.path.join(ROOT, line[0]), *line[1:]]).returncode != 0:
            failed.append(task)
    results = {task: finals(TASKS[task], args) for task in args.tasks}
    lines = [f"- {task}: `python {shown(command(TASKS[task], args))}` ([report]({TASKS[task].report}.md))"
             for task in args.tasks]
    lines += ["", *summarize(results, len(args.seeds)), *trajectories(args), *dirichlet_beliefs(args)]
    compare.write_report(os.path.join(args.docs, "structured_latent"), "The structured latent, measured",
                         " ".join(["python benchmarks/structured_latent.py", shlex.join(sys.argv[1:])]),
                         "each task is the comparison below, with its own report and record of runs; every run at "
                         "the scripts' defaults", lines, [], {})
    if failed:
        raise SystemExit(f"error: the comparisons of {', '.join(failed)} failed (see their output above)")


if __name__ == "__main__":
    main(tyro.cli(Args))
