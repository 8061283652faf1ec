"""DLCMDP environments of dynamite-rl. Importing this package registers them with gymnasium.

>>> import gymnasium as gym, envs
>>> env = gym.make("dynamite/Gridworld-v0", size=7, num_goals=3)
>>> vec = gym.make_vec("dynamite/Gridworld-v0", num_envs=256)  # natively batched
>>> env = gym.make("dynamite/HalfCheetahVel-v0", schedule="poisson", num_sessions=20)
>>> env = gym.make("dynamite/ScratchItch-v0", random_phase=True)
>>> env = gym.make("dynamite/PointRobot-v0", task_set="test")
"""

import gymnasium as gym

from envs.dlcmdp import SCHEDULES, SessionSchedule, make_schedule
from envs.gridworld import GridworldEnv, GridworldVectorEnv, make_gridworld_config

__all__ = [
    "SCHEDULES",
    "SessionSchedule",
    "make_schedule",
    "GridworldEnv",
    "GridworldVectorEnv",
    "make_gridworld_config",
]

if "dynamite/Gridworld-v0" not in gym.registry:
    gym.register(
        id="dynamite/Gridworld-v0",
        entry_point="envs.gridworld:GridworldEnv",
        vector_entry_point="envs.gridworld:GridworldVectorEnv",
    )
# MuJoCo DLCMDPs: imported on first use (gymnasium resolves the entry point), truncated at their horizon H
for _name, _cls in [("Reacher-v0", "DLCMDPReacherEnv"), ("HalfCheetahDir-v0", "DLCMDPHalfCheetahDirEnv"),
                    ("HalfCheetahVel-v0", "DLCMDPHalfCheetahVelEnv"),
                    ("HalfCheetahWindVel-v0", "DLCMDPHalfCheetahWindVelEnv")]:
    if f"dynamite/{_name}" not in gym.registry:
        gym.register(id=f"dynamite/{_name}", entry_point=f"envs.mujoco:{_cls}")
# the assistive-robot DLCMDP on pybullet
if "dynamite/ScratchItch-v0" not in gym.registry:
    gym.register(id="dynamite/ScratchItch-v0", entry_point="envs.scratchitch:ScratchItchEnv")
# the structured-latent paper's point robot: goals that mix two anchor goals
if "dynamite/PointRobot-v0" not in gym.registry:
    gym.register(id="dynamite/PointRobot-v0", entry_point="envs.pointrobot:PointRobotEnv")
