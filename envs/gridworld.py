"""The AlternatingGoal Gridworld DLCMDP (paper Appendix D.1), single and natively batched.

An N x N grid with G goal cells drawn per episode; the latent m is the index of the goal that pays in the
current session. Observation: the agent's (row, col) followed by every goal's (row, col), as float32;
which goal pays is never observed. Actions: 0 stay, 1 up, 2 right, 3 down, 4 left; a move into a wall
leaves the agent in place. A move that lands on the rewarding goal (staying on it included) earns
``goal_reward``, any other move ``step_reward``. At the start of every session the agent is placed on a
uniformly random cell that is not a goal (nu_0), and between sessions m' ~ T(. | m).

All randomness of an episode (goals, session ends, the latent of each session, each session's start
cell) is drawn at reset from the environment's generator, in one fixed order, by
:func:`sample_episode`. The batched :class:`GridworldVectorEnv` keeps one generator per sub-environment
and calls the same function, so with the same seeds it equals a ``SyncVectorEnv`` of
:class:`GridworldEnv` step for step, while its steps are plain numpy over all environments at once.

``reset(options={"keep_task": True})`` starts a new episode in the same task: the goal cells stay and the
latent continues its dynamics across the episode boundary (the test-time protocol of several
consecutive episodes). The reset ``info`` carries the first session's ``latent`` and ``session`` = 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.dlcmdp import SessionSchedule, make_schedule, sample_latent_chain, validate_transition_matrix

ACTION_NAMES = ("stay", "up", "right", "down", "left")
ACTION_DELTAS = np.array([(0, 0), (-1, 0), (0, 1), (1, 0), (0, -1)], dtype=np.int64)


@dataclass(frozen=True)
class GridworldConfig:
    """Validated Gridworld parameters and the tables derived from them."""

    size: int
    num_goals: int
    transition_matrix: np.ndarray
    schedule: SessionSchedule
    goal_reward: float
    step_reward: float
    coords: np.ndarray  # (num_cells, 2) row, col of each cell index
    move: np.ndarray  # (num_cells, 5) the cell each action leads to

    @property
    def num_cells(self) -> int:
        return self.size * self.size

    @property
    def horizon(self) -> int:
        return self.schedule.horizon


FLOAT32_MAX = float(np.finfo(np.float32).max)  # rewards end up in float32 buffers and networks


def check_reward_setting(name: str, value) -> None:
    """ValueError naming ``name`` unless ``value`` is a real number that float32 holds without overflowing."""
    try:
        finite = bool(np.isfinite(float(value))) and abs(float(value)) <= FLOAT32_MAX
    except (TypeError, ValueError):
        finite = False
    if not finite:
        raise ValueError(f"{name} must be a number finite in float32 (|x| <= {FLOAT32_MAX:.4g}), got {value!r}")


def default_transition_matrix(num_goals: int) -> np.ndarray:
    """The paper's latent dynamics generalised to G goals: stay with 0.2, else switch uniformly."""
    if num_goals == 1:
        return np.ones((1, 1))
    matrix = np.full((num_goals, num_goals), 0.8 / (num_goals - 1))
    np.fill_diagonal(matrix, 0.2)
    return matrix


def make_gridworld_config(
    size: int = 5,
    num_goals: int = 2,
    transition_matrix=None,
    schedule: str = "fixed",
    session_length: int = 15,
    session_prob: float = 1 / 15,
    num_sessions: int = 4,
    horizon: int = 60,
    goal_reward: float = 1.0,
    step_reward: float = -0.1,
) -> GridworldConfig:
    """Check every constructor argument (``ValueError`` naming it otherwise) and build the config."""
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer (the grid is size x size), got {size!r}")
    size = int(size)
    if int(num_goals) != num_goals or num_goals < 2:
        raise ValueError(f"num_goals must be an integer >= 2 (the latent is which goal pays), got {num_goals!r}")
    num_goals = int(num_goals)
    if num_goals >= size * size:
        raise ValueError(
            f"num_goals must be at most size * size - 1 = {size * size - 1} (the agent starts each "
            f"session on a cell that is not a goal), got {num_goals}"
        )
    if transition_matrix is None:
        transition_matrix = default_transition_matrix(num_goals)
    matrix = validate_transition_matrix(transition_matrix, num_goals)
    sessions = make_schedule(schedule, horizon, session_length, session_prob, num_sessions)
    for name, value in (("goal_reward", goal_reward), ("step_reward", step_reward)):
        check_reward_setting(name, value)

    rows, cols = np.divmod(np.arange(size * size), size)
    coords = np.stack([rows, cols], axis=1)
    targets = np.clip(coords[:, None, :] + ACTION_DELTAS[None], 0, size - 1)
    move = targets[..., 0] * size + targets[..., 1]
    matrix.setflags(write=False)
    coords.setflags(write=False)
    move.setflags(write=False)
    return GridworldConfig(size, num_goals, matrix, sessions, float(goal_reward), float(step_reward), coords, move)


@dataclass
class EpisodePlan:
    """Everything random about one episode, drawn at reset."""

    goals: np.ndarray  # (G,) goal cell of each latent value
    session_done: np.ndarray  # (H,) d_t
    latents: np.ndarray  # (K,) latent of each session
    start_cells: np.ndarray  # (K,) agent cell at the start of each session (nu_0)


def sample_episode(
    config: GridworldConfig,
    rng: np.random.Generator,
    goals: np.ndarray | None = None,
    previous_latent: int | None = None,
) -> EpisodePlan:
    """Draw one episode: new goals unless given; m^0 uniform, or ~ T(. | previous_latent) if given."""
    if goals is None:
        goals = rng.choice(config.num_cells, size=config.num_goals, replace=False)
    session_done = config.schedule.sample(rng)
    num_sessions = int(session_done.sum())
    if previous_latent is None:
        first_probs = np.full(config.num_goals, 1.0 / config.num_goals)
    else:
        first_probs = config.transition_matrix[previous_latent]
    latents = sample_latent_chain(rng, first_probs, config.transition_matrix, num_sessions)
    free_cells = np.setdiff1d(np.arange(config.num_cells), goals)
    start_cells = free_cells[rng.integers(len(free_cells), size=num_sessions)]
    return EpisodePlan(np.asarray(goals, dtype=np.int64), session_done, latents, start_cells)


def _observation_space(config: GridworldConfig) -> gym.spaces.Box:
    dim = 2 * (1 + config.num_goals)
    return gym.spaces.Box(0.0, float(config.size - 1), shape=(dim,), dtype=np.float32)


class GridworldEnv(gym.Env):
    """AlternatingGoal Gridworld, one episode at a time. Arguments: :func:`make_gridworld_config`."""

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(self, render_mode: str | None = None, **kwargs: Any):
        self.config = make_gridworld_config(**kwargs)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.render_mode = render_mode
        self.observation_space = _observation_space(self.config)
        self.action_space = gym.spaces.Discrete(len(ACTION_NAMES))
        self._latent_onehot = np.eye(self.config.num_goals, dtype=np.float32)
        self._plan: EpisodePlan | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        goals, previous_latent = None, None
        if options and options.get("keep_task"):
            if self._plan is None:
                raise ValueError('options={"keep_task": True} needs a previous episode: call reset() once first')
            goals, previous_latent = self._plan.goals, self.latent
        self._plan = sample_episode(self.config, self.np_random, goals, previous_latent)
        self._t, self._session = 0, 0
        self._cell = int(self._plan.start_cells[0])
        return self._observation(), self._info(False)

    def step(self, action):
        if self._plan is None or self._t >= self.config.horizon:
            raise RuntimeError("the episode is over (truncated at the horizon): call reset()")
        if not 0 <= int(action) < len(ACTION_NAMES):
            raise ValueError(f"action must be an integer in [0, {len(ACTION_NAMES)}) {ACTION_NAMES}, got {action!r}")
        plan = self._plan
        next_cell = int(self.config.move[self._cell, int(action)])
        paying_goal = plan.goals[plan.latents[self._session]]
        reward = self.config.goal_reward if next_cell == paying_goal else self.config.step_reward
        session_done = bool(plan.session_done[self._t])
        info = self._info(session_done)
        self._t += 1
        truncated = self._t == self.config.horizon
        if session_done and not truncated:
            self._session += 1
            next_cell = int(plan.start_cells[self._session])
        self._cell = next_cell
        return self._observation(), reward, False, truncated, info

    @property
    def latent(self) -> int:
        """Ground truth for oracles and plots: the current session's latent index."""
        return int(self._plan.latents[self._session])

    def _observation(self) -> np.ndarray:
        cells = np.concatenate([[self._cell], self._plan.goals])
        return self.config.coords[cells].reshape(-1).astype(np.float32)

    def _info(self, session_done: bool) -> dict[str, Any]:
        latent = self._plan.latents[self._session]
        return {"session_done": session_done, "latent": self._latent_onehot[latent].copy(), "session": self._session}

    def render(self):
        if self.render_mode is None or self._plan is None:
            return None
        size, goals = self.config.size, self._plan.goals
        paying = goals[self._plan.latents[self._session]]
        if self.render_mode == "ansi":
            chars = np.full(self.config.num_cells, ".")
            chars[goals] = "g"
            chars[paying] = "G"
            chars[self._cell] = "A" if self._cell not in goals else "@"
            return "\n".join(" ".join(row) for row in chars.reshape(size, size)) + "\n"
        colors = np.full((self.config.num_cells, 3), 235, dtype=np.uint8)
        colors[goals] = (150, 150, 150)
        colors[paying] = (60, 180, 75)
        image = np.repeat(np.repeat(colors.reshape(size, size, 3), 32, axis=0), 32, axis=1)
        row, col = self.config.coords[self._cell] * 32
        image[row + 8 : row + 24, col + 8 : col + 24] = (30, 90, 200)
        image[::32, :] = image[:, ::32] = 90
        return image


class GridworldVectorEnv(VectorEnv):
    """``num_envs`` Gridworlds stepped together over numpy arrays. Same arguments as :class:`GridworldEnv`.

    Sub-environment i is seeded with ``seed + i`` (or ``seed[i]``), as in ``SyncVectorEnv``, and
    ``autoreset_mode`` behaves as in ``SyncVectorEnv``; infos carry the same keys with ``_key`` masks.
    """

    def __init__(self, num_envs: int = 1, autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP, **kwargs: Any):
        if int(num_envs) != num_envs or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        self.config = make_gridworld_config(**kwargs)
        self.num_envs = int(num_envs)
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        self.metadata = {"autoreset_mode": self.autoreset_mode}
        self.render_mode = None
        self.single_observation_space = _observation_space(self.config)
        self.single_action_space = gym.spaces.Discrete(len(ACTION_NAMES))
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

        n, horizon = self.num_envs, self.config.horizon
        self._rngs: list[np.random.Generator | None] = [None] * n
        self._goals = np.zeros((n, self.config.num_goals), dtype=np.int64)
        self._session_done = np.zeros((n, horizon), dtype=bool)
        self._latents = np.zeros((n, horizon), dtype=np.int64)
        self._start_cells = np.zeros((n, horizon), dtype=np.int64)
        self._goal_obs = np.zeros((n, 2 * self.config.num_goals), dtype=np.float32)
        self._t = np.zeros(n, dtype=np.int64)
        self._session = np.zeros(n, dtype=np.int64)
        self._cell = np.zeros(n, dtype=np.int64)
        self._started = np.zeros(n, dtype=bool)
        self._needs_reset = np.zeros(n, dtype=bool)
        self._latent_onehot = np.eye(self.config.num_goals, dtype=np.float32)
        self._all = np.ones(n, dtype=bool)

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        if seed is None:
            seed = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            seed = [int(seed) + i for i in range(self.num_envs)]
        if len(seed) != self.num_envs:
            raise ValueError(f"seed must be an int or a list of num_envs={self.num_envs} seeds, got {len(seed)}")
        options = dict(options or {})
        mask = options.pop("reset_mask", self._all)
        if not isinstance(mask, np.ndarray) or mask.shape != (self.num_envs,) or mask.dtype != np.bool_:
            raise ValueError(f'options["reset_mask"] must be a bool numpy array of shape ({self.num_envs},)')
        keep_task = bool(options.get("keep_task"))
        if keep_task and not self._started[mask].all():
            raise ValueError('options={"keep_task": True} needs a previous episode: call reset() once first')
        for i in np.flatnonzero(mask):
            if seed[i] is not None or self._rngs[i] is None:
                self._rngs[i], _ = seeding.np_random(seed[i])
        self._reset_envs(np.flatnonzero(mask), keep_task)
        return self._observations(), self._infos(np.zeros(self.num_envs, dtype=bool), mask=mask)

    def _reset_envs(self, indices: np.ndarray, keep_task: bool = False) -> None:
        for i in indices:
            previous_latent = int(self._latents[i, self._session[i]]) if keep_task else None
            plan = sample_episode(self.config, self._rngs[i], self._goals[i] if keep_task else None, previous_latent)
            num_sessions = len(plan.latents)
            self._goals[i] = plan.goals
            self._session_done[i] = plan.session_done
            self._latents[i, :num_sessions] = plan.latents
            self._start_cells[i, :num_sessions] = plan.start_cells
        self._goal_obs[indices] = self.config.coords[self._goals[indices]].reshape(len(indices), 2 * self.config.num_goals)
        self._t[indices] = 0
        self._session[indices] = 0
        self._cell[indices] = self._start_cells[indices, 0]
        self._started[indices] = True
        self._needs_reset[indices] = False

    def step(self, actions):
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or not np.issubdtype(actions.dtype, np.integer):
            raise ValueError(f"actions must be integers of shape ({self.num_envs},), got {actions.dtype} {actions.shape}")
        if actions.min() < 0 or actions.max() >= len(ACTION_NAMES):
            raise ValueError(f"actions must be in [0, {len(ACTION_NAMES)}) {ACTION_NAMES}, got {np.unique(actions).tolist()}")
        if not self._started.all():
            raise RuntimeError("call reset() before step()")
        n = self.num_envs
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            # as in SyncVectorEnv: an environment truncated last step resets now and ignores its action
            stepping = ~self._needs_reset
            self._reset_envs(np.flatnonzero(self._needs_reset))
        elif self._needs_reset.any():
            raise RuntimeError(
                f"sub-environments {np.flatnonzero(self._needs_reset).tolist()} are truncated: call reset()"
            )
        else:
            stepping = self._all
        envs = np.flatnonzero(stepping)
        session = self._session.copy()
        latents = self._latents[np.arange(n), session]
        rewards = np.zeros(n, dtype=np.float64)
        truncations = np.zeros(n, dtype=bool)
        session_done = np.zeros(n, dtype=bool)

        t = self._t[envs]
        next_cell = self.config.move[self._cell[envs], actions[envs].astype(np.int64)]
        paying_goal = self._goals[envs, latents[envs]]
        rewards[envs] = np.where(next_cell == paying_goal, self.config.goal_reward, self.config.step_reward)
        session_done[envs] = self._session_done[envs, t]
        truncations[envs] = t + 1 == self.config.horizon
        # the session's last step was rewarded with the old latent; now the latent moves and nu_0 resets
        new_session = session_done[envs] & ~truncations[envs]
        self._session[envs] += new_session
        self._cell[envs] = np.where(new_session, self._start_cells[envs, self._session[envs]], next_cell)
        self._t[envs] = t + 1
        self._needs_reset = truncations.copy()
        observations, infos = self._observations(), self._infos(session_done, latents, session)

        if self.autoreset_mode == AutoresetMode.SAME_STEP and truncations.any():
            done = np.flatnonzero(truncations)
            final_obs = np.full(n, None, dtype=object)
            for i in done:
                final_obs[i] = observations[i]
            final_info = self._infos(session_done, latents, session, mask=truncations)
            self._reset_envs(done)
            observations = self._observations()
            reset_infos = self._infos(np.zeros(n, dtype=bool))
            for key in ("session_done", "latent", "session"):
                infos[key][done] = reset_infos[key][done]
            infos.update(final_obs=final_obs, _final_obs=truncations.copy(),
                         final_info=final_info, _final_info=truncations.copy())
        return observations, rewards, np.zeros(n, dtype=bool), truncations, infos

    @property
    def latents(self) -> np.ndarray:
        """Ground truth for oracles and plots: each environment's current latent index, shape (num_envs,)."""
        return self._latents[np.arange(self.num_envs), self._session].copy()

    def _observations(self) -> np.ndarray:
        agent = self.config.coords[self._cell].astype(np.float32)
        return np.concatenate([agent, self._goal_obs], axis=1)

    def _infos(self, session_done, latents=None, session=None, mask=None) -> dict[str, np.ndarray]:
        """Infos in the layout of ``SyncVectorEnv``: values where ``mask`` is set, zeros elsewhere."""
        mask = self._all if mask is None else mask
        session = self._session.copy() if session is None else session
        latents = self._latents[np.arange(self.num_envs), session] if latents is None else latents
        return {
            "session_done": session_done & mask, "_session_done": mask.copy(),
            "latent": self._latent_onehot[latents] * mask[:, None], "_latent": mask.copy(),
            "session": session * mask, "_session": mask.copy(),
        }
