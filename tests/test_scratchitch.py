"""ScratchItch: gymnasium's checks, determinism, an itch that moves only between sessions and is never observed, and
every reward term, on hand-made contacts and on contacts the simulator makes."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the environments)
from envs import scratchitch
from envs.scratchitch import ITCH_RADIUS, REWARD_KEYS, arm_point, reward_terms
from conftest import rollout

ID = "dynamite/ScratchItch-v0"


def test_passes_gymnasium_env_checker():
    with pytest.warns(UserWarning, match="infinity"):  # positions and the force are unbounded
        check_env(gym.make(ID).unwrapped, skip_render_check=True)


def test_same_seed_same_episode_whatever_came_before():
    env = gym.make(ID)
    first = rollout(env, 3, 60)
    rollout(env, 4, 80, action_seed=1)  # another episode in between: contact caches etc. must not leak
    second = rollout(env, 3, 60)
    fresh = rollout(gym.make(ID), 3, 60)
    for other in (second, fresh):
        assert np.array_equal(first[0], other[0]) and np.array_equal(first[1], other[1])
    assert not np.array_equal(first[0], rollout(env, 4, 60)[0])


@pytest.mark.parametrize("schedule", [{"schedule": "fixed"}, {"schedule": "bernoulli", "session_prob": 0.05},
                                      {"schedule": "poisson", "num_sessions": 6}])
def test_the_itch_moves_only_at_session_ends_and_stays_on_the_arm(schedule):
    env = gym.make(ID, **schedule)
    _, rewards, infos = rollout(env, 0, 1000)
    assert len(rewards) == 200 and infos[-1]["session_done"]
    done = np.array([i["session_done"] for i in infos])
    itches = np.array([i["itch"] for i in infos])
    latents = np.array([i["latent"][0] for i in infos])
    moved = np.linalg.norm(itches[1:] - itches[:-1], axis=1) > 1e-9
    assert np.array_equal(moved, done[:-1])  # the itch moves exactly at the session ends
    assert np.all((latents >= 0) & (latents <= 1))
    sessions = np.array([i["session"] for i in infos])
    phase = env.unwrapped._phase  # drawn per episode by default
    np.testing.assert_allclose(latents, (0.5 + np.sin(0.2 * sessions + phase) + 0.5) / 2)


def test_the_phase_of_the_itchs_path_is_drawn_per_episode_unless_fixed():
    env, fixed = gym.make(ID).unwrapped, gym.make(ID, random_phase=False).unwrapped
    phases = []
    for seed in range(3):
        env.reset(seed=seed)
        fixed.reset(seed=seed)
        phases.append(env._phase)
        assert fixed._phase == 0.0
    assert len(set(phases)) == 3 and all(0 <= p < 2 * np.pi for p in phases)


def test_the_itch_is_not_in_the_observation():
    """Two copies that differ only in where the itch is see the same observations under the same actions."""
    here, there = gym.make(ID).unwrapped, gym.make(ID).unwrapped
    obs_here, _ = here.reset(seed=5)
    obs_there, _ = there.reset(seed=5)
    there._phase = 2.0  # the itch elsewhere on the arm
    there._next_latent()
    assert np.linalg.norm(here.itch - there.itch) > 0.1
    rng = np.random.default_rng(0)
    for _ in range(100):
        action = rng.uniform(-1, 1, 7)
        (obs_here, *_, info_here), (obs_there, *_, info_there) = here.step(action), there.step(action)
        assert np.array_equal(obs_here, obs_there)
    assert info_here["latent"] != info_there["latent"]


def test_the_arm_pose_varies_per_episode_and_keep_task_keeps_it():
    env = gym.make(ID)
    first, _ = env.reset(seed=0)
    kept, info = env.reset(options={"keep_task": True})
    other, _ = env.reset(seed=1)
    assert np.array_equal(first[15:], kept[15:]) and not np.array_equal(first[15:], other[15:])
    assert info["session"] == 1  # the itch goes on moving from the last session


def test_arm_point_runs_from_the_shoulder_to_the_wrist_on_the_surface():
    shoulder, elbow, wrist = scratchitch.SHOULDER, scratchitch.NOMINAL_ELBOW, scratchitch.NOMINAL_WRIST

    def distance_to_axis(point, start, end):
        axis = (end - start) / np.linalg.norm(end - start)
        offset = point - start
        return np.linalg.norm(offset - offset.dot(axis) * axis)

    assert distance_to_axis(arm_point(shoulder, elbow, wrist, 0.0), shoulder, elbow) == pytest.approx(
        scratchitch.UPPER_ARM_RADIUS)
    assert distance_to_axis(arm_point(shoulder, elbow, wrist, 1.0), elbow, wrist) == pytest.approx(
        scratchitch.FOREARM_RADIUS)
    assert np.linalg.norm(arm_point(shoulder, elbow, wrist, 0.0) - shoulder) == pytest.approx(
        scratchitch.UPPER_ARM_RADIUS)
    assert np.linalg.norm(arm_point(shoulder, elbow, wrist, 1.0) - wrist) == pytest.approx(scratchitch.FOREARM_RADIUS)
    points = [arm_point(shoulder, elbow, wrist, u) for u in np.linspace(0, 1, 11)]
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    assert np.all(steps > 0.03)  # evenly spread along the ~0.53 m arm, never stuck


ITCH = np.array([0.2, -0.25, 0.8])


def terms(points, forces, by_tool, tip=ITCH, speed=0.0):
    return reward_terms(np.asarray(tip), ITCH, speed, np.asarray(points), np.asarray(forces), np.asarray(by_tool))


def test_a_gentle_scratch_at_the_itch_is_rewarded_and_costs_nothing():
    t = terms([ITCH + [0.01, 0, 0]], [6.0], [True])
    assert t["reward_scratch"] == scratchitch.SCRATCH_BONUS
    assert t["reward_high_force"] == t["reward_force_away"] == t["reward_distance"] == t["reward_velocity"] == 0


def test_more_than_10_newtons_at_the_itch_is_penalised_not_rewarded():
    t = terms([ITCH, ITCH + [0, 0.01, 0]], [7.0, 5.0], [True, True])  # 12 N in all
    assert t["reward_scratch"] == 0 and t["reward_high_force"] == pytest.approx(-0.05 * 12.0)
    assert t["reward_force_away"] == 0


def test_contact_away_from_the_itch_or_by_the_robot_is_penalised():
    away = terms([ITCH + [0, 0, ITCH_RADIUS + 0.01]], [4.0], [True])
    assert away["reward_force_away"] == pytest.approx(-0.01 * 4.0) and away["reward_scratch"] == 0
    robot = terms([ITCH], [3.0], [False])  # a robot link (not the tool) touching the itch is not scratching
    assert robot["reward_force_away"] == pytest.approx(-0.01 * 3.0) and robot["reward_scratch"] == 0
    both = terms([ITCH, ITCH + [0.3, 0, 0]], [5.0, 2.0], [True, True])
    assert both["reward_scratch"] == scratchitch.SCRATCH_BONUS and both["reward_force_away"] == pytest.approx(-0.02)


def test_distance_and_velocity_terms():
    t = terms(np.zeros((0, 3)), [], [], tip=ITCH + [0.3, 0.4, 0.0], speed=2.0)
    assert t["reward_distance"] == pytest.approx(-0.5) and t["reward_velocity"] == pytest.approx(-0.25 * 2.0)
    assert t["reward_scratch"] == t["reward_force_away"] == t["reward_high_force"] == 0


def press(env, target: np.ndarray, depth: float, steps: int = 50) -> dict:
    """Drive the tool tip, pointing down, to ``depth`` below ``target`` (negative: above) by joint-delta actions."""
    for _ in range(steps):
        grasp = target + [0, 0, scratchitch.TOOL_LENGTH + scratchitch.TOOL_RADIUS - depth]
        goal = env.inverse_kinematics(grasp, env.tool_down)
        joints = np.array([s[0] for s in env._client.getJointStates(env._robot, scratchitch.ARM_JOINTS)])
        _, reward, _, _, info = env.step(np.clip((goal - joints) / scratchitch.MAX_JOINT_STEP, -1, 1))
    info["reward"] = reward
    return info


def test_the_simulator_rewards_a_gentle_scratch_and_penalises_pressing_hard_or_elsewhere():
    env = gym.make(ID, arm_pose_noise=0.0, random_phase=False).unwrapped  # the itch where the presses reach it
    env.reset(seed=0)
    gentle = press(env, env.itch, depth=-0.008)
    assert 0 < gentle["itch_force"] <= 10 and gentle["reward_scratch"] == scratchitch.SCRATCH_BONUS
    assert gentle["away_force"] == 0 and gentle["reward"] == pytest.approx(sum(gentle[k] for k in REWARD_KEYS))
    env.reset(seed=0)
    hard = press(env, env.itch, depth=0.02)
    assert hard["itch_force"] > 10 and hard["reward_high_force"] < 0 and hard["reward_scratch"] == 0
    env.reset(seed=0)
    elsewhere = press(env, arm_point(*env._arm, float(env.latent[0]) + 0.2), depth=0.0)
    assert elsewhere["away_force"] > 0 and elsewhere["reward_force_away"] < 0 and elsewhere["itch_force"] == 0


def test_renders_an_image_without_a_display():
    env = gym.make(ID, render_mode="rgb_array")
    env.reset(seed=0)
    image = env.render()
    assert image.shape == (240, 320, 3) and image.dtype == np.uint8 and image.std() > 10
    env.close()


def test_bad_arguments_fail_with_a_clear_message():
    with pytest.raises(ValueError, match="render_mode"):
        scratchitch.ScratchItchEnv(render_mode="human")
    with pytest.raises(ValueError, match="arm_pose_noise"):
        gym.make(ID, arm_pose_noise=2.0)
    with pytest.raises(ValueError, match="schedule"):
        gym.make(ID, schedule="weekly")
