"""The benchmark commands run end to end on a tiny budget and write their outputs; every run a comparison starts is
a command its script accepts, and a tracked comparison logs every script to wandb (offline)."""

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import tyro

from benchmarks import belief_probe, compare, latent_probe, overlay, throughput
from conftest import ROOT, run_script

SHORT = json.dumps({"horizon": 50, "session_length": 25})  # two sessions of a continuous environment


def test_every_method_of_the_comparison_starts_with_a_command_line_its_script_accepts():
    """What each run of the comparison would be started with, parsed by the script's own command line."""
    settings = compare.Args(methods=list(compare.METHODS), seeds=[1], total_timesteps=480, track=True,
                            extra="--num-envs 8 --num-minibatches 2")
    runs = compare.make_runs(settings)
    assert [run.name for run in runs] == [f"{method} seed 1" for method in compare.METHODS]
    for run in runs:
        algo = importlib.import_module(run.script[: -len(".py")])
        args = tyro.cli(algo.Args, args=run.arguments())
        method = run.name.split()[0]
        assert (args.seed, args.exp_name, args.num_envs, args.total_timesteps, args.track) == (1, method, 8, 480, True)
        assert args.save_model and args.run_dir == run.run_dir


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # one local Ray cluster at a time
def test_gridworld_comparison_writes_table_and_plots_and_does_not_redo_finished_runs(tmp_path, capsys):
    """The command trains the methods (baselines and ablations: both panels of the plots); run again (here, in this
    process) it redoes nothing, --report-only writes the same table from the runs, and a folder without finished runs
    (and, with --no-reuse, without the report's record of them) is one line."""
    methods = ["dynamite", "no-consistency", "varibad", "rl2"]
    settings = dict(methods=methods, seeds=[1], total_timesteps=480, eval_every=1, runs_dir=str(tmp_path / "runs"),
                    output=str(tmp_path / "docs" / "bench"), extra="--num-envs 8 --num-minibatches 2 --eval-episodes 2")
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "compare.py"), "--methods", *methods, "--seeds", "1",
               "--total-timesteps", "480", "--eval-every", "1", "--runs-dir", settings["runs_dir"], "--output",
               settings["output"], f"--extra={settings['extra']}"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    table = (tmp_path / "docs" / "bench.md").read_text()
    for label in ("DynaMITE-RL", "DynaMITE-RL, no consistency", "VariBAD", "RL²"):
        assert f"| {label} | 1 |" in table, table
    assert (tmp_path / "docs" / "bench_curves.png").stat().st_size > 10_000
    assert (tmp_path / "docs" / "bench_sessions.png").stat().st_size > 10_000
    summary = next(line.split(" | ") for line in table.splitlines() if line.startswith("| DynaMITE-RL | 1 |"))
    assert len(summary[4].split(" / ")) == 4  # the return of each of the 4 sessions
    assert "| method | seed 1 |" in table  # the final return of each seed
    capsys.readouterr()
    compare.main(compare.Args(**settings))
    assert capsys.readouterr().out.count("done already") == 4
    (tmp_path / "docs" / "bench.md").unlink()
    compare.main(compare.Args(**settings, report_only=True))
    assert "done already" not in capsys.readouterr().out
    assert (tmp_path / "docs" / "bench.md").read_text().split("\n")[3:] == table.split("\n")[3:]
    with pytest.raises(SystemExit, match="^error: no finished run of .* run the command without --report-only"):
        compare.main(compare.Args(**{**settings, "runs_dir": str(tmp_path / "nothing")}, report_only=True, reuse=False))


def test_the_belief_probe_posterior_is_the_exact_bayesian_posterior():
    _, posteriors, latents = belief_probe.explorer_episodes(4000, 0.3, seed=3, env_kwargs={})
    p = posteriors[..., 0].numpy()
    reachable = {0.0, 0.5, 1.0}  # certainty, or no information; a session's end maps p to 0.2 p + 0.8 (1 - p)
    for _ in range(3):
        reachable |= {0.8 - 0.6 * q for q in reachable}
    reachable = np.array(sorted(reachable))
    assert np.isclose(p[..., None], reachable, atol=1e-6).any(-1).all()
    assert ((p == 1.0) <= (latents == 0)).all() and ((p == 0.0) <= (latents == 1)).all()  # certainty is right
    for value in (0.2, 0.5, 0.8):  # and the frequent uncertain values are calibrated
        chosen = np.isclose(p, value)
        assert chosen.sum() > 2000 and abs((latents[chosen] == 0).mean() - value) < 0.03


@pytest.mark.slow
def test_the_belief_probe_writes_results_and_a_checkpoint_dynamite_rl_resumes(tmp_path):
    belief_probe.main(belief_probe.Args(updates=4, probe_every=4, train_episodes=64, test_episodes=40, probe_steps=50,
                                        run_dir=str(tmp_path / "run"), output=str(tmp_path / "probe"),
                                        extra="--num-envs 8 --num-minibatches 2 --eval-episodes 16"))
    assert (tmp_path / "probe.md").read_text().count("\n| ") == 2  # header and update 4
    run_script("dynamite_rl.py", "--resume", str(tmp_path / "run" / "checkpoint.pt"), "--total-timesteps", "960",
               cwd=tmp_path)
    result = json.load(open(tmp_path / "run" / "eval.json"))
    assert result["finished"] and result["args"]["encoder_updates"] == 0


@pytest.mark.slow
def test_the_belief_probe_trains_and_probes_contrabars_history_summary(tmp_path):
    result = belief_probe.main(belief_probe.Args(script="contrabar.py", updates=4, probe_every=4, train_episodes=64,
                                                 test_episodes=40, probe_steps=50, output=str(tmp_path / "probe"),
                                                 extra="--num-envs 8 --num-minibatches 2 --eval-episodes 16"))
    assert [row["updates"] for row in result["rows"]] == [4] and "infonce" in result["rows"][0]
    assert all(np.isfinite(result["rows"][0][f"{name}/mlp_belief_obs"]) for name in ("explorer", "random"))
    assert not (tmp_path / "run").exists()  # the resumable checkpoint is dynamite_rl.py's alone


@pytest.mark.slow
@pytest.mark.parametrize("script", ["contrabar.py"])  # (dynamite_rl.py's representation: the probe's own training)
def test_the_belief_probe_probes_the_encoder_of_a_finished_run(script, finished_run, tmp_path):
    checkpoint = os.path.join(finished_run(script), "checkpoint.pt")
    result = belief_probe.main(belief_probe.Args(checkpoints=[checkpoint], test_episodes=40, probe_steps=50,
                                                 output=str(tmp_path / "probe")))
    (row,) = result["rows"]
    assert row["script"] == script and row["return"] == json.load(
        open(os.path.join(finished_run(script), "eval.json")))["evaluations"][-1]["return"].__round__(2)
    assert np.isfinite(row["random/mlp_belief_obs"]) and row["random/mlp_belief_obs"] <= 1.0  # an R^2
    assert "| checkpoint | script | return |" in (tmp_path / "probe.md").read_text()


@pytest.mark.slow
def test_throughput_writes_its_table(tmp_path):
    output = tmp_path / "throughput.md"
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "throughput.py"), "--env-id", "dynamite/Gridworld-v0",
               "--scripts", "dynamite_rl.py", "--num-envs", "4", "--iterations", "1", "--seconds", "0.2",
               "--output", str(output), "--extra=--eval-episodes 2 --encoder-updates 1 --encoder-batch-episodes 4 "
               "--num-minibatches 2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    table = output.read_text()
    assert "| raw: one environment |" in table and "| raw: 4 environments in lock-step (GridworldVectorEnv) |" in table
    assert "| training: dynamite_rl.py, 1 iterations (240 steps, evaluation excluded) |" in table
    assert "dynamite_rl.py trains at " in table and "% of the single environment's raw rate" in table


@pytest.mark.slow
def test_throughput_times_a_baseline_revision_beside_the_current_scripts(tmp_path):
    output = tmp_path / "throughput.md"
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "throughput.py"), "--env-id", "dynamite/Gridworld-v0",
               "--scripts", "rl2.py", "--num-envs", "4", "--iterations", "1", "--seconds", "0.1", "--baseline", "HEAD",
               "--output", str(output), "--extra=--eval-episodes 2 --num-minibatches 2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    table = output.read_text()
    assert "| training: rl2.py, 1 iterations (240 steps, evaluation excluded), at HEAD |" in table
    assert "evaluation excluded), now: **" in table and "x** (in CPU time " in table and " CPU s |" in table


def test_throughput_of_the_raw_simulator_alone_on_box_actions(tmp_path):
    """The table without training rows (no --scripts), in this process, on a MuJoCo DLCMDP."""
    output = tmp_path / "throughput.md"
    throughput.main(throughput.Args(env_id="dynamite/HalfCheetahVel-v0", scripts=[], num_envs=2, seconds=0.05,
                                    output=str(output)))
    rows = [line for line in output.read_text().splitlines() if line.startswith("| raw: ")]
    assert [row.split(" | ")[0] for row in rows] == ["| raw: one environment",
                                                     "| raw: 2 environments in lock-step (LockstepVectorEnv)"]
    assert all(float(row.split(" | ")[1].replace(",", "")) > 0 for row in rows)


REACHER_METHODS = ("dynamite", "varibad", "rl2", "contrabar")  # one of each script


@pytest.fixture(scope="module")
def tracked_reacher_comparison(tmp_path_factory):
    """The folder of a comparison of every script on the Reacher, tracked with wandb offline."""
    folder = tmp_path_factory.mktemp("comparison")
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "compare.py"), "--env-id", "dynamite/Reacher-v0",
               "--methods", *REACHER_METHODS, "--seeds", "1", "--total-timesteps", "200", "--eval-every", "1",
               "--runs-dir", str(folder / "runs"), "--output", str(folder / "reacher"), "--track", "--wandb-group",
               "group-under-test",
               f"--extra=--num-envs 4 --num-minibatches 2 --eval-episodes 2 --env-kwargs '{SHORT}'"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # one local Ray cluster at a time
def test_the_comparison_runs_on_a_mujoco_environment_without_gridworld_references(tracked_reacher_comparison):
    table = (tracked_reacher_comparison / "reacher.md").read_text()
    assert table.startswith("# Reacher benchmark")
    for label in ("DynaMITE-RL", "VariBAD", "RL²", "ContraBAR"):
        assert f"| {label} | 1 |" in table, table
    assert "Bayes" not in table and (tracked_reacher_comparison / "reacher_curves.png").stat().st_size > 10_000
    run = (tracked_reacher_comparison / "runs" / "varibad" / "seed1" / "eval.json").read_text()
    assert '"env_id": "dynamite/Reacher-v0"' in run


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # one local Ray cluster at a time
def test_tracked_runs_log_offline_to_one_wandb_run_each_with_the_comparison_s_group(tracked_reacher_comparison):
    """Every script's --track, as a comparison starts it: one offline wandb run with the group, the tags, and the final
    checkpoint as an artifact."""
    for method in REACHER_METHODS:
        offline = list((tracked_reacher_comparison / "runs" / method / "seed1" / "wandb").glob(
            "offline-run-*/run-*.wandb"))
        assert len(offline) == 1, offline
        record = offline[0].read_bytes()
        assert b"group-under-test" in record and method.encode() in record and b"seed1" in record  # group, tags
        assert b"checkpoint.pt" in record, method


@pytest.mark.slow
def test_reward_terms_table_of_saved_agents(tmp_path):
    flags = ["--env-id", "dynamite/ScratchItch-v0", "--num-envs", "2", "--num-minibatches", "1", "--total-timesteps",
             "100", "--eval-episodes", "1", "--save-model", "--env-kwargs", SHORT]
    runs = [run_script(script, *flags, cwd=tmp_path) for script in ("dynamite_rl.py", "varibad.py")]
    output = tmp_path / "terms.md"
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "reward_terms.py"),
               *[os.path.join(run, "checkpoint.pt") for run in runs], "--episodes", "2", "--output", str(output)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    table = output.read_text()
    assert "| term | dynamite_rl.py, " in table and "varibad.py, " in table
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    for key in ("reward_distance", "reward_scratch", "reward_velocity", "reward_force_away", "reward_high_force",
                "reward (total)", "distance to the itch (cm)", "steps scratching (%)"):
        assert key in rows, table
    value = {key: float(line.split(" | ")[1]) for key, line in rows.items() if key != "term" and "---" not in line}
    parts = sum(value[k] for k in ("reward_distance", "reward_scratch", "reward_velocity", "reward_force_away",
                                   "reward_high_force"))
    assert abs(parts - value["reward (total)"]) < 1e-3 * max(1.0, abs(parts))


def test_the_comparison_places_each_method_between_the_oracle_and_no_inference():
    def run(seed, value):
        return {"args": {"seed": seed}, "evaluations": [{"return": value, "train_time": 60.0, "global_step": 600,
                                                         "return_per_session": [value / 2, value / 2]}]}

    results = {"oracle": [run(1, -100.0), run(2, -100.0)], "no-inference": [run(1, -300.0), run(2, -300.0)],
               "dynamite": [run(1, -150.0), run(2, -250.0)]}
    args = compare.Args(env_id="dynamite/HalfCheetahVel-v0", methods=list(results), seeds=[1, 2])
    table = compare.summarize(args, results)
    assert table[0].endswith("| between the bounds |")
    row = next(line for line in table if line.startswith("| DynaMITE-RL |"))
    assert row.endswith("| 50% |")  # -200 is halfway from -300 to -100
    assert next(line for line in table if line.startswith("| oracle")).endswith("| 100% |")
    without = compare.summarize(compare.Args(env_id="dynamite/HalfCheetahVel-v0", methods=["dynamite"], seeds=[1, 2]),
                                {"dynamite": results["dynamite"]})
    assert "between the bounds" not in without[0]


@pytest.mark.slow
def test_session_detection_measures_the_head_on_each_schedule(tmp_path):
    from benchmarks import session_detection

    result = session_detection.main(session_detection.Args(updates=2, probe_every=2, train_episodes=16,
                                                           test_episodes=16, output=str(tmp_path / "detection")))
    assert [row["schedule"] for row in result["rows"]] == ["fixed", "bernoulli", "poisson"]
    assert all(row["updates"] == 2 and (np.isnan(row["precision"]) or 0 <= row["precision"] <= 1)
               and 0 <= row["recall"] <= 1 for row in result["rows"])
    assert (tmp_path / "detection.md").read_text().count("\n| ") == 4


def test_the_ranking_auc_of_hand_made_scores():
    from benchmarks.session_detection import ranking_auc

    assert ranking_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert ranking_auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert ranking_auc(np.array([1.0, 1.0]), np.array([1.0, 1.0, 1.0])) == 0.5  # ties count half
    # pairs (pos > neg): 2 > 1; 2 = 2 counts half; 2 < 3; 4 beats all three: (1 + 0.5 + 0 + 3) / 6
    assert ranking_auc(np.array([2.0, 4.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(4.5 / 6)
    assert np.isnan(ranking_auc(np.array([]), np.array([1.0])))


def test_the_probe_finds_what_the_features_hold_and_nothing_in_noise():
    from benchmarks.session_detection import probe_auc

    rng = np.random.default_rng(0)
    targets = rng.random((40, 50)) < 0.1  # (episodes, steps)
    noise = rng.normal(size=(40, 50, 3))
    held = np.concatenate([noise, targets[..., None] + 0.1 * rng.normal(size=(40, 50, 1))], -1)
    assert probe_auc(held, targets, seed=0, updates=300) > 0.99
    assert abs(probe_auc(noise, targets, seed=0, updates=300) - 0.5) < 0.1


@pytest.mark.slow
def test_session_detection_measures_the_head_of_a_trained_agent_on_its_own_episodes(finished_run, tmp_path):
    from benchmarks import session_detection

    path = os.path.join(finished_run("dynamite_rl.py"), "checkpoint.pt")
    result = session_detection.main(session_detection.Args(checkpoints=[path], test_episodes=8,
                                                           output=str(tmp_path / "heads")))
    row = result["rows"][0]
    assert row["env_id"] == "dynamite/Gridworld-v0" and row["ends"] == 8 * 3  # 4 sessions: 3 ends an episode
    assert 0 <= row["auc"] <= 1 and 0 <= row["recall"] <= row["recall within 5"] <= 1
    assert row["head delay"] == 0 and all(0 <= row[f"probe AUC, {d} late"] <= 1 for d in (0, 1))
    assert (tmp_path / "heads.md").read_text().count("\n| ") == 2  # the header and one row
    with pytest.raises(SystemExit, match="this needs dynamite_rl.py runs"):
        session_detection.main(session_detection.Args(checkpoints=[os.path.join(finished_run("varibad.py"),
                                                                                "checkpoint.pt")]))


def fake_run(seed: int, value: float, env_kwargs: str = "{}") -> dict:
    """An evaluation file as the scripts write it, with the keys a report reads (and one it does not)."""
    evaluation = {"return": value, "return_per_session": [value / 4] * 4, "consecutive_episode_returns": [value] * 5,
                  "global_step": 6000, "train_time": 60.0 * seed, "iteration": 10, "peak_memory_mib": 500.0}
    return {"args": {"seed": seed, "env_kwargs": env_kwargs, "total_timesteps": 6000, "encoder_train_steps": 3000},
            "finished": True, "evaluations": [{**evaluation, "return": value / 2}, evaluation]}


def write_runs(runs_dir, runs: dict) -> None:
    for (method, seed), run in runs.items():
        os.makedirs(runs_dir / method / f"seed{seed}")
        (runs_dir / method / f"seed{seed}" / "eval.json").write_text(json.dumps(run))


@pytest.mark.slow  # two reports with their plots: seconds
def test_a_report_records_its_runs_and_a_fresh_checkout_continues_from_the_record(tmp_path, capsys):
    """The _runs.json beside a report holds what it read; in an empty --runs-dir the same command restores those runs
    (the same table) and would train only the missing seed; --no-reuse restores nothing."""
    write_runs(tmp_path / "runs", {("rl2", 1): fake_run(1, 40.0), ("rl2", 2): fake_run(2, 44.0)})
    settings = dict(methods=["rl2"], seeds=[1, 2], total_timesteps=6000, runs_dir=str(tmp_path / "runs"),
                    output=str(tmp_path / "bench"))
    compare.main(compare.Args(**settings, report_only=True))
    table = (tmp_path / "bench.md").read_text()
    recorded = json.loads((tmp_path / "bench_runs.json").read_text())["runs"]
    assert sorted(recorded) == ["rl2/seed1", "rl2/seed2"]
    assert "peak_memory_mib" not in recorded["rl2/seed2"]["evaluations"][-1]  # what the report reads, no more
    assert "| RL² | 2 | 42.00 ± 2.00 |" in table and "bench_runs.json" in table
    fresh = {**settings, "runs_dir": str(tmp_path / "fresh"), "seeds": [1, 2, 3]}
    compare.main(compare.Args(**fresh, dry_run=True))
    out = capsys.readouterr().out
    assert "2 finished run(s) restored" in out and "rl2 seed 1: finished" in out and "rl2 seed 2: finished" in out
    assert "rl2 seed 3: python rl2.py" in out  # only the missing seed would be trained
    compare.main(compare.Args(**{**fresh, "seeds": [1, 2]}, report_only=True))
    assert (tmp_path / "bench.md").read_text().split("\n")[3:] == table.split("\n")[3:]
    compare.main(compare.Args(**{**fresh, "runs_dir": str(tmp_path / "none")}, reuse=False, dry_run=True))
    assert "restored" not in capsys.readouterr().out


def test_a_run_reads_the_same_from_its_folder_as_from_the_record(tmp_path):
    """A report reads a run's floats at the record's 6 digits, so a fresh checkout that restores the run from the
    record prints what the machine that trained it printed, even where rounding twice moves the last digit."""
    value = 927.03500001  # its own 2 decimals are 927.04; at 6 digits, 927.035 prints 927.03
    write_runs(tmp_path / "runs", {("rl2", 1): fake_run(1, value)})
    args = compare.Args(methods=["rl2"], seeds=[1], total_timesteps=6000, runs_dir=str(tmp_path / "runs"),
                        output=str(tmp_path / "bench"))
    read = compare.load(args)["rl2"][0]["evaluations"][-1]
    compare.record(f"{args.output}_runs.json", {"rl2/seed1": json.loads((tmp_path / "runs" / "rl2" / "seed1" /
                                                                         "eval.json").read_text())})
    restored = json.loads((tmp_path / "bench_runs.json").read_text())["runs"]["rl2/seed1"]["evaluations"][-1]
    assert f"{value:.2f}" == "927.04" and f"{read['return']:.2f}" == f"{restored['return']:.2f}" == "927.03"
    assert read["return_per_session"] == restored["return_per_session"]


def test_each_run_is_recorded_as_it_finishes_and_only_if_finished_with_its_methods_settings(tmp_path):
    """The recorder (which the runner calls as each run finishes: test_runner.py) adds a run to the report's record
    only once it has finished, and only if it trained with its method's settings."""
    unfinished = {**fake_run(2, 44.0), "finished": False}
    old = fake_run(1, 40.0)
    old["args"].update(session_encoder=not importlib.import_module("dynamite_rl").Args().session_encoder)
    write_runs(tmp_path / "runs", {("rl2", 1): fake_run(1, 40.0), ("rl2", 2): unfinished, ("dynamite", 1): old})
    args = compare.Args(methods=["rl2", "dynamite"], seeds=[1, 2], total_timesteps=6000,
                        runs_dir=str(tmp_path / "runs"), output=str(tmp_path / "bench"))
    runs = {run.name: run for run in compare.make_runs(args)}
    keep = compare.recorder(args)
    for name in ("rl2 seed 1", "rl2 seed 2", "dynamite seed 1", "dynamite seed 2"):  # (dynamite seed 2: no folder)
        keep(runs[name])
    recorded = json.loads((tmp_path / "bench_runs.json").read_text())["runs"]
    assert list(recorded) == ["rl2/seed1"]
    assert recorded["rl2/seed1"]["evaluations"][-1]["return"] == 40.0
    (tmp_path / "runs" / "rl2" / "seed2" / "eval.json").write_text(json.dumps(fake_run(2, 44.0)))
    keep(runs["rl2 seed 2"])
    assert list(json.loads((tmp_path / "bench_runs.json").read_text())["runs"]) == ["rl2/seed1", "rl2/seed2"]


def test_a_run_trained_with_other_settings_than_its_method_sets_is_neither_restored_nor_reported(tmp_path, capsys):
    """After a default changes, a recorded run (or one in --runs-dir) made with the old default does not count as the
    method's: the record is not restored, and the run is left out of the table, each with a line that says why."""
    settings = dict(methods=["dynamite", "rl2"], seeds=[1], total_timesteps=6000, runs_dir=str(tmp_path / "runs"),
                    output=str(tmp_path / "bench"))
    old = fake_run(1, 40.0)
    old["args"].update(session_encoder=not importlib.import_module("dynamite_rl").Args().session_encoder)
    write_runs(tmp_path / "runs", {("dynamite", 1): old, ("rl2", 1): fake_run(1, 44.0)})
    compare.main(compare.Args(**settings, report_only=True))
    out, table = capsys.readouterr().out, (tmp_path / "bench.md").read_text()
    assert f"dynamite seed 1 in {tmp_path / 'runs' / 'dynamite' / 'seed1'} left out: trained with session_encoder=" in out
    assert "| RL² | 1 |" in table and "| DynaMITE-RL |" not in table and "Missing (not finished): dynamite seed 1" in table
    recorded = json.loads((tmp_path / "bench_runs.json").read_text())
    recorded["runs"]["dynamite/seed1"] = old  # as a record made before the change
    (tmp_path / "bench_runs.json").write_text(json.dumps(recorded))
    compare.main(compare.Args(**{**settings, "runs_dir": str(tmp_path / "fresh")}, dry_run=True))
    out = capsys.readouterr().out
    assert "1 finished run(s) restored" in out and "rl2 seed 1: finished" in out
    assert "dynamite seed 1 recorded in" in out and "not restored: trained with session_encoder=" in out
    assert "dynamite seed 1: python dynamite_rl.py" in out  # it trains again


def test_the_exact_reference_is_the_runs_task_and_only_with_a_fixed_schedule(tmp_path):
    """A Gridworld report reads its runs' --env-kwargs: a random schedule has no exact reference (nor the default
    task's time to 45.0), another fixed task has its own, and runs of two tasks in one report are refused."""
    fixed = compare.summarize(compare.Args(methods=["rl2"], seeds=[1]), {"rl2": [fake_run(1, 40.0)]})
    assert "| of Bayes-optimal |" in fixed[0] and "time to 45.0" in fixed[0] and "Bayes-optimal 47.370" in "\n".join(fixed)
    bernoulli = json.dumps({"schedule": "bernoulli", "session_prob": 1 / 15})
    table = compare.summarize(compare.Args(methods=["rl2"], seeds=[1]), {"rl2": [fake_run(1, 40.0, bernoulli)]})
    assert "Bayes-optimal" not in "\n".join(table) and "time to" not in table[0]
    small = json.dumps({"size": 3})
    table = compare.summarize(compare.Args(methods=["rl2"], seeds=[1]), {"rl2": [fake_run(1, 4.0, small)]})
    from envs.gridworld_reference import reference_returns

    assert f"Bayes-optimal {reference_returns(size=3)['bayes']['total']:.3f}" in "\n".join(table)
    assert "time to" not in table[0]
    with pytest.raises(SystemExit, match="different tasks"):
        compare.summarize(compare.Args(methods=["rl2"], seeds=[1, 2]),
                          {"rl2": [fake_run(1, 40.0), fake_run(2, 40.0, bernoulli)]})


def test_under_a_random_schedule_the_per_session_column_keeps_the_sessions_every_run_saw():
    """Episodes of a random schedule have different numbers of sessions: the table averages the sessions that every
    final evaluation has, shows the first six of them, and says how those returns are counted."""
    bernoulli = json.dumps({"schedule": "bernoulli", "session_prob": 1 / 15})
    one, two = fake_run(1, 40.0, bernoulli), fake_run(2, 40.0, bernoulli)
    one["evaluations"][-1]["return_per_session"] = [float(i) for i in range(13)]
    two["evaluations"][-1]["return_per_session"] = [float(i) + 1 for i in range(11)]
    table = compare.summarize(compare.Args(methods=["rl2"], seeds=[1, 2]), {"rl2": [one, two]})
    row = next(line for line in table if line.startswith("| RL² |"))
    assert "| 0.50 / 1.50 / 2.50 / 3.50 / 4.50 / 5.50 / … |" in row
    assert "0 where an episode has fewer sessions" in "\n".join(table)
    assert compare.per_session(one["evaluations"][-1:] + two["evaluations"][-1:]).shape == (2, 11)


def test_a_table_of_methods_told_the_true_session_ends_and_methods_not_told_them_says_which_are_which():
    """DynaMITE-RL and VariBAD train with the simulator's session ends, RL² and ContraBAR without: a table that
    holds both kinds says so; a table of one kind does not."""
    runs = {method: [fake_run(1, 40.0)] for method in ("dynamite", "varibad", "rl2", "contrabar")}
    mixed = "\n".join(compare.summarize(compare.Args(methods=list(runs), seeds=[1]), runs))
    assert ("DynaMITE-RL and VariBAD train with the simulator's true session ends (in the reconstruction masks, and "
            "as the termination head's target); RL² and ContraBAR do not.") in mixed
    subset = {"dynamite": runs["dynamite"], "oracle-sessions": runs["dynamite"], "rl2": runs["rl2"]}
    variants = "\n".join(compare.summarize(compare.Args(methods=list(subset), seeds=[1]), subset))
    assert " DynaMITE-RL (every variant) trains with the simulator's true session ends" in variants
    assert "; RL² does not." in variants
    alone = "\n".join(compare.summarize(compare.Args(methods=["rl2"], seeds=[1]), {"rl2": runs["rl2"]}))
    assert "true session ends" not in alone


def test_the_head_summary_says_when_there_was_no_session_end_to_find():
    nan = float("nan")
    found = [{"session_detection": {"precision": 1.0, "recall": 0.5, "delay": 2.0}},
             {"session_detection": {"precision": 0.5, "recall": 1.0, "delay": nan}}]
    assert compare.detection_summary(found) == "precision 0.75, recall 0.75, 2.0 steps late"
    one_session = {"precision": nan, "recall": nan, "delay": nan}  # no true end, the head never fired
    assert compare.detection_summary([{"session_detection": one_session}] * 2) == "no session ends"
    false_alarms = {"precision": 0.0, "recall": nan, "delay": nan}
    assert compare.detection_summary([{"session_detection": false_alarms}]) == "no session ends, precision 0.00"
    silent = {"precision": nan, "recall": 0.0, "delay": nan}  # true ends, and the head never fired
    assert compare.detection_summary([{"session_detection": silent}] * 2) == "never fired, recall 0.00"
    assert compare.detection_summary([{"return": 1.0}]) == ""  # a method without a head


def test_the_latent_probe_read_out_scores_a_linear_latent_1_and_noise_0():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2000, 3))
    train = np.arange(2000) < 1000
    latent = np.stack([2 * features[:, 0] - features[:, 2] + 1, rng.normal(size=2000), np.full(2000, 0.3)], 1)
    r2 = latent_probe.linear_r2(features, latent, train)
    assert r2[0] == pytest.approx(1.0, abs=1e-6)
    assert abs(r2[1]) < 0.02  # held-out noise: nothing beyond its mean
    assert np.isnan(r2[2])  # a latent that does not vary has no R^2


def test_the_latent_probe_says_what_to_give():
    with pytest.raises(SystemExit, match="give --checkpoints"):
        latent_probe.main(latent_probe.Args())
    with pytest.raises(SystemExit, match="--episodes must be at least 4"):
        latent_probe.main(latent_probe.Args(checkpoints=["x"], episodes=2))


@pytest.mark.slow
@pytest.mark.parametrize("script", ["varibad.py", "dynamite_rl.py"])
def test_the_latent_probe_reads_a_finished_run_under_both_behaviours(script, finished_run, tmp_path):
    path = os.path.join(finished_run(script), "checkpoint.pt")
    results = latent_probe.main(latent_probe.Args(checkpoints=[path], episodes=8, skip=2,
                                                  output=str(tmp_path / "probe")))
    assert [r["behaviour"] for r in results] == list(latent_probe.BEHAVIOURS)
    assert all(len(r["r2"]) == 1 and r["script"] == script for r in results)  # the Gridworld's latent: one index
    assert json.loads((tmp_path / "probe.json").read_text()) == results
    assert (tmp_path / "probe.md").read_text().count("\n| ") == 4  # the header, its rule and a row per behaviour
    with pytest.raises(SystemExit, match="this needs dynamite_rl.py or varibad.py runs"):
        latent_probe.main(latent_probe.Args(checkpoints=[os.path.join(finished_run("rl2.py"), "checkpoint.pt")],
                                            output=str(tmp_path / "other")))


@pytest.mark.slow
@pytest.mark.parametrize("behaviour", latent_probe.BEHAVIOURS)
def test_the_latent_probe_tells_the_encoder_the_action_the_environment_was_given(behaviour, finished_run, monkeypatch):
    """Under random actions the belief must be built from the random actions taken, not from the greedy ones the
    policy proposed: every action the encoder is told equals the one the environment stepped with."""
    from benchmarks.trained import load_agent

    run = load_agent(os.path.join(finished_run("varibad.py"), "checkpoint.pt"), latent_probe.SCRIPTS)
    stepped, told, proposed = [], [], []
    make = latent_probe.envs.protocol.make_vector_env

    def recording_env(*args, **kwargs):
        env = make(*args, **kwargs)
        step = env.step
        env.step = lambda action: (stepped.append(np.array(action)), step(action))[1]
        return env

    class RecordingPolicy(run["algo"].GreedyPolicy):
        def act(self, obs, t):
            proposed.append(super().act(obs, t))
            return proposed[-1]

        def observe(self, reward, info):
            told.append(self.action.numpy().copy())
            super().observe(reward, info)

    monkeypatch.setattr(latent_probe.envs.protocol, "make_vector_env", recording_env)
    monkeypatch.setattr(run["algo"], "GreedyPolicy", RecordingPolicy)
    latent_probe.play(run, behaviour, latent_probe.Args(episodes=8))
    assert len(stepped) == len(told) == run["horizon"]
    assert all(np.array_equal(s, t) for s, t in zip(stepped, told))
    differ = sum(not np.array_equal(s, p) for s, p in zip(stepped, proposed))
    assert differ == 0 if behaviour == "greedy" else differ > run["horizon"] // 2


@pytest.mark.slow
def test_the_compile_check_times_each_form_and_reports_one_that_fails_to_compile(monkeypatch, tmp_path):
    from benchmarks import compile_check

    def raising(*args, **kwargs):
        raise RuntimeError("backend='inductor' raised:\nAssertionError: \n\nSet TORCHDYNAMO_VERBOSE=1")

    class Broken(torch.nn.Module):  # a network that fails as it is first called, as a compiled one can
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        forward = raising

    def broken_compile(fn, **_):
        return Broken(fn) if isinstance(fn, torch.nn.Module) else raising

    monkeypatch.setattr(compile_check.torch, "compile", broken_compile)
    args = compile_check.Args(scripts=["varibad.py"], updates=1, repeats=1, output=str(tmp_path / "check"))
    result, (loss_gap, gradient_gap), rows, flops = compile_check.check("varibad.py", args)
    assert result["eager"][0] > 0 and result["eager"][1] > 0
    assert result["whole loss compiled"] == result["networks compiled"] == \
        "backend='inductor' raised: AssertionError:"
    assert result["bfloat16 autocast"][0] > 0 and 0 < gradient_gap < 0.1 and 0 <= loss_gap < 0.01
    assert len(rows) == args.profile_rows and any("aten::" in row for row in rows)
    compile_check.main(args)
    table = (tmp_path / "check.md").read_text()
    assert "| varibad.py | eager |" in table and "1.00×" in table and "| varibad.py | bfloat16 autocast |" in table
    assert table.count("fails to compile (backend='inductor' raised: AssertionError:)") == 2
    assert "### varibad.py, eager" in table
    assert f"| varibad.py | {flops / 1e9:.2f} |" in table and "## The floor" in table


def test_bfloat16_autocast_runs_the_matrix_products_in_bfloat16_and_the_gap_measures_it():
    from benchmarks import compile_check

    torch.manual_seed(0)
    layer, batch = torch.nn.Linear(64, 64), torch.randn(32, 64)

    def loss_fn(net, batch, settings, device):
        out = net(batch)
        return out.square().mean(), {"dtype": out.dtype}

    autocast = compile_check.bfloat16_autocast(loss_fn)
    assert loss_fn(layer, batch, None, None)[1]["dtype"] == torch.float32
    assert autocast(layer, batch, None, None)[1]["dtype"] == torch.bfloat16
    loss_gap, gradient_gap = compile_check.precision_gap(loss_fn, autocast, [layer], batch, None, seed=0)
    assert 1e-4 < gradient_gap < 0.05 and loss_gap < 0.05  # bfloat16 keeps 8 bits of mantissa: about 0.4% per value
    assert compile_check.precision_gap(loss_fn, loss_fn, [layer], batch, None, seed=0) == (0.0, 0.0)


def test_the_floor_counts_each_matrix_product_of_the_forward_and_backward_pass_once():
    from benchmarks import compile_check

    torch.manual_seed(0)
    first, second, batch = torch.nn.Linear(64, 32), torch.nn.Linear(32, 8), torch.randn(10, 64)

    def loss_fn(first, second, batch, settings, device):
        return second(torch.relu(first(batch))).square().mean(), {}

    forward = 2 * 10 * (64 * 32 + 32 * 8)
    # backward: both weights' gradients, and the gradient into the hidden layer; none into the batch
    backward = 2 * 10 * (64 * 32 + 32 * 8) + 2 * 10 * 32 * 8
    assert compile_check.update_flops(loss_fn, [first, second], batch, None) == forward + backward
    assert first.weight.grad is None and second.weight.grad is None  # the count leaves no gradient behind
    assert 1e9 < compile_check.matmul_rate(repeats=2) < 1e13


def test_the_compile_check_batch_is_random_episodes_of_the_environment():
    from benchmarks import compile_check

    (obs, actions, rewards, next_obs, ends), space = compile_check.random_batch("dynamite/Gridworld-v0", 3)
    horizon = obs.shape[0]
    assert obs.shape[1] == actions.shape[1] == rewards.shape[1] == 3 and ends.dtype == torch.bool
    assert actions.shape[-1] == space.n and torch.all(actions.sum(-1) == 1)  # one-hot
    assert torch.equal(next_obs[:-1], obs[1:]) and ends.shape == (horizon, 3) and ends.any()


def overlay_runs(tmp_path, groups: dict) -> list[str]:
    """{label: {seed: final return}} as fake Gridworld runs in tmp_path/label/seed*/; returns the --groups pairs."""
    for label, finals in groups.items():
        for seed, value in finals.items():
            run = fake_run(seed, value)
            run["args"]["env_id"] = compare.GRIDWORLD
            os.makedirs(tmp_path / label / f"seed{seed}")
            (tmp_path / label / f"seed{seed}" / "eval.json").write_text(json.dumps(run))
    return [f"{label}={tmp_path / label}" for label in groups]


def test_the_overlay_reads_the_finished_runs_of_each_group_and_tests_each_against_the_first(tmp_path):
    """Final returns per group (an unfinished run left out), their mean ± std over seeds, and Welch's test of a later
    group against the first; the curves average the seeds at each evaluation."""
    pairs = overlay_runs(tmp_path, {"old": {1: 40.0, 2: 44.0}, "new": {1: 41.0, 2: 45.0, 3: 30.0}})
    unfinished = tmp_path / "new" / "seed3" / "eval.json"
    unfinished.write_text(json.dumps({**json.loads(unfinished.read_text()), "finished": False}))
    results = {label: overlay.load_group(folder) for label, folder in overlay.parse_groups(pairs).items()}
    assert [[r["args"]["seed"] for r in runs] for runs in results.values()] == [[1, 2], [1, 2]]
    lines = overlay.table(results, None)
    assert "| old | 2 | 42.00 ± 2.00 | 40.00, 44.00 | 1.5 min |  |" in lines
    # difference +1, each group's variance 8 over 2 seeds: t = 1 / sqrt(8/2 + 8/2)
    assert f"| new | 2 | 43.00 ± 2.00 | 41.00, 45.00 | 1.5 min | difference +1.00, t = {1 / np.sqrt(8.0):.2f}: " \
           "not separated |" in lines
    steps, mean, std = overlay.curves(results["old"], "global_step")
    assert steps.tolist() == [6000, 6000] and mean.tolist() == [21.0, 42.0] and std.tolist() == [1.0, 2.0]
    assert overlay.curves(results["old"], "train_time")[0].tolist() == [1.0, 1.0]  # minutes of the first seed


def test_the_overlay_says_what_is_wrong_with_its_groups(tmp_path):
    with pytest.raises(SystemExit, match="is not LABEL=FOLDER"):
        overlay.parse_groups(["old", "new=runs"])
    with pytest.raises(SystemExit, match="at least two groups"):
        overlay.parse_groups(["new=runs"])
    pairs = overlay_runs(tmp_path, {"old": {1: 40.0}})
    with pytest.raises(SystemExit, match="no finished run in empty"):
        overlay.main(overlay.Args(groups=[*pairs, f"empty={tmp_path / 'none'}"], output=str(tmp_path / "o")))
    other = tmp_path / "other" / "seed1"
    other.mkdir(parents=True)
    run = fake_run(1, 40.0)
    run["args"]["env_id"] = "dynamite/Reacher-v0"
    (other / "eval.json").write_text(json.dumps(run))
    with pytest.raises(SystemExit, match="different environments"):
        overlay.main(overlay.Args(groups=[*pairs, f"other={tmp_path / 'other'}"], output=str(tmp_path / "o")))


@pytest.mark.slow  # a plot: seconds
def test_the_overlay_writes_its_table_and_figure_with_the_gridworld_s_exact_bounds(tmp_path):
    pairs = overlay_runs(tmp_path, {"old": {1: 40.0, 2: 44.0}, "new": {1: 41.0, 2: 45.0}})
    overlay.main(overlay.Args(groups=pairs, output=str(tmp_path / "o")))
    report = (tmp_path / "o.md").read_text()
    assert "| new | 2 | 43.00 ± 2.00 |" in report and "Bayes-optimal 47.370" in report
    assert (tmp_path / "o_curves.png").stat().st_size > 10_000 and "o_curves.png" in report
    recorded = json.loads((tmp_path / "o_runs.json").read_text())["runs"]
    assert sorted(recorded) == sorted(str(tmp_path / label / f"seed{seed}") for label in ("old", "new") for seed in (1, 2))
    assert recorded[str(tmp_path / "new" / "seed2")]["evaluations"][-1]["return"] == 45.0
