"""The exact Bayes-optimal, oracle, memoryless and random returns of the Gridworld."""

import itertools
import os
import subprocess
import sys
import time
import tracemalloc
from functools import lru_cache

import numpy as np
import pytest

from envs.gridworld import make_gridworld_config
from envs.gridworld_reference import (MODES, Args, cached_solution, check_fits, estimate_memory, main,
                                      reference_returns, simulate, solve)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the latent moves on a cycle, so each session multiplies the reachable posteriors: 13800 goal tuples x 466
# posteriors, 3.1 GiB estimated for the Bayes-optimal policy (3.0 GiB peak resident memory measured, in 5 minutes)
CYCLE = dict(num_goals=3, transition_matrix=[[0.05, 0.9, 0.05], [0.05, 0.05, 0.9], [0.9, 0.05, 0.05]])
HUGE = dict(size=7, num_goals=4)  # 5085024 goal tuples: more than a machine's memory for a single posterior


def test_default_values_match_the_spec():
    table = reference_returns()
    bayes = table["bayes"]
    assert bayes["total"] == pytest.approx(8171351 / 172500, abs=1e-9)  # 47.370
    np.testing.assert_allclose(bayes["per_session"], [11.570, 11.934, 11.934, 11.934], atol=5e-4)
    assert table["oracle"]["total"] == pytest.approx(746 / 15, abs=1e-9)  # 49.733
    assert table["random"]["total"] == pytest.approx(-3.622, abs=5e-4)
    # carrying nothing across sessions, the best is four times the first session's Bayes value
    assert table["memoryless"]["total"] == pytest.approx(4 * bayes["per_session"][0], abs=1e-9)
    assert table["memoryless"]["total"] == pytest.approx(46.278, abs=5e-4)


@pytest.mark.slow  # tens of thousands of simulated episodes
@pytest.mark.parametrize("mode,episodes", [("bayes", 20000), ("oracle", 10000), ("memoryless", 10000), ("random", 10000)])
def test_policies_played_in_the_environment_match_their_values(mode, episodes):
    """The DP policy, acting on what it observes in GridworldVectorEnv, earns what the DP says it earns."""
    expected = reference_returns()[mode]
    per_session, stderr, totals = simulate({}, mode, episodes, seed=123)
    total_stderr = totals.std(ddof=1) / np.sqrt(len(totals))
    assert abs(totals.mean() - expected["total"]) < 4 * total_stderr
    assert (np.abs(per_session - expected["per_session"]) < 4 * stderr).all()


@pytest.mark.slow  # thousands of simulated episodes
@pytest.mark.parametrize("seed", range(3))
def test_nondefault_settings_simulate_to_their_values(seed):
    rng = np.random.default_rng(seed)
    matrix = rng.dirichlet(np.ones(3), size=3)
    kwargs = dict(size=3, num_goals=3, transition_matrix=matrix.tolist(), session_length=4, horizon=13,
                  goal_reward=1.5, step_reward=-0.2)
    table = reference_returns(**kwargs)
    assert table["oracle"]["total"] >= table["bayes"]["total"] >= table["memoryless"]["total"] > table["random"]["total"]
    for mode in ("bayes", "random"):
        _, _, totals = simulate(kwargs, mode, 6000, seed=seed)
        assert abs(totals.mean() - table[mode]["total"]) < 4 * totals.std(ddof=1) / np.sqrt(len(totals))


def brute_force(size, num_goals, matrix, session_length, horizon, goal_reward, step_reward, mode):
    """Expectimax over every history, written from the environment's rules alone (no belief tricks)."""
    matrix = np.asarray(matrix, dtype=float)
    cells = size * size
    deltas = [(0, 0), (-1, 0), (0, 1), (1, 0), (0, -1)]

    def land(cell, delta):
        row, col = divmod(cell, size)
        return min(max(row + delta[0], 0), size - 1) * size + min(max(col + delta[1], 0), size - 1)

    def session_prior(session):
        prior = np.full(num_goals, 1 / num_goals)
        for _ in range(session):
            prior = prior @ matrix
        return prior

    results = []
    for goals in itertools.permutations(range(cells), num_goals):
        free = [c for c in range(cells) if c not in goals]

        @lru_cache(maxsize=None)
        def value(t, cell, belief):
            """Best (or random) expected return from step t, given the posterior over the latent."""
            if t == horizon:
                return 0.0
            belief = np.array(belief)
            session_ends = (t + 1) % session_length == 0 and t + 1 < horizon
            q = []
            for delta in deltas:
                landed = land(cell, delta)
                if landed in goals:
                    j = goals.index(landed)
                    hit, miss = belief.copy() * 0, belief.copy()
                    hit[j], miss[j] = 1.0, 0.0
                    outcomes = [(belief[j], goal_reward, hit), (1 - belief[j], step_reward, miss / max(miss.sum(), 1e-300))]
                else:
                    outcomes = [(1.0, step_reward, belief)]
                total = 0.0
                for prob, reward, posterior in outcomes:
                    if prob == 0:
                        continue
                    if session_ends:
                        if mode == "memoryless":
                            nxt = session_prior((t + 1) // session_length)
                        else:
                            nxt = posterior @ matrix
                        if mode == "oracle":
                            future = sum(p * np.mean([value(t + 1, c, tuple(np.eye(num_goals)[m])) for c in free])
                                         for m, p in enumerate(nxt) if p > 0)
                        else:
                            future = np.mean([value(t + 1, c, tuple(np.round(nxt, 14))) for c in free])
                    else:
                        future = value(t + 1, landed, tuple(np.round(posterior, 14)))
                    total += prob * (reward + future)
                q.append(total)
            return float(np.mean(q)) if mode == "random" else max(q)

        prior = session_prior(0)
        starts = [(p, tuple(np.eye(num_goals)[m])) for m, p in enumerate(prior)] if mode == "oracle" else [(1.0, tuple(prior))]
        results.append(sum(p * np.mean([value(0, c, b) for c in free]) for p, b in starts))
    return float(np.mean(results))


TINY = [
    dict(size=2, num_goals=2, transition_matrix=[[0.2, 0.8], [0.8, 0.2]], session_length=2, horizon=6),
    dict(size=2, num_goals=2, transition_matrix=[[0.9, 0.1], [0.3, 0.7]], session_length=3, horizon=7,
         goal_reward=2.0, step_reward=-0.5),
    dict(size=2, num_goals=3, transition_matrix=[[0.0, 0.5, 0.5], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]],
         session_length=2, horizon=5),
    pytest.param(dict(size=3, num_goals=3, transition_matrix=[[0.6, 0.4, 0.0], [0.0, 0.6, 0.4], [0.4, 0.0, 0.6]],
                      session_length=2, horizon=4), marks=pytest.mark.slow, id="3x3-3-goals"),  # 504 goal tuples
    dict(size=2, num_goals=2, transition_matrix=[[0.5, 0.5], [0.1, 0.9]], session_length=1, horizon=5),
]


@pytest.mark.parametrize("kwargs", TINY)
@pytest.mark.parametrize("mode", MODES)
def test_dynamic_programme_equals_brute_force_on_tiny_grids(kwargs, mode):
    config = make_gridworld_config(**kwargs)
    expected = brute_force(config.size, config.num_goals, config.transition_matrix, kwargs["session_length"],
                           config.horizon, config.goal_reward, config.step_reward, mode)
    assert solve(config, mode).total == pytest.approx(expected, abs=1e-9)


def test_only_the_fixed_schedule_has_an_exact_reference():
    with pytest.raises(ValueError, match="schedule='fixed'"):
        solve(make_gridworld_config(schedule="bernoulli"))
    with pytest.raises(ValueError, match="mode"):
        solve(make_gridworld_config(), "greedy")


def test_command_prints_the_table(capsys, tmp_path):
    json_out, markdown_out = tmp_path / "table.json", tmp_path / "table.md"
    table = main(Args(size=3, session_length=3, horizon=6, transition_matrix=(0.5, 0.5, 0.1, 0.9),
                      simulate=2000, json_out=str(json_out), markdown_out=str(markdown_out)))
    printed = capsys.readouterr().out
    assert "Bayes-optimal" in printed and "session 1" in printed and "[[0.5, 0.5], [0.1, 0.9]]" in printed
    assert '"bayes"' in json_out.read_text() and "| Bayes-optimal |" in markdown_out.read_text()
    simulated = table["bayes"]["simulated"]
    assert abs(simulated["mean"] - table["bayes"]["total"]) < 4 * simulated["stderr"]


@pytest.mark.parametrize("mode", MODES)
def test_the_memory_estimate_is_close_to_the_peak_allocation(mode):
    config = make_gridworld_config(size=4, num_goals=3, session_length=4, horizon=8)
    tracemalloc.start()
    try:
        solve(config, mode)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # 1.2 to 1.4 times the peak that tracemalloc sees, which leaves out the allocator's slack the estimate adds
    assert peak / 2 < estimate_memory(config, mode) < 2 * peak


def test_a_reference_too_big_for_the_memory_is_refused_at_once_with_what_would_fit():
    start = time.process_time()  # the work done, which other processes on the machine do not stretch
    config = make_gridworld_config(**CYCLE)
    assert 2 * 2**30 < estimate_memory(config) < 4 * 2**30
    check_fits(config, available=8 * 2**30)
    with pytest.raises(ValueError, match=r"needs about 3\.1 GiB of memory but only 1\.0 GiB is available; would fit: "
                                         r"size=4, or num_goals=2, or horizon=45 \(3 sessions\)$"):
        check_fits(config, available=2**30)
    message = (  # which smaller settings fit depends on the memory
               r"^the exact bayes reference of this Gridworld \(5085024 goal tuples .* needs more than [0-9.]+ GiB "
               r"of memory but only [0-9.]+ GiB is available; (would fit: (size|num_goals|horizon)=\d+[^,]*"
               r"(, or (size|num_goals|horizon)=\d+[^,]*)*|no nearby smaller setting fits)$")
    for call in (lambda: solve(make_gridworld_config(**HUGE)), lambda: cached_solution(HUGE, "bayes")):
        with pytest.raises(ValueError, match=message) as error:
            call()
        assert "\n" not in str(error.value)
    assert time.process_time() - start < 5


@pytest.mark.slow
def test_the_command_refuses_in_one_line_without_a_traceback():
    command = [sys.executable, "-m", "envs.gridworld_reference", "--size", "7", "--num-goals", "4"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.startswith("error: the exact bayes reference") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
