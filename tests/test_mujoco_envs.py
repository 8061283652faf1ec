"""The MuJoCo DLCMDPs: gymnasium's checks, determinism, sessions, a hidden latent, a wind that pushes, and reward
weights refused rather than ignored."""

import re

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the environments)
from conftest import rollout

IDS = ["dynamite/Reacher-v0", "dynamite/HalfCheetahDir-v0", "dynamite/HalfCheetahVel-v0",
       "dynamite/HalfCheetahWindVel-v0"]


@pytest.mark.parametrize("env_id", IDS)
def test_passes_gymnasium_env_checker(env_id):
    with pytest.warns(UserWarning, match="infinity"):  # MuJoCo observations are unbounded
        check_env(gym.make(env_id).unwrapped, skip_render_check=True)


@pytest.mark.parametrize("env_id", IDS)
def test_same_seed_same_episode_other_seed_other_episode(env_id):
    env = gym.make(env_id)
    first, second, other = rollout(env, 3, 120), rollout(env, 3, 120), rollout(env, 4, 120)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert [i["latent"].tolist() for i in first[2]] == [i["latent"].tolist() for i in second[2]]
    assert not np.array_equal(first[0], other[0])


@pytest.mark.parametrize("env_id", IDS)
@pytest.mark.parametrize("schedule", [{"schedule": "fixed"}, {"schedule": "bernoulli", "session_prob": 0.05},
                                      {"schedule": "poisson", "num_sessions": 12}])
def test_the_latent_changes_only_at_session_ends_and_the_horizon_truncates(env_id, schedule):
    env = gym.make(env_id, horizon=200, **schedule)
    _, rewards, infos = rollout(env, 0, 1000)
    assert len(rewards) == 200 and infos[-1]["session_done"]
    _, reset_info = env.reset(seed=0)
    assert reset_info["session"] == 0 and np.array_equal(reset_info["latent"], infos[0]["latent"])
    done = np.array([i["session_done"] for i in infos])
    latents = np.array([i["latent"] for i in infos])
    sessions = np.array([i["session"] for i in infos])
    changed = np.any(latents[1:] != latents[:-1], axis=1)
    assert not changed[~done[:-1]].any()  # inside a session the latent stays
    assert np.array_equal(np.diff(sessions), done[:-1].astype(int))  # the session index counts the ends
    if env_id != "dynamite/HalfCheetahDir-v0":  # a direction may stay the same; the other latents move
        assert changed[done[:-1]].all()
    if schedule["schedule"] == "poisson":
        assert done.sum() == 12


@pytest.mark.parametrize("env_id", ["dynamite/Reacher-v0", "dynamite/HalfCheetahVel-v0"])
def test_the_latent_is_not_in_the_observation(env_id):
    """Two copies of one episode whose latents differ see the same observations and get different rewards."""
    a, b = gym.make(env_id, random_phase=True), gym.make(env_id, random_phase=True)
    rng = np.random.default_rng(0)
    a.reset(seed=5)
    b.reset(seed=5)
    if env_id == "dynamite/Reacher-v0":
        b.unwrapped._radius, b.unwrapped._angle_step = 0.1 if a.unwrapped._radius > 0.15 else 0.2, 1.0
        b.unwrapped._next_latent()
    else:
        b.unwrapped._phase = a.unwrapped._phase + 1.0
        b.unwrapped._next_latent()  # the sinusoids of the session again, with the new phase
    for _ in range(100):
        action = rng.uniform(-1, 1, a.action_space.shape)
        obs_a, reward_a, _, _, info_a = a.step(action)
        obs_b, reward_b, _, _, info_b = b.step(action)
        assert np.array_equal(obs_a, obs_b) and not np.array_equal(info_a["latent"], info_b["latent"])
    assert reward_a != reward_b


def test_the_reacher_target_moves_on_a_circle_and_is_rewarded_by_distance():
    env = gym.make("dynamite/Reacher-v0")
    _, rewards, infos = rollout(env, 1, 400)
    targets = np.array([i["latent"] for i in infos])
    radius = np.linalg.norm(targets, axis=1)
    assert np.allclose(radius, radius[0]) and 0.1 <= radius[0] <= 0.2
    assert len({tuple(t) for t in targets.round(9)}) == 8  # 8 sessions of 50 steps, 8 positions
    reward = np.array([i["reward_dist"] + i["reward_ctrl"] for i in infos])
    assert np.allclose(reward, rewards) and all(i["reward_dist"] <= 0 for i in infos)
    # the MuJoCo target body is where the latent says, so renderings show it
    env.unwrapped._next_latent()
    assert np.allclose(env.unwrapped.get_body_com("target")[:2], env.unwrapped.latent)


def test_the_wind_pushes_the_cheetah_backwards():
    """Same start, same (idle) actions: with the wind the cheetah ends up behind where it ends up without."""
    positions = {}
    for env_id in ("dynamite/HalfCheetahVel-v0", "dynamite/HalfCheetahWindVel-v0"):
        env = gym.make(env_id)
        env.reset(seed=0)
        for _ in range(100):
            env.step(np.zeros(6))
        positions[env_id] = env.unwrapped.data.qpos[0]
    assert positions["dynamite/HalfCheetahWindVel-v0"] < positions["dynamite/HalfCheetahVel-v0"] - 0.1


def test_rewards_follow_the_paper_with_a_control_cost():
    env = gym.make("dynamite/HalfCheetahDir-v0")
    env.reset(seed=0)
    action = np.full(6, 0.5)
    _, reward, _, _, info = env.step(action)
    assert reward == pytest.approx(info["latent"][0] * info["x_velocity"] - 0.05 * np.linalg.norm(action))
    env = gym.make("dynamite/HalfCheetahVel-v0", random_phase=False)  # v_g = 1.5 + 1.5 sin(0.2 i)
    env.reset(seed=0)
    _, reward, _, _, info = env.step(action)
    assert reward == pytest.approx(-abs(info["x_velocity"] - 1.5) - 0.05 * np.linalg.norm(action))


def test_keep_task_continues_the_task_into_the_next_episode():
    env = gym.make("dynamite/Reacher-v0")
    _, _, first = rollout(env, 2, 400)
    _, _, second = rollout(env, None, 400, options={"keep_task": True})
    assert second[0]["session"] == first[-1]["session"] + 1
    radius = np.linalg.norm(first[0]["latent"])
    assert np.isclose(np.linalg.norm(second[0]["latent"]), radius)
    _, _, fresh = rollout(env, None, 400)
    assert fresh[0]["session"] == 0 and not np.isclose(np.linalg.norm(fresh[0]["latent"]), radius)


@pytest.mark.parametrize("env_id,kwargs", [
    ("dynamite/Reacher-v0", {"reward_dist_weight": 2.0}),
    ("dynamite/Reacher-v0", {"reward_control_weight": float("nan")}),
    ("dynamite/HalfCheetahDir-v0", {"forward_reward_weight": float("inf")}),
    ("dynamite/HalfCheetahWindVel-v0", {"ctrl_cost_weight": -1e308}),
])
def test_gymnasium_reward_weights_are_refused_rather_than_ignored(env_id, kwargs):
    (name, value), = kwargs.items()
    message = rf"^{name} is not a setting of this DLCMDP: its reward is fixed .*, got {name}={re.escape(repr(value))}$"
    with pytest.raises(ValueError, match=message):
        gym.make(env_id, **kwargs)


@pytest.mark.parametrize("env_id", ["dynamite/Reacher-v0", "dynamite/HalfCheetahDir-v0", "dynamite/HalfCheetahVel-v0",
                                    "dynamite/HalfCheetahWindVel-v0"])
def test_the_reward_is_a_python_float(env_id):
    env = gym.make(env_id)
    env.reset(seed=0)
    reward = env.step(env.action_space.sample())[1]
    assert type(reward) is float


@pytest.mark.parametrize("env_id", ["dynamite/HalfCheetahVel-v0", "dynamite/HalfCheetahWindVel-v0"])
def test_the_sinusoids_phase_is_drawn_per_episode_so_the_session_index_does_not_give_the_latent_away(env_id):
    env, fixed = gym.make(env_id).unwrapped, gym.make(env_id, random_phase=False).unwrapped
    first_latents = set()
    for seed in range(3):
        env.reset(seed=seed)
        fixed.reset(seed=seed)
        first_latents.add(tuple(np.round(env.latent, 6)))
        assert 0 <= env._phase < 2 * np.pi and fixed._phase == 0.0
    assert len(first_latents) == 3  # the first session's latent differs between episodes


@pytest.mark.parametrize("env_id, kwargs", [(env_id, {}) for env_id in IDS] + [
    ("dynamite/HalfCheetahVel-v0", {"exclude_current_positions_from_observation": False})])
def test_a_step_is_gymnasiums_physics_observation_and_the_papers_reward_bit_for_bit(env_id, kwargs):
    """The step reads and writes MuJoCo's arrays directly; a twin stepped by gymnasium's own MujocoEnv.do_simulation,
    observations and body positions, with np.linalg.norm, gets the very same observations and rewards."""
    env, twin = gym.make(env_id, **kwargs).unwrapped, gym.make(env_id, **kwargs).unwrapped
    env.reset(seed=3)
    twin.reset(seed=3)
    rng = np.random.default_rng(3)
    for _ in range(120):  # past session ends (every 50 steps): the latent moves
        action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        obs, reward, _, _, info = env.step(action)
        if env_id == "dynamite/Reacher-v0":
            MujocoEnv.do_simulation(twin, action, twin.frame_skip)
            expected = -np.linalg.norm(twin.get_body_com("fingertip")[:2] - twin.latent) - 0.05 * np.linalg.norm(action)
        else:
            x_before = twin.data.qpos[0]
            twin.data.xfrc_applied[twin.model.body("torso").id, 0] = twin.wind()
            MujocoEnv.do_simulation(twin, action, twin.frame_skip)
            velocity = (twin.data.qpos[0] - x_before) / twin.dt
            task = float(twin.latent[0] * velocity if env_id == "dynamite/HalfCheetahDir-v0" else
                         -abs(velocity - twin.latent[0]))
            expected = task - 0.05 * np.linalg.norm(action)  # the paper's reward, not the environment's method
        _, _, twin_info = twin._end_step()  # a session's end may move the Reacher's target, and MuJoCo's positions with it
        if env_id == "dynamite/Reacher-v0":
            theta = twin.data.qpos.flatten()[:2]
            expected_obs = np.concatenate([np.cos(theta), np.sin(theta), twin.data.qvel.flatten()[:2],
                                           twin.get_body_com("fingertip")[:2]])
        else:
            expected_obs = HalfCheetahEnv._get_obs(twin)
        assert np.array_equal(obs, expected_obs) and reward == float(expected)
        assert np.array_equal(info["latent"], twin_info["latent"]) and info["session"] == twin_info["session"]
    with pytest.raises(ValueError, match="Action dimension mismatch"):
        env.step(np.zeros(env.action_space.shape[0] + 1))
