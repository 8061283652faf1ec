"""Train methods x seeds on the Gridworld (or another DLCMDP) as Ray tasks; write a table and plots.

    python benchmarks/compare.py          # all methods: DynaMITE-RL, its ablations and the baselines, 5 seeds
    python benchmarks/compare.py --methods dynamite no-consistency --seeds 1 2 --workers 2
    python benchmarks/compare.py --env-id dynamite/HalfCheetahVel-v0 --methods dynamite varibad --seeds 1 2 3 \
        --runs-dir runs/benchmark_halfcheetah_vel --output docs/halfcheetah_vel_comparison
    python benchmarks/compare.py --ray-address auto --track      # on a running Ray cluster, tracked in wandb

Every run has its own folder under --runs-dir; a finished run is not redone and an interrupted one is resumed
from its checkpoint, so the same command continues a benchmark. All methods get the same env steps. The runs
go through benchmarks/runner.py: a cluster of this machine by default, or any Ray cluster (README).
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import tyro

from benchmarks.runner import Run, run_all


# name -> (label, script, extra flags)
METHODS = {
    "dynamite": ("DynaMITE-RL", "dynamite_rl.py", []),
    "no-consistency": ("DynaMITE-RL, no consistency", "dynamite_rl.py", ["--no-consistency"]),
    "no-conditioning": ("DynaMITE-RL, no conditioning", "dynamite_rl.py", ["--no-conditioning"]),
    "no-session-recon": ("DynaMITE-RL, no session reconstruction", "dynamite_rl.py", ["--no-session-recon"]),
    "oracle-sessions": ("DynaMITE-RL, true session ends", "dynamite_rl.py", ["--oracle-sessions"]),
    "late-head": ("DynaMITE-RL, sessions split a step late", "dynamite_rl.py", ["--head-delay", "1"]),
    "late-head-oracle-sessions": ("DynaMITE-RL, sessions split a step late, true ends", "dynamite_rl.py",
                                  ["--head-delay", "1", "--oracle-sessions"]),
    "session-encoder": ("DynaMITE-RL, session encoder", "dynamite_rl.py", ["--session-encoder"]),
    "no-session-clock": ("DynaMITE-RL, no session clock", "dynamite_rl.py", ["--no-session-clock"]),
    "session-encoder-no-conditioning": ("DynaMITE-RL, session encoder, no conditioning", "dynamite_rl.py",
                                        ["--session-encoder", "--no-conditioning"]),
    "varibad": ("VariBAD", "varibad.py", []),
    "rl2": ("RL²", "rl2.py", []),
    "contrabar": ("ContraBAR", "contrabar.py", []),
    # the learned bounds of a task: PPO told the true latent, and PPO on (s, t/H) with no memory
    "oracle": ("oracle (PPO told the latent)", "ppo.py", ["--observe-latent"]),
    "no-inference": ("no inference (PPO on s, t/H)", "ppo.py", []),
    # an upper reference with memory: RL²'s recurrent policy, told the latent too
    "rl2-oracle": ("RL² told the latent", "rl2.py", ["--env-kwargs", '{"observe_latent": true}']),
    # the Gaussian policy's std left unbounded, as before --max-std (continuous tasks)
    "unbounded-std": ("DynaMITE-RL, unbounded policy std", "dynamite_rl.py", ["--max-std", "None"]),
    # the structured latent (README): the paper's Gau(5), Dir(2, 4) and Dir(2, 4) + Gau(2)
    "dynamite-gau5": ("DynaMITE-RL, Gau(5)", "dynamite_rl.py", ["--latent-dim", "5"]),
    "dynamite-dir": ("DynaMITE-RL, Dir(2, 4)", "dynamite_rl.py", ["--latent", "dirichlet"]),
    "dynamite-dir-gau": ("DynaMITE-RL, Dir(2, 4) + Gau(2)", "dynamite_rl.py",
                         ["--latent", "dirichlet-gaussian", "--latent-dim", "2"]),
    "varibad-gau5": ("VariBAD, Gau(5)", "varibad.py", ["--latent-dim", "5"]),
    "varibad-dir": ("VariBAD, Dir(2, 4)", "varibad.py", ["--latent", "dirichlet"]),
    "varibad-dir-gau": ("VariBAD, Dir(2, 4) + Gau(2)", "varibad.py", ["--latent", "dirichlet-gaussian", "--latent-dim", "2"]),
}
COMPARISON = ["dynamite", "no-consistency", "no-conditioning", "no-session-recon", "oracle-sessions", "varibad", "rl2",
              "contrabar"]  # the default: DynaMITE-RL, its ablations and the baselines
TARGET = 45.0  # on the Gridworld
GRIDWORLD = "dynamite/Gridworld-v0"


@dataclass
class Args:
    env_id: str = GRIDWORLD
    """the environment of every run (the Bayes-optimal reference and the time to 45.0 are the Gridworld's)"""
    methods: list[str] = field(default_factory=lambda: list(COMPARISON))
    """methods to run (default: DynaMITE-RL, its ablations and the baselines); see METHODS for all of them"""
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    """seeds of every method"""
    total_timesteps: int | None = None
    """env steps of every run (default: each script's own default)"""
    eval_every: int = 20
    """evaluate every this many iterations (points of the learning curves)"""
    workers: int = 2
    """runs in parallel on this machine's cluster, one CPU and one torch thread each (ignored with --ray-address)"""
    ray_address: str | None = None
    """join a running Ray cluster ("auto", or "ray://host:port"); default: start one on this machine"""
    gpus_per_run: float = 0.0
    """GPUs (a fraction is fine) that each run's task asks of the cluster; the scripts use one when they get it"""
    retries: int = 2
    """times a failed run is restarted from its checkpoint before it is reported as failed"""
    dry_run: bool = False
    """print the command of every run that is not finished, and stop"""
    track: bool = False
    """every run logs to one wandb project, grouped by comparison (WANDB_MODE=offline works)"""
    wandb_project_name: str = "dynamite-rl"
    """the wandb project of every run"""
    wandb_entity: str | None = None
    """the entity (team) of the wandb project"""
    wandb_group: str | None = None
    """the wandb group of this comparison's runs (default: the name of --output)"""
    runs_dir: str = "runs/benchmark_gridworld"
    """where the runs are written"""
    output: str = "docs/gridworld_comparison"
    """prefix of the written table (.md) and plots (.png)"""
    extra: str = ""
    """extra flags passed to every run, e.g. --extra='--num-envs 32 --encoder-updates 4'"""
    report_only: bool = False
    """train nothing: write the table and plots from the runs already in --runs-dir"""
    reuse: bool = True
    """count the finished runs recorded beside the report (--output's _runs.json, committed with it) as done, so that
    a fresh checkout trains only the runs that are missing; --no-reuse trains them again"""


def make_runs(args: Args) -> list[Run]:
    """Every (method, seed) of the comparison as a run of the runner, in the order they start."""
    runs = []
    for seed in args.seeds:
        for method in args.methods:
            _, script, flags = METHODS[method]
            steps = args.total_timesteps or importlib.import_module(script[: -len(".py")]).Args().total_timesteps
            fresh = ["--seed", str(seed), "--exp-name", method, "--env-id", args.env_id, *flags,
                     *shlex.split(args.extra), "--save-model"]
            resumable = ["--eval-every", str(args.eval_every), "--log-every", "1000000"]
            if args.total_timesteps:
                resumable += ["--total-timesteps", str(args.total_timesteps)]
            env = {}
            if args.track:
                group = args.wandb_group or os.path.basename(args.output)
                resumable += ["--track", "--wandb-project-name", args.wandb_project_name, "--wandb-group", group,
                              *(["--wandb-entity", args.wandb_entity] if args.wandb_entity else [])]
                env["WANDB_TAGS"] = ",".join([method, f"seed{seed}", env_name(args.env_id)])
            runs.append(Run(f"{method} seed {seed}", script, fresh,
                            os.path.abspath(os.path.join(args.runs_dir, method, f"seed{seed}")), steps, resumable, env))
    return runs


def load(args: Args) -> dict[str, list[dict]]:
    """The evaluation files of the finished runs of each method (runs still in progress are left out, and so are runs
    trained with other settings than the method's command sets, e.g. before a default changed), their floats at the
    6 digits the report's record keeps, so that a run read from its folder and one restored from the record print
    the same."""
    results = {}
    for run, method in zip(make_runs(args), [m for _ in args.seeds for m in args.methods]):
        path = os.path.join(run.run_dir, "eval.json")
        if os.path.exists(path):
            evaluation = json.load(open(path))
            differ = differing_settings(run, evaluation.get("args", {}))
            if differ:
                print(f"{run.name} in {run.run_dir} left out: trained with {differ}", flush=True)
            elif evaluation.get("finished"):  # read at the record's precision: the same report from either
                results.setdefault(method, []).append({**evaluation, "evaluations": rounded(evaluation["evaluations"])})
    return {method: sorted(results.get(method, []), key=lambda r: r["args"]["seed"]) for method in args.methods}


# settings that do not change what a run learns
UNLEARNED = {"run_dir", "save_model", "resume", "eval_every", "log_every", "track", "wandb_project_name",
             "wandb_entity", "wandb_group", "cuda", "num_threads", "capture_video"}


def differing_settings(run: Run, recorded: dict) -> str:
    """The settings (as "name=recorded, the command sets value") in which ``recorded`` (a run's args) differs from what
    ``run``'s command sets; "" if none. Settings its script resolves at run time (None here) and settings the record
    lacks (flags added since, whose defaults keep the old behaviour) are not compared."""
    module = importlib.import_module(run.script[: -len(".py")])
    expected = vars(tyro.cli(module.Args, args=[*run.flags, *run.resume_flags], prog=run.script))
    differ = []
    for name, value in expected.items():
        if name in UNLEARNED or value is None or name not in recorded:
            continue
        mine, theirs = value, recorded[name]
        if name.endswith("env_kwargs"):
            mine, theirs = json.loads(mine), json.loads(theirs or "{}")
        if mine != theirs:
            differ.append(f"{name}={recorded[name]!r}, the command sets {value!r}")
    return "; ".join(differ)


RECORDED = ("return", "return_per_session", "consecutive_episode_returns", "session_detection", "episode_returns",
            "global_step", "train_time", "iteration")  # what the reports read of each evaluation


def restore(path: str, runs_dir: str, runs: list[Run]) -> int:
    """Put every finished run recorded in ``path`` (a report's _runs.json) of one of ``runs`` into its folder, where it
    has no evaluation file yet and was trained with the settings its command sets; returns how many."""
    if not os.path.exists(path):
        return 0
    recorded, restored = json.load(open(path))["runs"], 0
    for run in runs:
        folder = os.path.relpath(run.run_dir, os.path.abspath(runs_dir))
        target = os.path.join(run.run_dir, "eval.json")
        if not recorded.get(folder, {}).get("finished") or os.path.exists(target):
            continue
        differ = differing_settings(run, recorded[folder].get("args", {}))
        if differ:
            print(f"{run.name} recorded in {path} not restored: trained with {differ}", flush=True)
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as f:
            json.dump(recorded[folder], f)
        restored += 1
    return restored


def rounded(value):
    """``value`` with its floats to 6 significant digits, more than any report prints (a smaller record)."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, list):
        return [rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return value


def record(path: str, runs: dict[str, dict]) -> str:
    """``path`` (a report's _runs.json): what the report read of each of ``runs`` (by its folder under --runs-dir: its
    settings and its evaluations), merged into the runs recorded there before. Committed with the report, it lets the
    same command on a fresh checkout restore those runs and train only the others."""
    recorded = json.load(open(path))["runs"] if os.path.exists(path) else {}
    for folder, run in runs.items():
        recorded[folder] = {"args": run.get("args", {}), "finished": run["finished"],
                            "evaluations": [{k: rounded(e[k]) for k in RECORDED if k in e} for e in run["evaluations"]]}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump({"about": f"the runs of {os.path.basename(path)[: -len('_runs.json')]}.md, by folder under its "
                            "--runs-dir", "runs": dict(sorted(recorded.items()))}, f, separators=(",", ":"))
        f.write("\n")
    return path


def recorder(args: Args):
    """What to do when one of the comparison's runs finishes: add it to the record at once, so that a comparison
    killed before its report (a long one, on a machine that is taken back) leaves every finished run restorable."""
    def keep(run: Run) -> None:
        path = os.path.join(run.run_dir, "eval.json")
        evaluation = json.load(open(path)) if os.path.exists(path) else {}
        if evaluation.get("finished") and not differing_settings(run, evaluation.get("args", {})):
            record(f"{args.output}_runs.json", {os.path.relpath(run.run_dir, args.runs_dir): evaluation})
    return keep


def env_name(env_id: str) -> str:
    return env_id.split("/")[-1].rsplit("-v", 1)[0]


def task_settings(results: dict[str, list[dict]]) -> dict:
    """The environment settings (--env-kwargs) that every run of the report trained with; SystemExit if they differ."""
    settings = {json.dumps({k: v for k, v in json.loads(run["args"].get("env_kwargs") or "{}").items()
                            if k != "observe_latent"}, sort_keys=True) for runs in results.values() for run in runs}
    if len(settings) > 1:
        raise SystemExit(f"error: the runs of one report trained on different tasks (--env-kwargs {sorted(settings)}); "
                         "give each task its own --runs-dir")
    return json.loads(settings.pop()) if settings else {}


def exact_reference(args: Args, results: dict[str, list[dict]]) -> dict | None:
    """The exact Bayes-optimal and memoryless returns of the runs' task: the Gridworld with a fixed schedule (where the
    reference fits in memory); None elsewhere, where the learned bounds (oracle, no-inference) are the references."""
    settings = task_settings(results)
    if args.env_id != GRIDWORLD or settings.get("schedule", "fixed") != "fixed":
        return None
    from envs.gridworld_reference import reference_returns

    try:
        return reference_returns(**settings)
    except ValueError as error:
        print(f"no exact reference: {error}")
        return None


def summarize(args: Args, results: dict[str, list[dict]]) -> list[str]:
    reference, settings = exact_reference(args, results), task_settings(results)
    target = TARGET if reference is not None and not settings else None  # the default Gridworld's
    if reference is not None:
        bayes, memoryless = reference["bayes"]["total"], reference["memoryless"]["total"]
        lines = ["| method | seeds | final return | of Bayes-optimal | per session | train time per seed | env steps/s "
                 + (f"| time to {target} |" if target else "|"),
                 "| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if target else "")]
    else:
        lines = ["| method | seeds | final return | per session | train time per seed | env steps/s |",
                 "| --- | ---: | ---: | ---: | ---: | ---: |"]
    bounds = {name: np.mean([r["evaluations"][-1]["return"] for r in results.get(name, [])] or [np.nan])
              for name in ("oracle", "no-inference")}
    between = bool(np.isfinite(list(bounds.values())).all() and bounds["oracle"] != bounds["no-inference"])
    if between:  # where each method sits between the task's two learned bounds
        lines[0] += " between the bounds |"
        lines[1] += " ---: |"
    per_seed = ["| method | " + " | ".join(f"seed {s}" for s in args.seeds) + " |",
                "| --- |" + " ---: |" * len(args.seeds)]
    for method, runs in results.items():
        finals = [r["evaluations"][-1] for r in runs]
        if not finals:
            continue
        returns = np.array([f["return"] for f in finals])
        times = np.array([f["train_time"] for f in finals])
        sps = np.array([f["global_step"] / f["train_time"] for f in finals])
        means = per_session(finals).mean(0)
        sessions = " / ".join(f"{v:.2f}" for v in means[:SHOWN]) + (" / …" if len(means) > SHOWN else "")
        row = f"| {METHODS[method][0]} | {len(finals)} | {returns.mean():.2f} ± {returns.std():.2f} | "
        by_seed = {r["args"]["seed"]: f["return"] for r, f in zip(runs, finals)}
        per_seed.append(f"| {METHODS[method][0]} | " + " | ".join(f"{by_seed[s]:.2f}" if s in by_seed else "–"
                                                                  for s in args.seeds) + " |")
        if reference is not None:
            row += f"{returns.mean() / bayes:.1%} | {sessions} | {times.mean() / 60:.1f} min | {sps.mean():,.0f} |"
            if target:
                reached = [next((e["train_time"] for e in r["evaluations"] if e["return"] >= target), None) for r in runs]
                hit = [t for t in reached if t is not None]
                row += (f" {np.mean(hit) / 60:.1f} min ({len(hit)}/{len(reached)} seeds) |" if hit
                        else f" not reached (0/{len(reached)}) |")
        else:
            row += f"{sessions} | {times.mean() / 60:.1f} min | {sps.mean():,.0f} |"
        if between:
            row += f" {(returns.mean() - bounds['no-inference']) / (bounds['oracle'] - bounds['no-inference']):.0%} |"
        lines.append(row)
    note = (("between the bounds: (return − no inference) / (oracle − no inference), 0% at the no-inference bound and "
             "100% at the oracle's; " if between else "")
            + "returns are greedy, over each run's final evaluation episodes; ± is the std over seeds; per session: the "
            f"mean over seeds of each session's return"
            + ("" if settings.get("schedule", "fixed") == "fixed" else
               " (with a random schedule: the return earned in the i-th session, averaged over all episodes, 0 where "
               "an episode has fewer sessions)")
            + f"; train time and env steps/s with {args.workers} runs sharing the machine.")
    scripts = [METHODS[m][1] for m in results]
    names = {"dynamite_rl.py": "DynaMITE-RL" + (" (every variant)" if scripts.count("dynamite_rl.py") > 1 else ""),
             "varibad.py": "VariBAD", "rl2.py": "RL²", "contrabar.py": "ContraBAR"}
    told = [names[s] for s in ("dynamite_rl.py", "varibad.py") if s in scripts]
    untold = [names[s] for s in ("rl2.py", "contrabar.py") if s in scripts]
    if told and untold:  # a difference in what the methods are given, beside their results
        note += (f" {' and '.join(told)} {'train' if len(told) > 1 else 'trains'} with the simulator's true session "
                 f"ends (in the reconstruction masks, and as the termination head's target); {' and '.join(untold)} "
                 f"{'do' if len(untold) > 1 else 'does'} not.")
    if reference is not None:
        bayes_sessions = " / ".join(f"{v:.2f}" for v in reference["bayes"]["per_session"])
        note = (f"Bayes-optimal {bayes:.3f} (per session {bayes_sessions}); best without memory across sessions "
                f"{memoryless:.3f} ({reference['memoryless']['per_session'][0]:.2f} in every session); {note}")
    lines += ["", note, "", "Final return of each seed:", "", *per_seed]
    heads = [(METHODS[m][0], detection_summary([r["evaluations"][-1] for r in runs])) for m, runs in results.items()]
    if any(summary for _, summary in heads):  # the methods that detect session ends themselves
        lines += ["", "Session ends found by the termination head in the final evaluation (at the exact step, and the "
                  "mean delay of those found late), mean over seeds:", "",
                  *[f"- {label}: {summary}" for label, summary in heads if summary]]
    return lines


SHOWN = 6  # sessions shown in a table's per-session column


def per_session(finals: list[dict]) -> np.ndarray:
    """(seeds, sessions): each final evaluation's mean return earned in each session, up to the number of sessions
    that every evaluation saw (a random schedule's episodes have different numbers of sessions)."""
    count = min(len(f["return_per_session"]) for f in finals)
    return np.array([f["return_per_session"][:count] for f in finals])


def detection_summary(finals: list[dict]) -> str:
    """How a method's termination head found the true session ends in the final evaluations (mean over seeds):
    precision and recall at the exact step, and the delay of the ends found late ("never fired" where there is no
    precision to give); "" for a method without one."""
    found = [f["session_detection"] for f in finals if "session_detection" in f]
    if not found:
        return ""
    values = {k: [d[k] for d in found if np.isfinite(d.get(k, np.nan))] for k in ("precision", "recall", "delay")}
    mean = {k: float(np.mean(v)) if v else float("nan") for k, v in values.items()}
    if not values["recall"]:  # no true session end in any evaluation episode (one session per episode)
        return "no session ends" + (f", precision {mean['precision']:.2f}" if values["precision"] else "")
    if not values["precision"]:  # true ends to find, and the head never fired in any evaluation
        return f"never fired, recall {mean['recall']:.2f}"
    late = f", {mean['delay']:.1f} steps late" if np.isfinite(mean["delay"]) else ""
    return f"precision {mean['precision']:.2f}, recall {mean['recall']:.2f}{late}"


def plot(args: Args, results: dict[str, list[dict]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = env_name(args.env_id)
    reference = exact_reference(args, results)
    figures = []
    colors = {method: f"C{i if i < 7 else i + 1}" for i, method in enumerate(results)}  # C7 is gray
    # the baselines and the ablations in separate panels (the paper's Figures 5 and 7), DynaMITE-RL in both
    ablations = [m for m in results if METHODS[m][1] == "dynamite_rl.py"]
    others = [m for m in results if m not in ablations or m == "dynamite"]
    panels = [(others, "methods"), (ablations, "ablations")] if len(ablations) > 1 and len(others) > 1 else [
        (list(results), "")]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    phase_starts = {run["args"].get("encoder_train_steps") for runs in results.values() for run in runs
                    if 0 < (run["args"].get("encoder_train_steps") or 0) < run["args"]["total_timesteps"]}
    for ax, (methods, title) in zip(axes[0], panels):
        for method in methods:
            runs = results[method]
            if not runs:
                continue
            length = min(len(r["evaluations"]) for r in runs)
            steps = np.array([e["global_step"] for e in runs[0]["evaluations"][:length]])
            curves = np.array([[e["return"] for e in r["evaluations"][:length]] for r in runs])
            mean, std = curves.mean(0), curves.std(0)
            ax.plot(steps, mean, color=colors[method], label=METHODS[method][0])
            ax.fill_between(steps, mean - std, mean + std, color=colors[method], alpha=0.2)
        for i, step in enumerate(sorted(phase_starts)):
            ax.axvline(step, color="gray", ls="-.", lw=0.8, label="policy phase starts" if i == 0 else None)
        if reference is not None:
            ax.axhline(reference["bayes"]["total"], color="k", ls="--", lw=1,
                       label=f"Bayes-optimal {reference['bayes']['total']:.2f}")
            ax.axhline(reference["memoryless"]["total"], color="gray", ls=":", lw=1,
                       label=f"no memory across sessions {reference['memoryless']['total']:.2f}")
            ax.set_ylim(bottom=max(ax.get_ylim()[0], -5))
        ax.set(xlabel="environment steps", ylabel="return (greedy)",
               title=f"{name}: {title + ', ' if title else ''}learning curves (mean ± std over seeds)")
        ax.legend(fontsize=8)
    figures.append(save(fig, f"{args.output}_curves.png"))

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    offset, x = 0.3 / max(1, len(results)), np.arange(1)
    for i, (method, runs) in enumerate(results.items()):
        finals = [r["evaluations"][-1] for r in runs]
        if not finals:
            continue
        sessions = per_session(finals)
        x = np.arange(sessions.shape[1])
        left.errorbar(x + (i - (len(results) - 1) / 2) * offset, sessions.mean(0), yerr=sessions.std(0),
                      marker="o", capsize=3, color=colors[method], label=METHODS[method][0])
        consecutive = np.array([f["consecutive_episode_returns"] for f in finals])
        right.errorbar(np.arange(1, consecutive.shape[1] + 1), consecutive.mean(0), yerr=consecutive.std(0),
                       marker="o", capsize=3, color=colors[method], label=METHODS[method][0])
    if reference is not None:
        left.plot(x, reference["bayes"]["per_session"], "k--", lw=1, label="Bayes-optimal")
        left.plot(x, reference["memoryless"]["per_session"], ":", color="gray", lw=1, label="no memory across sessions")
        right.axhline(reference["bayes"]["total"], color="k", ls="--", lw=1, label="Bayes-optimal (first episode)")
    left.set(xlabel="session", ylabel="return", title="Return per session (mean ± std over seeds)", xticks=x)
    right.set(xlabel="consecutive episode in the same task", ylabel="return", title="Test-time adaptation",
              xticks=range(1, 6))
    legend = {}  # one legend for both panels, beside them, so that it hides no point
    for ax in (left, right):
        legend.update({label: handle for handle, label in zip(*ax.get_legend_handles_labels())})
    fig.legend(legend.values(), legend.keys(), fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    figures.append(save(fig, f"{args.output}_sessions.png"))
    return figures


def save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def main(args: Args) -> None:
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"error: unknown methods {unknown}; known: {', '.join(METHODS)}")
    restored = restore(f"{args.output}_runs.json", args.runs_dir, make_runs(args)) if args.reuse else 0
    if restored:
        print(f"{restored} finished run(s) restored from {args.output}_runs.json into {args.runs_dir}", flush=True)
    runs = [] if args.report_only else make_runs(args)
    if args.dry_run:
        for run in runs:
            print(f"{run.name}: " + ("finished" if run.finished() else run.command()))
        return
    start = time.time()
    for run in runs:
        if run.finished():
            print(f"{run.name}: done already", flush=True)
    done_before = sum(run.finished() for run in runs)
    failures = run_all(runs, args.ray_address, args.workers, args.gpus_per_run, args.retries,
                       on_finished=recorder(args)) if runs else {}
    results = load(args)
    if not any(results.values()):
        raise SystemExit(f"error: no finished run of {', '.join(args.methods)} with seeds {args.seeds} in "
                         f"{args.runs_dir}; run the command without --report-only to train them")
    table = summarize(args, results)
    missing = [f"{method} seed {seed}" for method in args.methods for seed in args.seeds
               if not any(r["args"]["seed"] == seed for r in results[method])]
    if missing:
        table += ["", "Missing (not finished" + (", failed: " + ", ".join(failures) if failures else "") + "): "
                  + ", ".join(missing) + "."]
    figures = plot(args, results)
    recorded = record(f"{args.output}_runs.json", {f"{m}/seed{r['args']['seed']}": r for m, rs in results.items()
                                                   for r in rs})
    table += ["", f"The runs as this report read them: [{os.path.basename(recorded)}]({os.path.basename(recorded)}) "
                  "(the same command restores the finished ones and trains only what is missing)."]
    command = "python benchmarks/compare.py " + shlex.join(sys.argv[1:])
    parallel = f"on the Ray cluster at {args.ray_address}" if args.ray_address else f"{args.workers} in parallel"
    ran = (f"{len(runs)} runs, {f'{done_before} of them finished by an earlier invocation, ' if done_before else ''}"
           f"{f'{restored} of those restored from the record, ' if restored else ''}"
           f"{parallel}, {(time.time() - start) / 60:.0f} min wall time for this invocation"
           if runs else "table and plots of the runs in " + args.runs_dir)
    write_report(args.output, f"{env_name(args.env_id)} benchmark", command, ran, table, figures, failures)


def write_report(output: str, title: str, command: str, ran: str, table: list[str], figures: list[str],
                 failures: dict) -> None:
    """``output``.md: the title, the command that made it, the table and the figures; exit 1 if runs failed."""
    lines = [f"# {title}", "", f"Command: `{command.strip()}` ({ran}).", "", *table, ""]
    lines += [f"![{os.path.basename(f)}]({os.path.basename(f)})" for f in figures]
    with open(f"{output}.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(table))
    print(f"wrote {output}.md" + (f" and {', '.join(figures)}" if figures else ""))
    if failures:
        raise SystemExit(f"error: {len(failures)} run(s) failed: {', '.join(failures)} (see their stdout.log)")


if __name__ == "__main__":
    main(tyro.cli(Args))
