"""Shared helpers: run an algorithm script in this process, as its command line would; roll out an environment."""

import glob
import os
import runpy
import signal
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPTS = ["dynamite_rl.py", "varibad.py", "rl2.py", "contrabar.py"]
VAE_SCRIPTS = ["dynamite_rl.py", "varibad.py"]  # the ones that learn a belief with a VAE

# a tiny budget that still exercises every part of a training script: 2 iterations of 8 episodes
_TINY = ["--num-envs", "8", "--num-minibatches", "2", "--total-timesteps", "960", "--eval-episodes", "16",
         "--log-every", "1"]
ENCODER_STEPS = {script: ["--encoder-updates", "2", "--encoder-batch-episodes", "8"]
                 for script in ("dynamite_rl.py", "varibad.py", "contrabar.py")}
TINY = {script: _TINY + ENCODER_STEPS.get(script, []) for script in SCRIPTS}
# the scripts with a separately trained encoder, and the flag that ends its phase
PHASE_FLAG = {script: "--encoder-train-steps" for script in ("dynamite_rl.py", "varibad.py", "contrabar.py")}


def discrete_args(module, **overrides):
    """``module.Args(**overrides)`` with the settings left to the environment family filled in as the scripts
    fill them for the Gridworld (discrete actions)."""
    args = module.Args(**overrides)
    for name, value in module.FAMILY_DEFAULTS["discrete"].items():
        if getattr(args, name, False) is None:
            setattr(args, name, value)
    if getattr(args, "state_decoder", False) is None:
        args.state_decoder = False
    return args


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch, tmp_path):
    """Tests never reach the network: wandb writes offline runs into the test's folder."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")


def run_script(script: str, *args: str, cwd) -> str:
    """Run ``python <script> <args>`` in this process from ``cwd``; return the folder of the run it wrote."""
    saved_argv, saved_cwd, saved_handler = sys.argv, os.getcwd(), signal.getsignal(signal.SIGINT)
    sys.argv = [script, *args]
    os.makedirs(cwd, exist_ok=True)
    os.chdir(cwd)
    try:
        before = set(glob.glob(os.path.join(cwd, "runs", "*")))
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
        created = set(glob.glob(os.path.join(cwd, "runs", "*"))) - before
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        signal.signal(signal.SIGINT, saved_handler)
    resumed = [a for a in args if a.endswith(".pt")]
    return created.pop() if created else os.path.dirname(resumed[0])


def rollout(env, seed: int, steps: int, action_seed: int = 0, options=None):
    """Observations, rewards and infos of ``steps`` steps of fixed pseudo-random actions."""
    rng = np.random.default_rng(action_seed)
    obs, _ = env.reset(seed=seed, options=options)
    observations, rewards, infos = [obs], [], []
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
        observations.append(obs), rewards.append(reward), infos.append(info)
        assert not terminated
        if truncated:
            break
    return np.array(observations), np.array(rewards), infos
