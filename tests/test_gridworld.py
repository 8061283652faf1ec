"""The AlternatingGoal Gridworld: API, seeding, batched equivalence, DLCMDP semantics, argument checks."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import envs  # noqa: F401  (registers the environments)
from envs.gridworld import GridworldEnv, GridworldVectorEnv

ENV_ID = "dynamite/Gridworld-v0"
ALWAYS_SWITCH = [[0.0, 1.0], [1.0, 0.0]]


def cells_of(obs: np.ndarray, size: int = 5) -> np.ndarray:
    """Cell indices of the agent and every goal from observations of shape (..., 2 + 2G)."""
    coords = obs.reshape(*obs.shape[:-1], -1, 2).astype(int)
    return coords[..., 0] * size + coords[..., 1]


def rollout_batched(num_envs: int, seed: int, actions=None, **kwargs):
    """One episode of every environment; per-step arrays (T, num_envs, ...) and the env."""
    env = GridworldVectorEnv(num_envs=num_envs, autoreset_mode="Disabled", **kwargs)
    obs, info = env.reset(seed=seed)
    record = {"obs": [obs], "reward": [], "latent": [], "session": [], "session_done": []}
    for t in range(env.config.horizon):
        action = np.zeros(num_envs, dtype=np.int64) if actions is None else actions[t]
        obs, reward, _, truncated, info = env.step(action)
        record["obs"].append(obs)
        record["reward"].append(reward)
        for key in ("latent", "session", "session_done"):
            record[key].append(info[key])
    assert truncated.all()
    return {key: np.stack(value) for key, value in record.items()}, env


@pytest.mark.parametrize("render_mode", [None, "ansi", "rgb_array"])
def test_check_env(render_mode):
    env = gym.make(ENV_ID, render_mode=render_mode)
    check_env(env.unwrapped, skip_render_check=False)
    env.reset(seed=0)
    frame = env.render()
    if render_mode == "ansi":
        assert frame.count("\n") == 5 and ("A" in frame or "@" in frame)
    elif render_mode == "rgb_array":
        assert frame.shape == (160, 160, 3) and frame.dtype == np.uint8


def test_make_passes_every_parameter_through():
    env = gym.make(ENV_ID, size=7, num_goals=3, transition_matrix=np.full((3, 3), 1 / 3), schedule="poisson",
                   num_sessions=3, horizon=30, goal_reward=2.0, step_reward=-0.5)
    config = env.unwrapped.config
    assert (config.size, config.num_goals, config.horizon, config.schedule.kind) == (7, 3, 30, "poisson")
    assert env.observation_space.shape == (8,) and env.observation_space.high.max() == 6
    env.reset(seed=0)
    rewards, ends = [], 0
    for t in range(30):
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        rewards.append(reward)
        ends += info["session_done"]
        assert not terminated and truncated == (t == 29)
    assert ends == 3 and set(rewards) <= {2.0, -0.5}
    assert isinstance(gym.make_vec(ENV_ID, num_envs=3, size=7).unwrapped, GridworldVectorEnv)


def test_same_seed_same_episode_and_different_seeds_differ():
    actions = np.random.default_rng(0).integers(5, size=(60, 64))
    first, _ = rollout_batched(64, seed=7, actions=actions)
    again, _ = rollout_batched(64, seed=7, actions=actions)
    other, _ = rollout_batched(64, seed=8, actions=actions)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["obs"], other["obs"])
    single = GridworldEnv()
    episodes = []
    for _ in range(2):
        obs, _ = single.reset(seed=3)
        episodes.append([obs] + [single.step(a)[0] for a in actions[:, 0]])
    np.testing.assert_array_equal(*episodes)


def assert_same(expected, actual, where="info"):
    if isinstance(expected, dict):
        assert expected.keys() == actual.keys(), f"{where}: {sorted(expected)} != {sorted(actual)}"
        for key in expected:
            assert_same(expected[key], actual[key], f"{where}[{key!r}]")
    elif isinstance(expected, np.ndarray) and expected.dtype == object:
        assert len(expected) == len(actual), where
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert (e is None) == (a is None), f"{where}[{i}]"
            if e is not None:
                np.testing.assert_array_equal(e, a, err_msg=f"{where}[{i}]")
    else:
        assert np.asarray(expected).dtype == np.asarray(actual).dtype, where
        np.testing.assert_array_equal(expected, actual, err_msg=where)


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED])
@pytest.mark.parametrize(
    "kwargs",
    [{}, dict(schedule="bernoulli", session_prob=0.1, horizon=25),
     dict(size=4, num_goals=3, schedule="poisson", num_sessions=5, horizon=20)],
)
def test_batched_equals_sync_vector_env_step_for_step(mode, kwargs):
    num_envs = 16
    rng = np.random.default_rng(0)
    sync = SyncVectorEnv([lambda: GridworldEnv(**kwargs) for _ in range(num_envs)], autoreset_mode=mode)
    batched = GridworldVectorEnv(num_envs=num_envs, autoreset_mode=mode, **kwargs)
    horizon = batched.config.horizon
    for seed in (0, 1000, 2000):  # 48 seeds in all
        for options in (None, {"keep_task": True}):
            results = [env.reset(seed=seed if options is None else None, options=options) for env in (sync, batched)]
            assert_same(results[0][0], results[1][0], "reset obs")
            assert_same(results[0][1], results[1][1], "reset info")
            for t in range(2 * horizon + 3):
                if mode == AutoresetMode.DISABLED and t % horizon == 0 and t:
                    results = [env.reset() for env in (sync, batched)]
                    assert_same(results[0][0], results[1][0], "reset obs")
                    assert_same(results[0][1], results[1][1], "reset info")
                actions = rng.integers(5, size=num_envs)
                (o1, r1, te1, tr1, i1), (o2, r2, te2, tr2, i2) = sync.step(actions), batched.step(actions)
                for name, e, a in (("obs", o1, o2), ("reward", r1, r2), ("terminated", te1, te2),
                                   ("truncated", tr1, tr2)):
                    assert_same(e, a, f"{name} at step {t}")
                assert_same(i1, i2, f"info at step {t}")
    mask = np.arange(num_envs) % 3 == 0
    results = [env.reset(seed=5, options={"reset_mask": mask.copy()}) for env in (sync, batched)]
    assert_same(results[0][0], results[1][0], "masked reset obs")
    assert_same(results[0][1], results[1][1], "masked reset info")


def test_goal_switches_in_80_percent_of_session_changes():
    record, _ = rollout_batched(5000, seed=11)
    latent = record["latent"].argmax(-1)  # (H, envs)
    assert abs(latent[0].mean() - 0.5) < 4 * np.sqrt(0.25 / 5000), "m_0 is uniform"
    ends = np.flatnonzero(record["session_done"][:, 0])[:-1]
    switched = latent[ends + 1] != latent[ends]
    assert abs(switched.mean() - 0.8) < 4 * np.sqrt(0.16 / switched.size)


@pytest.mark.parametrize("kwargs", [{}, dict(schedule="bernoulli", session_prob=0.2), dict(schedule="poisson")])
def test_latent_changes_only_at_session_boundaries_and_agent_is_replaced_off_goal(kwargs):
    num_envs = 4000
    record, env = rollout_batched(num_envs, seed=5, **kwargs)
    latent, session, done = record["latent"].argmax(-1), record["session"], record["session_done"]
    changed = latent[1:] != latent[:-1]
    assert not (changed & ~done[:-1]).any(), "the latent moved inside a session"
    np.testing.assert_array_equal(session[1:], session[:-1] + done[:-1])
    assert (session[0] == 0).all() and done[-1].all()

    cells = cells_of(record["obs"])  # (H + 1, envs, 1 + G)
    agent, goals = cells[..., 0], cells[..., 1:]
    # with "stay" actions the agent only moves when a session starts; it then sits on a non-goal cell
    starts = np.concatenate([np.ones((1, num_envs), bool), done[:-1]])  # obs index t is a session start
    assert not (agent[:-1, :, None] == goals[:-1]).any(axis=-1)[starts].any()
    moved = agent[1:] != agent[:-1]
    assert not (moved & ~done).any()
    assert moved[:-1][done[:-1]].mean() > 0.9, "session starts move the agent (it stays with p = 1/23)"
    # the start cell is uniform over the free cells: its rank among them is uniform over 0..22
    free_rank = agent[:-1] - (goals[:-1] < agent[:-1, :, None]).sum(-1)
    counts = np.bincount(free_rank[starts], minlength=23)
    expected = counts.sum() / 23
    assert ((counts - expected) ** 2 / expected).sum() < 60  # chi-square, 22 dof: p ~ 2e-5


def expected_reward(obs, action, goal_of_latent, size=5, goal_reward=1.0, step_reward=-0.1):
    """The reward rule, computed independently of the environment's tables."""
    delta = {0: (0, 0), 1: (-1, 0), 2: (0, 1), 3: (1, 0), 4: (0, -1)}[int(action)]
    row = min(max(int(obs[0]) + delta[0], 0), size - 1)
    col = min(max(int(obs[1]) + delta[1], 0), size - 1)
    return goal_reward if row * size + col == goal_of_latent else step_reward


def test_reward_rule_on_every_step_including_session_ends():
    env = GridworldEnv(transition_matrix=ALWAYS_SWITCH)
    rng = np.random.default_rng(0)
    checked_last_steps = 0
    for episode in range(300):
        obs, _ = env.reset(seed=episode)
        for _ in range(60):
            action = rng.integers(5)
            goals = cells_of(obs)[1:]
            next_obs, reward, _, _, info = env.step(action)
            assert reward == expected_reward(obs, action, goals[info["latent"].argmax()])
            checked_last_steps += info["session_done"]
            obs = next_obs
    assert checked_last_steps == 1200


def test_last_step_of_a_session_is_paid_by_the_old_latent():
    """An agent waiting on session 0's goal is paid at step L-1, then the goal switches (T always switches)."""
    env = GridworldEnv(transition_matrix=ALWAYS_SWITCH, size=3)
    for seed in range(20):
        obs, info = env.reset(seed=seed)
        first_latent = int(info["latent"].argmax())
        target = cells_of(obs, 3)[1 + first_latent]
        for t in range(16):
            agent = cells_of(obs, 3)[0]
            row, col = divmod(agent, 3)
            trow, tcol = divmod(target, 3)
            action = 3 if trow > row else 1 if trow < row else 2 if tcol > col else 4 if tcol < col else 0
            obs, reward, _, _, info = env.step(action)
            if t == 14:
                assert info["session_done"] and info["session"] == 0
                assert reward == 1.0, "the session's last step is rewarded with the old latent"
            if t == 15:
                assert info["session"] == 1 and int(info["latent"].argmax()) != first_latent
        assert env.latent != first_latent


def test_latent_never_appears_in_the_observation():
    """Two worlds with the same randomness but different latent dynamics look identical to the agent."""
    actions = np.random.default_rng(1).integers(5, size=(60, 200))
    switching, _ = rollout_batched(200, seed=3, actions=actions, transition_matrix=ALWAYS_SWITCH)
    staying, _ = rollout_batched(200, seed=3, actions=actions, transition_matrix=np.eye(2))
    assert (switching["latent"] != staying["latent"]).any()
    np.testing.assert_array_equal(switching["obs"], staying["obs"])
    assert switching["obs"].shape[-1] == 6


def test_keep_task_keeps_goals_and_continues_the_latent_dynamics():
    env = GridworldVectorEnv(num_envs=5000, autoreset_mode="Disabled")
    obs, _ = env.reset(seed=0)
    for _ in range(60):
        env.step(np.zeros(5000, dtype=np.int64))
    last_latent = env.latents
    new_obs, info = env.reset(options={"keep_task": True})
    np.testing.assert_array_equal(new_obs[:, 2:], obs[:, 2:])
    switched = info["latent"].argmax(-1) != last_latent
    assert abs(switched.mean() - 0.8) < 4 * np.sqrt(0.16 / 5000)
    fresh_obs, _ = env.reset()
    assert (fresh_obs[:, 2:] != obs[:, 2:]).any(axis=1).mean() > 0.9
    with pytest.raises(ValueError, match="keep_task"):
        GridworldEnv().reset(options={"keep_task": True})


def test_invalid_actions_are_rejected():
    env = GridworldEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(5)
    batched = GridworldVectorEnv(num_envs=3)
    batched.reset(seed=0)
    for bad in (np.array([0, 1, 5]), np.array([0, -1, 2]), np.zeros(2, dtype=np.int64), np.zeros(3)):
        with pytest.raises(ValueError, match="actions"):
            batched.step(bad)


def test_stepping_past_the_horizon_is_an_error():
    env = GridworldEnv(horizon=3)
    env.reset(seed=0)
    for _ in range(3):
        env.step(0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    batched = GridworldVectorEnv(num_envs=2, autoreset_mode="Disabled", horizon=3)
    batched.reset(seed=0)
    for _ in range(3):
        batched.step(np.zeros(2, dtype=np.int64))
    with pytest.raises(RuntimeError, match="reset"):
        batched.step(np.zeros(2, dtype=np.int64))


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        (dict(transition_matrix=[[0.2, 0.8, 0.0], [0.8, 0.2, 0.0]]), "transition_matrix.*shape"),
        (dict(transition_matrix=[[0.5, 0.6], [0.8, 0.2]]), "transition_matrix.*sum to 1"),
        (dict(size=2, num_goals=4), "num_goals.*at most"),
        (dict(size=3, num_goals=12), "num_goals.*at most"),
        (dict(num_goals=1), "num_goals"),
        (dict(horizon=0), "horizon"),
        (dict(session_length=0), "session_length"),
        (dict(schedule=""), "schedule"),
        (dict(schedule="poisson", num_sessions=61), "num_sessions.*at most"),
        (dict(size=0), "size.*positive"),
        (dict(size=-3), "size.*positive"),
        (dict(goal_reward=float("nan")), "goal_reward"),
        (dict(goal_reward=1e39), r"goal_reward must be a number finite in float32 \(\|x\| <= 3.403e\+38\), got 1e\+39"),
        (dict(step_reward=-1e308), "step_reward.*finite in float32"),
        (dict(step_reward=float("inf")), "step_reward.*finite in float32"),
        (dict(goal_reward="high"), "goal_reward.*finite in float32"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        gym.make(ENV_ID, **kwargs)
    with pytest.raises(ValueError, match=argument):
        gym.make_vec(ENV_ID, num_envs=2, **kwargs)


def test_huge_rewards_that_float32_holds_are_paid_as_given():
    """The environment takes them; a learner that cannot cope has to stop on its own non-finite losses."""
    actions = np.random.default_rng(0).integers(5, size=(60, 64))
    record, _ = rollout_batched(64, seed=0, actions=actions, goal_reward=3.4e38, step_reward=-1e20)
    assert set(record["reward"].ravel().tolist()) == {3.4e38, -1e20}
    assert np.isfinite(record["reward"].astype(np.float32)).all()
