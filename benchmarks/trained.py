"""A trained agent read back from a run's checkpoint, for the benchmarks that study trained agents."""

from __future__ import annotations

from importlib import import_module

import numpy as np

import envs.protocol
import envs.runs


def load_agent(path: str, scripts: tuple[str, ...]) -> dict:
    """The run's module (``algo``), settings (``args``, ``env_kwargs``, ``eval_env_kwargs``), spaces and horizon,
    and its trained ``encoder``, ``agent`` and ``obs_scaling`` in eval mode; SystemExit if another script wrote it."""
    checkpoint = envs.runs.load_checkpoint(path, "cpu")
    script = checkpoint["header"]["script"]
    if script not in scripts:
        raise SystemExit(f"error: {path}: written by {script}; this needs {' or '.join(scripts)} runs")
    algo = import_module(script[: -len(".py")])
    args = algo.Args(**checkpoint["args"])
    env_kwargs, eval_env_kwargs = envs.runs.check_args(args)
    probe = envs.protocol.make_vector_env(args.env_id, 1, env_kwargs)
    obs_space, space, horizon = probe.single_observation_space, probe.single_action_space, envs.protocol.horizon(probe)
    probe.close()
    obs_dim = int(np.prod(obs_space.shape))
    modules = {"encoder": algo.Encoder(obs_dim, envs.protocol.action_size(space), args),
               "agent": algo.Agent(obs_dim, space, args), "obs_scaling": algo.ObservationScaling(obs_space)}
    for name, module in modules.items():
        module.load_state_dict(checkpoint["modules"][name])
        module.eval()
    return {"path": path, "script": script, "algo": algo, "args": args, "env_kwargs": env_kwargs,
            "eval_env_kwargs": eval_env_kwargs, "space": space, "horizon": horizon, **modules}
