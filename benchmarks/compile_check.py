"""Does torch.compile or bfloat16 pay for itself? One encoder update of each script, eager, compiled and in
bfloat16, on the same batch, and where the eager update spends its time.

    python benchmarks/compile_check.py                                   # the Gridworld; writes docs/compile_check.md
    python benchmarks/compile_check.py --env-id dynamite/HalfCheetahVel-v0 --output docs/compile_check_halfcheetah

The encoder update is what the first phase of DynaMITE-RL, VariBAD and ContraBAR spends most of its time on. For
each script it is timed in four forms on one batch of random-action episodes of the environment (the script's
batch size, its defaults for the environment's family): eager, as the script runs it; the whole loss function under
``torch.compile(dynamic=True)``; the networks compiled one by one; and the eager loss under CPU autocast to
bfloat16 (matrix products in bfloat16, parameters and optimizer in float32). The forms alternate --repeats times,
each timed over --updates updates (forward, backward, Adam step) after warm-up ones; the table gives the median time
per update, its ratio to eager, the first update's time (what the compile costs, with inductor's caches off, as on
a first run), and, for bfloat16, how far its loss and gradient are from float32's on the same weights and batch.
ContraBAR's predictor is called through its methods, not ``forward``: compiling the networks one by one compiles
its encoder only. Then --profile-updates eager updates run under torch.profiler, and the report lists the
operations with the most CPU time (with their input shapes). Last, the floor: the floating-point operations of one
update's matrix products (forward and backward, counted by ``torch.utils.flop_counter``) timed at the rate one
thread multiplies two 1024 × 1024 matrices, whatever the rest of the update costs. One torch thread.
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
from torch.utils.flop_counter import FlopCounterMode

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
    profile_updates: int = 5
    """eager updates profiled per script (0: no profile)"""
    profile_rows: int = 12
    """operations listed per profile"""
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


def bfloat16_autocast(loss_fn):
    """``loss_fn`` under CPU autocast to bfloat16: the matrix products in bfloat16, the parameters kept in float32."""
    def autocast_loss(*inputs, **kwargs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return loss_fn(*inputs, **kwargs)
    return autocast_loss


def precision_gap(loss_fn, low_precision_fn, networks, batch, settings, seed: int) -> tuple[float, float]:
    """Relative differences of the loss and of the whole gradient (as one vector) of ``low_precision_fn`` from
    ``loss_fn``'s, on the same weights and batch (the same random draws inside the loss)."""
    parameters = [p for n in networks for p in n.parameters()]
    results = []
    for fn in (loss_fn, low_precision_fn):
        torch.manual_seed(seed)
        loss, _ = fn(*networks, batch, settings, torch.device("cpu"))
        gradient = torch.autograd.grad(loss, parameters, allow_unused=True)
        results.append((loss.detach().float(), torch.cat([torch.zeros(p.numel()) if g is None else g.float().flatten()
                                                          for p, g in zip(parameters, gradient)])))
    (loss, gradient), (low_loss, low_gradient) = results
    return (float((low_loss - loss).abs() / loss.abs().clamp(min=1e-12)),
            float((low_gradient - gradient).norm() / gradient.norm().clamp(min=1e-12)))


def profile(loss_fn, networks, batch, settings, updates: int, rows: int) -> list[str]:
    """Markdown rows of the operations that take the most CPU time over ``updates`` eager updates."""
    with torch.profiler.profile(record_shapes=True) as profiler:
        time_update(loss_fn, networks, batch, settings, updates)
    events = sorted(profiler.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    return [f"| `{e.key}` | {str(e.input_shapes).replace('|', '/')} | {e.count // updates} | "
            f"{e.self_cpu_time_total / updates / 1000:.2f} | {100 * e.self_cpu_time_total / total:.1f}% |"
            for e in events[:rows]]


def update_flops(loss_fn, networks, batch, settings) -> int:
    """Floating-point operations of the matrix products of one update's forward and backward pass."""
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = loss_fn(*networks, batch, settings, torch.device("cpu"))
        loss.backward()
    for network in networks:
        network.zero_grad()
    return counter.get_total_flops()


def matmul_rate(dtype=torch.float32, size: int = 1024, repeats: int = 10) -> float:
    """Operations per second of one thread multiplying two ``size`` × ``size`` matrices (the best of ``repeats``)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def check(script: str, args: Args) -> tuple[dict[str, tuple[float, float] | str], tuple[float, float], list[str], int]:
    """form -> (median ms per update, seconds of the first update) of ``script``'s encoder update, or why the form
    failed to compile; bfloat16's (loss, gradient) gap from float32; the profile's rows; and the update's
    matrix-product operations."""
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
             "networks compiled": (loss_fn, compiled), "bfloat16 autocast": (bfloat16_autocast(loss_fn), networks)}
    gap = precision_gap(loss_fn, forms["bfloat16 autocast"][0], networks, batch, settings, args.seed)
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
    rows = profile(loss_fn, networks, batch, settings, args.profile_updates, args.profile_rows) \
        if args.profile_updates else []
    return ({form: (float(np.median(times[form])), first[form]) if form in times else failed[form] for form in forms},
            gap, rows, update_flops(loss_fn, networks, batch, settings))


def main(args: Args) -> None:
    torch.set_num_threads(1)
    torch._inductor.config.force_disable_caches = True  # every run pays the whole compile, as a first run does
    unknown = [s for s in args.scripts if s not in UPDATES]
    if unknown:
        raise SystemExit(f"error: no encoder update known for {unknown}; choose from {', '.join(UPDATES)}")
    lines = ["| script | form | ms per update | ratio to eager | first update (compile) | gap from float32: loss, "
             "gradient |", "| --- | --- | ---: | ---: | ---: | --- |"]
    profiles, floors = [], []
    rates = {dtype: matmul_rate(dtype) for dtype in (torch.float32, torch.bfloat16)}
    for script in args.scripts:
        result, (loss_gap, gradient_gap), rows, flops = check(script, args)
        eager = result["eager"][0]
        for form, measured in result.items():
            if isinstance(measured, str):
                lines.append(f"| {script} | {form} | fails to compile ({measured}) | | | |")
                continue
            ms, first = measured
            gap = f"{loss_gap:.1e}, {gradient_gap:.1e}" if form == "bfloat16 autocast" else ""
            lines.append(f"| {script} | {form} | {ms:.1f} | {eager / ms:.2f}× | {first:.1f} s | {gap} |")
        print("\n".join(lines[-len(result):]), flush=True)
        floor = flops / rates[torch.float32] * 1000
        floors.append(f"| {script} | {flops / 1e9:.2f} | {floor:.1f} | {eager:.1f} | {100 * floor / eager:.0f}% |")
        if rows:
            profiles += [f"### {script}, eager", "", "| operation | input shapes | calls per update | ms per update "
                         "(self) | share |", "| --- | --- | ---: | ---: | ---: |", *rows, ""]
    command = "python benchmarks/compile_check.py " + shlex.join(sys.argv[1:])
    report = [f"# torch.compile, bfloat16 and the encoder update, {args.env_id}", "",
              f"Command: `{command.strip()}` (torch {torch.__version__}, one torch thread, {args.repeats} "
              f"alternating repeats of {args.updates} updates, median).", "", *lines, ""]
    report += ["## The floor: the matrix products alone at the core's peak", "",
               f"One thread multiplies two 1024 × 1024 matrices at {rates[torch.float32] / 1e9:.0f} GFLOP/s in float32 "
               f"({rates[torch.bfloat16] / 1e9:.0f} in bfloat16). At that rate an update's matrix products (forward "
               "and backward; Adam's step has none) would take the time in the table, whatever the rest of the update "
               "costs.", "",
               "| script | GFLOP per update (matrix products) | their time at the float32 peak, ms | eager update, ms "
               "| floor / eager |", "| --- | ---: | ---: | ---: | ---: |", *floors, ""]
    if profiles:
        report += [f"## Where an eager update spends its time ({args.profile_updates} updates under torch.profiler; "
                   "the operations with the most CPU time of their own)", "", *profiles]
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(f"{args.output}.md", "w") as f:
        f.write("\n".join(report))
    print(f"wrote {args.output}.md")


if __name__ == "__main__":
    main(tyro.cli(Args))
