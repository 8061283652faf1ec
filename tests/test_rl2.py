"""RL^2: the memory runs through whole episodes, session ends included, and starts afresh with every episode."""

import json
import os

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs.protocol
import rl2
from conftest import TINY, discrete_args, run_script


def episode(seed: int = 0, num_envs: int = 3):
    """A random-action episode of the Gridworld as the script records one: (obs, actions, rewards, ends)."""
    envs_ = envs.protocol.make_vector_env("dynamite/Gridworld-v0", num_envs, {})
    envs_.reset(seed=seed)
    np.random.seed(seed)
    scaling, space = rl2.ObservationScaling(envs_.single_observation_space), envs_.single_action_space
    steps = envs.protocol.random_episode(envs_, 60)
    obs = torch.stack([scaling(step[0]) for step in steps])
    actions = torch.stack([rl2.action_features(torch.as_tensor(step[1]), space) for step in steps])
    rewards = torch.stack([torch.as_tensor(step[2], dtype=torch.float32) for step in steps])
    return obs, actions, rewards, torch.as_tensor(np.stack([step[4] for step in steps]))


def test_the_memory_is_not_reset_at_a_session_end():
    torch.manual_seed(0)
    args = discrete_args(rl2)
    agent = rl2.Agent(6, gym.spaces.Discrete(5), args)
    obs, actions, rewards, session_done = episode()
    inputs = rl2.unroll(agent, obs, actions, rewards, args, "cpu")
    hidden = inputs[..., 7:]  # (s, t/H, h)
    end = int(torch.nonzero(session_done[:, 0])[0])  # the first session's last step in episode 0
    step = (actions[end : end + 1, :1], rewards[end : end + 1, :1, None], obs[end + 1 : end + 2, :1])
    carried = agent.recur(hidden[end, :1], *step)[0]
    reset = agent.recur(torch.zeros_like(carried), *step)[0]
    torch.testing.assert_close(hidden[end + 1, :1], carried)
    assert not torch.allclose(hidden[end + 1, :1], reset)
    # what happened in the first session reaches the policy's input in the next one
    changed = rewards.clone()
    changed[2, 0] += 1.0
    later = rl2.unroll(agent, obs, actions, changed, args, "cpu")
    assert not torch.equal(later[end + 1, 0], inputs[end + 1, 0])  # a reset would make them identical
    assert torch.equal(later[:, 1:], inputs[:, 1:]) and torch.equal(later[:3], inputs[:3])


def test_every_episode_starts_from_a_zero_memory():
    torch.manual_seed(0)
    args = discrete_args(rl2)
    agent = rl2.Agent(6, gym.spaces.Discrete(5), args)
    state = rl2.RecurrentState(3, 5, args, "cpu")
    assert not state.hidden.any() and not state.prev_action.any() and not state.reward.any()
    obs, actions, rewards, _ = episode(seed=1)
    first = rl2.unroll(agent, obs, actions, rewards, args, "cpu")
    other = episode(seed=2)
    rl2.unroll(agent, *other[:3], args, "cpu")  # an episode before it changes nothing
    torch.testing.assert_close(rl2.unroll(agent, obs, actions, rewards, args, "cpu"), first)
    expected = agent.recur(torch.zeros(3, args.gru_hidden), torch.zeros(1, 3, 5), torch.zeros(1, 3, 1), obs[:1])[0]
    torch.testing.assert_close(first[0, :, 7:], expected)


@pytest.mark.slow
def test_the_update_replays_the_rollout_exactly(tmp_path):
    """The first PPO minibatch recomputes the rollout's log-probabilities from a zero memory: a rollout that
    carried memory over from the previous episode would make them differ."""
    from conftest import TINY, run_script
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = run_script("rl2.py", *TINY["rl2.py"], "--update-epochs", "1", "--num-minibatches", "1", cwd=tmp_path)
    events = EventAccumulator(run_dir)
    events.Reload()
    kls = [event.value for event in events.Scalars("losses/approx_kl")]
    clipfracs = [event.value for event in events.Scalars("losses/clipfrac")]
    assert len(kls) == 2 and max(abs(k) for k in kls) < 1e-6 and max(clipfracs) == 0


@pytest.mark.slow
def test_after_the_small_batches_the_same_policy_continues_on_larger_ones(tmp_path):
    common = [*TINY["rl2.py"], "--save-model", "--eval-every", "1", "--total-timesteps", "960"]
    one = run_script("rl2.py", *common, "--small-batch-steps", "0", cwd=tmp_path / "a")
    two = run_script("rl2.py", *common, "--small-batch-steps", "480", "--policy-num-envs", "4", cwd=tmp_path / "b")
    steps = [e["global_step"] for e in json.load(open(os.path.join(two, "eval.json")))["evaluations"]]
    assert steps == [480, 720, 960]  # 1 iteration of 8 episodes, then 2 of 4
    assert [e["global_step"] for e in json.load(open(os.path.join(one, "eval.json")))["evaluations"]] == [480, 960]
    optimizer = torch.load(os.path.join(two, "checkpoint.pt"), weights_only=True)["optimizers"]["policy"]
    # one optimizer through both: 3 iterations of 4 epochs x 2 minibatches (a fresh policy would have 2 x 8)
    assert all(state["step"].item() == 3 * 4 * 2 for state in optimizer["state"].values())
