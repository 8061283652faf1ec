"""Session schedules and latent dynamics shared by every environment."""

import math
import time
from collections import Counter

import numpy as np
import pytest

from envs.dlcmdp import make_schedule, sample_latent_chain, validate_transition_matrix


def session_lengths(done: np.ndarray) -> np.ndarray:
    ends = np.flatnonzero(done)
    return np.diff(np.concatenate([[-1], ends]))


def test_fixed_schedule_ends_every_length_and_at_the_horizon():
    done = make_schedule("fixed", horizon=60, session_length=15).sample(np.random.default_rng(0))
    assert np.flatnonzero(done).tolist() == [14, 29, 44, 59]
    ragged = make_schedule("fixed", horizon=10, session_length=4).sample(np.random.default_rng(0))
    assert np.flatnonzero(ragged).tolist() == [3, 7, 9]


def test_bernoulli_rate_matches_p():
    rng = np.random.default_rng(0)
    schedule = make_schedule("bernoulli", horizon=60, session_prob=0.1)
    done = np.stack([schedule.sample(rng) for _ in range(4000)])
    assert done[:, -1].all(), "the episode end closes the last session"
    rate = done[:, :-1].mean()
    stderr = np.sqrt(0.1 * 0.9 / done[:, :-1].size)
    assert abs(rate - 0.1) < 4 * stderr
    assert not make_schedule("bernoulli", horizon=30, session_prob=0.0).sample(rng)[:-1].any()
    assert make_schedule("bernoulli", horizon=30, session_prob=1.0).sample(rng).all()


@pytest.mark.parametrize("horizon,num_sessions", [(60, 4), (400, 10), (50, 50), (7, 1), (20, 19)])
def test_poisson_lengths_are_positive_and_sum_to_horizon(horizon, num_sessions):
    rng = np.random.default_rng(1)
    schedule = make_schedule("poisson", horizon=horizon, num_sessions=num_sessions)
    for _ in range(300):
        lengths = session_lengths(schedule.sample(rng))
        assert len(lengths) == num_sessions
        assert (lengths > 0).all() and lengths.sum() == horizon


def test_poisson_lengths_have_mean_h_over_k():
    rng = np.random.default_rng(2)
    schedule = make_schedule("poisson", horizon=400, num_sessions=8)
    firsts = np.array([session_lengths(schedule.sample(rng))[:-1] for _ in range(2000)])
    # Poisson(50) is never 0 in practice and the bound never binds here, so the mean is H / K
    assert abs(firsts.mean() - 50) < 4 * np.sqrt(50 / firsts.size)
    assert abs(firsts.var() - 50) < 5


def test_poisson_lengths_follow_the_redraw_until_positive_distribution():
    # the paper draws l_1, l_2 ~ Poisson(H / K) and redraws all of them until every length, the last
    # (H - l_1 - l_2) included, is positive: enumerate that distribution exactly for H = 7, K = 3
    horizon, mean = 7, 7 / 3
    pmf = {a: mean**a * np.exp(-mean) / math.factorial(a) for a in range(1, horizon)}
    exact = {(a, b): pmf[a] * pmf[b] for a in pmf for b in pmf if a + b <= horizon - 1}
    total = sum(exact.values())
    rng = np.random.default_rng(3)
    schedule = make_schedule("poisson", horizon=horizon, num_sessions=3)
    draws = 40_000
    counts = Counter(tuple(session_lengths(schedule.sample(rng))[:2]) for _ in range(draws))
    assert set(counts) <= set(exact)
    for pair, weight in exact.items():
        p = weight / total
        assert abs(counts[pair] / draws - p) < 4.5 * np.sqrt(p * (1 - p) / draws) + 1e-4, pair


def test_poisson_matches_brute_force_redrawing_where_the_bound_binds():
    # K = 20 of H = 100: the first 19 Poisson(5) lengths overrun 99 steps in about a third of the redraws
    horizon, k = 100, 20
    rng = np.random.default_rng(4)
    brute = []
    while len(brute) < 3000:
        lengths = rng.poisson(horizon / k, size=k - 1)
        if (lengths > 0).all() and lengths.sum() < horizon:
            brute.append(np.append(lengths, horizon - lengths.sum()))
    brute = np.array(brute)
    schedule = make_schedule("poisson", horizon=horizon, num_sessions=k)
    ours = np.array([session_lengths(schedule.sample(rng)) for _ in range(3000)])
    for column in (0, k // 2, k - 2, k - 1):
        stderr = np.sqrt(brute[:, column].var() / len(brute) + ours[:, column].var() / len(ours))
        assert abs(ours[:, column].mean() - brute[:, column].mean()) < 4.5 * stderr, column
    assert abs(ours[:, -1].var() - brute[:, -1].var()) < 0.25 * brute[:, -1].var()


def test_poisson_draws_stay_cheap_when_sessions_are_short():
    # one session per step leaves a single schedule; K = 20 of 400 steps is where per-length redrawing
    # took seconds per episode
    rng = np.random.default_rng(5)
    assert make_schedule("poisson", horizon=400, num_sessions=400).sample(rng).all()
    schedule = make_schedule("poisson", horizon=400, num_sessions=20)
    start = time.perf_counter()
    for _ in range(200):
        assert len(session_lengths(schedule.sample(rng))) == 20
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize(
    "kwargs,names",
    [
        (dict(schedule="", horizon=60), "schedule"),
        (dict(schedule="weekly", horizon=60), "schedule"),
        (dict(schedule="fixed", horizon=0), "horizon"),
        (dict(schedule="fixed", horizon=60, session_length=0), "session_length"),
        (dict(schedule="bernoulli", horizon=60, session_prob=1.5), "session_prob"),
        (dict(schedule="poisson", horizon=10, num_sessions=11), "num_sessions"),
        (dict(schedule="poisson", horizon=10, num_sessions=0), "num_sessions"),
    ],
)
def test_bad_schedules_raise_value_error_naming_the_argument(kwargs, names):
    with pytest.raises(ValueError, match=names):
        make_schedule(**kwargs)


@pytest.mark.parametrize(
    "matrix,message",
    [
        ([[0.2, 0.8]], "shape"),
        ([[0.2, 0.8, 0.0], [0.8, 0.2, 0.0], [0, 0, 1]], "shape"),
        ([[0.5, 0.6], [0.8, 0.2]], "sum to 1"),
        ([[1.2, -0.2], [0.8, 0.2]], "non-negative"),
        ("abc", "numeric"),
    ],
)
def test_bad_transition_matrices_raise(matrix, message):
    with pytest.raises(ValueError, match=f"transition_matrix.*{message}"):
        validate_transition_matrix(matrix, 2)


def test_latent_chain_follows_the_transition_matrix():
    rng = np.random.default_rng(3)
    matrix = np.array([[0.1, 0.6, 0.3], [0.0, 0.5, 0.5], [0.7, 0.2, 0.1]])
    first = np.array([0.2, 0.3, 0.5])
    chains = np.stack([sample_latent_chain(rng, first, matrix, 6) for _ in range(20000)])
    assert np.allclose(np.bincount(chains[:, 0], minlength=3) / len(chains), first, atol=0.015)
    counts = np.zeros((3, 3))
    np.add.at(counts, (chains[:, :-1].ravel(), chains[:, 1:].ravel()), 1)
    assert np.allclose(counts / counts.sum(1, keepdims=True), matrix, atol=0.015)
    assert counts[1, 0] == 0, "a zero-probability transition never happens"
