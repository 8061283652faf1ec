"""The benchmark commands run end to end on a tiny budget and write their outputs."""

import os
import subprocess
import sys

from conftest import ROOT, TINY


def test_gridworld_benchmark_writes_table_and_plots_and_does_not_redo_finished_runs(tmp_path):
    extra = "--extra=" + " ".join(f for f in TINY if f not in ("--total-timesteps", "960", "--log-every", "1"))
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "gridworld.py"), "--methods", "dynamite",
               "no-consistency", "--seeds", "1", "2", "--total-timesteps", "960", "--eval-every", "1",
               "--runs-dir", str(tmp_path / "runs"), "--output", str(tmp_path / "docs" / "bench"), extra]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    table = (tmp_path / "docs" / "bench.md").read_text()
    assert "| DynaMITE-RL | 2 |" in table and "| DynaMITE-RL, no consistency | 2 |" in table
    assert (tmp_path / "docs" / "bench_curves.png").stat().st_size > 10_000
    assert (tmp_path / "docs" / "bench_sessions.png").stat().st_size > 10_000
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done already") == 4, again.stdout
