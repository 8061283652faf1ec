"""The DLCMDP machinery shared by every environment: session schedules and latent dynamics.

An episode of horizon H is cut into sessions. ``session_done[t]`` (d_t) is True when the transition at
step t is the last one of its session: its reward still uses the old latent, then the latent moves,
m' ~ T(. | m), and the state is reset from nu_0. The episode end always closes the last session, so
``session_done[H - 1]`` is True for every schedule.

Schedules (paper section 3 and 5):

* ``fixed``: a session ends every ``session_length`` steps (the last one may be shorter);
* ``bernoulli``: d_t ~ Bernoulli(``session_prob``) i.i.d. for t < H - 1;
* ``poisson``: ``num_sessions`` = K sessions; the first K - 1 lengths ~ Poisson(H / K) and the last takes the
  rest, all K redrawn together until every one is positive (the paper's section 5, Figure 8). The lengths are drawn
  one by one from that conditional distribution (:func:`_poisson_tail_weights`), which gives the same
  distribution as redrawing but in K steps, also where a redraw would almost never succeed (K near H).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import lgamma
from typing import Any

import numpy as np

SCHEDULES = ("fixed", "bernoulli", "poisson")


@dataclass(frozen=True)
class SessionSchedule:
    """Where the sessions of an episode end. Build it with :func:`make_schedule`, which validates."""

    kind: str
    horizon: int
    session_length: int
    session_prob: float
    num_sessions: int

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One episode's ``session_done`` flags, a bool array of shape (horizon,)."""
        done = np.zeros(self.horizon, dtype=bool)
        if self.kind == "fixed":
            done[self.session_length - 1 :: self.session_length] = True
        elif self.kind == "bernoulli":
            done[:-1] = rng.random(self.horizon - 1) < self.session_prob
        else:
            done[np.cumsum(self._poisson_lengths(rng))[:-1] - 1] = True
        done[-1] = True
        return done

    def _poisson_lengths(self, rng: np.random.Generator) -> np.ndarray:
        # l_1..l_{K-1} i.i.d. Poisson(H / K) conditioned on l_i >= 1 and sum <= H - 1 (the last session keeps
        # a step): l_i is drawn with weight p(a) * W_{rest}(budget - a), W_j(s) being the (scaled) probability
        # that j more lengths fit in s steps
        pmf, tails = _poisson_tail_weights(self.horizon, self.num_sessions)
        lengths = np.empty(self.num_sessions, dtype=np.int64)
        budget = self.horizon - 1
        for i in range(self.num_sessions - 1):
            rest = self.num_sessions - 2 - i
            weights = pmf[1 : budget + 1] * tails[rest, budget - 1 :: -1]
            cumulative = np.cumsum(weights)
            lengths[i] = 1 + int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
            budget -= int(lengths[i])
        lengths[-1] = budget + 1
        return lengths


@lru_cache(maxsize=64)
def _poisson_tail_weights(horizon: int, num_sessions: int) -> tuple[np.ndarray, np.ndarray]:
    """Poisson(H / K) pmf on 0..H-1 (zero at 0) and W[j, s] proportional to P(j positive lengths sum to <= s).

    Row j of W is rescaled to a maximum of 1: a draw only compares entries of one row, and the rescaling keeps
    products of many small probabilities (K near H) from underflowing.
    """
    mean = horizon / num_sessions
    a = np.arange(horizon)
    pmf = np.exp(a * np.log(mean) - mean - np.array([lgamma(k + 1) for k in a]))
    pmf[0] = 0.0
    tails = np.empty((max(num_sessions - 1, 1), horizon))
    density = np.zeros(horizon)
    density[0] = 1.0  # zero lengths sum to 0
    for j in range(tails.shape[0]):
        if j > 0:
            density = np.convolve(density, pmf)[:horizon]
            density /= density.max()
        tails[j] = np.cumsum(density)
        tails[j] /= tails[j].max()
    return pmf, tails


def make_schedule(
    schedule: str,
    horizon: int,
    session_length: int = 15,
    session_prob: float = 1 / 15,
    num_sessions: int = 4,
) -> SessionSchedule:
    """Validate the schedule arguments of an environment constructor and build the schedule."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if int(horizon) != horizon or horizon < 1:
        raise ValueError(f"horizon must be a positive integer (the episode length), got {horizon!r}")
    if schedule == "fixed" and (int(session_length) != session_length or session_length < 1):
        raise ValueError(
            f"session_length must be a positive integer for the fixed schedule, got {session_length!r}"
        )
    if schedule == "bernoulli" and not 0.0 <= session_prob <= 1.0:
        raise ValueError(f"session_prob must be a probability in [0, 1], got {session_prob!r}")
    if schedule == "poisson":
        if int(num_sessions) != num_sessions or num_sessions < 1:
            raise ValueError(
                f"num_sessions must be a positive integer for the poisson schedule, got {num_sessions!r}"
            )
        if num_sessions > horizon:
            raise ValueError(
                f"num_sessions must be at most horizon={horizon} (each session lasts at least one "
                f"step), got {num_sessions}"
            )
    return SessionSchedule(schedule, int(horizon), int(session_length), float(session_prob), int(num_sessions))


def validate_transition_matrix(matrix, num_latents: int) -> np.ndarray:
    """Check that ``matrix`` is a row-stochastic (num_latents x num_latents) array and return it."""
    try:
        array = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"transition_matrix must be a numeric matrix, got {matrix!r}") from error
    if array.shape != (num_latents, num_latents):
        raise ValueError(
            f"transition_matrix must have shape ({num_latents}, {num_latents}) (one row and column "
            f"per latent value), got shape {array.shape}"
        )
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"transition_matrix entries must be finite and non-negative, got {array.tolist()}")
    if not np.allclose(array.sum(axis=1), 1.0, atol=1e-8):
        raise ValueError(
            f"each row of transition_matrix must sum to 1 (row i is T(. | m = i)), got row sums "
            f"{array.sum(axis=1).tolist()}"
        )
    return array


def sample_latent_chain(
    rng: np.random.Generator, first_probs: np.ndarray, transition_matrix: np.ndarray, length: int
) -> np.ndarray:
    """Latent indices m^0 ~ first_probs, m^{i+1} ~ T(. | m^i) for ``length`` sessions."""
    uniforms = rng.random(length)
    cumulative = np.cumsum(transition_matrix, axis=1)
    last = len(first_probs) - 1
    chain = np.empty(length, dtype=np.int64)
    chain[0] = min(np.searchsorted(np.cumsum(first_probs), uniforms[0], side="right"), last)
    for i in range(1, length):
        chain[i] = min(np.searchsorted(cumulative[chain[i - 1]], uniforms[i], side="right"), last)
    return chain


class EpisodeSessions:
    """Session bookkeeping for single (non-batched) DLCMDP environments: the schedule, the session index, the step
    count and the ``info`` keys. The environment provides ``np_random``, a ``latent`` property, ``_new_task()`` (the
    per-episode draws) and ``_next_latent()`` (called at every session end)."""

    def _init_sessions(self, horizon: int, schedule: str, session_length: int, session_prob: float,
                       num_sessions: int, random_phase: bool) -> None:
        self.schedule = make_schedule(schedule, horizon, session_length, session_prob, num_sessions)
        self.horizon = int(horizon)
        self.random_phase = bool(random_phase)
        self._session, self._t, self._phase = 0, 0, 0.0
        self._has_task = False  # keep_task needs a task drawn by an earlier reset
        self._done_flags = np.zeros(self.horizon, dtype=bool)

    def _start_episode(self, options: dict[str, Any] | None) -> None:
        keep_task = bool(options and options.get("keep_task")) and self._has_task
        if keep_task:
            self._session += 1  # the latent's dynamics go on from the last session of the previous episode
            self._next_latent()
        else:
            self._session = 0
            self._phase = self.np_random.uniform(0, 2 * np.pi) if self.random_phase else 0.0
            self._new_task()
            self._has_task = True
        self._t = 0
        self._done_flags = self.schedule.sample(self.np_random)

    def _get_reset_info(self) -> dict[str, Any]:
        return {"latent": self.latent.copy(), "session": self._session}

    def _end_step(self) -> tuple[bool, bool, dict[str, Any]]:
        """After the physics of step t: (session_done, truncated, info); moves the latent at a session end."""
        done = bool(self._done_flags[self._t])
        info = {"session_done": done, "latent": self.latent.copy(), "session": self._session}
        self._t += 1
        truncated = self._t >= self.horizon
        if done and not truncated:
            self._session += 1
            self._next_latent()
        return done, truncated, info
