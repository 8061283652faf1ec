"""benchmarks/sessions_sweep.py: the sessions of each K, its runs, and its table and figure from finished runs."""

import json
import os

import numpy as np
import pytest

from benchmarks import sessions_sweep as sweep


def test_each_k_cuts_the_episode_into_k_sessions():
    import gymnasium as gym

    for k in (1, 4, 60):
        env = gym.make("dynamite/Gridworld-v0", **sweep.session_settings("dynamite/Gridworld-v0", k))
        env.reset(seed=0)
        ends = [env.step(0)[4]["session_done"] for _ in range(60)]
        assert sum(ends) == k and ends[-1]  # K fixed sessions of H / K steps
    assert sweep.session_settings("dynamite/HalfCheetahVel-v0", 8) == {"schedule": "poisson", "num_sessions": 8}
    assert sweep.session_settings("dynamite/HalfCheetahVel-v0", 1) == {"schedule": "fixed", "session_length": 400}
    with pytest.raises(ValueError, match="must divide H = 60"):
        sweep.session_settings("dynamite/Gridworld-v0", 7)
    with pytest.raises(ValueError, match="between 1 and the horizon"):
        sweep.session_settings("dynamite/HalfCheetahVel-v0", 401)


def test_every_k_method_and_seed_is_one_run_with_its_sessions(tmp_path):
    args = sweep.Args(sessions=[2, 30], methods=["dynamite", "rl2"], seeds=[1, 2], runs_dir=str(tmp_path))
    runs = sweep.make_runs(args)
    assert len(runs) == 8 and len({run.run_dir for run in runs}) == 8
    run = next(r for r in runs if r.name == "K=30 rl2 seed 2")
    assert run.script == "rl2.py" and run.run_dir == os.path.join(str(tmp_path), "K30", "rl2", "seed2")
    settings = json.loads(run.flags[run.flags.index("--env-kwargs") + 1])
    assert settings == {"schedule": "fixed", "session_length": 2}
    assert run.flags[run.flags.index("--eval-episodes") + 1] == "25" and "--save-model" in run.flags


def test_the_report_reads_the_rollouts_of_the_finished_runs(tmp_path):
    rng = np.random.default_rng(0)
    for k in (1, 4):
        for seed in (1, 2):
            for method, finished in (("dynamite", True), ("varibad", seed == 1)):
                folder = tmp_path / "runs" / f"K{k}" / method / f"seed{seed}"
                folder.mkdir(parents=True)
                rollouts = rng.normal(40 - k, 3, 25).tolist()
                final = {"return": float(np.mean(rollouts)), "episode_returns": rollouts}
                if method == "dynamite":  # its termination head's finds: mean over seeds 0.75 recall, 1 step late
                    final["session_detection"] = {"precision": 1.0, "recall": 0.5 * seed, "delay": 2.0 * (seed - 1)}
                json.dump({"finished": finished, "evaluations": [final]}, open(folder / "eval.json", "w"))
    output = tmp_path / "docs" / "sweep"
    sweep.main(sweep.Args(sessions=[1, 4], methods=["dynamite", "varibad"], seeds=[1, 2], report_only=True,
                          runs_dir=str(tmp_path / "runs"), output=str(output)))
    table = (tmp_path / "docs" / "sweep.md").read_text()
    assert "| K | DynaMITE-RL | VariBAD | Bayes-optimal | no memory across sessions |" in table
    row = next(line for line in table.split("\n") if line.startswith("| 4 |"))
    assert "(2 seeds, median" in row.split("|")[2] and "(1 seed, median" in row.split("|")[3]  # unfinished: left out
    assert " ± " in row.split("|")[2] and " ± " not in row.split("|")[3]  # no spread over one seed
    assert "47.37" in row and "46.28" in row  # the exact references of K = 4
    assert "head: precision 1.00, recall 0.75, 1.0 steps late" in row.split("|")[2] and "head" not in row.split("|")[3]
    assert (tmp_path / "docs" / "sweep.png").stat().st_size > 10_000
    # the record beside the report: a fresh --runs-dir restores the finished runs, and the same table comes back
    sweep.main(sweep.Args(sessions=[1, 4], methods=["dynamite", "varibad"], seeds=[1, 2], report_only=True,
                          runs_dir=str(tmp_path / "fresh"), output=str(output)))
    assert (tmp_path / "docs" / "sweep.md").read_text().split("\n")[3:] == table.split("\n")[3:]
    assert not (tmp_path / "fresh" / "K1" / "varibad" / "seed2").exists()  # an unfinished run is not recorded


def test_a_run_trained_with_other_settings_than_its_command_sets_is_left_out(tmp_path, capsys):
    args = sweep.Args(sessions=[4], methods=["dynamite"], seeds=[1, 2], runs_dir=str(tmp_path))
    for seed, steps in ((1, 6000), (2, None)):  # seed 1 was trained for 6000 steps, the command trains the default
        folder = tmp_path / "K4" / "dynamite" / f"seed{seed}"
        folder.mkdir(parents=True)
        recorded = {"seed": seed, "env_kwargs": json.dumps(sweep.session_settings(sweep.GRIDWORLD, 4))}
        if steps:
            recorded["total_timesteps"] = steps
        json.dump({"finished": True, "args": recorded, "evaluations": [{"return": 40.0 + seed}]},
                  open(folder / "eval.json", "w"))
    results, finished = sweep.load(args)
    assert [final["return"] for final in results[4, "dynamite"]] == [42.0] and list(finished) == ["K4/dynamite/seed2"]
    assert "K=4 dynamite seed 1" in capsys.readouterr().out


def test_the_learned_bounds_are_lines_and_each_method_is_read_between_them(tmp_path):
    env_id, finals = "dynamite/HalfCheetahVel-v0", {"dynamite": -300.0, "oracle": -100.0, "no-inference": -500.0}
    for method, value in finals.items():
        for seed in (1, 2):  # seeds ±10 around the value: the means are exact
            folder = tmp_path / "runs" / "K8" / method / f"seed{seed}"
            folder.mkdir(parents=True)
            final = {"return": value + (10.0 if seed == 1 else -10.0), "episode_returns": [value] * 25}
            json.dump({"finished": True, "evaluations": [final]}, open(folder / "eval.json", "w"))
    args = sweep.Args(env_id=env_id, sessions=[8], methods=["dynamite", "oracle", "no-inference"], seeds=[1, 2],
                      report_only=True, runs_dir=str(tmp_path / "runs"), output=str(tmp_path / "sweep"))
    results, _ = sweep.load(args)
    assert sweep.learned_bounds(results, 8) == {"oracle": -100.0, "no-inference": -500.0}
    sweep.main(args)
    row = next(line for line in (tmp_path / "sweep.md").read_text().split("\n") if line.startswith("| 8 |"))
    assert "50% between the bounds" in row.split("|")[2]  # (−300 + 500) / (−100 + 500)
    assert "between" not in row.split("|")[3] and "between" not in row.split("|")[4]  # the bounds themselves
    assert "Bayes-optimal" not in row and (tmp_path / "sweep.png").stat().st_size > 10_000
    # one bound alone places nothing
    args.methods = ["dynamite", "oracle"]
    results, _ = sweep.load(args)
    assert "between" not in sweep.summarize(args, results, {})[2]
