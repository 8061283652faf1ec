"""envs.protocol, what every script shares about its environments: settings, lock-step vector envs, horizons,
generator states for checkpoints, random-action episodes, and the one evaluation protocol and video."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

import envs.protocol as protocol
from envs.gridworld import GridworldVectorEnv

GRIDWORLD, REACHER = "dynamite/Gridworld-v0", "dynamite/Reacher-v0"
SHORT = {"horizon": 10, "session_length": 5}  # two sessions of five steps, in any environment


class FixedPolicy:
    """A policy of the protocol that plays ``actions[t]`` at step t and records what it is told."""

    def __init__(self, actions):
        self.actions, self.steps, self.rewards, self.sessions = actions, [], [], []

    def act(self, obs, t):
        self.steps.append(t)
        return self.actions[t]

    def observe(self, rewards, info):
        self.rewards.append(rewards)
        self.sessions.append(info["session"])


def test_env_settings_are_a_json_object_for_a_registered_environment():
    assert protocol.parse_env_settings(GRIDWORLD, '{"size": 7, "schedule": "poisson"}') == {"size": 7,
                                                                                          "schedule": "poisson"}
    assert protocol.parse_env_settings(REACHER, "{}") == {}
    with pytest.raises(ValueError, match=r"^unknown --env-id 'dynamite/Nope-v0'; known environments: "
                                         r"dynamite/Gridworld-v0, dynamite/HalfCheetahDir-v0, "):
        protocol.parse_env_settings("dynamite/Nope-v0", "{}")
    with pytest.raises(ValueError, match=r"^--env-kwargs is not valid JSON \(.*\): '\{size: 3\}'$"):
        protocol.parse_env_settings(GRIDWORLD, "{size: 3}")
    with pytest.raises(ValueError, match=r"^--env-kwargs must be a JSON object, got '\[7\]'$"):
        protocol.parse_env_settings(GRIDWORLD, "[7]")


@pytest.mark.parametrize("env_id", [GRIDWORLD, REACHER])
def test_vector_envs_step_in_lock_step_and_never_reset_on_their_own(env_id):
    envs_ = protocol.make_vector_env(env_id, 3, SHORT)
    assert envs_.num_envs == 3 and envs_.metadata["autoreset_mode"] == AutoresetMode.DISABLED
    assert isinstance(envs_.unwrapped, GridworldVectorEnv) == (env_id == GRIDWORLD)  # the Gridworld is batched
    envs_.reset(seed=0)
    for t in range(10):
        obs, _, terminated, truncated, info = envs_.step(envs_.action_space.sample())
        assert not terminated.any() and (truncated == (t == 9)).all()
        assert (info["session_done"] == (t in (4, 9))).all()
    first, _ = envs_.reset()  # the next episode starts only when the caller resets
    assert first.shape == obs.shape
    envs_.close()


@pytest.mark.parametrize("env_id, kwargs", [
    (REACHER, {"horizon": 12, "session_length": 4}),
    ("dynamite/HalfCheetahDir-v0", {"horizon": 12, "session_length": 3}),
    ("dynamite/HalfCheetahVel-v0", {"horizon": 12, "schedule": "bernoulli", "session_prob": 0.3}),
    ("dynamite/HalfCheetahWindVel-v0", {"horizon": 12, "schedule": "poisson", "num_sessions": 3}),
    ("dynamite/PointRobot-v0", {"horizon": 12, "num_sessions": 3, "session_length": 4}),
    ("dynamite/ScratchItch-v0", {"horizon": 6, "session_length": 2}),
])
def test_the_lock_step_vector_env_returns_what_sync_vector_env_returns(env_id, kwargs):
    """Observations, rewards, flags and infos (keys, masks, dtypes, values) equal gymnasium's SyncVectorEnv's over
    two episodes, the second keeping the task; a step after the horizon is refused; other modes are SyncVectorEnv."""
    fast = protocol.make_vector_env(env_id, 3, kwargs)
    assert isinstance(fast, protocol.LockstepVectorEnv)
    slow = gym.vector.SyncVectorEnv([lambda: gym.make(env_id, **kwargs)] * 3, autoreset_mode=AutoresetMode.DISABLED)
    rng = np.random.default_rng(0)
    for options in (None, {"keep_task": True}):
        (obs_fast, _), (obs_slow, _) = fast.reset(seed=None if options else 4, options=options), \
            slow.reset(seed=None if options else 4, options=options)
        assert np.array_equal(obs_fast, obs_slow)
        for _ in range(kwargs["horizon"]):
            actions = rng.uniform(-1, 1, fast.action_space.shape).astype(fast.action_space.dtype)
            *out_fast, info_fast = fast.step(actions)
            *out_slow, info_slow = slow.step(actions)
            for a, b in zip(out_fast, out_slow):
                assert a.dtype == b.dtype and np.array_equal(a, b)
            assert info_fast.keys() == info_slow.keys()
            for key in info_slow:
                assert info_fast[key].dtype == info_slow[key].dtype and np.array_equal(info_fast[key], info_slow[key])
        assert out_fast[-1].all()  # truncated at the horizon
    with pytest.raises(RuntimeError, match=r"^3 of the 3 sub-environments \(the first: 0\) have ended their episode"):
        fast.step(actions)
    fast.close()
    slow.close()


def test_the_lock_step_vector_env_batches_uneven_infos_as_sync_vector_env_does():
    """Infos whose keys differ between sub-environments take SyncVectorEnv's merge, masks and all."""
    fast = protocol.LockstepVectorEnv([lambda: gym.make(REACHER, horizon=5)] * 2, autoreset_mode=AutoresetMode.DISABLED)
    fast.reset(seed=0)
    step = fast.envs[1].step
    fast.envs[1].step = lambda action: (*step(action)[:4], {"only_here": 7})
    _, _, _, _, info = fast.step(fast.action_space.sample())
    assert info["_session_done"].tolist() == [True, False] and info["_only_here"].tolist() == [False, True]
    assert info["only_here"].tolist() == [0, 7] and info["session_done"].dtype == bool


def test_a_setting_the_environment_rejects_is_one_line_naming_it():
    with pytest.raises(ValueError, match=r"^cannot make dynamite/Gridworld-v0 with --env-kwargs \{\"size\": 0\}: "
                                         r"size must be a positive"):
        protocol.make_vector_env(GRIDWORLD, 2, {"size": 0})
    with pytest.raises(ValueError, match=r"^cannot make dynamite/Reacher-v0 with --env-kwargs \{\"colour\": 1\}: "
                                         r".*colour"):
        protocol.make_vector_env(REACHER, 2, {"colour": 1})


def test_the_horizon_of_an_environment_and_of_its_vector_env():
    assert protocol.horizon(gym.make(GRIDWORLD)) == 60 and protocol.horizon(gym.make(REACHER)) == 400
    assert protocol.horizon(protocol.make_vector_env(GRIDWORLD, 2, {"horizon": 30})) == 30
    assert protocol.horizon(protocol.make_vector_env(REACHER, 2, {"horizon": 30, "session_length": 10})) == 30
    assert protocol.horizon(gym.make("dynamite/ScratchItch-v0", horizon=20, session_length=10)) == 20


def episode(envs_, seed: int = 0):
    """Observations and rewards of one episode of fixed pseudo-random actions after a reset without a seed."""
    rng = np.random.default_rng(seed)
    observations, rewards = [envs_.reset()[0]], []
    for _ in range(protocol.horizon(envs_)):
        space = envs_.single_action_space
        action = (rng.integers(space.n, size=envs_.num_envs) if isinstance(space, gym.spaces.Discrete)
                  else rng.uniform(space.low, space.high, (envs_.num_envs, *space.shape)))
        obs, reward, *_ = envs_.step(action)
        observations.append(obs), rewards.append(reward)
    return np.array(observations), np.array(rewards)


@pytest.mark.parametrize("env_id", [GRIDWORLD, REACHER])
def test_generator_states_saved_as_data_restore_the_next_episodes_exactly(env_id, tmp_path):
    """What a checkpoint does: save the generators' states (weights_only loading takes them), restore them into
    freshly made environments, and the episodes that follow are those the saved environments would have played."""
    saved = protocol.make_vector_env(env_id, 3, SHORT)
    saved.reset(seed=1)
    episode(saved)
    torch.save({"envs": protocol.generator_states(saved)}, tmp_path / "checkpoint.pt")
    expected = [episode(saved, seed=s) for s in (1, 2)]

    restored = protocol.make_vector_env(env_id, 3, SHORT)
    restored.reset(seed=0)  # creates the generators, then overwritten
    protocol.set_generator_states(restored, torch.load(tmp_path / "checkpoint.pt", weights_only=True)["envs"])
    for (obs, rewards), s in zip(expected, (1, 2)):
        got_obs, got_rewards = episode(restored, seed=s)
        np.testing.assert_array_equal(got_obs, obs)
        np.testing.assert_array_equal(got_rewards, rewards)
    with pytest.raises(ValueError):  # the states of another number of environments
        protocol.set_generator_states(restored, protocol.generator_states(saved)[:2])


@pytest.mark.parametrize("env_id", [GRIDWORLD, REACHER])
def test_a_random_episode_plays_uniform_actions_of_numpy_s_global_generator(env_id):
    envs_ = protocol.make_vector_env(env_id, 4, SHORT)
    space = envs_.single_action_space

    def play():
        envs_.reset(seed=0)
        np.random.seed(3)
        return protocol.random_episode(envs_, 10)

    steps = play()
    assert len(steps) == 10
    for t, (obs, action, reward, next_obs, done) in enumerate(steps):
        assert obs.shape == next_obs.shape == (4, *envs_.single_observation_space.shape) and reward.shape == (4,)
        assert all(space.contains(a) for a in action) and (done == (t in (4, 9))).all()
        if t + 1 < len(steps):
            np.testing.assert_array_equal(steps[t + 1][0], next_obs)  # each step starts where the last one landed
    assert len({tuple(np.ravel(a)) for _, a, *_ in steps}) > 1
    again = play()
    for first, second in zip(steps, again):
        for a, b in zip(first, second):
            np.testing.assert_array_equal(a, b)


def test_evaluating_a_policy_that_never_moves_gives_the_step_reward_in_every_session():
    """"stay" never lands on a goal (each session starts off the goals), so every step pays -0.1: -6.0 in 60
    steps, -1.5 in each of the 4 sessions, in every episode, and again in each consecutive episode."""
    policy = FixedPolicy(np.zeros((60, 32), dtype=np.int64))
    result = protocol.evaluate(GRIDWORLD, {}, lambda n: policy, 32, consecutive=3)
    assert result["return"] == pytest.approx(-6.0) and result["return_std"] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(result["return_per_session"], [-1.5] * 4)
    np.testing.assert_allclose(result["consecutive_episode_returns"], [-6.0] * 3)
    assert result["episodes"] == 32
    assert policy.steps == list(range(60)) * 3 and len(policy.rewards) == 180


def test_consecutive_episodes_of_a_kept_task_whose_session_index_runs_past_the_horizon_are_evaluated():
    """With one session per step (K = H) a kept task's session index reaches H in the second episode: the per-session
    returns are those of the first episode, one per step, and the consecutive returns are still counted."""
    kwargs = {"horizon": 20, "schedule": "poisson", "num_sessions": 20}
    policy = FixedPolicy(np.zeros((20, 2, 6), dtype=np.float32))
    result = protocol.evaluate("dynamite/HalfCheetahVel-v0", kwargs, lambda n: policy, 2, consecutive=2)
    assert max(int(s.max()) for s in policy.sessions) >= 20  # the index did run past the horizon
    assert len(result["return_per_session"]) == 20
    assert sum(result["return_per_session"]) == pytest.approx(result["return"])
    assert len(result["consecutive_episode_returns"]) == 2


def test_session_detection_counts_precision_and_recall_at_the_exact_step_and_the_delay_of_late_finds():
    counts = protocol.SessionDetection()
    counts.add(torch.tensor([3.0, -1.0, 2.0, -2.0]) > 0, torch.tensor([True, True, False, False]))
    counts.add(torch.tensor([1.0, 1.0, -1.0, -1.0]) > 0, torch.tensor([True, False, False, False]))
    assert (counts.hits, counts.fired, counts.ends) == (2, 4, 3)
    assert counts.rates()["precision"] == 0.5 and counts.rates()["recall"] == 2 / 3
    assert all(np.isnan(v) for v in protocol.SessionDetection().rates().values())
    # two environments, steps A..E: env 0 finds its end at once; env 1 finds its first two steps late, misses the
    # next one (another end comes first) and is still waiting for the last
    counts, no, yes = protocol.SessionDetection(), np.array([False, False]), np.array([True, True])
    for detected, true_end in [(np.array([True, False]), yes), (no, no), (np.array([False, True]), no),
                               (np.array([True, False]), np.array([False, True])), (no, np.array([False, True]))]:
        counts.add(detected, true_end)
    assert counts.rates() == {"precision": 1 / 3, "recall": 1 / 4, "delay": 1.0}  # delays 0 and 2


class DetectingPolicy(FixedPolicy):
    """Detects a session end at every step of the first episode after the first 15 and at no step after it."""

    def __init__(self, actions):
        super().__init__(actions)
        self.detections, self.true_end = protocol.SessionDetection(), None

    def act(self, obs, t):
        if self.true_end is not None:
            self.detections.add(np.full(len(self.true_end), len(self.steps) < 60 and t >= 15), self.true_end)
        return super().act(obs, t)

    def observe(self, rewards, info):
        super().observe(rewards, info)
        self.true_end = info["session_done"]


def test_session_detection_is_measured_on_the_first_episodes_as_the_return_is():
    """Fixed sessions of 15: in the first episode, steps 15..59 all fire and the true ends (after steps 14, 29 and
    44) are found at 15, 30 and 45: precision 3 / 45, recall 1; the consecutive episodes that follow do not count."""
    policy = DetectingPolicy(np.zeros((60, 8), dtype=np.int64))
    result = protocol.evaluate(GRIDWORLD, {}, lambda n: policy, 8, consecutive=3)
    assert result["session_detection"] == {"precision": pytest.approx(3 / 45), "recall": 1.0, "delay": 0.0}
    first, *later = result["consecutive_session_detection"]  # each consecutive episode counted on its own
    assert first == result["session_detection"] and len(later) == 2
    assert all(rates["recall"] == 0.0 and np.isnan(rates["precision"]) for rates in later)  # nothing fires there
    still = FixedPolicy(np.zeros((60, 8), dtype=np.int64))  # a policy that detects nothing reports nothing
    assert "session_detection" not in protocol.evaluate(GRIDWORLD, {}, lambda n: still, 8)


@pytest.mark.parametrize("env_kwargs", [{"schedule": "bernoulli", "session_prob": 0.1},
                                        {"schedule": "poisson", "num_sessions": 5}])
def test_the_return_per_session_sums_each_episode_s_rewards_by_its_info_session(env_kwargs):
    """Sessions of random lengths (and, with bernoulli, a random number of them): the per-session return is the
    mean over episodes of the rewards of steps whose info["session"] is that session (0 where an episode has no
    such session); the return, its std, and the episodes themselves are those of the given seed."""
    num_episodes = 64
    actions = np.random.default_rng(0).integers(5, size=(60, num_episodes))
    policy = FixedPolicy(actions)
    result = protocol.evaluate(GRIDWORLD, env_kwargs, lambda n: policy, num_episodes, seed=7)
    rewards, sessions = np.array(policy.rewards), np.array(policy.sessions)  # (H, episodes)
    per_session = [np.where(sessions == s, rewards, 0.0).sum(0).mean() for s in range(sessions.max() + 1)]
    np.testing.assert_allclose(result["return_per_session"], per_session, atol=1e-6)
    assert result["return"] == pytest.approx(rewards.sum(0).mean())
    assert result["return_std"] == pytest.approx(rewards.sum(0).std())
    assert (sessions[1:] >= sessions[:-1]).all() and len(result["return_per_session"]) > 1
    assert (rewards == 1.0).any(), "the actions reach a paying goal, so the sessions' returns differ"
    # the same seed replays the same episodes
    replay = protocol.make_vector_env(GRIDWORLD, num_episodes, env_kwargs)
    replay.reset(seed=7)
    replayed = np.array([replay.step(a)[1] for a in actions])
    np.testing.assert_array_equal(replayed, rewards)


def test_record_video_writes_one_greedy_episode_as_an_mp4(tmp_path):
    policy = FixedPolicy(np.ones((60, 1), dtype=np.int64))
    protocol.record_video(GRIDWORLD, {}, lambda n: policy, str(tmp_path / "videos"))
    videos = list((tmp_path / "videos").glob("eval*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000
    assert policy.steps == list(range(60)) and all(r.shape == (1,) for r in policy.rewards)


def test_only_the_gridworld_with_a_fixed_schedule_has_a_bayes_optimal_return_and_only_the_wind_moves_dynamics():
    assert protocol.bayes_optimal_return(GRIDWORLD, {}) == pytest.approx(47.370, abs=1e-3)
    assert protocol.bayes_optimal_return(GRIDWORLD, {"schedule": "bernoulli"}) is None
    assert protocol.bayes_optimal_return(REACHER, {}) is None
    assert [protocol.latent_changes_dynamics(f"dynamite/{name}") for name in
            ("Gridworld-v0", "Reacher-v0", "HalfCheetahVel-v0", "HalfCheetahWindVel-v0")] == [False, False, False, True]
