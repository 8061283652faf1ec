"""Every environment of the library passes gymnasium's checker and stable-baselines3's stricter one (rewards as
Python floats, observations inside their space, deterministic under a seed), at its defaults and under the other
session schedules."""

import warnings

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env as gymnasium_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs  # noqa: F401  (registers the environments)

IDS = sorted(env_id for env_id in gym.registry if env_id.startswith("dynamite/"))
SETTINGS = [{}, {"schedule": "bernoulli"}, {"schedule": "poisson"}]


def test_the_checked_list_is_every_registered_environment():
    assert len(IDS) == 7 and "dynamite/Gridworld-v0" in IDS and "dynamite/ScratchItch-v0" in IDS


@pytest.mark.parametrize("kwargs", SETTINGS, ids=["default", "bernoulli", "poisson"])
@pytest.mark.parametrize("env_id", IDS)
def test_both_checkers_accept_the_environment(env_id, kwargs):
    env = gym.make(env_id, **kwargs).unwrapped
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*infinity.*")  # MuJoCo observations are unbounded
        warnings.filterwarnings("ignore", message=".*(symmetric|normalized|Box bound precision).*")  # advice only
        gymnasium_check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=True, skip_render_check=True)
    env.close()
