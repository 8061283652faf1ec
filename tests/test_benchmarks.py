"""The benchmark commands run end to end on a tiny budget and write their outputs."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT


def test_gridworld_comparison_writes_table_and_plots_and_does_not_redo_finished_runs(tmp_path):
    extra = "--extra=--num-envs 8 --num-minibatches 2 --eval-episodes 16"
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "compare.py"), "--seeds", "1",
               "--total-timesteps", "960", "--eval-every", "1", "--runs-dir", str(tmp_path / "runs"),
               "--output", str(tmp_path / "docs" / "bench"), extra]
    first = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    table = (tmp_path / "docs" / "bench.md").read_text()
    for label in ("DynaMITE-RL", "DynaMITE-RL, no consistency", "DynaMITE-RL, no conditioning",
                  "DynaMITE-RL, no session reconstruction", "DynaMITE-RL, true session ends", "VariBAD", "RL²",
                  "ContraBAR"):
        assert f"| {label} | 1 |" in table, table
    assert (tmp_path / "docs" / "bench_curves.png").stat().st_size > 10_000
    assert (tmp_path / "docs" / "bench_sessions.png").stat().st_size > 10_000
    summary = next(line.split(" | ") for line in table.splitlines() if line.startswith("| DynaMITE-RL | 1 |"))
    assert len(summary[4].split(" / ")) == 4  # the return of each of the 4 sessions
    assert "| method | seed 1 |" in table  # the final return of each seed
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done already") == 8, again.stdout
    (tmp_path / "docs" / "bench.md").unlink()
    report = subprocess.run([*command, "--report-only"], capture_output=True, text=True, timeout=600)
    assert report.returncode == 0 and "done already" not in report.stdout, report.stdout + report.stderr
    assert (tmp_path / "docs" / "bench.md").read_text().split("\n")[3:] == table.split("\n")[3:]
    empty = subprocess.run([*command, "--report-only", "--runs-dir", str(tmp_path / "nothing")], capture_output=True,
                           text=True, timeout=600)
    assert empty.returncode != 0 and "no finished run" in empty.stderr, empty.stderr


def test_the_belief_probe_posterior_is_the_exact_bayesian_posterior():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import belief_probe

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


def test_the_belief_probe_writes_results_and_a_checkpoint_dynamite_rl_resumes(tmp_path):
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "belief_probe.py"), "--updates", "4",
               "--probe-every", "2", "--train-episodes", "64", "--test-episodes", "40", "--run-dir",
               str(tmp_path / "run"), "--output", str(tmp_path / "probe"), "--extra=--num-envs 8 --num-minibatches 2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "probe.md").read_text().count("\n| ") == 3  # header and updates 2, 4
    resumed = subprocess.run([sys.executable, os.path.join(ROOT, "dynamite_rl.py"), "--resume",
                              str(tmp_path / "run" / "checkpoint.pt"), "--total-timesteps", "960"],
                             capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert '"encoder_updates": 0' in (tmp_path / "run" / "eval.json").read_text()


@pytest.mark.parametrize("env_id", ["dynamite/HalfCheetahVel-v0", "dynamite/Gridworld-v0"])  # Box and Discrete
def test_throughput_writes_its_table(tmp_path, env_id):
    output = tmp_path / "throughput.md"
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "throughput.py"), "--env-id", env_id,
               "--scripts", "dynamite_rl.py", "varibad.py", "--num-envs", "4", "--iterations", "1", "--seconds", "0.2",
               "--output", str(output), "--extra=--eval-episodes 2 --encoder-updates 1 --encoder-batch-episodes 4 "
               "--num-minibatches 2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    table = output.read_text()
    assert "| raw: one environment |" in table
    for script in ("dynamite_rl.py", "varibad.py"):
        assert f"| training: {script}, 1 iterations" in table
        assert f"{script} trains at " in table and "% of the single environment's raw rate" in table


def test_the_comparison_runs_on_a_mujoco_environment_without_gridworld_references(tmp_path):
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "compare.py"), "--env-id", "dynamite/Reacher-v0",
               "--methods", "dynamite", "varibad", "--seeds", "1", "--total-timesteps", "3200", "--eval-every", "1",
               "--runs-dir", str(tmp_path / "runs"), "--output", str(tmp_path / "reacher"),
               "--extra=--num-envs 4 --num-minibatches 2 --eval-episodes 2 --encoder-batch-episodes 4"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    table = (tmp_path / "reacher.md").read_text()
    assert table.startswith("# Reacher benchmark") and "| DynaMITE-RL | 1 |" in table and "| VariBAD | 1 |" in table
    assert "Bayes" not in table and (tmp_path / "reacher_curves.png").stat().st_size > 10_000
    run = (tmp_path / "runs" / "varibad" / "seed1" / "eval.json").read_text()
    assert '"env_id": "dynamite/Reacher-v0"' in run


def test_reward_terms_table_of_saved_agents(tmp_path):
    from conftest import run_script

    flags = ["--env-id", "dynamite/ScratchItch-v0", "--num-envs", "2", "--num-minibatches", "1", "--total-timesteps",
             "100", "--eval-episodes", "1", "--save-model", "--env-kwargs", '{"horizon": 50, "session_length": 25}']
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
