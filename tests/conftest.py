"""Shared helpers: run an algorithm script in this process, as its command line would, and the finished runs that
several tests read; roll out an environment; record an episode of a script's evaluation policy."""

import glob
import os
import runpy
import signal
import sys

import numpy as np
import pytest
import torch

import envs.protocol
import envs.runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# one torch thread per test process, as the scripts train (--num-threads 1): the suite's workers (-n 2) already fill
# a 2-core machine, and more threads than free cores make torch's small operations wait on each other (a VAE step of
# a test took 20 times as long with two threads while a training run held the other core)
torch.set_num_threads(1)

SCRIPTS = ["dynamite_rl.py", "varibad.py", "rl2.py", "contrabar.py"]
VAE_SCRIPTS = ["dynamite_rl.py", "varibad.py"]  # the ones that learn a belief with a VAE

# a tiny budget that still exercises every part of a training script: 2 iterations of 8 episodes
_TINY = ["--num-envs", "8", "--num-minibatches", "2", "--total-timesteps", "960", "--eval-episodes", "16",
         "--log-every", "1"]
ENCODER_STEPS = {script: ["--encoder-updates", "2", "--encoder-batch-episodes", "8"]
                 for script in ("dynamite_rl.py", "varibad.py", "contrabar.py")}
TINY = {script: _TINY + ENCODER_STEPS.get(script, []) for script in [*SCRIPTS, "ppo.py"]}  # ppo.py: the bounds
# the flag that ends each script's first phase: the encoder's, or RL^2's small batches
PHASE_FLAG = {**{script: "--encoder-train-steps" for script in ("dynamite_rl.py", "varibad.py", "contrabar.py")},
              "rl2.py": "--small-batch-steps"}


def discrete_args(module, **overrides):
    """``module.Args(**overrides)`` with the settings left to the environment family filled in as the scripts
    fill them for the Gridworld (discrete actions)."""
    args = module.Args(**overrides)
    for name, value in envs.runs.FAMILY_DEFAULTS["discrete"].items():
        if getattr(args, name, False) is None:
            setattr(args, name, value)
    if getattr(args, "state_decoder", False) is None:
        args.state_decoder = False
    return args


@pytest.fixture(autouse=True, scope="session")
def offline_wandb(tmp_path_factory):
    """Tests never reach the network: wandb writes offline runs (also those of runs shared by several tests)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_DIR", str(tmp_path_factory.mktemp("wandb")))
        patch.setenv("WANDB_SILENT", "true")
        yield


_marked_slow = [True]  # whether the running test is marked slow


@pytest.fixture(autouse=True)
def training_only_in_slow_tests(request):
    """Training is what makes a test slow: run_script fails a test that trains without the slow mark, so that
    ``-m "not slow"`` stays quick (stopping at a bad setting, before anything is written, is not training)."""
    _marked_slow[0] = request.node.get_closest_marker("slow") is not None
    yield
    _marked_slow[0] = True


def run_script(script: str, *args: str, cwd) -> str:
    """Run ``python <script> <args>`` in this process from ``cwd``; return the folder of the run it wrote."""
    saved_argv, saved_cwd, saved_handler = sys.argv, os.getcwd(), signal.getsignal(signal.SIGINT)
    sys.argv = [script, *args]
    os.makedirs(cwd, exist_ok=True)
    before = set(glob.glob(os.path.join(cwd, "runs", "*")))
    os.chdir(cwd)
    finished = False
    try:
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
        finished = True
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        signal.signal(signal.SIGINT, saved_handler)
        created = set(glob.glob(os.path.join(cwd, "runs", "*"))) - before
        if (finished or created) and not _marked_slow[0]:
            pytest.fail(f"{script} trained in a test without @pytest.mark.slow", pytrace=False)
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


# a finished run: 2 iterations of 8 episodes, evaluated and saved after each, with a video of the last evaluation
FINISHED = ["--total-timesteps", "960", "--save-model", "--eval-every", "1", "--capture-video"]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """``finished_run(script)``: the folder of a finished run of ``script`` with TINY + FINISHED, trained once per
    session on first use. Tests read it and never write into it."""
    runs = {}

    def get(script: str) -> str:
        if script not in runs:
            runs[script] = run_script(script, *TINY[script], *FINISHED, cwd=tmp_path_factory.mktemp(script[:-3]))
        return runs[script]

    return get


def greedy_episode(algo, encoder, args, env_kwargs: dict, num_envs: int = 16, seed: int = 0) -> dict:
    """One Gridworld episode of ``algo.GreedyPolicy`` (``encoder``, an untrained agent), recorded as the scripts'
    buffers store episodes, (H, B, ...): scaled observations, action features, rewards and the true session ends;
    and ``beliefs``, the (mean, logvar) the policy carried at each step."""
    envs_ = envs.protocol.make_vector_env("dynamite/Gridworld-v0", num_envs, env_kwargs)
    space, horizon = envs_.single_action_space, envs.protocol.horizon(envs_)
    scaling = algo.ObservationScaling(envs_.single_observation_space)
    agent = algo.Agent(envs_.single_observation_space.shape[0], space, args)
    policy = algo.GreedyPolicy(num_envs, encoder, agent, scaling, space, horizon, args, "cpu")
    record = {key: [] for key in ("obs", "actions", "rewards", "session_done", "beliefs")}
    obs, _ = envs_.reset(seed=seed)
    for t in range(horizon):
        action = policy.act(obs, t)
        record["obs"].append(scaling(obs))
        record["actions"].append(algo.action_features(policy.action, space))
        record["beliefs"].append(torch.cat([policy.mean, policy.logvar], -1))
        obs, reward, _, _, info = envs_.step(action)
        policy.observe(reward, info)
        record["rewards"].append(torch.as_tensor(reward, dtype=torch.float32))
        record["session_done"].append(torch.as_tensor(info["session_done"]))
    envs_.close()
    return {key: torch.stack(value) for key, value in record.items()}
