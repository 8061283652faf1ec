"""The comparison runner on a Ray cluster of this machine: runs to a table, a failing run reported while the others
finish, finished runs skipped without starting Ray, --dry-run, and wandb tracking grouped by comparison."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT

TINY = ["--total-timesteps", "960", "--eval-every", "1", "--extra=--num-envs 8 --num-minibatches 2 --eval-episodes 16"]


def compare(*args: str, cwd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "compare.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_a_failing_run_is_reported_by_name_and_the_others_finish_to_the_table(tmp_path):
    runs = tmp_path / "runs"
    (runs / "rl2" / "seed2").mkdir(parents=True)
    (runs / "rl2" / "seed2" / "checkpoint.pt").write_text("not a checkpoint")  # every attempt to resume it fails
    args = ["--methods", "dynamite", "rl2", "--seeds", "1", "2", "--runs-dir", str(runs), "--output",
            str(tmp_path / "bench"), "--retries", "1", *TINY]
    result = compare(*args, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ray: started a local cluster of 2 CPUs" in result.stdout
    assert "rl2 seed 2: exit 1, retrying from its checkpoint (attempt 2 of 2)" in result.stdout
    assert "rl2 seed 2: FAILED after 2 attempts (exit 1)" in result.stdout and "is truncated or not a checkpoint" in \
        result.stdout  # the last lines of its output
    assert "error: 1 run(s) failed: rl2 seed 2" in result.stderr
    table = (tmp_path / "bench.md").read_text()
    assert "| DynaMITE-RL | 2 |" in table and "| RL² | 1 |" in table
    assert "Missing (not finished, failed: rl2 seed 2): rl2 seed 2." in table

    dry = compare(*args, "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0 and "dynamite seed 1: finished" in dry.stdout
    assert f"rl2 seed 2: python rl2.py --resume {runs}/rl2/seed2/checkpoint.pt --eval-every 1" in dry.stdout

    again = compare(*args[:4], "1", *args[6:], cwd=tmp_path)  # seed 1 only: everything finished
    assert again.returncode == 0 and again.stdout.count("done already") == 2, again.stdout + again.stderr
    assert "ray:" not in again.stdout  # nothing to run, so no cluster is started


@pytest.mark.slow
def test_tracked_runs_log_offline_to_one_wandb_run_each_with_the_comparison_s_group(tmp_path):
    runs = tmp_path / "runs"
    result = compare("--methods", "dynamite", "rl2", "--seeds", "1", "--runs-dir", str(runs), "--output",
                     str(tmp_path / "tracked"), "--track", *TINY, cwd=tmp_path,
                     env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert result.returncode == 0, result.stdout + result.stderr
    for method in ("dynamite", "rl2"):
        offline = list((runs / method / "seed1" / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(offline) == 1, offline
        record = offline[0].read_bytes()
        assert b"tracked" in record and method.encode() in record and b"seed1" in record  # group, tags
        assert b"checkpoint.pt" in record  # the final checkpoint, logged as an artifact
