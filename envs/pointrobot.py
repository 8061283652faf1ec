"""PointRobot (`dynamite/PointRobot-v0`): a 2-D point robot that must reach a goal on the edge of a half circle, the
task of the structured-latent paper (Ren, Garg & Anandkumar), after PEARL's sparse point robot, as a DLCMDP.

A task is a mixture of two base tasks: the anchor goals at the two ends of the half circle of radius 1, at angles 0
and pi. Its latent is the mixture weight w = (w_0, w_1) on the simplex, drawn from Dir(alpha, alpha) (alpha = 0.2,
so goals cluster near the anchors), and its goal is the point of the half circle at angle w_1 * pi. As in the paper, a
fixed set of 40 such goals (drawn once, from ``task_seed``) is split into 30 training and 10 test tasks
(``task_set="train"`` or ``"test"``); ``task_set="fresh"`` draws a new w every episode.

As a DLCMDP, between sessions the weights swap, w' = (w_1, w_0), with probability ``switch_prob`` (the goal jumps to
the mirror point, near the other anchor) and stay otherwise. One session (the default, H = 20) is the paper's static
task. The robot starts every session at the origin; its observation is its position, its action a displacement in
[-0.1, 0.1]^2 (positions are kept in [-2, 2]^2). The reward is PEARL's sparse one: 1 - d within ``goal_radius`` (0.2)
of the goal, d the distance, and 0 elsewhere (``sparse=False``: -d everywhere).
"""

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.dlcmdp import EpisodeSessions

ARENA = 2.0  # positions are kept in [-ARENA, ARENA]^2; 20 steps of 0.1 never reach its edge from the origin
NUM_TASKS, NUM_TRAIN_TASKS = 40, 30


def task_weights(alpha: float = 0.2, task_seed: int = 1337) -> np.ndarray:
    """The fixed task set: 40 mixture weights (40, 2) from Dir(alpha, alpha), the first 30 for training."""
    return np.random.default_rng(task_seed).dirichlet([alpha, alpha], size=NUM_TASKS)


def goal_of(weights: np.ndarray) -> np.ndarray:
    """The point of the unit half circle at angle w_1 * pi: anchor 0 at (1, 0), anchor 1 at (-1, 0)."""
    angle = weights[..., 1] * np.pi
    return np.stack([np.cos(angle), np.sin(angle)], -1)


class PointRobotEnv(EpisodeSessions, gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    latent_changes_dynamics = False  # the latent sets the reward only

    def __init__(self, horizon: int = 20, schedule: str = "fixed", session_length: int = 20, session_prob: float = 0.05,
                 num_sessions: int = 1, task_set: str = "train", alpha: float = 0.2, task_seed: int = 1337,
                 switch_prob: float = 0.8, goal_radius: float = 0.2, sparse: bool = True,
                 render_mode: str | None = None):
        if task_set not in ("train", "test", "fresh"):
            raise ValueError(f"task_set must be 'train', 'test' or 'fresh', got {task_set!r}")
        if not (np.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be a positive number, got {alpha!r}")
        if not 0 <= switch_prob <= 1:
            raise ValueError(f"switch_prob must be in [0, 1], got {switch_prob!r}")
        if not (np.isfinite(goal_radius) and goal_radius > 0):
            raise ValueError(f"goal_radius must be a positive number, got {goal_radius!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self._init_sessions(horizon, schedule, session_length, session_prob, num_sessions, random_phase=False)
        self.task_set, self.alpha, self.switch_prob = task_set, float(alpha), float(switch_prob)
        self.goal_radius, self.sparse, self.render_mode = float(goal_radius), bool(sparse), render_mode
        tasks = task_weights(alpha, task_seed)
        self.tasks = {"train": tasks[:NUM_TRAIN_TASKS], "test": tasks[NUM_TRAIN_TASKS:], "fresh": None}[task_set]
        self.observation_space = spaces.Box(-ARENA, ARENA, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-0.1, 0.1, shape=(2,), dtype=np.float32)
        self._position = np.zeros(2)
        self._set_weights(np.array([0.5, 0.5]))

    @property
    def latent(self) -> np.ndarray:
        """The mixture weights (w_0, w_1) of the current session's goal."""
        return self._weights.copy()

    @property
    def goal(self) -> np.ndarray:
        return self._goal.copy()

    def _set_weights(self, weights: np.ndarray) -> None:
        self._weights = weights
        angle = float(weights[1]) * np.pi  # goal_of, for one task
        self._goal = np.array([np.cos(angle), np.sin(angle)])

    def _new_task(self) -> None:
        if self.tasks is None:
            self._set_weights(self.np_random.dirichlet([self.alpha, self.alpha]))
        else:
            self._set_weights(self.tasks[self.np_random.integers(len(self.tasks))].copy())

    def _next_latent(self) -> None:
        if self.np_random.random() < self.switch_prob:
            self._set_weights(self._weights[::-1].copy())
        self._position = np.zeros(2)  # every session starts at the origin

    def _obs(self) -> np.ndarray:
        return self._position.astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._start_episode(options)
        self._position = np.zeros(2)
        return self._obs(), {**self._get_reset_info(), "goal": self.goal}

    def step(self, action):
        if self._t >= self.horizon:
            raise RuntimeError("the episode is over (truncated at the horizon): call reset()")
        dx, dy = (min(max(float(a), -0.1), 0.1) for a in np.asarray(action).ravel())  # Python floats: fast in 2-D
        x = min(max(float(self._position[0]) + dx, -ARENA), ARENA)
        y = min(max(float(self._position[1]) + dy, -ARENA), ARENA)
        self._position = np.array([x, y])
        goal = self._goal
        distance = float(np.hypot(x - goal[0], y - goal[1]))
        reward = (1.0 - distance if distance <= self.goal_radius else 0.0) if self.sparse else -distance
        _, truncated, info = self._end_step()  # a session end moves the goal and the robot back to the origin
        info.update(goal=goal.copy(), distance=distance)
        return self._obs(), float(reward), False, truncated, info

    def render(self):
        """A 128 x 128 picture: the half circle (gray), the goal's radius (red), the robot (blue)."""
        if self.render_mode != "rgb_array":
            return None
        size = 128
        image = np.full((size, size, 3), 255, dtype=np.uint8)
        ys, xs = np.mgrid[0:size, 0:size]
        x, y = (xs / (size - 1) * 2 - 1) * 1.3, (1 - ys / (size - 1)) * 1.6 - 0.3  # world coordinates of each pixel
        image[np.abs(np.hypot(x, y) - 1) < 0.012] = (160, 160, 160)
        image[np.hypot(x - self.goal[0], y - self.goal[1]) < self.goal_radius] = (235, 120, 120)
        image[np.hypot(x - self._position[0], y - self._position[1]) < 0.05] = (40, 70, 200)
        return image
