"""Continuous control: every script trains on a MuJoCo DLCMDP, every continuous environment trains with DynaMITE-RL,
a saved agent evaluates as it trained, and videos render headless on MuJoCo and pybullet."""

import json
import math
import os

import pytest
import torch

import dynamite_rl
import envs.protocol
from conftest import ENCODER_STEPS, PHASE_FLAG, SCRIPTS, run_script

pytestmark = pytest.mark.slow  # every test here trains

CONTINUOUS = ["dynamite/Reacher-v0", "dynamite/HalfCheetahDir-v0", "dynamite/HalfCheetahVel-v0",
              "dynamite/HalfCheetahWindVel-v0", "dynamite/ScratchItch-v0", "dynamite/PointRobot-v0"]
SHORT = {"horizon": 50, "session_length": 25}  # two sessions
VIDEO = ["dynamite/HalfCheetahVel-v0", "dynamite/ScratchItch-v0"]


def tiny(script: str) -> list[str]:
    """400 steps on 4 environments (2 iterations of 50-step episodes); for scripts with an encoder the second is the
    policy phase."""
    flags = ["--num-envs", "4", "--num-minibatches", "2", "--total-timesteps", "400", "--eval-episodes", "2",
             "--log-every", "1", "--eval-every", "1", "--env-kwargs", json.dumps(SHORT), *ENCODER_STEPS.get(script, [])]
    if script in PHASE_FLAG:
        flags += [PHASE_FLAG[script], "200", "--policy-num-envs", "4"]
    return flags


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``trained(script, env_id)``: the folder of a tiny run, made once; DynaMITE-RL's runs also save their model, and
    on HalfCheetah-Vel (MuJoCo) and ScratchItch (pybullet) a video."""
    runs = {}

    def get(script: str, env_id: str) -> str:
        if (script, env_id) not in runs:
            extra = ["--save-model"] if script == "dynamite_rl.py" else []
            extra += ["--capture-video"] if script == "dynamite_rl.py" and env_id in VIDEO else []
            runs[script, env_id] = run_script(script, *tiny(script), *extra, "--env-id", env_id,
                                              cwd=tmp_path_factory.mktemp(script[:-3]))
        return runs[script, env_id]

    return get


def assert_trained_with_continuous_defaults(run_dir, script, env_id):
    result = json.load(open(os.path.join(run_dir, "eval.json")))
    final = result["evaluations"][-1]
    assert result["finished"] and final["global_step"] == 400 and result["bayes_optimal_return"] is None
    assert len(final["return_per_session"]) == 2 and len(final["consecutive_episode_returns"]) == 5
    args = result["args"]
    assert args["ent_coef"] == (0.01 if env_id == "dynamite/ScratchItch-v0" else 0.05)
    assert args["eval_episodes"] == 2 and args["norm_reward"] is True
    if script != "rl2.py":
        assert args["embed_dim"] == 32
    if "latent_dim" in args:
        assert args["latent_dim"] == 16
        assert args["state_decoder"] is (env_id == "dynamite/HalfCheetahWindVel-v0")


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_trains_on_a_continuous_environment(script, trained):
    env_id = "dynamite/HalfCheetahVel-v0"
    assert_trained_with_continuous_defaults(trained(script, env_id), script, env_id)


@pytest.mark.parametrize("env_id", CONTINUOUS)
def test_every_continuous_environment_trains(env_id, trained):
    assert_trained_with_continuous_defaults(trained("dynamite_rl.py", env_id), "dynamite_rl.py", env_id)


def test_a_saved_agent_evaluates_exactly_as_the_run_evaluated_it(trained):
    run_dir = trained("dynamite_rl.py", "dynamite/HalfCheetahVel-v0")
    final = json.load(open(os.path.join(run_dir, "eval.json")))["evaluations"][-1]
    checkpoint = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)
    args = dynamite_rl.Args(**checkpoint["args"])
    envs_ = envs.protocol.make_vector_env(args.env_id, 1, SHORT)
    obs_dim, space = envs_.single_observation_space.shape[0], envs_.single_action_space
    modules = {"encoder": dynamite_rl.Encoder(obs_dim, space.shape[0], args),
               "agent": dynamite_rl.Agent(obs_dim, space, args),
               "obs_scaling": dynamite_rl.ObservationScaling(envs_.single_observation_space)}
    for name, module in modules.items():
        module.load_state_dict(checkpoint["modules"][name])
    assert modules["obs_scaling"].unbounded.all() and not torch.all(modules["obs_scaling"].scale == 1)
    result = envs.protocol.evaluate(args.env_id, SHORT, lambda n: dynamite_rl.GreedyPolicy(
        n, modules["encoder"], modules["agent"], modules["obs_scaling"], space, 50, args, "cpu"),
        args.eval_episodes, consecutive=5, seed=args.seed + 1_000_000)
    assert result["return"] == final["return"]
    assert result["consecutive_episode_returns"] == final["consecutive_episode_returns"]


@pytest.mark.parametrize("env_id", VIDEO)
def test_capture_video_records_mujoco_and_pybullet_headless(env_id, trained):
    folder = os.path.join(trained("dynamite_rl.py", env_id), "videos")
    videos = [f for f in os.listdir(folder) if f.endswith(".mp4")]
    assert len(videos) == 1 and os.path.getsize(os.path.join(folder, videos[0])) > 1000


@pytest.mark.parametrize("script", [*SCRIPTS, "ppo.py"])
def test_training_keeps_the_std_under_its_bound(script, tmp_path):
    """A large entropy bonus pushes every log-std up; the projection after each step holds it at log(0.5 × 0.1) on
    the point robot's actions in [-0.1, 0.1]; with --max-std None (ppo.py) it grows past the half-width."""
    flags = [*tiny(script), "--env-id", "dynamite/PointRobot-v0", "--ent-coef", "10", "--save-model"]
    run_dir = run_script(script, *flags, "--max-std", "0.5", cwd=tmp_path / "bounded")
    logstd = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)["modules"]["agent"]["actor_logstd"]
    assert torch.allclose(logstd, torch.full_like(logstd, math.log(0.05)))
    if script == "ppo.py":
        run_dir = run_script(script, *flags, "--max-std", "None", cwd=tmp_path / "unbounded")
        logstd = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)["modules"]["agent"]["actor_logstd"]
        assert (logstd > 0).all()  # from std 1, ten times the half-width, upwards
