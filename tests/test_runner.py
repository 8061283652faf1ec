"""The comparison runner on a Ray cluster of this machine: runs to a table, a failing run reported while the others
finish, finished runs skipped without starting Ray, and --dry-run (tracking: test_benchmarks.py)."""

import os
import subprocess
import sys

import pytest

from benchmarks import compare
from conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # every test here trains, on a local Ray cluster


def test_a_failing_run_is_reported_by_name_and_the_others_finish_to_the_table(tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "rl2" / "seed2").mkdir(parents=True)
    (runs / "rl2" / "seed2" / "checkpoint.pt").write_text("not a checkpoint")  # every attempt to resume it fails
    settings = dict(methods=["rl2"], seeds=[1, 2], runs_dir=str(runs), output=str(tmp_path / "bench"), retries=1,
                    total_timesteps=480, eval_every=1, extra="--num-envs 8 --num-minibatches 2 --eval-episodes 2")
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "compare.py"), "--methods", "rl2", "--seeds", "1", "2",
               "--runs-dir", str(runs), "--output", settings["output"], "--retries", "1", "--total-timesteps", "480",
               "--eval-every", "1", f"--extra={settings['extra']}"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ray: started a local cluster of 2 CPUs" in result.stdout
    assert "rl2 seed 2: exit 1, retrying from its checkpoint (attempt 2 of 2)" in result.stdout
    assert "rl2 seed 2: FAILED after 2 attempts (exit 1)" in result.stdout and "is truncated or not a checkpoint" in \
        result.stdout  # the last lines of its output
    assert "rl2 seed 1: finished (1 attempt(s))" in result.stdout
    assert "error: 1 run(s) failed: rl2 seed 2" in result.stderr
    table = (tmp_path / "bench.md").read_text()
    assert "| RL² | 1 |" in table  # seed 1
    assert "Missing (not finished, failed: rl2 seed 2): rl2 seed 2." in table

    # the same comparison again, in this process
    compare.main(compare.Args(**settings, dry_run=True))
    dry = capsys.readouterr().out
    assert "rl2 seed 1: finished" in dry
    assert f"rl2 seed 2: python rl2.py --resume {runs}/rl2/seed2/checkpoint.pt --eval-every 1" in dry
    compare.main(compare.Args(**{**settings, "seeds": [1]}))  # seed 1 only: everything finished
    again = capsys.readouterr().out
    assert again.count("done already") == 1 and "ray:" not in again  # nothing to run, so no cluster is started


def test_the_runner_calls_back_as_each_run_finishes_with_its_evaluation_on_disk(tmp_path):
    """compare.py records each run through this call, so a comparison killed before its report keeps its runs."""
    from benchmarks.runner import run_all
    settings = compare.Args(methods=["rl2"], seeds=[1, 2], runs_dir=str(tmp_path / "runs"),
                            output=str(tmp_path / "bench"), total_timesteps=480, eval_every=1,
                            extra="--num-envs 8 --num-minibatches 2 --eval-episodes 2")
    runs = compare.make_runs(settings)
    finished_when_called = []

    def called(run):
        finished_when_called.append((run.name, run.finished()))

    assert run_all(runs, workers=2, on_finished=called) == {}
    assert sorted(finished_when_called) == [("rl2 seed 1", True), ("rl2 seed 2", True)]
