"""The Gaussian policy's spread: the std starts at and never exceeds --max-std times the action bounds' half-width,
in every script (the log-std is projected back after each optimizer step); --max-std None leaves it unbounded."""

import importlib
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs.runs
from conftest import SCRIPTS, discrete_args

MODULES = [script[:-3] for script in [*SCRIPTS, "ppo.py"]]


def agent(module: str, space, **overrides):
    algo = importlib.import_module(module)
    return algo.Agent(6, space, discrete_args(algo, **overrides))


@pytest.mark.parametrize("module", MODULES)
def test_the_std_starts_at_its_bound_and_is_projected_back_under_it(module):
    space = gym.spaces.Box(np.array([-0.1, -2.0]), np.array([0.1, 2.0]), dtype=np.float32)
    policy = agent(module, space, max_std=0.5)
    bound = torch.tensor([math.log(0.05), math.log(1.0)])
    assert torch.allclose(policy.actor_logstd, torch.minimum(torch.zeros(2), bound))  # std 0.05 and 1 (from 0)
    with torch.no_grad():
        policy.actor_logstd.copy_(torch.tensor([3.0, -4.0]))
    policy.bound_logstd()
    assert torch.allclose(policy.actor_logstd, torch.tensor([math.log(0.05), -4.0]))  # only the one above moves
    inputs = torch.zeros(3, next(policy.actor.parameters()).shape[1])
    _, _, entropy, _ = policy.get_action_and_value(inputs)
    assert torch.allclose(entropy, torch.full((3,), 2 * 0.5 * math.log(2 * math.pi * math.e) + math.log(0.05) - 4.0))


@pytest.mark.parametrize("module", MODULES)
def test_max_std_none_leaves_the_std_unbounded(module):
    policy = agent(module, gym.spaces.Box(-0.1, 0.1, shape=(2,), dtype=np.float32), max_std=None)
    assert torch.equal(policy.actor_logstd, torch.zeros(2))  # std 1, ten times the half-width
    with torch.no_grad():
        policy.actor_logstd.fill_(3.0)
    policy.bound_logstd()
    assert torch.equal(policy.actor_logstd, torch.full((2,), 3.0))


def test_the_bound_is_a_buffer_outside_the_saved_state():
    policy = agent("dynamite_rl", gym.spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32))
    assert "max_logstd" not in policy.state_dict() and "max_logstd" in dict(policy.named_buffers())
    policy.bound_logstd()  # a discrete agent has nothing to bound
    agent("dynamite_rl", gym.spaces.Discrete(5)).bound_logstd()


@pytest.mark.parametrize("module", ["ppo", "varibad"])
def test_max_std_must_be_positive(module):
    with pytest.raises(SystemExit, match="--max-std 0.0 is out of range: it must be > 0"):
        envs.runs.check_args(importlib.import_module(module).Args(max_std=0.0))
