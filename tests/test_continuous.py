"""Continuous control: every script trains on every MuJoCo DLCMDP and on ScratchItch, and a saved agent evaluates as
it trained."""

import json
import os

import pytest
import torch

import dynamite_rl
import envs.protocol
from conftest import ENCODER_STEPS, PHASE_FLAG, SCRIPTS, run_script

# environment -> its sessions per episode at the defaults
CONTINUOUS = {"dynamite/Reacher-v0": 8, "dynamite/HalfCheetahDir-v0": 8, "dynamite/HalfCheetahVel-v0": 8,
              "dynamite/HalfCheetahWindVel-v0": 8, "dynamite/ScratchItch-v0": 4}


def mujoco_tiny(script: str) -> list[str]:
    """3,200 steps on 4 environments (2 iterations of 400-step episodes); for scripts with an encoder the second half
    is the policy phase."""
    flags = ["--num-envs", "4", "--num-minibatches", "2", "--total-timesteps", "3200", "--eval-episodes", "4",
             "--log-every", "1", "--eval-every", "1", *ENCODER_STEPS.get(script, [])]
    if script in PHASE_FLAG:
        flags += [PHASE_FLAG[script], "1600", "--policy-num-envs", "4"]
    return flags


@pytest.mark.parametrize("env_id", CONTINUOUS)
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_trains_on_every_continuous_environment(script, env_id, tmp_path):
    flags = mujoco_tiny(script)
    run_dir = run_script(script, *flags, "--env-id", env_id, cwd=tmp_path)
    result = json.load(open(os.path.join(run_dir, "eval.json")))
    final = result["evaluations"][-1]
    assert result["finished"] and final["global_step"] == 3200 and result["bayes_optimal_return"] is None
    assert len(final["return_per_session"]) == CONTINUOUS[env_id] and len(final["consecutive_episode_returns"]) == 5
    args = result["args"]
    assert args["ent_coef"] == (0.01 if env_id == "dynamite/ScratchItch-v0" else 0.05)
    assert args["eval_episodes"] == 4 and args["norm_reward"] is True
    if script != "rl2.py":
        assert args["embed_dim"] == 32
    if "latent_dim" in args:
        assert args["latent_dim"] == 16
        assert args["state_decoder"] is (env_id == "dynamite/HalfCheetahWindVel-v0")


def test_a_saved_agent_evaluates_exactly_as_the_run_evaluated_it(tmp_path):
    flags = mujoco_tiny("dynamite_rl.py") + ["--save-model"]
    run_dir = run_script("dynamite_rl.py", *flags, "--env-id", "dynamite/HalfCheetahVel-v0", cwd=tmp_path)
    final = json.load(open(os.path.join(run_dir, "eval.json")))["evaluations"][-1]
    checkpoint = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)
    args = dynamite_rl.Args(**checkpoint["args"])
    envs_ = envs.protocol.make_vector_env(args.env_id, 1, {})
    obs_dim, space = envs_.single_observation_space.shape[0], envs_.single_action_space
    modules = {"encoder": dynamite_rl.Encoder(obs_dim, space.shape[0], args),
               "agent": dynamite_rl.Agent(obs_dim, space, args),
               "obs_scaling": dynamite_rl.ObservationScaling(envs_.single_observation_space)}
    for name, module in modules.items():
        module.load_state_dict(checkpoint["modules"][name])
    assert modules["obs_scaling"].unbounded.all() and not torch.all(modules["obs_scaling"].scale == 1)
    result = envs.protocol.evaluate(args.env_id, {}, lambda n: dynamite_rl.GreedyPolicy(
        n, modules["encoder"], modules["agent"], modules["obs_scaling"], space, 400, args, "cpu"),
        args.eval_episodes, consecutive=5, seed=args.seed + 1_000_000)
    assert result["return"] == final["return"]
    assert result["consecutive_episode_returns"] == final["consecutive_episode_returns"]


@pytest.mark.parametrize("env_id", ["dynamite/HalfCheetahVel-v0", "dynamite/ScratchItch-v0"])
def test_capture_video_records_mujoco_and_pybullet_headless(env_id, tmp_path):
    flags = ["--num-envs", "2", "--num-minibatches", "1", "--total-timesteps", "200", "--eval-episodes", "2",
             "--encoder-train-steps", "0", "--capture-video", "--env-kwargs", '{"horizon": 100, "session_length": 25}']
    run_dir = run_script("dynamite_rl.py", *flags, "--env-id", env_id, cwd=tmp_path)
    videos = [f for f in os.listdir(os.path.join(run_dir, "videos")) if f.endswith(".mp4")]
    assert videos and all(os.path.getsize(os.path.join(run_dir, "videos", f)) > 1000 for f in videos)
