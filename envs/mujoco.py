"""Continuous-control DLCMDPs on gymnasium's MuJoCo models (paper Appendix D.2).

* ``dynamite/Reacher-v0``: the two-joint arm reaches for a target that moves along a circle between sessions,
  [x, y] = [r cos(alpha i), r sin(alpha i)] with i the session index, alpha ~ U(0, 2 pi) and r ~ U(0.1, 0.2)
  drawn per episode; r_t = -||fingertip - target|| - 0.05 ||a_t||.
* ``dynamite/HalfCheetahDir-v0``: run forward or backward; the direction follows a 2-state Markov chain
  between sessions (uniform in the first); r_t = d v_t - 0.05 ||a_t||.
* ``dynamite/HalfCheetahVel-v0``: run at v_g = 1.5 + 1.5 sin(0.2 i); r_t = -|v_t - v_g| - 0.05 ||a_t||.
* ``dynamite/HalfCheetahWindVel-v0``: as Vel, and a wind pushes the torso backwards along x with the force
  f_w = 10 + 10 sin(0.3 i) at every simulation step.

The latent is never in the observation (the Reacher's target coordinates and fingertip-to-target vector are
removed); every step's ``info`` carries ``session_done``, ``latent`` and ``session`` as in the Gridworld. A
session's end changes only the latent: the robot carries on from where it is (nu_0 is the identity here).
``reset(options={"keep_task": True})`` starts another episode of the same task: the per-episode draws (the
Reacher's circle, the sinusoids' phases) are kept and the latent's dynamics continue from the last session.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from gymnasium.envs.mujoco.reacher_v5 import ReacherEnv

from envs.dlcmdp import EpisodeSessions, validate_transition_matrix

CONTROL_COST = 0.05  # weight of ||a||_2 in every reward here (paper Appendix D.2)
# gymnasium's reward weights: the DLCMDP rewards here are the paper's, so a weight given would change nothing
REWARD_WEIGHTS = ("reward_dist_weight", "reward_control_weight", "forward_reward_weight", "ctrl_cost_weight")


def check_reward_weights(kwargs: dict[str, Any]) -> None:
    """ValueError naming the first of ``REWARD_WEIGHTS`` in ``kwargs``: refused rather than silently ignored."""
    for name in REWARD_WEIGHTS:
        if name in kwargs:
            raise ValueError(f"{name} is not a setting of this DLCMDP: its reward is fixed (paper Appendix D.2), "
                             f"got {name}={kwargs[name]!r}")


def norm(action: np.ndarray):
    """||a||_2 as ``np.linalg.norm`` computes it (the same dtype and rounding), without its overhead."""
    return np.sqrt(action.dot(action))


class SimulationViews:
    """The arrays of an environment's ``MjData`` read and written at every step, fetched once (each attribute access
    of ``MjData`` builds a new view), and gymnasium's ``MujocoEnv.do_simulation`` on them."""

    def __init__(self, env):
        self.model, self.data = env.model, env.data
        self.qpos, self.qvel, self.ctrl = env.data.qpos, env.data.qvel, env.data.ctrl
        self.xpos, self.xfrc_applied = env.data.xpos, env.data.xfrc_applied

    def simulate(self, action, frame_skip: int) -> np.ndarray:
        """The action as an array, after ``frame_skip`` physics steps under it (a wrong shape is a ValueError)."""
        action = np.asarray(action)
        if action.shape != self.ctrl.shape:
            raise ValueError(f"Action dimension mismatch. Expected {self.ctrl.shape}, found {action.shape}")
        self.ctrl[:] = action
        mujoco.mj_step(self.model, self.data, nstep=frame_skip)
        mujoco.mj_rnePostConstraint(self.model, self.data)  # as gymnasium does: force quantities stay current
        return action


class DLCMDPReacherEnv(EpisodeSessions, ReacherEnv):
    """Reacher-v5 physics with a target that moves along a circle from session to session."""

    def __init__(self, horizon: int = 400, schedule: str = "fixed", session_length: int = 50,
                 session_prob: float = 1 / 50, num_sessions: int = 8, random_phase: bool = False, **kwargs: Any):
        check_reward_weights(kwargs)  # before the model loads
        ReacherEnv.__init__(self, **kwargs)
        self._init_sessions(horizon, schedule, session_length, session_prob, num_sessions, random_phase)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(8,), dtype=np.float64)
        self._radius, self._angle_step = 0.15, 0.0
        self._views = SimulationViews(self)
        self._fingertip = self.model.body("fingertip").id

    @property
    def latent(self) -> np.ndarray:
        """The target's (x, y)."""
        angle = self._angle_step * self._session
        return np.array([self._radius * np.cos(angle), self._radius * np.sin(angle)])

    def _new_task(self) -> None:
        self._angle_step = self.np_random.uniform(0, 2 * np.pi)
        self._radius = self.np_random.uniform(0.1, 0.2)

    def _next_latent(self) -> None:
        qpos, qvel = self.data.qpos.copy(), self.data.qvel.copy()
        qpos[-2:], qvel[-2:] = self.latent, 0.0
        self.set_state(qpos, qvel)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._options = options
        return super().reset(seed=seed, options=options)

    def reset_model(self):
        qpos = self.init_qpos + self.np_random.uniform(low=-0.1, high=0.1, size=self.model.nq)
        qvel = self.init_qvel + self.np_random.uniform(low=-0.005, high=0.005, size=self.model.nv)
        self.set_state(qpos, qvel)
        self._start_episode(self._options)
        self._next_latent()
        return self._get_obs()

    def step(self, action):
        action = self._views.simulate(action, self.frame_skip)
        distance = np.linalg.norm(self._views.xpos[self._fingertip, :2] - self.latent)
        reward_dist, reward_ctrl = -distance, -CONTROL_COST * norm(action)
        _, truncated, info = self._end_step()
        info.update(reward_dist=reward_dist, reward_ctrl=reward_ctrl)
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), float(reward_dist + reward_ctrl), False, truncated, info  # a float, as checkers ask

    def _get_obs(self):
        """cos and sin of the two joint angles, their velocities and the fingertip's (x, y): no target."""
        views = self._views
        theta = views.qpos[:2]
        return np.concatenate([np.cos(theta), np.sin(theta), views.qvel[:2], views.xpos[self._fingertip, :2]])


class _DLCMDPHalfCheetah(EpisodeSessions, HalfCheetahEnv):
    """HalfCheetah-v5 physics; subclasses set the latent and the reward. The sinusoids' phase is drawn per episode
    (``random_phase=False``: always 0, when the latent is a fixed function of the session index)."""

    def __init__(self, horizon: int = 400, schedule: str = "fixed", session_length: int = 50,
                 session_prob: float = 1 / 50, num_sessions: int = 8, random_phase: bool = True, **kwargs: Any):
        check_reward_weights(kwargs)  # before the model loads
        HalfCheetahEnv.__init__(self, **kwargs)
        self._init_sessions(horizon, schedule, session_length, session_prob, num_sessions, random_phase)
        self._torso = self.model.body("torso").id
        self._views, self._dt = SimulationViews(self), self.dt
        self._first_position = 1 if self._exclude_current_positions_from_observation else 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._options = options
        return super().reset(seed=seed, options=options)

    def reset_model(self):
        observation = super().reset_model()
        self._start_episode(self._options)
        return observation

    def wind(self) -> float:
        """Force along x on the torso (negative: backwards); none but in Wind+Vel."""
        return 0.0

    def task_reward(self, velocity: float) -> float:
        raise NotImplementedError

    def step(self, action):
        views = self._views
        x_before = views.qpos[0]
        views.xfrc_applied[self._torso, 0] = self.wind()
        action = views.simulate(action, self.frame_skip)
        velocity = (views.qpos[0] - x_before) / self._dt
        reward_task, reward_ctrl = self.task_reward(velocity), -CONTROL_COST * norm(action)
        _, truncated, info = self._end_step()
        info.update(x_velocity=velocity, reward_task=reward_task, reward_ctrl=reward_ctrl)
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), float(reward_task + reward_ctrl), False, truncated, info  # a float, as checkers ask

    def _get_obs(self):
        """HalfCheetah-v5's: the joint positions (without the torso's x, by default) and velocities."""
        return np.concatenate((self._views.qpos[self._first_position:], self._views.qvel))


class DLCMDPHalfCheetahDirEnv(_DLCMDPHalfCheetah):
    """Run forward (latent +1) or backward (-1); the direction follows a Markov chain between sessions."""

    def __init__(self, transition_matrix=((0.2, 0.8), (0.8, 0.2)), **kwargs: Any):
        super().__init__(**kwargs)
        self.transition_matrix = validate_transition_matrix(transition_matrix, 2)
        self._direction = 0

    @property
    def latent(self) -> np.ndarray:
        return np.array([1.0 if self._direction == 0 else -1.0])

    def _new_task(self) -> None:
        self._direction = int(self.np_random.integers(2))

    def _next_latent(self) -> None:
        self._direction = int(self.np_random.choice(2, p=self.transition_matrix[self._direction]))

    def task_reward(self, velocity: float) -> float:
        return float(self.latent[0] * velocity)


class DLCMDPHalfCheetahVelEnv(_DLCMDPHalfCheetah):
    """Run at the target velocity v_g = 1.5 + 1.5 sin(0.2 i [+ phase])."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._set_targets()

    def _set_targets(self) -> None:
        """The sinusoids of the current session (i and the phase), computed once per session."""
        self.target_velocity = float(1.5 + 1.5 * np.sin(0.2 * self._session + self._phase))

    @property
    def latent(self) -> np.ndarray:
        return np.array([self.target_velocity])

    def _new_task(self) -> None:
        self._set_targets()

    def _next_latent(self) -> None:
        self._set_targets()  # the latent is a function of the session index

    def task_reward(self, velocity: float) -> float:
        return float(-abs(velocity - self.target_velocity))


class DLCMDPHalfCheetahWindVelEnv(DLCMDPHalfCheetahVelEnv):
    """HalfCheetah-Vel, and a backward wind of f_w = 10 + 10 sin(0.3 i [+ phase]) on the torso."""

    latent_changes_dynamics = True  # the wind: agents should model next states too

    @property
    def latent(self) -> np.ndarray:
        return np.array([self.target_velocity, self.wind_force])

    def _set_targets(self) -> None:
        super()._set_targets()
        self.wind_force = float(10.0 + 10.0 * np.sin(0.3 * self._session + self._phase))

    def wind(self) -> float:
        return -self.wind_force
