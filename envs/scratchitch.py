"""ScratchItch: an assistive-robot DLCMDP on pybullet (paper Appendix D.3), built from parts that ship on PyPI.

A person sits in a chair with the right arm resting forward; a Franka Panda (7 joints, from ``pybullet_data``)
is mounted on a fixed base beside the chair, level with the armrest, and holds a scratching tool. The person has an
itch on the right arm; the robot must find it and scratch it gently. The person is made of pybullet primitives: a
torso box, a head sphere, upper-arm and forearm capsules and a hand sphere.

* Latent: the itch's position along the arm. It moves between sessions as x = 0.5 + sin(0.2 i [+ phase]), i the
  session index; x's range [-0.5, 1.5] spans the arm from shoulder (-0.5) through elbow to wrist (1.5), i.e. the
  fraction of the arm's length from the shoulder is u = (x + 0.5) / 2. The point at u on the arm's axis is projected
  onto the arm's surface on the side facing the robot and up. ``info["latent"]`` is [u]; ``info["itch"]`` the 3D
  point. The arm's pose varies per episode (``arm_pose_noise``), so the same u is a different point in space.
* Actions: 7-D joint-position deltas in [-1, 1], times ``MAX_JOINT_STEP`` rad, tracked by the joints' position
  controllers over ``FRAME_SKIP`` physics steps.
* Observation (24-D, no itch): tool-tip position (3), tool orientation quaternion (4), the 7 joint positions, the
  total contact force on the tool (1), the person's right shoulder, elbow and wrist positions (9).
* Reward r = r_R + r_H. Task r_R = -||tool tip - itch|| (closing in) + ``SCRATCH_BONUS`` when the tool touches the
  person within ``ITCH_RADIUS`` of the itch with a total force in (0, 10] N. Human preferences, paper weights
  alpha = [1, 1, 1, 0, 0, 0, 0], omega = [0.25, 0.01, 0.05, 0, 0, 0, 0]: r_H = -0.25 C_v - 0.01 C_f - 0.05 C_hf with
  C_v the tool tip's speed (m/s), C_f the force (N) that the robot and tool apply to the person anywhere but with the
  tool at the itch, and C_hf the tool's force at the itch when it exceeds 10 N. Every term is in ``info``.
* Sessions as in every DLCMDP here (fixed, Bernoulli or Poisson-K schedules; default 4 sessions of 50 steps,
  H = 200); a session's end moves only the itch: the robot carries on from where it is.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


@contextlib.contextmanager
def _quiet():
    """Silence what pybullet's C code prints (its build time on import, "argv[0]=" on every connect); Python errors
    still show, they are raised after the streams are back."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1), os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


with _quiet():
    import pybullet
    import pybullet_data
    from pybullet_utils.bullet_client import BulletClient

from envs.dlcmdp import EpisodeSessions

PHYSICS_STEP = 0.01  # s
FRAME_SKIP = 5  # physics steps per env step: 0.05 s
MAX_JOINT_STEP = 0.05  # rad per env step at |action| = 1
ITCH_RADIUS = 0.025  # m: a contact this close to the itch scratches it
FORCE_LIMIT = 10.0  # N: more than this at the itch hurts
SCRATCH_BONUS = 1.0
PREFERENCE_WEIGHTS = {"velocity": 0.25, "force_away": 0.01, "high_force": 0.05}  # omega of the active costs

# the person (metres, world frame: z up, the person faces +x, their right is -y)
SHOULDER = np.array([0.0, -0.2, 1.05])
NOMINAL_ELBOW = np.array([0.08, -0.24, 0.78])
NOMINAL_WRIST = np.array([0.33, -0.24, 0.76])
UPPER_ARM_RADIUS, FOREARM_RADIUS, HAND_RADIUS = 0.045, 0.04, 0.045
ROBOT_BASE = np.array([0.5, -0.6, 0.5])  # in front of the chair on the person's right, facing the arm
ROBOT_YAW = float(np.arctan2(0.35, -0.35))
ARM_JOINTS = list(range(7))
FINGER_JOINTS = [9, 10]
READY_POSE = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])  # the Panda's usual start
GRASP_LINK = 11  # panda_grasptarget: the tool is held here, along the hand's z axis
TOOL_LENGTH, TOOL_RADIUS = 0.12, 0.012
# the itch's side of the arm: towards the robot and up (projected perpendicular to the arm's axis)
OUTWARD = np.array([0.0, -0.6, 0.8])


def arm_point(shoulder: np.ndarray, elbow: np.ndarray, wrist: np.ndarray, u: float) -> np.ndarray:
    """The point at fraction ``u`` of the arm's length (shoulder 0 -> elbow -> wrist 1), on the arm's surface on the
    OUTWARD side."""
    upper, fore = np.linalg.norm(elbow - shoulder), np.linalg.norm(wrist - elbow)
    along = float(np.clip(u, 0.0, 1.0)) * (upper + fore)
    if along <= upper:
        start, end, radius, s = shoulder, elbow, UPPER_ARM_RADIUS, along / upper
    else:
        start, end, radius, s = elbow, wrist, FOREARM_RADIUS, (along - upper) / fore
    axis = (end - start) / np.linalg.norm(end - start)
    normal = OUTWARD - OUTWARD.dot(axis) * axis
    return start + s * (end - start) + radius * normal / np.linalg.norm(normal)


def reward_terms(tip: np.ndarray, itch: np.ndarray, tip_speed: float, contact_points: np.ndarray,
                 contact_forces: np.ndarray, by_tool: np.ndarray) -> dict[str, float]:
    """The reward's terms at one step. ``contact_points`` (n, 3) are the contacts of the robot and tool with the
    person (points on the person), ``contact_forces`` (n,) their normal forces in N, ``by_tool`` (n,) whether the
    tool (not another robot link) makes the contact."""
    contact_points = np.asarray(contact_points, dtype=np.float64).reshape(-1, 3)
    contact_forces, by_tool = np.asarray(contact_forces, dtype=np.float64), np.asarray(by_tool, dtype=bool)
    at_itch = by_tool & (np.linalg.norm(contact_points - itch, axis=1) < ITCH_RADIUS)
    itch_force, away_force = float(contact_forces[at_itch].sum()), float(contact_forces[~at_itch].sum())
    scratching = 0.0 < itch_force <= FORCE_LIMIT
    cost_high_force = itch_force if itch_force > FORCE_LIMIT else 0.0
    terms = {
        "reward_distance": -float(np.linalg.norm(tip - itch)),
        "reward_scratch": SCRATCH_BONUS if scratching else 0.0,
        "reward_velocity": -PREFERENCE_WEIGHTS["velocity"] * float(tip_speed),
        "reward_force_away": -PREFERENCE_WEIGHTS["force_away"] * away_force,
        "reward_high_force": -PREFERENCE_WEIGHTS["high_force"] * cost_high_force,
    }
    terms["itch_force"], terms["away_force"] = itch_force, away_force
    return terms


REWARD_KEYS = ("reward_distance", "reward_scratch", "reward_velocity", "reward_force_away", "reward_high_force")


def _capsule_orientation(direction: np.ndarray) -> list[float]:
    """The quaternion that turns the z axis (a pybullet capsule's axis) onto ``direction``."""
    z = np.array([0.0, 0.0, 1.0])
    d = direction / np.linalg.norm(direction)
    axis, cos = np.cross(z, d), float(z.dot(d))
    if np.linalg.norm(axis) < 1e-9:
        return [0.0, 0.0, 0.0, 1.0] if cos > 0 else [1.0, 0.0, 0.0, 0.0]
    axis /= np.linalg.norm(axis)
    half = np.arccos(np.clip(cos, -1.0, 1.0)) / 2
    return [*(np.sin(half) * axis), np.cos(half)]


class ScratchItchEnv(EpisodeSessions, gym.Env):
    """A Panda scratches an itch that moves along a seated person's right arm from session to session."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": int(round(1 / (PHYSICS_STEP * FRAME_SKIP)))}
    latent_changes_dynamics = False

    def __init__(self, horizon: int = 200, schedule: str = "fixed", session_length: int = 50,
                 session_prob: float = 1 / 50, num_sessions: int = 4, random_phase: bool = True,
                 arm_pose_noise: float = 0.1, render_mode: str | None = None,
                 render_size: tuple[int, int] = (320, 240)):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if not 0.0 <= arm_pose_noise <= 0.5:
            raise ValueError(f"arm_pose_noise must be in [0, 0.5] (a perturbation of unit directions), got "
                             f"{arm_pose_noise!r}")
        self._init_sessions(horizon, schedule, session_length, session_prob, num_sessions, random_phase)
        self.render_mode, self.render_size = render_mode, tuple(render_size)
        self.arm_pose_noise = float(arm_pose_noise)
        self.dt = PHYSICS_STEP * FRAME_SKIP
        with _quiet():
            self._client = BulletClient(connection_mode=pybullet.DIRECT)
        self._build_scene()
        self.action_space = spaces.Box(-1.0, 1.0, shape=(7,), dtype=np.float32)
        low = np.full(24, -np.inf)
        high = np.full(24, np.inf)
        low[3:7], high[3:7] = -1.0, 1.0  # the quaternion
        low[7:14], high[7:14] = self._lower, self._upper
        low[14] = 0.0  # the tool's contact force
        self.observation_space = spaces.Box(low, high, dtype=np.float64)
        self._arm = (SHOULDER, NOMINAL_ELBOW, NOMINAL_WRIST)
        self._tip = np.zeros(3)

    # scene ------------------------------------------------------------------------------------------------------
    def _build_scene(self) -> None:
        c = self._client
        c.setAdditionalSearchPath(pybullet_data.getDataPath())
        c.setGravity(0, 0, -9.81)
        c.setTimeStep(PHYSICS_STEP)

        def static_body(shape, color, position=(0, 0, 0), **size):
            collision = c.createCollisionShape(shape, **size)
            if "height" in size:  # a capsule: its visual shape calls the height length
                size["length"] = size.pop("height")
            visual = c.createVisualShape(shape, rgbaColor=color, **size)
            return c.createMultiBody(0, collision, visual, basePosition=position)

        skin, cloth, chair = [0.87, 0.72, 0.6, 1], [0.3, 0.45, 0.7, 1], [0.25, 0.25, 0.25, 1]
        static_body(pybullet.GEOM_BOX, chair, (0.0, 0.0, 0.42), halfExtents=[0.25, 0.25, 0.05])  # seat
        static_body(pybullet.GEOM_BOX, chair, (-0.27, 0.0, 0.8), halfExtents=[0.03, 0.25, 0.35])  # backrest
        self._torso = static_body(pybullet.GEOM_BOX, cloth, (-0.08, 0.0, 0.78), halfExtents=[0.1, 0.17, 0.3])
        self._head = static_body(pybullet.GEOM_SPHERE, skin, (-0.06, 0.0, 1.22), radius=0.1)
        self._upper_arm = static_body(pybullet.GEOM_CAPSULE, cloth, radius=UPPER_ARM_RADIUS,
                                      height=float(np.linalg.norm(NOMINAL_ELBOW - SHOULDER)))
        self._forearm = static_body(pybullet.GEOM_CAPSULE, skin, radius=FOREARM_RADIUS,
                                    height=float(np.linalg.norm(NOMINAL_WRIST - NOMINAL_ELBOW)))
        self._hand = static_body(pybullet.GEOM_SPHERE, skin, radius=HAND_RADIUS)
        self._human = {self._torso, self._head, self._upper_arm, self._forearm, self._hand}
        self._itch_marker = c.createMultiBody(0, -1, c.createVisualShape(pybullet.GEOM_SPHERE, radius=0.012,
                                                                         rgbaColor=[0.9, 0.1, 0.1, 1]))
        self._robot = c.loadURDF("franka_panda/panda.urdf", ROBOT_BASE.tolist(),
                                 c.getQuaternionFromEuler([0, 0, ROBOT_YAW]), useFixedBase=True,
                                 flags=pybullet.URDF_USE_SELF_COLLISION_EXCLUDE_ALL_PARENTS)
        info = [c.getJointInfo(self._robot, j) for j in ARM_JOINTS]
        self._lower = np.array([i[8] for i in info])
        self._upper = np.array([i[9] for i in info])
        self._max_forces = [i[10] for i in info]
        collision = c.createCollisionShape(pybullet.GEOM_CAPSULE, radius=TOOL_RADIUS, height=TOOL_LENGTH)
        visual = c.createVisualShape(pybullet.GEOM_CAPSULE, radius=TOOL_RADIUS, length=TOOL_LENGTH,
                                     rgbaColor=[0.95, 0.95, 0.95, 1])
        self._tool = c.createMultiBody(0.05, collision, visual)
        for link in range(-1, c.getNumJoints(self._robot)):
            c.setCollisionFilterPair(self._robot, self._tool, link, -1, 0)
        self._tool_offset = TOOL_LENGTH / 2 + TOOL_RADIUS  # tool centre -> tip, along its axis
        c.createConstraint(self._robot, GRASP_LINK, self._tool, -1, pybullet.JOINT_FIXED, [0, 0, 0],
                           [0, 0, TOOL_LENGTH / 2], [0, 0, 0])
        self.tool_down = c.getQuaternionFromEuler([np.pi, 0, ROBOT_YAW])  # the hand's orientation, tool pointing down
        # the robot's start: the tool tip 15 cm above the middle of the forearm, pointing down
        above = (NOMINAL_ELBOW + NOMINAL_WRIST) / 2 + np.array([0.0, 0.0, 0.15 + TOOL_LENGTH + TOOL_RADIUS])
        down = self.tool_down
        self._home = self.inverse_kinematics(above, down)
        self._set_robot(self._home)
        self._state = c.saveState()

    def inverse_kinematics(self, grasp_position: np.ndarray, orientation) -> np.ndarray:
        """Joint positions within the limits that put the hand's grasp point at ``grasp_position`` with the hand's
        ``orientation``: pybullet's damped least squares from the Panda's ready pose, clipped to the joint limits and
        restarted from there until it settles. Leaves the robot's joints as they were."""
        c = self._client
        saved = [s[0] for s in c.getJointStates(self._robot, ARM_JOINTS)]
        joints = READY_POSE
        for _ in range(50):
            for j, q in zip(ARM_JOINTS, joints):
                c.resetJointState(self._robot, j, float(q))
            solution = c.calculateInverseKinematics(self._robot, GRASP_LINK, np.asarray(grasp_position).tolist(),
                                                    orientation, maxNumIterations=100, residualThreshold=1e-6)
            joints = np.clip(np.array(solution[:7]), self._lower, self._upper)
        for j, q in zip(ARM_JOINTS, saved):
            c.resetJointState(self._robot, j, q)
        return joints

    def _set_robot(self, joints: np.ndarray) -> None:
        c = self._client
        for j, q in zip(ARM_JOINTS, joints):
            c.resetJointState(self._robot, j, float(q))
        for j in FINGER_JOINTS:
            c.resetJointState(self._robot, j, 0.0)
        c.setJointMotorControlArray(self._robot, FINGER_JOINTS, pybullet.POSITION_CONTROL, targetPositions=[0.0, 0.0],
                                    forces=[20.0, 20.0])
        c.setJointMotorControlArray(self._robot, ARM_JOINTS, pybullet.POSITION_CONTROL,
                                    targetPositions=list(joints), forces=self._max_forces)
        hand = c.getLinkState(self._robot, GRASP_LINK, computeForwardKinematics=True)
        position, orientation = c.multiplyTransforms(hand[4], hand[5], [0, 0, TOOL_LENGTH / 2], [0, 0, 0, 1])
        c.resetBasePositionAndOrientation(self._tool, position, orientation)
        c.resetBaseVelocity(self._tool, [0, 0, 0], [0, 0, 0])

    def _place_arm(self, shoulder: np.ndarray, elbow: np.ndarray, wrist: np.ndarray) -> None:
        c = self._client
        for body, start, end in [(self._upper_arm, shoulder, elbow), (self._forearm, elbow, wrist)]:
            c.resetBasePositionAndOrientation(body, ((start + end) / 2).tolist(), _capsule_orientation(end - start))
        hand = wrist + (wrist - elbow) / np.linalg.norm(wrist - elbow) * (HAND_RADIUS + 0.02)
        c.resetBasePositionAndOrientation(self._hand, hand.tolist(), [0, 0, 0, 1])
        self._arm = (shoulder, elbow, wrist)

    # the latent ---------------------------------------------------------------------------------------------------
    @property
    def latent(self) -> np.ndarray:
        """[u]: the itch's fraction of the arm's length from the shoulder."""
        x = 0.5 + np.sin(0.2 * self._session + self._phase)
        return np.array([(x + 0.5) / 2])

    @property
    def itch(self) -> np.ndarray:
        return arm_point(*self._arm, float(self.latent[0]))

    def _new_task(self) -> None:
        """The arm's pose: each segment keeps its length, its unit direction is perturbed by up to +-arm_pose_noise
        per component."""
        noise = self.np_random.uniform(-self.arm_pose_noise, self.arm_pose_noise, size=(2, 3))
        joints = [SHOULDER]
        for segment, perturbation in zip([NOMINAL_ELBOW - SHOULDER, NOMINAL_WRIST - NOMINAL_ELBOW], noise):
            length = np.linalg.norm(segment)
            direction = segment / length + perturbation
            joints.append(joints[-1] + length * direction / np.linalg.norm(direction))
        self._place_arm(*joints)

    def _next_latent(self) -> None:
        self._client.resetBasePositionAndOrientation(self._itch_marker, self.itch.tolist(), [0, 0, 0, 1])

    # gymnasium API --------------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        keep = bool(options and options.get("keep_task")) and self._has_task
        self._client.restoreState(self._state)  # the same physics state (contact caches included) every episode
        if keep:
            self._place_arm(*self._arm)
        self._set_robot(self._home + self.np_random.uniform(-0.05, 0.05, size=7))
        self._start_episode(options)
        self._next_latent()
        self._tip, orientation = self._tool_tip()
        return self._get_obs(orientation, 0.0), self._get_reset_info()

    def step(self, action):
        c = self._client
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(7), -1.0, 1.0)
        joints = np.array([s[0] for s in c.getJointStates(self._robot, ARM_JOINTS)])
        target = np.clip(joints + MAX_JOINT_STEP * action, self._lower, self._upper)
        c.setJointMotorControlArray(self._robot, ARM_JOINTS, pybullet.POSITION_CONTROL,
                                    targetPositions=target.tolist(), forces=self._max_forces)
        for _ in range(FRAME_SKIP):
            c.stepSimulation()
        tip, orientation = self._tool_tip()
        speed = float(np.linalg.norm(tip - self._tip)) / self.dt
        self._tip = tip
        points, forces, by_tool = self._contacts()
        itch = self.itch  # this step's; a session end below moves it
        terms = reward_terms(tip, itch, speed, points, forces, by_tool)
        reward = float(sum(terms[k] for k in REWARD_KEYS))
        _, truncated, info = self._end_step()
        info.update(terms, itch=itch)
        return self._get_obs(orientation, float(forces[by_tool].sum())), reward, False, truncated, info

    def _tool_tip(self) -> tuple[np.ndarray, tuple]:
        position, orientation = self._client.getBasePositionAndOrientation(self._tool)
        tip, _ = self._client.multiplyTransforms(position, orientation, [0, 0, self._tool_offset], [0, 0, 0, 1])
        return np.array(tip), orientation

    def _contacts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Contacts of the tool and the robot with the person: points on the person, normal forces, by the tool."""
        points, forces, by_tool = [], [], []
        for body, is_tool in [(self._tool, True), (self._robot, False)]:
            for contact in self._client.getContactPoints(bodyA=body):
                if contact[2] in self._human:
                    points.append(contact[6]), forces.append(contact[9]), by_tool.append(is_tool)
        return np.array(points).reshape(-1, 3), np.array(forces), np.array(by_tool, dtype=bool)

    def _get_obs(self, orientation, tool_force: float) -> np.ndarray:
        """The observation, with the tool tip at ``self._tip`` and its orientation ``orientation``."""
        joints = [s[0] for s in self._client.getJointStates(self._robot, ARM_JOINTS)]
        return np.concatenate([self._tip, orientation, joints, [tool_force], *self._arm])

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        c = self._client
        width, height = self.render_size
        view = c.computeViewMatrix(cameraEyePosition=[1.0, 0.4, 1.5], cameraTargetPosition=[0.15, -0.35, 0.8],
                                   cameraUpVector=[0, 0, 1])
        projection = c.computeProjectionMatrixFOV(fov=50, aspect=width / height, nearVal=0.05, farVal=5.0)
        image = c.getCameraImage(width, height, view, projection, renderer=pybullet.ER_TINY_RENDERER)[2]
        return np.asarray(image, dtype=np.uint8).reshape(height, width, 4)[..., :3]

    def close(self):
        if getattr(self, "_client", None) is not None:
            self._client.disconnect()
            self._client = None
