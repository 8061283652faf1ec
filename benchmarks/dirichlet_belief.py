"""What a trained Dirichlet belief has learned: does its mean name the latent that pays (the Gridworld's paying goal,
the point robot's nearer anchor), and how much mass does it put there, at each step of an episode?

    python benchmarks/dirichlet_belief.py --checkpoints runs/benchmark_gridworld_4goals/dynamite-dir*/seed*/checkpoint.pt

Each run (dynamite_rl.py or varibad.py with --latent dirichlet or dirichlet-gaussian, --save-model) plays --episodes
greedy episodes of its evaluation environment as the evaluation protocol runs it, and at every step its belief's
Dirichlet means softmax(mean) are read per group, with the latent of that step (an index: the one-hot's, or the
larger mixture weight's). The classes of a group are not named after the latents, so which class stands for which
latent is fitted on the first half of the episodes (the one-to-one map that puts the most mass on the paying
latent's class, at each session's last step) and measured on the other half:
- **named**: how often the latent whose class holds the most mass is the one that pays, beside **chance**, how often
  the most frequent latent pays (what a belief that holds nothing of the latent names at best);
- **mass**: the mass on the paying latent's class, beside the mean mass on the other latents' classes.
Writes --output.md (per run and group, at the episode's first step, where the belief is the prior's, and at every
session's first and last step; and the class tables behind the maps) and --output.png (named and chance at every
step, the sessions' ends marked).
"""

from __future__ import annotations

import itertools
import os
import shlex
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import envs.protocol
from benchmarks.trained import load_agent

NAMES = {"dynamite_rl.py": "DynaMITE-RL", "varibad.py": "VariBAD"}


@dataclass
class Args:
    checkpoints: list[str] = field(default_factory=list)
    """checkpoints of finished dynamite_rl.py / varibad.py runs with a Dirichlet latent, one row group each"""
    output: str = "docs/dirichlet_belief"
    """the table (.md) and the figure (.png)"""
    episodes: int = 200
    """greedy episodes per run: the first half fits each group's class-to-latent map, the second half is measured"""
    seed: int = 1
    """seeds the episodes"""


def latent_index(latent: np.ndarray) -> np.ndarray:
    """The index of each latent: the one-hot's hot entry (the Gridworld's paying goal), or the largest of the point
    robot's mixture weights (its nearer anchor)."""
    return np.asarray(latent).argmax(-1)


@torch.no_grad()
def record(run: dict, num_episodes: int, seed: int) -> dict:
    """Greedy episodes of the run's evaluation environment: the Dirichlet means (E, H, groups, classes) the belief
    holds when it acts at each step, the latent index of that step (E, H), and the session of each step (E, H)."""
    algo, args = run["algo"], run["args"]
    policy = algo.GreedyPolicy(num_episodes, run["encoder"], run["agent"], run["obs_scaling"], run["space"],
                               run["horizon"], args, "cpu")
    vector_env = envs.protocol.make_vector_env(args.env_id, num_episodes, run["eval_env_kwargs"])
    obs, info = vector_env.reset(seed=seed)
    n = args.dirichlet_groups * args.dirichlet_classes
    probs, latents, sessions, beliefs, observations = [], [], [], [], []
    for t in range(run["horizon"]):  # info of step t - 1 (or of the reset) holds the latent that pays at step t
        latents.append(latent_index(info["latent"])), sessions.append(np.asarray(info["session"]).copy())
        observations.append(np.asarray(obs, dtype=np.float32).reshape(num_episodes, -1))
        action = policy.act(obs, t)
        probs.append(policy.mean[:, :n].unflatten(-1, (args.dirichlet_groups, args.dirichlet_classes))
                     .softmax(-1).numpy())
        beliefs.append(algo.policy_belief(policy.mean, policy.logvar, args).numpy())
        obs, reward, _, _, info = vector_env.step(action)
        policy.observe(reward, info)
    vector_env.close()
    return {"probs": np.stack(probs, 1), "latents": np.stack(latents, 1), "sessions": np.stack(sessions, 1),
            "beliefs": np.stack(beliefs, 1), "observations": np.stack(observations, 1)}


def probe_accuracy(features: np.ndarray, latents: np.ndarray, fit: np.ndarray, test: np.ndarray, num_latents: int,
                   seed: int, steps: int = 400) -> float:
    """Held-out accuracy of a small MLP (64 tanh units) that reads ``features`` (N, F) and names the latent (N,):
    trained on the rows in ``fit`` (full-batch Adam), scored on those in ``test``. The features are standardised by
    the fitting rows."""
    torch.manual_seed(seed)
    x = torch.as_tensor(features, dtype=torch.float32)
    x = (x - x[fit].mean(0)) / (x[fit].std(0) + 1e-6)
    y = torch.as_tensor(latents, dtype=torch.long)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.Tanh(), torch.nn.Linear(64, num_latents))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    with torch.enable_grad():
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(net(x[fit]), y[fit])
            optimizer.zero_grad(), loss.backward(), optimizer.step()
    return float((net(x[test]).argmax(-1) == y[test]).float().mean())


def probes(recorded: dict, num_latents: int, seed: int) -> dict[str, float]:
    """How well the paying latent can be read at the sessions' last steps (held-out episodes, as in ``measure``)
    from the observation alone, from the observation and the Dirichlet means, and from the observation and all the
    policy reads of the belief (means and log-variances): what the belief adds to what the agent's position shows."""
    episodes = len(recorded["latents"])
    last = session_steps(recorded["sessions"])[1].reshape(-1)
    half = np.repeat(np.arange(episodes) < episodes // 2, recorded["latents"].shape[1])
    fit, test = np.flatnonzero(last & half), np.flatnonzero(last & ~half)
    flat = {key: value.reshape(episodes * value.shape[1], -1) for key, value in recorded.items() if key != "latents"}
    inputs = {"observation": flat["observations"],
              "observation + Dirichlet means": np.concatenate([flat["observations"], flat["probs"]], -1),
              "observation + belief": np.concatenate([flat["observations"], flat["beliefs"]], -1)}
    latents = recorded["latents"].reshape(-1)
    return {name: probe_accuracy(x, latents, fit, test, num_latents, seed) for name, x in inputs.items()}


def session_steps(sessions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks (E, H) of each session's first and last step."""
    first = np.ones_like(sessions, dtype=bool)
    first[:, 1:] = sessions[:, 1:] != sessions[:, :-1]
    last = np.ones_like(sessions, dtype=bool)
    last[:, :-1] = first[:, 1:]
    return first, last


def class_table(probs: np.ndarray, latents: np.ndarray, mask: np.ndarray, num_latents: int) -> np.ndarray:
    """(latents, classes): one group's mean Dirichlet mean over the masked steps whose latent is each index (NaN
    where none is)."""
    rows = [probs[mask & (latents == k)] for k in range(num_latents)]
    return np.stack([row.mean(0) if len(row) else np.full(probs.shape[-1], np.nan) for row in rows])


def best_map(table: np.ndarray) -> tuple[int, ...]:
    """The one-to-one map from latent indices to classes (latents <= classes) with the most mass on the paying
    latent's class: classes[k] for latent k. Latents never seen (NaN rows) count for nothing."""
    num_latents, num_classes = table.shape
    if num_latents > num_classes:
        raise ValueError(f"{num_latents} latents cannot map one-to-one to {num_classes} classes")
    filled = np.nan_to_num(table)
    return max(itertools.permutations(range(num_classes), num_latents),
               key=lambda classes: filled[np.arange(num_latents), list(classes)].sum())


def named(probs: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    """The latent one group's Dirichlet means name at each step: the one whose class holds the most mass (E, H)."""
    return probs[..., list(classes)].argmax(-1)


def measure(probs: np.ndarray, latents: np.ndarray, sessions: np.ndarray, num_latents: int) -> list[dict]:
    """Per group: the map fitted on the first half of the episodes (at the sessions' last steps) and the class table
    it came from; on the second half, per step and at the episode's first and the sessions' first and last steps,
    how often the named latent pays, how often the most frequent latent does (chance), the mass on the paying
    latent's class and the mean mass on the other latents' classes."""
    first, last = session_steps(sessions)
    fit, held = slice(0, len(probs) // 2), slice(len(probs) // 2, len(probs))
    paying = latents[held]
    start = np.zeros_like(paying, dtype=bool)
    start[:, 0] = True
    frequency = np.stack([(paying == k).mean(0) for k in range(num_latents)])  # (latents, H)
    results = []
    for group in range(probs.shape[2]):
        table = class_table(probs[fit, :, group], latents[fit], last[fit], num_latents)
        classes = best_map(table)
        mapped = probs[held, :, group][..., list(classes)]  # (E, H, latents)
        hit = named(probs[held, :, group], classes) == paying
        own = np.take_along_axis(mapped, paying[..., None], -1)[..., 0]
        others = (mapped.sum(-1) - own) / max(num_latents - 1, 1)
        at = {}
        for name, mask in (("start", start), ("first", first[held]), ("last", last[held])):
            chance = max((paying[mask] == k).mean() for k in range(num_latents))
            at[name] = {"named": float(hit[mask].mean()), "chance": float(chance), "mass": float(own[mask].mean()),
                        "others": float(others[mask].mean())}
        results.append({"table": table, "classes": classes, "named": hit.mean(0), "chance": frequency.max(0), **at})
    return results


def load(path: str) -> dict:
    run = load_agent(path, tuple(NAMES))
    if run["args"].latent == "gaussian":
        raise SystemExit(f"error: {path}: a run with a Gaussian latent; this reads Dirichlet beliefs "
                         "(--latent dirichlet or dirichlet-gaussian)")
    groups, classes = run["args"].dirichlet_groups, run["args"].dirichlet_classes
    label = f"{NAMES[run['script']]}, Dir({groups}, {classes})" + \
        (f" + Gau({run['args'].latent_dim})" if run["args"].latent == "dirichlet-gaussian" else "")
    return {**run, "label": label}


def main(args: Args) -> list[dict]:
    if not args.checkpoints:
        raise SystemExit("error: --checkpoints: give the checkpoint.pt of at least one finished run with a Dirichlet "
                         "latent")
    if args.episodes < 2:
        raise SystemExit(f"error: --episodes {args.episodes}: at least 2 (half fit the map, half are measured)")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.manual_seed(args.seed)
    runs = [load(path) for path in args.checkpoints]
    lines, results, probe_lines = [], [], []
    columns = min(3, len(runs))
    rows = -(-len(runs) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for axis in axes.flat[len(runs):]:
        axis.set_visible(False)
    for axis, run in zip(axes.flat, runs):
        recorded = record(run, args.episodes, args.seed)
        probe = envs.protocol.make_vector_env(run["args"].env_id, 1, run["eval_env_kwargs"])
        num_latents = int(np.asarray(probe.reset(seed=0)[1]["latent"]).shape[-1])
        probe.close()
        groups = measure(recorded["probs"], recorded["latents"], recorded["sessions"], num_latents)
        read = probes(recorded, num_latents, args.seed)
        results.append({"run": run, "recorded": recorded, "groups": groups, "probes": read})
        probe_lines.append(f"| {run['label']} | {run['path']} | {groups[0]['last']['chance']:.0%} | "
                           + " | ".join(f"{value:.0%}" for value in read.values()) + " |")
        for g, group in enumerate(groups):
            cells = [f"{group[at]['named']:.0%} ({group[at]['chance']:.0%}) | {group[at]['mass']:.2f} "
                     f"({group[at]['others']:.2f})" for at in ("start", "first", "last")]
            lines.append(f"| {run['label']} | {run['path']} | {g + 1} | " + " | ".join(cells) + " | "
                         + ", ".join(f"{latent}→{cls}" for latent, cls in enumerate(group["classes"])) + " |")
            axis.plot(np.arange(1, run["horizon"] + 1), group["named"], label=f"named, group {g + 1}")
        axis.plot(np.arange(1, run["horizon"] + 1), groups[0]["chance"], color="gray", ls=":", lw=1, label="chance")
        for end in np.flatnonzero(session_steps(recorded["sessions"])[1][0])[:-1]:
            axis.axvline(end + 1.5, color="0.8", lw=1)
        axis.set_ylim(0, 1), axis.set_xlabel("step of the episode"), axis.set_ylabel("paying latent named")
        axis.set_title(f"{run['label']}\n{run['args'].env_id}", fontsize=9), axis.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    fig.savefig(f"{args.output}.png", dpi=110, bbox_inches="tight")
    tables = []
    for result in results:
        for g, group in enumerate(result["groups"]):
            header = "| latent | " + " | ".join(f"class {c}" for c in range(group["table"].shape[1])) + " |"
            tables += [f"{result['run']['label']} ({result['run']['path']}), group {g + 1}:", "", header,
                       "|" + " --- |" * (group["table"].shape[1] + 1)]
            tables += [f"| {latent} | " + " | ".join("–" if np.isnan(v) else f"{v:.2f}" for v in row) + " |"
                       for latent, row in enumerate(group["table"])] + [""]
    command = "python benchmarks/dirichlet_belief.py " + shlex.join(sys.argv[1:])
    with open(f"{args.output}.md", "w") as f:
        f.write(f"# What the Dirichlet belief learned\n\nCommand: `{command.strip()}`.\n\n"
                f"{args.episodes} greedy episodes per run on its evaluation environment. Each group's classes are "
                f"mapped to the latents on the first {args.episodes // 2} episodes (the one-to-one map with the most "
                "mass on the paying latent's class at the sessions' last steps) and measured on the others. Named: "
                "how often the latent whose class holds the most mass is the one that pays (in brackets, chance: how "
                "often the most frequent latent pays). Mass: the mass on the paying latent's class (in brackets, the "
                "mean on the other latents' classes). At the episode's first step the belief is the prior's.\n\n"
                "| run | checkpoint | group | episode's first step: named (chance) | mass (others) | sessions' first "
                "steps: named (chance) | mass (others) | sessions' last steps: named (chance) | mass (others) "
                "| map: latent→class |\n| --- | --- | ---: |" + " ---: |" * 6 + " --- |\n")
        f.write("\n".join(lines) + "\n\nWhere the latent can be read at the sessions' last steps: the held-out "
                "accuracy of a small MLP probe (64 tanh units, fitted on the same first half of the episodes) that "
                "names the paying latent from the observation alone (the agent's position may show its guess), from "
                "the observation and the Dirichlet means, and from the observation and all the policy reads of the "
                "belief (Dirichlet means, Gaussian part, log-variances). A probe's accuracy is a lower bound on what "
                f"its inputs hold: it learns from the sessions of {args.episodes // 2} episodes.\n\n"
                "| run | checkpoint | chance | observation | + Dirichlet means | + belief |\n"
                "| --- | --- | ---: | ---: | ---: | ---: |\n" + "\n".join(probe_lines)
                + "\n\nThe class tables behind the maps: each group's mean Dirichlet means at the "
                "sessions' last steps of the fitting episodes, per latent (rows; the Gridworld's paying goal, the "
                "point robot's nearer anchor).\n\n" + "\n".join(tables)
                + f"\n![{os.path.basename(args.output)}.png]({os.path.basename(args.output)}.png)\n")
    print(f"wrote {args.output}.md and {args.output}.png")
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
