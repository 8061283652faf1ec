"""ppo.py, the learned bounds of a task: a memoryless policy on (s, t/H), and the oracle told the true latent."""

import json
import os

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs.protocol
import ppo
from conftest import TINY, discrete_args, run_script


@pytest.mark.parametrize("env_id", ["dynamite/Gridworld-v0", "dynamite/HalfCheetahVel-v0"])
def test_the_oracle_sees_the_latent_of_the_current_session_the_next_reward_depends_on(env_id):
    plain = envs.protocol.make_vector_env(env_id, 3, {"schedule": "bernoulli", "session_prob": 0.2})
    told = envs.protocol.make_vector_env(env_id, 3, {"schedule": "bernoulli", "session_prob": 0.2, "observe_latent": True})
    size = told.single_observation_space.shape[0] - plain.single_observation_space.shape[0]
    assert size == 1  # the paying goal's index; the target velocity
    obs_plain, _ = plain.reset(seed=4)
    obs, _ = told.reset(seed=4)
    rng = np.random.default_rng(0)
    changed = 0
    for _ in range(60):
        np.testing.assert_array_equal(obs[:, :-size], obs_plain)  # the same episode, the latent appended
        np.testing.assert_array_equal(obs[:, -size:], envs.protocol.current_latents(told))
        action = told.action_space.sample() if env_id != "dynamite/Gridworld-v0" else rng.integers(5, size=3)
        before = obs[:, -size:].copy()
        obs, _, _, _, info = told.step(action)
        obs_plain, _, _, _, _ = plain.step(action)
        moved = (obs[:, -size:] != before).any(1)
        assert not (moved & ~info["session_done"]).any()  # it changes only where a session ended
        changed += int(moved.sum())
    assert changed > 0 and told.single_observation_space.contains(obs[0])


def test_the_policy_sees_the_state_and_the_elapsed_time_only():
    args = discrete_args(ppo)
    agent = ppo.Agent(7, gym.spaces.Discrete(5), args)
    assert agent.actor[0].in_features == 7 + 1
    inputs = ppo.policy_input(torch.zeros(4, 7), 30, 60, args)
    assert inputs.shape == (4, 8) and (inputs[:, -1] == 0.5).all()


@pytest.mark.slow
@pytest.mark.parametrize("observe_latent", [True])  # (without it: the same code, less the wrapper)
def test_a_run_trains_evaluates_and_resumes(observe_latent, tmp_path):
    flags = [*TINY["ppo.py"], "--save-model", "--eval-every", "1", *(["--observe-latent"] if observe_latent else [])]
    run_dir = run_script("ppo.py", *flags, cwd=tmp_path)
    result = json.load(open(os.path.join(run_dir, "eval.json")))
    assert result["finished"] and [e["global_step"] for e in result["evaluations"]] == [480, 960]
    assert len(result["evaluations"][-1]["episode_returns"]) == 16
    weights = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)["modules"]["agent"]
    assert weights["actor.0.weight"].shape[1] == 6 + int(observe_latent) + 1  # s, [the latent], t/H
    run_script("ppo.py", "--resume", os.path.join(run_dir, "checkpoint.pt"), "--total-timesteps", "1440", cwd=tmp_path)
    assert json.load(open(os.path.join(run_dir, "eval.json")))["evaluations"][-1]["global_step"] == 1440
