"""The structured-latent table of benchmarks/structured_latent.py: the comparisons it runs, and the table and verdicts
it writes from the runs recorded beside each task's report."""

import os
import shlex
import subprocess

import pytest

from benchmarks import compare, structured_latent


def record(docs, task: str, returns: dict[str, list[float]], sessions: dict[str, list[list[float]]] = {}) -> None:
    """A task's record of runs as compare.py writes it, with one final return per seed of each method (and, where
    given, its return per session)."""
    runs = {f"{method}/seed{seed}": {"args": {"seed": seed}, "finished": True,
                                     "evaluations": [{"return": value, "global_step": 6000, "train_time": 60.0,
                                                      **({"return_per_session": sessions[method][seed - 1]}
                                                         if method in sessions else {})}]}
            for method, values in returns.items() for seed, value in enumerate(values, 1)}
    compare.record(os.path.join(docs, f"{structured_latent.TASKS[task].report}_runs.json"), runs)


def test_every_method_of_every_task_is_a_method_of_compare_and_the_flags_reach_the_runs():
    for task in structured_latent.TASKS.values():
        assert all(method in compare.METHODS for method in task.methods)
    args = structured_latent.Args(runs_root="runs")
    line = structured_latent.command(structured_latent.TASKS["PointRobot, 4 sessions"], args)
    runs = compare.make_runs(compare.tyro.cli(compare.Args, args=line[1:]))
    assert len(runs) == (3 + 2) * 3  # three latents and the two bounds, three seeds
    assert {run.name.split()[0] for run in runs} >= {"oracle", "no-inference"}
    flags = runs[0].flags
    assert flags[flags.index("--env-kwargs") + 1] == '{"horizon": 80}'
    assert flags[flags.index("--eval-env-kwargs") + 1] == '{"task_set": "test"}'
    assert "dynamite-dir-gau" in shlex.join(line) and "varibad" not in shlex.join(line)
    # the command the report shows reads back, in bash, as the words the script runs
    typed = subprocess.run(["bash", "-c", 'printf "%s\\n" ' + structured_latent.shown(line)], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    assert typed == line
    dir_gau = [run for run in runs if run.name.startswith("dynamite-dir-gau")][0].flags
    assert dir_gau[dir_gau.index("--latent") + 1] == "dirichlet-gaussian"


def test_the_table_reads_each_record_and_judges_the_structured_latent_against_gau5(tmp_path):
    docs = tmp_path / "docs"
    record(docs, "PointRobot", {"dynamite-gau5": [8.0, 9.0, 10.0], "dynamite-dir": [8.5, 9.5, 10.5],
                                "dynamite-dir-gau": [11.0, 12.0, 13.0], "varibad-gau5": [9.0, 10.0, 11.0],
                                "varibad-dir": [6.0, 7.0, 8.0], "oracle": [13.0, 14.0], "no-inference": [4.0]})
    record(docs, "Gridworld, 4 goals", {"dynamite-gau5": [20.0, 22.0], "oracle": [30.0]},
           {"dynamite-gau5": [[6.0, 5.0, 4.0], [8.0, 5.0, 6.0]], "oracle": [[9.0, 10.0, 11.0]]})
    args = structured_latent.Args(tasks=["PointRobot", "Gridworld, 4 goals"], report_only=True, docs=str(docs),
                                  runs_root=str(tmp_path / "runs"))
    structured_latent.main(args)
    text = (docs / "structured_latent.md").read_text()
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line
            for line in text.split("## Final return")[1].split("##")[0].splitlines() if line.startswith("| ")}
    # between the bounds: the oracle's mean 13.5, no inference's 4.0
    assert "| 9.00 ± 0.82 (53%) | 9.50 ± 0.82 (58%) | 12.00 ± 0.82 (84%) |" in rows[("PointRobot", "DynaMITE-RL")]
    assert rows[("PointRobot", "VariBAD")].endswith(
        "| 7.00 ± 0.82 (32%) | – | 13.50 ± 0.50 [2 of 3 seeds] / 4.00 ± 0.00 [1 of 3 seeds] |")
    assert rows[("Gridworld, 4 goals", "DynaMITE-RL")].startswith(  # no finished no-inference run: no fraction
        "| Gridworld, 4 goals | DynaMITE-RL | 21.00 ± 1.00 [2 of 3 seeds] | – | – | 30.00")
    assert ("Gridworld, 4 goals", "VariBAD") not in rows  # VariBAD runs on the static point robot only
    claims = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): [c.strip() for c in line.strip("|").split("|")]
              for line in text.split("## The paper's claim")[1].splitlines() if line.startswith("| ")}
    dynamite = claims[("PointRobot", "DynaMITE-RL")]
    assert dynamite[2].startswith("not separated: +0.50") and "ahead in 6/9 pairs" in dynamite[2]
    assert dynamite[3].startswith("confirmed: +3.00") and "ahead in 9/9 pairs" in dynamite[3]  # t 3.7 at df 4
    varibad = claims[("PointRobot", "VariBAD")]
    assert varibad[2].startswith("refuted: -3.00") and varibad[3] == "no finished run"
    assert "Gau(5) 10.2, Cat(2, 4) 4.6, Cat(2, 4) + Gau(2) 9.5, Dir(2, 4) 11.3, Dir(2, 4) + Gau(2) 12.2" in text
    assert "pointrobot_trajectories" not in text.split("## The paper's claim")[1]  # no checkpoints on disk
    assert "dirichlet_belief.md" not in text
    sessions = [line for line in text.split("## Return per session")[1].splitlines() if line.startswith("| Grid")]
    assert sessions == ["| Gridworld, 4 goals | DynaMITE-RL, Gau(5) | 2 | 7.00 / 5.00 / 5.00 | -2.00 |",
                        "| Gridworld, 4 goals | oracle | 1 | 9.00 / 10.00 / 11.00 | +1.50 |"]
    assert "| PointRobot |" not in text.split("## Return per session")[1]  # one session: no row
    # pages drawn from checkpoints that a fresh checkout lacks stay linked as they were made
    (docs / "pointrobot_trajectories.md").write_text("# drawn before\n")
    (docs / "dirichlet_belief.md").write_text("# drawn before\n")
    structured_latent.main(args)
    text = (docs / "structured_latent.md").read_text()
    assert "[pointrobot_trajectories.md](pointrobot_trajectories.md) (drawn from checkpoints not on disk" in text
    assert "[dirichlet_belief.md](dirichlet_belief.md) (drawn from checkpoints not on disk" in text
    assert (docs / "dirichlet_belief.md").read_text() == "# drawn before\n"


def test_unknown_tasks_are_refused_with_the_known_ones():
    with pytest.raises(SystemExit, match="unknown tasks.*PointRobot"):
        structured_latent.main(structured_latent.Args(tasks=["Pointrobot"], report_only=True))
