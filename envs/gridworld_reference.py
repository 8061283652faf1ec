"""Exact reference returns of the Gridworld with a fixed schedule, by dynamic programming.

With a fixed schedule the agent knows where sessions end, the goal cells are observed and moves are
deterministic, so the exact posterior over the paying goal takes finitely many values. Within a session
it only changes when the agent lands on a goal: the goal either pays (the posterior becomes one-hot) or
is ruled out (the posterior is restricted to the other goals and renormalised). Between sessions it
moves to posterior @ T. Backward induction over (step, posterior) x (goal cells, agent cell) is
therefore exact. Values are kept per session, so the table gives each session's expected return under
the optimal policy. The cost grows with the number of goal tuples C = cells! / (cells - G)! and of
reachable posteriors (up to 2^G - 1 per start, and every one starts a new posterior in the next session):
the defaults take about a second, 3 goals on the 5 x 5 grid minutes and gigabytes, 4 goals over a terabyte.
:func:`solve` counts the posteriors first (:func:`estimate_memory`) and refuses, naming smaller settings
that would fit, what the memory available cannot hold (:func:`check_fits`).

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

import itertools
import json
import math
import os
import sys
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
    """Expected returns of one policy, the posteriors it passes through and, unless random, the policy."""

    config: GridworldConfig
    mode: str
    per_session: np.ndarray  # (K,) expected return of each session
    goal_sets: np.ndarray  # (C, G) every ordered tuple of distinct goal cells
    posteriors: list[np.ndarray]  # posterior over the paying goal, indexed by id
    initial: list[tuple[float, int]]  # (probability, posterior id) at the first session's start
    paid: dict[tuple[int, int], int]  # (id, goal j) -> id after landing on j and being paid
    unpaid: dict[tuple[int, int], int]  # (id, goal j) -> id after landing on j and not being paid
    next_start: dict[tuple[int, int], list[tuple[float, int]]]  # (session, id at its end) -> (probability, id) next
    policy: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (t, id) -> action, (C, cells)

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


@dataclass
class _Graph:
    """The forward pass: every posterior each session can reach, and how they lead to one another."""

    posteriors: list[np.ndarray] = field(default_factory=list)
    paid: dict[tuple[int, int], int] = field(default_factory=dict)
    unpaid: dict[tuple[int, int], int] = field(default_factory=dict)
    next_start: dict[tuple[int, int], list[tuple[float, int]]] = field(default_factory=dict)
    initial: list[tuple[float, int]] = field(default_factory=list)
    states: list[list[int]] = field(default_factory=list)  # the posterior ids of each session
    complete: bool = True  # False: stopped early, ``states`` holds only the sessions (and states) counted


def _posterior_graph(config: GridworldConfig, mode: str, max_bytes: float = np.inf) -> _Graph:
    """The forward pass, without value tables; it stops once one session's tables alone would exceed ``max_bytes``."""
    done, _ = fixed_schedule_sessions(config)
    num_sessions, num_goals = int(done.sum()), config.num_goals
    table_bytes = num_goal_sets(config) * config.num_cells * 8  # one posterior's values for one session
    graph, ids, eye = _Graph(), {}, np.eye(num_goals)

    def posterior_id(belief: np.ndarray) -> int:
        belief = belief / belief.sum()
        key = tuple(belief.round(12).tolist())
        if key not in ids:
            ids[key] = len(graph.posteriors)
            graph.posteriors.append(belief)
        return ids[key]

    def split(belief: np.ndarray) -> list[tuple[float, int]]:
        if mode == "oracle":  # the oracle is told the new latent as the session starts
            return [(float(p), posterior_id(eye[m])) for m, p in enumerate(belief) if p > 0]
        return [(1.0, posterior_id(belief))]

    def within_session(starts: set[int], cap: float) -> list[int]:
        """The starts and every posterior that landing on goals can lead to from them (at most about ``cap``)."""
        reached, todo = set(starts), list(starts)
        while todo and len(reached) <= cap:
            s = todo.pop()
            for j in np.flatnonzero(graph.posteriors[s] > 0).tolist():
                graph.paid[(s, j)] = posterior_id(eye[j])
                if graph.posteriors[s][j] < 1:
                    unpaid = graph.posteriors[s].copy()
                    unpaid[j] = 0.0
                    graph.unpaid[(s, j)] = posterior_id(unpaid)
                for nxt in (graph.paid[(s, j)], graph.unpaid.get((s, j))):
                    if nxt is not None and nxt not in reached:
                        reached.add(nxt)
                        todo.append(nxt)
        graph.complete = not todo
        return sorted(reached)

    marginal = np.full(num_goals, 1.0 / num_goals)
    graph.initial = split(marginal)
    starts = {s for _, s in graph.initial}
    for session in range(num_sessions):
        graph.states.append(within_session(starts, max_bytes / (table_bytes * (num_sessions - session))))
        if not graph.complete or session == num_sessions - 1:
            break
        marginal = marginal @ config.transition_matrix
        for s in graph.states[session]:
            target = marginal if mode == "memoryless" else graph.posteriors[s] @ config.transition_matrix
            graph.next_start[(session, s)] = split(target)
        starts = {s for end in graph.states[session] for _, s in graph.next_start[(session, end)]}
    return graph


def num_goal_sets(config: GridworldConfig) -> int:
    """C, the number of ordered tuples of distinct goal cells: cells! / (cells - G)!."""
    return math.perm(config.num_cells, config.num_goals)


SLACK = 1.15  # the arrays counted below, measured: the peak resident memory is 1.1 times theirs


def _peak_bytes(config: GridworldConfig, mode: str, graph: _Graph) -> int:
    """Bytes :func:`solve` holds at its peak for the sessions ``graph`` counts (all of them when complete)."""
    done, session_of = fixed_schedule_sessions(config)
    num_sessions, num_goals = int(done.sum()), config.num_goals
    sets, cells, actions = num_goal_sets(config), config.num_cells, config.move.shape[1]
    # goal_sets, goal_at, free, and goal_at_landing with the (tuple, cell, action) triples landing on each goal
    static = sets * (8 * num_goals + 9 * cells + 9 * cells * actions + 24 * num_goals * actions)
    peak, policy = static, 0
    for session in reversed(range(len(graph.states))):
        states, left = len(graph.states[session]), num_sessions - session
        if mode != "random":  # one int8 action per (goal tuple, cell) for every step and posterior
            policy += int((session_of == session).sum()) * states * sets * cells
        # per posterior: its values (C, cells, left), their entries at the goal cells and at a session's start
        tables = 8 * states * sets * (cells + num_goals + 1) * left
        # per posterior in turn: q (C, cells, actions, left), its sum over sessions, the argmax, the new values
        transient = 8 * sets * cells * (actions * left + actions + left + 2)
        peak = max(peak, static + policy + tables + transient)
    return int(SLACK * peak)


def available_memory() -> int:
    """Bytes of memory this process can still take: MemAvailable, or a cgroup's limit if lower."""
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:  # a container's memory limit can be far below the machine's
        with open("/sys/fs/cgroup/memory.max") as f, open("/sys/fs/cgroup/memory.current") as g:
            available = min(available, int(f.read()) - int(g.read()))
    except (OSError, ValueError):  # no cgroup v2 limit ("max")
        pass
    return available


def _graph_within(config: GridworldConfig, mode: str, limit: float) -> _Graph:
    """The forward pass, or as much of it as shows that :func:`solve` would need more than ``limit`` bytes."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    lower = _Graph(states=[[0]], complete=False)  # the first session holds at least one posterior's values
    if _peak_bytes(config, mode, lower) > limit:
        return lower
    return _posterior_graph(config, mode, limit)


def estimate_memory(config: GridworldConfig, mode: str = "bayes", limit: float = np.inf) -> int:
    """Bytes :func:`solve` would need at its peak; counting stops past ``limit`` (the result then exceeds it)."""
    return _peak_bytes(config, mode, _graph_within(config, mode, limit))


def _gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.1f} GiB"


def _fitting_variants(config: GridworldConfig, mode: str, available: int) -> list[str]:
    """The nearest smaller grid, fewer goals and fewer sessions that fit in ``available`` bytes."""
    base = dict(size=config.size, num_goals=config.num_goals, transition_matrix=config.transition_matrix,
                session_length=config.schedule.session_length, horizon=config.horizon,
                goal_reward=config.goal_reward, step_reward=config.step_reward)
    length = config.schedule.session_length
    variants = (
        [("size", dict(size=n), f"size={n}") for n in range(config.size - 1, 1, -1) if n * n > config.num_goals]
        + [("goals", dict(num_goals=g, transition_matrix=None), f"num_goals={g}")
           for g in range(config.num_goals - 1, 1, -1)]
        + [("sessions", dict(horizon=k * length), f"horizon={k * length} ({k} session{'s' * (k > 1)})")
           for k in range(-(-config.horizon // length) - 1, 0, -1)]
    )
    found = {}
    for kind, change, label in variants:
        smaller = make_gridworld_config(**{**base, **change})
        if kind not in found and estimate_memory(smaller, mode, available) <= available:
            found[kind] = label
    return list(found.values())


def _checked_graph(config: GridworldConfig, mode: str, available: int | None = None) -> _Graph:
    """The forward pass; ValueError, with one line saying what would fit, if :func:`solve` would not fit."""
    available = available_memory() if available is None else available
    graph = _graph_within(config, mode, available)
    need = _peak_bytes(config, mode, graph)
    if need > available:  # a graph cut short already exceeds it, so the one that fits is complete
        fits = _fitting_variants(config, mode, available)
        raise ValueError(
            f"the exact {mode} reference of this Gridworld ({num_goal_sets(config)} goal tuples x {config.num_cells} "
            f"cells x {sum(map(len, graph.states))}{'' if graph.complete else '+'} posteriors) needs "
            f"{'about' if graph.complete else 'more than'} {_gib(need)} of memory but only {_gib(available)} is "
            f"available; " + (f"would fit: {', or '.join(fits)}" if fits else "no nearby smaller setting fits")
        )
    return graph


def check_fits(config: GridworldConfig, mode: str = "bayes", available: int | None = None) -> None:
    """ValueError, with a one-line message, unless :func:`solve` fits in ``available`` bytes (default: free memory)."""
    _checked_graph(config, mode, available)


def solve(config: GridworldConfig, mode: str = "bayes") -> Solution:
    """Expected return per session of ``mode`` (one of ``MODES``) in the Gridworld of ``config``.

    ValueError, before anything big is allocated, if it would not fit in the memory available.
    """
    graph = _checked_graph(config, mode)
    done, session_of = fixed_schedule_sessions(config)
    horizon, num_sessions, num_goals = config.horizon, int(done.sum()), config.num_goals
    num_cells = config.num_cells

    goal_sets = np.array(list(itertools.permutations(range(num_cells), num_goals)), dtype=np.int64)
    num_sets = len(goal_sets)
    goal_at = np.full((num_sets, num_cells), -1, dtype=np.int64)  # which goal, if any, is at a cell
    for j in range(num_goals):
        goal_at[np.arange(num_sets), goal_sets[:, j]] = j
    free = goal_at < 0
    goal_at_landing = goal_at[:, config.move]  # (C, cells, actions)
    landing = [np.nonzero(goal_at_landing == j) for j in range(num_goals)]  # (tuple, cell, action) landing on goal j
    del goal_at_landing

    posteriors, paid, unpaid, next_start = graph.posteriors, graph.paid, graph.unpaid, graph.next_start
    solution = Solution(config, mode, np.zeros(num_sessions), goal_sets, posteriors, graph.initial, paid, unpaid,
                        next_start)
    # backward: values[id] is (C, cells, K - session), the expected reward of each session left from step t on;
    # the sessions already over are not stored, and each table is overwritten in place once the goal-cell entries
    # that other posteriors read from it are taken, so only one session's tables are held at a time
    values: dict[int, np.ndarray] = {}
    for t in reversed(range(horizon)):
        session = session_of[t]
        left = num_sessions - session
        if t == horizon - 1:
            after = dict.fromkeys(graph.states[session], np.zeros((num_sets, 1, left)))
        elif done[t]:  # nu_0: the next session starts on a uniformly random free cell
            after = {}
            for s in graph.states[session]:
                total = sum(prob * (values[nxt] * free[..., None]).sum(1) for prob, nxt in next_start[(session, s)])
                after[s] = np.concatenate([np.zeros((num_sets, 1)), total / free.sum(1, keepdims=True)], 1)[:, None]
            values = {}
        else:
            after = values  # (C, cells, left) by the landing cell, or broadcast over cells: the value after the move
        after = {s: np.broadcast_to(v, (num_sets, num_cells, left)) for s, v in after.items()}
        at_goal = {s: v[np.arange(num_sets)[:, None], goal_sets] for s, v in after.items()}  # (C, G, left)

        for s in graph.states[session]:
            posterior = posteriors[s]
            q = after.pop(s)[:, config.move]  # (C, cells, actions, left), a copy: the old table can go
            q[..., 0] += config.step_reward
            for j in np.flatnonzero(posterior > 0):
                mixed = posterior[j] * at_goal[paid[(s, j)]][:, j]
                if (s, j) in unpaid:
                    mixed = mixed + (1 - posterior[j]) * at_goal[unpaid[(s, j)]][:, j]
                q[landing[j]] = mixed[landing[j][0]]
                q[landing[j] + (0,)] += posterior[j] * config.goal_reward + (1 - posterior[j]) * config.step_reward
            if mode == "random":
                values[s] = q.mean(2)
            else:
                best = q.sum(-1).argmax(2)  # ties go to the lowest action index
                solution.policy[(t, s)] = best.astype(np.int8)
                values[s] = np.take_along_axis(q, best[..., None, None], 2)[:, :, 0]

    for prob, s in graph.initial:
        solution.per_session += prob * ((values[s] * free[..., None]).sum(1) / free.sum(1, keepdims=True)).mean(0)
    return solution


def _hashable(env_kwargs: dict) -> tuple:
    matrix = env_kwargs.get("transition_matrix")
    if matrix is not None:
        env_kwargs = {**env_kwargs, "transition_matrix": tuple(map(tuple, np.asarray(matrix, dtype=float).tolist()))}
    return tuple(sorted(env_kwargs.items()))


@lru_cache(maxsize=32)
def _solve_cached(items: tuple, mode: str) -> Solution:
    return solve(make_gridworld_config(**dict(items)), mode)


def cached_solution(env_kwargs: dict, mode: str) -> Solution:
    """:func:`solve` for the Gridworld built from ``env_kwargs``, computed once per process."""
    return _solve_cached(_hashable(env_kwargs), mode)


def reference_returns(**env_kwargs) -> dict[str, dict]:
    """``{mode: {"total": float, "per_session": [...]}}`` for the Gridworld built from ``env_kwargs``.

    Learning curves are drawn against ``reference_returns()["bayes"]["total"]`` (47.370 by default).
    """
    table = {}
    for mode in MODES:
        per_session = cached_solution(env_kwargs, mode).per_session
        table[mode] = {"total": float(per_session.sum()), "per_session": per_session.tolist()}
    return table


class ReferenceAgent:
    """Acts in a :class:`GridworldVectorEnv` with the policy of a :class:`Solution` (not ``random``).

    It tracks the exact posterior from what it observes (rewards and its own cell); an ``oracle``
    solution is told each session's latent through ``env.latents``.
    """

    def __init__(self, solution: Solution, env: GridworldVectorEnv):
        if not solution.policy:
            raise ValueError(f"mode {solution.mode!r} has no greedy policy to act with")
        self.solution, self.env, self.config = solution, env, solution.config
        self.done, self.session_of = fixed_schedule_sessions(self.config)
        self._set_index = np.full((self.config.num_cells,) * self.config.num_goals, -1, dtype=np.int64)
        self._set_index[tuple(solution.goal_sets.T)] = np.arange(len(solution.goal_sets))
        self._onehot_ids = {int(p.argmax()): s for s, p in enumerate(solution.posteriors) if p.max() == 1.0}

    def _cells(self, obs: np.ndarray) -> np.ndarray:
        cells = obs.reshape(len(obs), -1, 2).astype(np.int64)
        return cells[..., 0] * self.config.size + cells[..., 1]

    def _session_start(self, options: list[list[tuple[float, int]]]) -> np.ndarray:
        if self.solution.mode == "oracle":
            return np.array([self._onehot_ids[m] for m in self.env.latents.tolist()])
        return np.array([start[0][1] for start in options])  # a single start each

    def play_episode(self, obs: np.ndarray) -> np.ndarray:
        """Play one episode from ``obs`` (just after reset); return the rewards, shape (num_envs, H)."""
        n, solution, session_of = len(obs), self.solution, self.session_of
        goals = self._cells(obs)[:, 1:]
        goal_set = self._set_index[tuple(goals.T)]
        state = self._session_start([solution.initial] * n)
        rewards = np.zeros((n, self.config.horizon))
        for t in range(self.config.horizon):
            agent = self._cells(obs)[:, 0]
            actions = np.zeros(n, dtype=np.int64)
            for s in np.unique(state):
                envs = state == s
                actions[envs] = solution.policy[(t, s)][goal_set[envs], agent[envs]]
            obs, reward, _, _, _ = self.env.step(actions)
            rewards[:, t] = reward
            landed = self.config.move[agent, actions]
            for i in np.flatnonzero((landed[:, None] == goals).any(1)):
                j = int(np.flatnonzero(goals[i] == landed[i])[0])
                table = solution.paid if reward[i] == self.config.goal_reward else solution.unpaid
                state[i] = table.get((state[i], j), state[i])  # a goal already ruled out teaches nothing
            if self.done[t] and t < self.config.horizon - 1:
                state = self._session_start([solution.next_start[(session_of[t], s)] for s in state.tolist()])
        return rewards


def simulate(env_kwargs: dict, mode: str, num_episodes: int, seed: int = 0, num_envs: int = 1000):
    """Play ``mode`` in the environment: (mean per session, its standard error, total of every episode)."""
    env = GridworldVectorEnv(num_envs=num_envs, autoreset_mode="Disabled", **env_kwargs)
    agent = None if mode == "random" else ReferenceAgent(cached_solution(env_kwargs, mode), env)
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
    markdown_out: str | None = None
    """write the table, with the command that made it, to this markdown file as well"""


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
    columns = ["policy", "return", "of Bayes-optimal"] + [f"session {s}" for s in range(num_sessions)]
    if args.simulate:
        columns.append(f"simulated, {args.simulate} episodes")
    rows = []
    for mode in MODES:
        row = table[mode]
        cells = [MODE_LABELS[mode], f"{row['total']:.3f}", f"{row['total'] / bayes:.1%}"]
        cells += [f"{v:.3f}" for v in row["per_session"]]
        if args.simulate:
            _, _, totals = simulate(kwargs, mode, args.simulate)
            stderr = float(totals.std(ddof=1) / np.sqrt(len(totals)))
            row["simulated"] = {"mean": float(totals.mean()), "stderr": stderr, "episodes": args.simulate}
            cells.append(f"{totals.mean():.3f} ± {stderr:.3f}")
        rows.append(cells)

    title = (f"Gridworld {args.size}x{args.size}, {args.num_goals} goals, T = {np.round(cached_solution(kwargs, 'bayes').config.transition_matrix, 4).tolist()}, "
             f"fixed sessions of {args.session_length}, H = {args.horizon}, rewards {args.goal_reward:g} / {args.step_reward:g}")
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    print(title)
    for cells in [columns] + rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"env_kwargs": kwargs, "returns": table}, f, indent=2)
    if args.markdown_out:
        command = "python -m envs.gridworld_reference " + " ".join(sys.argv[1:])
        lines = ["# Gridworld reference returns", "", f"Command: `{command.strip()}`", "", title, "",
                 "| " + " | ".join(columns) + " |", "| --- " + "| ---: " * (len(columns) - 1) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in rows]
        with open(args.markdown_out, "w") as f:
            f.write("\n".join(lines) + "\n")
    return table


if __name__ == "__main__":
    import tyro

    try:
        main(tyro.cli(Args))
    except ValueError as error:  # a bad setting, or a reference too big for this machine: one line, no traceback
        raise SystemExit(f"error: {error}")
