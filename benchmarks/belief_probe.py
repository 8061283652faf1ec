"""Can the VAE of dynamite_rl.py (or ContraBAR's encoder) learn the Gridworld's posterior when it is shown
informative behaviour, and how much of it do trained agents' representations hold?

    python benchmarks/belief_probe.py                        # the defaults of dynamite_rl.py
    python benchmarks/belief_probe.py --extra "--latent-dim 2 --no-decode-mean"
    python dynamite_rl.py --resume runs/belief_probe/checkpoint.pt   # then: a fresh policy on the frozen encoder
    python benchmarks/belief_probe.py --script contrabar.py --output docs/belief_probe_contrabar   # ContraBAR's h_t
    python benchmarks/belief_probe.py --checkpoints runs/*/contrabar/seed*/checkpoint.pt --output docs/probe_runs

The VAE (dynamite_rl.py's networks and loss, set by --extra) trains offline on episodes of a scripted
explorer that walks to the goal the exact posterior favours and takes a uniformly random action with
probability --epsilon. Every --probe-every updates a small MLP is fitted from (belief mean, belief log-variance,
observation) to the exact posterior P(paying goal = goal 0 | history) on held-out episodes of the same explorer
and of uniformly random behaviour; its R^2 on the other half says how much of the posterior the belief holds.
A linear fit from the belief alone says whether it holds it in a form a policy reads easily. The result goes to
--output (.md and .json); the checkpoint written to --run-dir, with the VAE frozen (--encoder-updates 0) and a fresh
policy, lets `dynamite_rl.py --resume` measure how well PPO uses this belief. With --script contrabar.py the
same is asked of ContraBAR's history summary h_t, trained by its own update on the same episodes. With
--checkpoints nothing trains: the encoders of finished runs (dynamite_rl.py, varibad.py or contrabar.py) are probed.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import import_module
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import dynamite_rl as dm
import envs.protocol
import envs.runs
from envs.gridworld import GridworldVectorEnv


@dataclass
class Args:
    script: Literal["dynamite_rl.py", "contrabar.py"] = "dynamite_rl.py"
    """whose encoder trains on the explorer's episodes, by that script's networks and update"""
    extra: str = ""
    """flags of --script that set its encoder (e.g. "--latent-dim 2 --kl-weight 0.01")"""
    checkpoints: list[str] = field(default_factory=list)
    """train nothing: probe the encoders of these finished runs' checkpoints"""
    updates: int = 1500
    """VAE gradient steps"""
    probe_every: int = 500
    """measure the belief every this many updates"""
    epsilon: float = 0.3
    """probability of a uniformly random action of the scripted explorer"""
    train_episodes: int = 20000
    """episodes the VAE trains on"""
    test_episodes: int = 2000
    """held-out episodes of each behaviour for the probes"""
    probe_steps: int = 1500
    """gradient steps of each probe's MLP"""
    seed: int = 1
    """seed of the data, the networks and the probes"""
    run_dir: str = "runs/belief_probe"
    """where the checkpoint for `dynamite_rl.py --resume` goes"""
    output: str = "docs/belief_probe"
    """stem of the .md and .json results"""


def explorer_episodes(num_episodes: int, epsilon: float, seed: int, env_kwargs: dict):
    """Episodes of the scripted explorer as dynamite_rl's (obs, actions one-hot, rewards, next obs, session_done),
    scaled as it scales them; the exact posterior over the paying goal before each step (H, B, G); the true
    paying goal at each step (H, B)."""
    env = GridworldVectorEnv(num_envs=num_episodes, autoreset_mode="Disabled", **env_kwargs)
    config, rng = env.config, np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    cells = lambda xy: (xy[..., 0] * config.size + xy[..., 1]).astype(np.int64)  # noqa: E731
    goals = cells(obs[:, 2:].reshape(num_episodes, config.num_goals, 2))
    posterior = np.full((num_episodes, config.num_goals), 1.0 / config.num_goals)
    favourite = rng.integers(config.num_goals, size=num_episodes)  # breaks ties, redrawn every session
    rows = np.arange(num_episodes)
    steps, posteriors, latents = [], [], []
    for _ in range(config.horizon):
        posteriors.append(posterior.copy())
        latents.append(env.latents.copy())
        agent = cells(obs[:, :2])
        best = posterior.max(1, keepdims=True)
        likely = np.where(posterior[rows, favourite] == best[:, 0], favourite, posterior.argmax(1))
        target = config.coords[goals[rows, likely]]
        distance = np.abs(config.coords[config.move[agent]] - target[:, None]).sum(-1)  # (B, actions)
        action = np.where(rng.random(num_episodes) < epsilon, rng.integers(5, size=num_episodes), distance.argmin(1))
        landed = config.move[agent, action]
        next_obs, reward, _, _, info = env.step(action)
        steps.append((obs, action, reward, next_obs, info["session_done"]))
        on_goal = landed[:, None] == goals  # (B, G)
        paid = reward == config.goal_reward
        posterior = np.where(on_goal.any(1, keepdims=True) & paid[:, None], on_goal.astype(float),
                             np.where(on_goal & ~paid[:, None], 0.0, posterior))
        posterior /= posterior.sum(1, keepdims=True)
        ended = info["session_done"]
        posterior = np.where(ended[:, None], posterior @ config.transition_matrix, posterior)
        favourite = np.where(ended, rng.integers(config.num_goals, size=num_episodes), favourite)
        obs = next_obs
    scaling = dm.ObservationScaling(env.single_observation_space)
    stack = lambda i: torch.as_tensor(np.stack([s[i] for s in steps]))  # noqa: E731
    data = (scaling(stack(0)), F.one_hot(stack(1), 5).float(), stack(2).float(), scaling(stack(3)), stack(4))
    return data, torch.as_tensor(np.stack(posteriors), dtype=torch.float32), np.stack(latents)


def r_squared(prediction, target) -> float:
    return 1.0 - ((prediction - target) ** 2).mean().item() / target.var(unbiased=False).item()


def representation(algo, encoder, algo_args, data):
    """What the policy reads of the history at each step, (H, B, F): a VAE's belief (mean, logvar), ContraBAR's h_t."""
    obs, actions, rewards, _, session_done = data
    with torch.no_grad():
        if algo.__name__ == "contrabar":
            return algo.encode_episodes(encoder, obs, actions, rewards, algo_args, "cpu")
        if algo.__name__ == "varibad":
            return torch.cat(algo.encode_episodes(encoder, obs, actions, rewards, algo_args, "cpu"), -1)
        return torch.cat(algo.encode_episodes(encoder, obs, actions, rewards, session_done, algo_args, "cpu")[:2], -1)


def probe(belief, data, posteriors, seed: int, steps: int = 1500) -> dict:
    """R^2 of the exact P(goal 0 pays) from (belief, obs) by an MLP and from the belief alone by least squares,
    fitted on the first half of the episodes and measured on the second; ``belief`` is the representation (H, B, F)."""
    half = belief.shape[1] // 2
    target = posteriors[..., 0]
    features = torch.cat([belief, data[0]], -1)
    fit, test = (slice(None), slice(None, half)), (slice(None), slice(half, None))
    x_fit, y_fit = features[fit].reshape(-1, features.shape[-1]), target[fit].reshape(-1)
    x_test, y_test = features[test].reshape(-1, features.shape[-1]), target[test].reshape(-1)
    center, spread = x_fit.mean(0), x_fit.std(0) + 1e-6
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(features.shape[-1], 128), nn.ReLU(),
                        nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 1))
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(steps):
        index = torch.randint(len(x_fit), (1024,))
        loss = ((net((x_fit[index] - center) / spread).squeeze(-1) - y_fit[index]) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        nonlinear = r_squared(net((x_test - center) / spread).squeeze(-1), y_test)
    linear_fit = torch.cat([belief[fit].reshape(-1, belief.shape[-1]), torch.ones(len(y_fit), 1)], -1).double()
    weights = torch.linalg.lstsq(linear_fit, y_fit[:, None].double()).solution
    linear_test = torch.cat([belief[test].reshape(-1, belief.shape[-1]), torch.ones(len(y_test), 1)], -1).double()
    linear = r_squared((linear_test @ weights).squeeze(-1).float(), y_test)
    return {"mlp_belief_obs": nonlinear, "linear_belief": linear}


def probe_checkpoints(args: Args) -> dict:
    """The probe of every checkpoint in --checkpoints, one row each, with the final return of its run."""
    rows = []
    for path in args.checkpoints:
        checkpoint = envs.runs.load_checkpoint(path, "cpu")
        algo = import_module(checkpoint["header"]["script"][: -len(".py")])
        algo_args = algo.Args(**checkpoint["args"])
        if algo_args.env_id != "dynamite/Gridworld-v0" or not hasattr(algo, "encode_episodes"):
            raise SystemExit(f"error: {path}: the probe needs a Gridworld run of a script with an encoder")
        env_kwargs, _ = envs.runs.check_args(algo_args)
        tests = {"explorer": explorer_episodes(args.test_episodes, args.epsilon, args.seed + 1, env_kwargs)[:2],
                 "random": explorer_episodes(args.test_episodes, 1.0, args.seed + 2, env_kwargs)[:2]}
        data = tests["random"][0]
        encoder = algo.Encoder(data[0].shape[-1], data[1].shape[-1], algo_args)
        encoder.load_state_dict(checkpoint["modules"]["encoder"])
        evaluations = checkpoint["evaluations"]
        row = {"checkpoint": path, "script": checkpoint["header"]["script"],
               "return": round(evaluations[-1]["return"], 2) if evaluations else None}
        for name, (data, posteriors) in tests.items():
            measured = probe(representation(algo, encoder, algo_args, data), data, posteriors, args.seed, args.probe_steps)
            row.update({f"{name}/{k}": round(v, 3) for k, v in measured.items()})
        rows.append(row)
        print(" | ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    return write_results(args, rows, ["checkpoint", "script", "return"])


def write_results(args: Args, rows: list[dict], first: list[str]) -> dict:
    result = {"command": " ".join(["python benchmarks/belief_probe.py", *map(shlex.quote, sys.argv[1:])]),
              "args": asdict(args), "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(f"{args.output}.json", "w") as f:
        json.dump(result, f, indent=1)
    header = [*first, "explorer/mlp_belief_obs", "explorer/linear_belief", "random/mlp_belief_obs",
              "random/linear_belief"]
    with open(f"{args.output}.md", "w") as f:
        f.write(f"# Belief probe\n\n`{result['command']}`\n\nR² of the exact posterior P(goal 0 pays) from what the "
                "policy reads of the history (a VAE's belief, ContraBAR's h_t) on held-out episodes (explorer: the "
                "training behaviour; random: uniformly random actions); mlp: from (representation, observation), "
                "linear: from the representation alone; seconds: wall time since the start, probes included.\n\n")
        f.write("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
        for row in rows:
            f.write("| " + " | ".join(str(row[h]) for h in header) + " |\n")
    print(f"wrote {args.output}.md and {args.output}.json")
    return result


def main(args: Args) -> dict:
    if args.checkpoints:
        return probe_checkpoints(args)
    algo = import_module(args.script[: -len(".py")])
    vae_args = tyro.cli(algo.Args, args=shlex.split(args.extra))
    vae_args.seed = args.seed
    env_kwargs, _ = envs.runs.check_args(vae_args)
    envs_ = envs.protocol.make_vector_env(vae_args.env_id, vae_args.num_envs, env_kwargs)
    envs.runs.fill_family_defaults(vae_args, envs_)
    if vae_args.env_id != "dynamite/Gridworld-v0":
        raise SystemExit("error: the belief probe needs the Gridworld (its exact posterior is computed here)")
    torch.set_num_threads(vae_args.num_threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    train, _, _ = explorer_episodes(args.train_episodes, args.epsilon, args.seed, env_kwargs)
    tests = {"explorer": explorer_episodes(args.test_episodes, args.epsilon, args.seed + 1, env_kwargs)[:2],
             "random": explorer_episodes(args.test_episodes, 1.0, args.seed + 2, env_kwargs)[:2]}
    obs_dim, num_actions = train[0].shape[-1], train[1].shape[-1]
    horizon = train[0].shape[0]
    encoder = algo.Encoder(obs_dim, num_actions, vae_args)
    if algo is dm:
        decoder, prior_net = dm.Decoder(obs_dim, num_actions, vae_args), dm.LatentDynamicsPrior(vae_args)
        heads = [decoder, prior_net]
        update_step = lambda batch, i: dm.vae_update(encoder, decoder, prior_net, vae_optimizer, batch, vae_args, "cpu", i)  # noqa: E731
    else:  # ContraBAR: its CPC heads and update
        heads = [algo.FuturePredictor(obs_dim, num_actions, vae_args)]
        update_step = lambda batch, i: algo.cpc_update(encoder, heads[0], vae_optimizer, batch, vae_args, "cpu", i)  # noqa: E731
    vae_optimizer = torch.optim.Adam([*encoder.parameters(), *(p for h in heads for p in h.parameters())],
                                     lr=vae_args.encoder_learning_rate)
    rows, start = [], time.time()
    for update in range(1, args.updates + 1):
        index = torch.randint(args.train_episodes, (vae_args.encoder_batch_episodes,))
        loss, terms = update_step(tuple(x[:, index] for x in train), update)
        if update % args.probe_every == 0 or update == args.updates:
            row = {"updates": update, "seconds": round(time.time() - start, 1),
                   **{k: round(v.item(), 4) for k, v in terms.items()}}
            for name, (data, posteriors) in tests.items():
                measured = probe(representation(algo, encoder, vae_args, data), data, posteriors, args.seed, args.probe_steps)
                row.update({f"{name}/{k}": round(v, 3) for k, v in measured.items()})
            rows.append(row)
            print(" | ".join(f"{k} {v}" for k, v in row.items()), flush=True)

    if algo is dm:  # a checkpoint from which dynamite_rl.py trains a fresh policy on this frozen encoder
        vae_args.encoder_updates = 0
        agent = dm.Agent(obs_dim, envs_.single_action_space, vae_args)
        envs_.reset(seed=vae_args.seed)
        os.makedirs(args.run_dir, exist_ok=True)
        envs.runs.save_checkpoint(
            os.path.join(args.run_dir, "checkpoint.pt"), dm.SCRIPT,
            {"encoder": encoder, "decoder": decoder, "prior": prior_net, "agent": agent,
             "obs_scaling": dm.ObservationScaling(envs_.single_observation_space)},
            {"encoder": vae_optimizer, "policy": torch.optim.Adam(agent.parameters(), lr=vae_args.learning_rate, eps=1e-5)},
            vae_args, envs_, {"global_step": 0, "iteration": 0, "evaluations": [],
                              "buffer": dm.EpisodeBuffer(1, horizon, obs_dim, num_actions, "cpu").state_dict()})
        print(f"checkpoint for `python dynamite_rl.py --resume`: {args.run_dir}/checkpoint.pt")
    return write_results(args, rows, ["updates", "seconds"])


if __name__ == "__main__":
    main(tyro.cli(Args))
