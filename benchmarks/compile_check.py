"""Does torch.compile pay for itself? One encoder update of each script, eager and compiled, on the same batch.

    python benchmarks/compile_check.py                                   # the Gridworld; writes docs/compile_check.md
    python benchmarks/compile_check.py --env-id dynamite/HalfCheetahVel-v0 --output docs/compile_check_halfcheetah

The encoder update is what the first phase of DynaMITE-RL, VariBAD and ContraBAR spends most of its time on. For
each script it is timed in three forms on one batch of random-action episodes of the environment (the script's
batch size, its defaults for the environment's family): eager, as the script runs it; the whole loss function under
``torch.compile(dynamic=True)``; and the networks compiled one by one. The forms alternate --repeats times, each
timed over --updates updates (forward, backward, Adam step) after warm-up ones; the table gives the median time per
update, its ratio to eager, and the first update's time (what the compile costs, with inductor's caches off, as on
a first run). ContraBAR's predictor is called through its methods, not ``forward``: compiling the networks one by
one compiles its encoder only. One torch thread.
"""

from __future__ import annotations

import importlib
import os
import shlex
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch._inductor.config
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import envs.protocol  # noqa: E402  (importing envs registers the environments)
import envs.runs  # noqa: E402


@dataclass
class Args:
    env_id: str = "dynamite/Gridworld-v0"
    """the environment whose random-action episodes make the batch"""
    scripts: list[str] = field(default_factory=lambda: ["dynamite_rl.py", "varibad.py", "contrabar.py"])
    """the scripts whose encoder update is timed"""
    updates: int = 20
    """updates timed per repeat (after 3 warm-up ones)"""
    repeats: int = 5
    """how many times the forms alternate; the median time counts"""
    seed: int = 1
    output: str = "docs/compile_check"
    """the report, without .md"""


# each script's encoder update: its loss function and the networks it trains
UPDATES = {
    "dynamite_rl.py": ("vae_loss", lambda m, o, a, args: [m.Encoder(o, a, args), m.Decoder(o, a, args),
                                                          m.LatentDynamicsPrior(args)]),
    "varibad.py": ("vae_loss", lambda m, o, a, args: [m.Encoder(o, a, args), m.Decoder(o, a, args)]),
    "contrabar.py": ("cpc_loss", lambda m, o, a, args: [m.Encoder(o, a, args), m.FuturePredictor(o, a, args)]),
}


def random_batch(env_id: str, episodes: int):
    """(obs, actions, rewards, next obs, session ends) of ``episodes`` random-action episodes, (H, B, ...) tensors."""
    vector_env = envs.protocol.make_vector_env(env_id, episodes, {})
    space, horizon = vector_env.single_action_space, envs.protocol.horizon(vector_env)
    steps = envs.protocol.random_episode(vector_env, horizon)
    vector_env.close()
    obs, actions, rewards, next_obs, ends = (torch.as_tensor(np.stack(part)) for part in zip(*steps))
    return (obs.float(), envs.protocol.action_features(actions, space), rewards.float(), next_obs.float(),
            ends.bool()), space


def time_update(loss_fn, networks, batch, args, updates: int) -> float:
    """Milliseconds per update (loss, backward, Adam step) over ``updates`` updates."""
    optimizer = torch.optim.Adam([p for n in networks for p in n.parameters()], lr=1e-4)
    start = time.perf_counter()
    for _ in range(updates):
        loss, _ = loss_fn(*networks, batch, args, torch.device("cpu"))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / updates * 1000


def check(script: str, args: Args) -> dict[str, tuple[float, float] | str]:
    """form -> (median ms per update, seconds of the first update) of ``script``'s encoder update, or why the form
    failed to compile."""
    module = importlib.import_module(script[: -len(".py")])
    settings = module.Args(env_id=args.env_id)
    one = envs.protocol.make_vector_env(args.env_id, 1, {})
    envs.runs.fill_family_defaults(settings, one)
    one.close()
    np.random.seed(args.seed)
    batch, space = random_batch(args.env_id, settings.encoder_batch_episodes)
    name, make = UPDATES[script]
    loss_fn = getattr(module, name)
    obs_dim, action_dim = batch[0].shape[-1], envs.protocol.action_size(space)
    torch.manual_seed(args.seed)
    networks = make(module, obs_dim, action_dim, settings)
    whole = torch.compile(loss_fn, dynamic=True)
    compiled = [torch.compile(n, dynamic=True) for n in networks]
    forms = {"eager": (loss_fn, networks), "whole loss compiled": (whole, networks),
             "networks compiled": (loss_fn, compiled)}
    first, failed = {}, {}
    for form, (fn, nets) in forms.items():  # warm-up; the compiled forms compile here
        start = time.perf_counter()
        try:
            time_update(fn, nets, batch, settings, 1)
        except Exception as error:  # torch.compile's own failures (inductor asserts on some graphs)
            failed[form] = " ".join(str(error).splitlines()[:2]).strip() or type(error).__name__
            continue
        first[form] = time.perf_counter() - start
        time_update(fn, nets, batch, settings, 2)
    times = {form: [] for form in first}
    for _ in range(args.repeats):
        for form in times:
            times[form].append(time_update(*forms[form], batch, settings, args.updates))
    return {form: (float(np.median(times[form])), first[form]) if form in times else failed[form] for form in forms}


def main(args: Args) -> None:
    torch.set_num_threads(1)
    torch._inductor.config.force_disable_caches = True  # every run pays the whole compile, as a first run does
    unknown = [s for s in args.scripts if s not in UPDATES]
    if unknown:
        raise SystemExit(f"error: no encoder update known for {unknown}; choose from {', '.join(UPDATES)}")
    lines = ["| script | form | ms per update | ratio to eager | first update (compile) |",
             "| --- | --- | ---: | ---: | ---: |"]
    for script in args.scripts:
        result = check(script, args)
        eager = result["eager"][0]
        for form, measured in result.items():
            if isinstance(measured, str):
                lines.append(f"| {script} | {form} | fails to compile ({measured}) | | |")
                continue
            ms, first = measured
            lines.append(f"| {script} | {form} | {ms:.1f} | {eager / ms:.2f}× | {first:.1f} s |")
        print("\n".join(lines[-3:]), flush=True)
    command = "python benchmarks/compile_check.py " + shlex.join(sys.argv[1:])
    report = [f"# torch.compile and the encoder update, {args.env_id}", "",
              f"Command: `{command.strip()}` (torch {torch.__version__}, one torch thread, {args.repeats} "
              f"alternating repeats of {args.updates} updates, median).", "", *lines, ""]
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(f"{args.output}.md", "w") as f:
        f.write("\n".join(report))
    print(f"wrote {args.output}.md")


if __name__ == "__main__":
    main(tyro.cli(Args))
