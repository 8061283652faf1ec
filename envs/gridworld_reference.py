"""Exact reference returns of the Gridworld with a fixed schedule, by dynamic programming.

With a fixed schedule the agent knows where sessions end, the goal cells are observed and moves are
deterministic, so the exact posterior over the paying goal is a finite object: the belief ``start`` at
the session's start (a probability vector over goals), restricted to the goals not yet ruled out in this
session (a subset ``alive``; landing on a goal either reveals it pays, alive = {j}, or rules it out).
Between sessions the posterior moves to (start | alive) @ T. Backward induction over
(step, start, alive) x (goal cells, agent cell) is therefore exact. Values are kept per session, so the
table gives each session's expected return under the optimal policy.

Policies (``MODES``):

* ``bayes``: Bayes-optimal, the best any agent can do;
* ``oracle``: told the latent at every step;
* ``memoryless``: Bayes-optimal within each session but carrying nothing across sessions (its belief
  at a session's start is the prior marginal of that session's latent): the ceiling of an agent that does
  not use the latent dynamics;
* ``random``: uniformly random actions.

Print the table (``--help`` for every environment parameter; ``--simulate N`` adds a Monte Carlo
check in the environment itself)::

    python -m envs.gridworld_reference
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from envs.gridworld import GridworldConfig, GridworldVectorEnv, make_gridworld_config

MODES = ("bayes", "oracle", "memoryless", "random")
MODE_LABELS = {
    "bayes": "Bayes-optimal",
    "oracle": "oracle (latent told)",
    "memoryless": "no memory across sessions",
    "random": "uniform random",
}


@dataclass
class Solution:
    """Expected returns of one policy and, for greedy policies, the policy itself."""

    config: GridworldConfig
    mode: str
    per_session: np.ndarray  # (K,) expected return of each session
    goal_sets: np.ndarray  # (C, G) every ordered tuple of distinct goal cells
    beliefs: list[np.ndarray]  # session-start beliefs, indexed by id
    initial: list[tuple[float, int]]  # (probability, belief id) of the first session's start
    next_start: dict[tuple[int, int], list[tuple[float, int]]]  # (belief id, alive) -> next session start
    policy: dict[tuple[int, int, int], np.ndarray] = field(default_factory=dict)  # (t, id, alive) -> (C, cells)

    @property
    def total(self) -> float:
        return float(self.per_session.sum())


def fixed_schedule_sessions(config: GridworldConfig) -> tuple[np.ndarray, np.ndarray]:
    """``session_done`` and the session index of every step; ValueError unless the schedule is fixed."""
    if config.schedule.kind != "fixed":
        raise ValueError(
            f"the exact reference needs schedule='fixed' (the agent then knows when sessions end), "
            f"got schedule={config.schedule.kind!r}"
        )
    done = config.schedule.sample(np.random.default_rng(0))  # deterministic for a fixed schedule
    return done, np.concatenate([[0], np.cumsum(done[:-1])])


def _bits(alive: int, num_goals: int) -> np.ndarray:
    return np.array([(alive >> j) & 1 for j in range(num_goals)], dtype=bool)


def _posterior(start: np.ndarray, alive: int) -> np.ndarray:
    restricted = start * _bits(alive, len(start))
    return restricted / restricted.sum()


def _support(belief: np.ndarray) -> int:
    return int(sum(1 << j for j in np.flatnonzero(belief > 0)))


def _subsets(mask: int) -> list[int]:
    """Every non-empty subset of the bits of ``mask``."""
    subsets, sub = [], mask
    while sub:
        subsets.append(sub)
        sub = (sub - 1) & mask
    return subsets


def solve(config: GridworldConfig, mode: str = "bayes") -> Solution:
    """Expected return per session of ``mode`` (one of ``MODES``) in the Gridworld of ``config``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    done, session_of = fixed_schedule_sessions(config)
    horizon, num_sessions, num_goals = config.horizon, int(done.sum()), config.num_goals
    transition = config.transition_matrix

    goal_sets = np.array(list(itertools.permutations(range(config.num_cells), num_goals)), dtype=np.int64)
    num_sets = len(goal_sets)
    goal_at = np.full((num_sets, config.num_cells), -1, dtype=np.int64)  # which goal, if any, is at a cell
    for j in range(num_goals):
        goal_at[np.arange(num_sets), goal_sets[:, j]] = j
    free = goal_at < 0

    # forward: the session-start beliefs of every session and how each session end leads to the next
    beliefs: list[np.ndarray] = []
    belief_ids: dict[tuple, int] = {}

    def belief_id(belief: np.ndarray) -> int:
        key = tuple(np.round(belief, 12))
        if key not in belief_ids:
            belief_ids[key] = len(beliefs)
            beliefs.append(belief)
        return belief_ids[key]

    uniform = np.full(num_goals, 1.0 / num_goals)
    onehots = np.eye(num_goals)
    marginals = [uniform]
    for _ in range(num_sessions - 1):
        marginals.append(marginals[-1] @ transition)

    def split(belief: np.ndarray) -> list[tuple[float, int]]:
        if mode == "oracle":  # the oracle learns the new latent as the session starts
            return [(float(p), belief_id(onehots[m])) for m, p in enumerate(belief) if p > 0]
        return [(1.0, belief_id(belief))]

    initial = split(uniform)
    starts = [sorted({i for _, i in initial})]
    next_start: dict[tuple[int, int], list[tuple[float, int]]] = {}
    for session in range(num_sessions - 1):
        following = set()
        for start_id in starts[session]:
            for alive in _subsets(_support(beliefs[start_id])):
                if mode == "memoryless":
                    target = split(marginals[session + 1])
                else:
                    target = split(_posterior(beliefs[start_id], alive) @ transition)
                next_start[(start_id, alive)] = target
                following.update(i for _, i in target)
        starts.append(sorted(following))

    # backward: values[(start id, alive)] is (C, cells, K), expected reward of each session from step t on
    solution = Solution(config, mode, np.zeros(num_sessions), goal_sets, beliefs, initial, next_start)
    values: dict[tuple[int, int], np.ndarray] = {}
    for t in reversed(range(horizon)):
        session = session_of[t]
        session_end = bool(done[t]) and t < horizon - 1
        next_values: dict[tuple[int, int], np.ndarray] = {}
        for start_id in starts[session]:
            start = beliefs[start_id]
            for alive in _subsets(_support(start)):
                posterior = _posterior(start, alive)

                def continuation(alive_after: int) -> np.ndarray:
                    """Value after the move, indexed by the cell landed on: (C, cells, K)."""
                    if t == horizon - 1:
                        return np.zeros((num_sets, config.num_cells, num_sessions))
                    if not session_end:
                        return values[(start_id, alive_after)]
                    total = np.zeros((num_sets, num_sessions))
                    for prob, nxt in next_start[(start_id, alive_after)]:
                        at_start = values[(nxt, _support(beliefs[nxt]))]
                        # nu_0: the next session starts on a uniformly random free cell
                        total += prob * (at_start * free[..., None]).sum(1) / free.sum(1, keepdims=True)
                    return np.broadcast_to(total[:, None, :], (num_sets, config.num_cells, num_sessions))

                after = {a: continuation(a) for a in _subsets(alive)}
                q_values = np.empty((len(config.move[0]), num_sets, config.num_cells, num_sessions))
                for action in range(config.move.shape[1]):
                    landed = config.move[:, action]
                    goal = goal_at[:, landed]  # (C, cells)
                    q = after[alive][:, landed].copy()
                    p_hit = np.zeros(goal.shape)
                    for j in np.flatnonzero(_bits(alive, num_goals)):
                        is_j = goal == j
                        p_hit[is_j] = posterior[j]
                        miss = after[alive & ~(1 << j)][:, landed] if alive != 1 << j else 0.0
                        mixed = posterior[j] * after[1 << j][:, landed] + (1 - posterior[j]) * miss
                        q[is_j] = mixed[is_j]
                    q[..., session] += p_hit * config.goal_reward + (1 - p_hit) * config.step_reward
                    q_values[action] = q
                if mode == "random":
                    next_values[(start_id, alive)] = q_values.mean(0)
                else:
                    best = q_values.sum(-1).argmax(0)  # ties go to the lowest action index
                    solution.policy[(t, start_id, alive)] = best.astype(np.int8)
                    next_values[(start_id, alive)] = np.take_along_axis(q_values, best[None, ..., None], 0)[0]
        values = next_values

    for prob, start_id in initial:
        at_start = values[(start_id, _support(beliefs[start_id]))]
        per_cell = (at_start * free[..., None]).sum(1) / free.sum(1, keepdims=True)
        solution.per_session += prob * per_cell.mean(0)
    return solution


@lru_cache(maxsize=16)
def _cached_table(items: tuple) -> dict[str, dict]:
    config = make_gridworld_config(**dict(items))
    table = {}
    for mode in MODES:
        per_session = solve(config, mode).per_session
        table[mode] = {"total": float(per_session.sum()), "per_session": per_session.tolist()}
    return table


def reference_returns(**env_kwargs) -> dict[str, dict]:
    """``{mode: {"total": float, "per_session": [...]}}`` for the Gridworld built from ``env_kwargs``.

    Learning curves are drawn against ``reference_returns()["bayes"]["total"]`` (47.370 by default).
    """
    items = tuple(sorted((k, tuple(map(tuple, v)) if k == "transition_matrix" and v is not None else v)
                         for k, v in env_kwargs.items()))
    return _cached_table(items)


class ReferenceAgent:
    """Acts in a :class:`GridworldVectorEnv` with the policy of a :class:`Solution` (not ``random``).

    It tracks the exact posterior from what it observes (rewards and its own cell); an ``oracle``
    solution is told each session's latent through ``env.latents``.
    """

    def __init__(self, solution: Solution, env: GridworldVectorEnv):
        if not solution.policy:
            raise ValueError(f"mode {solution.mode!r} has no greedy policy to act with")
        self.solution, self.env, self.config = solution, env, solution.config
        self.done, _ = fixed_schedule_sessions(self.config)
        size, goals = self.config.num_cells, self.config.num_goals
        self._set_index = np.full((size,) * goals, -1, dtype=np.int64)
        self._set_index[tuple(solution.goal_sets.T)] = np.arange(len(solution.goal_sets))
        self._onehot_ids = {int(np.argmax(b)): i for i, b in enumerate(solution.beliefs) if np.isclose(b.max(), 1.0)}

    def _cells(self, obs: np.ndarray) -> np.ndarray:
        cells = obs.reshape(len(obs), -1, 2).astype(np.int64)
        return cells[..., 0] * self.config.size + cells[..., 1]

    def _session_start(self, candidates: list[list[tuple[float, int]]]) -> None:
        """Pick each environment's start belief (the oracle's is the one-hot of the true latent)."""
        for i, options in enumerate(candidates):
            if self.solution.mode == "oracle":
                self.start[i] = self._onehot_ids[int(self.env.latents[i])]
            else:
                (_, self.start[i]), = options
            self.alive[i] = _support(self.solution.beliefs[self.start[i]])

    def play_episode(self, obs: np.ndarray) -> np.ndarray:
        """Play one episode from ``obs`` (just after reset); return the rewards, shape (num_envs, H)."""
        n = len(obs)
        cells = self._cells(obs)
        goal_set = self._set_index[tuple(cells[:, 1:].T)]
        self.start = np.zeros(n, dtype=np.int64)
        self.alive = np.zeros(n, dtype=np.int64)
        self._session_start([self.solution.initial] * n)
        rewards = np.zeros((n, self.config.horizon))
        for t in range(self.config.horizon):
            agent = self._cells(obs)[:, 0]
            actions = np.zeros(n, dtype=np.int64)
            for start_id, alive in set(zip(self.start.tolist(), self.alive.tolist())):
                envs = (self.start == start_id) & (self.alive == alive)
                actions[envs] = self.solution.policy[(t, start_id, alive)][goal_set[envs], agent[envs]]
            obs, reward, _, _, _ = self.env.step(actions)
            rewards[:, t] = reward
            landed = self.config.move[agent, actions]
            for j in range(self.config.num_goals):
                on_j = landed == cells[:, 1 + j]
                paid = reward == self.config.goal_reward
                self.alive[on_j & paid] = 1 << j
                self.alive[on_j & ~paid] &= ~(1 << j)
            if self.done[t] and t < self.config.horizon - 1:
                self._session_start([self.solution.next_start[(s, a)] for s, a in zip(self.start, self.alive)])
        return rewards


def simulate(config_kwargs: dict, mode: str, num_episodes: int, seed: int = 0, num_envs: int = 1000):
    """Monte Carlo returns of ``mode`` in the environment: (mean per session, standard error per session)."""
    env = GridworldVectorEnv(num_envs=num_envs, autoreset_mode="Disabled", **config_kwargs)
    agent = None if mode == "random" else ReferenceAgent(solve(env.config, mode), env)
    _, session_of = fixed_schedule_sessions(env.config)
    rng = np.random.default_rng(seed)
    episodes = []
    for k in range(-(-num_episodes // num_envs)):
        obs, _ = env.reset(seed=seed + k * num_envs)
        if agent is None:
            rewards = np.stack([env.step(rng.integers(5, size=num_envs))[1] for _ in range(env.config.horizon)], 1)
        else:
            rewards = agent.play_episode(obs)
        episodes.append(np.stack([rewards[:, session_of == s].sum(1) for s in range(session_of[-1] + 1)], 1))
    per_session = np.concatenate(episodes)[:num_episodes]
    return per_session.mean(0), per_session.std(0, ddof=1) / np.sqrt(num_episodes), per_session.sum(1)


@dataclass
class Args:
    size: int = 5
    """grid side N (the grid is N x N)"""
    num_goals: int = 2
    """number of goal cells G; the latent is which one pays"""
    transition_matrix: tuple[float, ...] | None = None
    """latent transition matrix T, row-major (row i is T(. | m = i)), e.g. --transition-matrix 0.2 0.8 0.8 0.2;
    default: stay with 0.2, switch to each other goal with 0.8 / (G - 1)"""
    session_length: int = 15
    """length L of every session (fixed schedule)"""
    horizon: int = 60
    """episode length H"""
    goal_reward: float = 1.0
    """reward of a move that lands on the paying goal"""
    step_reward: float = -0.1
    """reward of every other move"""
    simulate: int = 0
    """if > 0, also play this many episodes of each policy in the environment (Monte Carlo check)"""
    json_out: str | None = None
    """write the table to this JSON file as well"""


def main(args: Args) -> dict:
    matrix = None
    if args.transition_matrix is not None:
        matrix = np.reshape(args.transition_matrix, (args.num_goals, -1)).tolist()
    kwargs = dict(size=args.size, num_goals=args.num_goals, transition_matrix=matrix,
                  session_length=args.session_length, horizon=args.horizon,
                  goal_reward=args.goal_reward, step_reward=args.step_reward)
    table = reference_returns(**kwargs)
    num_sessions = len(table["bayes"]["per_session"])
    bayes = table["bayes"]["total"]
    header = f"{'policy':<28}{'return':>9}{'of Bayes':>10}" + "".join(f"{f'session {s}':>11}" for s in range(num_sessions))
    if args.simulate:
        header += f"{'simulated':>20}"
    print(f"Gridworld {args.size}x{args.size}, {args.num_goals} goals, fixed sessions of {args.session_length}, H={args.horizon}")
    print(header)
    for mode in MODES:
        row = table[mode]
        line = f"{MODE_LABELS[mode]:<28}{row['total']:>9.3f}{row['total'] / bayes:>10.1%}"
        line += "".join(f"{v:>11.3f}" for v in row["per_session"])
        if args.simulate:
            _, _, totals = simulate(kwargs, mode, args.simulate)
            row["simulated"] = {"mean": float(totals.mean()), "stderr": float(totals.std(ddof=1) / np.sqrt(len(totals))),
                                "episodes": args.simulate}
            line += f"{totals.mean():>12.3f} ± {row['simulated']['stderr']:.3f}"
        print(line)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"env_kwargs": kwargs, "returns": table}, f, indent=2)
    return table


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
