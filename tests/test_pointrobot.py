"""PointRobot: gymnasium's checks, the fixed task sets, the sparse reward, sessions that mirror the goal."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401
from envs.pointrobot import goal_of, task_weights


def greedy_return(env, seed: int) -> tuple[float, list[dict]]:
    """The return of walking straight to the goal the environment reports (an oracle), and the infos."""
    obs, info = env.reset(seed=seed)
    goal, total, infos = info["goal"], 0.0, []
    for _ in range(env.unwrapped.horizon):
        obs, reward, terminated, truncated, info = env.step(np.clip(goal - obs, -0.1, 0.1))
        goal = env.unwrapped.goal
        total, infos = total + reward, infos + [info]
        assert not terminated
    assert truncated
    return total, infos


@pytest.mark.parametrize("kwargs", [{}, {"task_set": "test"}, {"task_set": "fresh", "horizon": 60, "session_length": 20},
                                    {"schedule": "poisson", "num_sessions": 3, "horizon": 60}])
def test_gymnasium_accepts_every_variant(kwargs):
    check_env(gym.make("dynamite/PointRobot-v0", **kwargs).unwrapped, skip_render_check=True)


def test_the_task_sets_are_fixed_disjoint_and_cluster_near_the_anchors():
    train, test = (gym.make("dynamite/PointRobot-v0", task_set=s).unwrapped.tasks for s in ("train", "test"))
    assert train.shape == (30, 2) and test.shape == (10, 2)
    np.testing.assert_allclose(np.concatenate([train, test]), task_weights())  # the same 40 every time
    assert not set(map(tuple, train)) & set(map(tuple, test))
    weights = task_weights(task_seed=0, alpha=0.2)
    assert np.mean(np.min(weights, 1) < 0.1) > 0.5  # Dir(0.2, 0.2): most goals near one of the two anchors
    np.testing.assert_allclose(np.linalg.norm(goal_of(weights), axis=1), 1.0)
    np.testing.assert_allclose(goal_of(np.array([[1.0, 0.0], [0.0, 1.0]])), [[1, 0], [-1, 0]], atol=1e-12)
    env = gym.make("dynamite/PointRobot-v0", task_set="test")
    seen = {tuple(env.reset(seed=s)[1]["latent"]) for s in range(200)}
    assert seen <= set(map(tuple, test)) and len(seen) == 10


def test_the_sparse_reward_pays_one_minus_the_distance_inside_the_goal_radius_only():
    env = gym.make("dynamite/PointRobot-v0")
    total, infos = greedy_return(env, seed=3)
    rewards = [1 - i["distance"] if i["distance"] <= 0.2 else 0.0 for i in infos]
    assert total == pytest.approx(sum(rewards)) and 10 < total < 17  # 6 to 10 steps to a goal 1 away
    dense = gym.make("dynamite/PointRobot-v0", sparse=False)
    dense.reset(seed=3)
    assert dense.step(np.zeros(2))[1] == pytest.approx(-1.0)  # -d, d = 1 at the origin
    assert type(total) is float and type(dense.step(np.zeros(2))[1]) is float


def test_sessions_mirror_the_goal_with_the_switch_probability_and_restart_at_the_origin():
    env = gym.make("dynamite/PointRobot-v0", horizon=400, session_length=20, task_set="fresh", switch_prob=0.8)
    obs, info = env.reset(seed=0)
    latents, switches = [info["latent"]], []
    for _ in range(400):
        obs, _, _, truncated, info = env.step(np.full(2, 0.1))
        if info["session_done"] and not truncated:
            assert np.array_equal(obs, np.zeros(2))  # the next session's first observation
            latents.append(env.unwrapped.latent)
            switches.append(not np.allclose(latents[-1], latents[-2]))
            np.testing.assert_allclose(latents[-1], latents[-2][::-1] if switches[-1] else latents[-2])
    assert len(latents) == 20 and 0.5 < np.mean(switches) < 1.0
    kept = env.reset(options={"keep_task": True})[1]["latent"]
    assert np.allclose(kept, latents[-1]) or np.allclose(kept, latents[-1][::-1])


def test_the_same_seed_gives_the_same_episode_and_bad_arguments_are_refused():
    first, second = (greedy_return(gym.make("dynamite/PointRobot-v0", task_set="fresh"), seed=5) for _ in range(2))
    assert first[0] == second[0]
    for kwargs, word in [({"task_set": "valid"}, "task_set"), ({"alpha": 0}, "alpha"), ({"switch_prob": 2}, "switch_prob"),
                         ({"goal_radius": -1}, "goal_radius")]:
        with pytest.raises(ValueError, match=word):
            gym.make("dynamite/PointRobot-v0", **kwargs)


def test_it_renders_the_goal_and_the_robot():
    env = gym.make("dynamite/PointRobot-v0", render_mode="rgb_array")
    env.reset(seed=0)
    image = env.render()
    assert image.shape == (128, 128, 3) and (image == (235, 120, 120)).all(-1).any() and (image == (40, 70, 200)).all(-1).any()
