"""Where trained point-robot agents go, one column per run (the structured-latent paper's Figures 2-3):

    python benchmarks/pointrobot_trajectories.py --checkpoints runs/benchmark_pointrobot/dynamite*/seed1/checkpoint.pt

Top row, **test tasks**: greedy episodes on the 10 test goals, the agent inferring the goal from its own history as
the evaluation protocol runs it. Bottom row, **prior**: the same actor told a belief instead of inferring one, a
latent drawn from the latent's prior (on a Dirichlet group the Laplace approximation of Dir(alpha) in the softmax
basis, so most draws sit near a corner of the simplex; N(0, I) on Gaussian coordinates) and held for the whole
episode, with the log-variance the encoder's beliefs reach at the end of the test episodes (a settled belief). Where
those draws lead says what the policy has learned the latent to mean: with a Dirichlet latent over two base tasks,
to the two anchor goals; with a Gaussian one, anywhere. Writes --output.png and --output.md: per run the test return,
and where the prior's draws end (distance to the half circle of goals, fraction within the goal radius of an anchor).
Checkpoints of dynamite_rl.py and varibad.py runs on dynamite/PointRobot-v0 (--save-model), static or with sessions.
"""

from __future__ import annotations

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
from envs.pointrobot import ARENA, NUM_TRAIN_TASKS, goal_of, task_weights

ENV_ID = "dynamite/PointRobot-v0"
ANCHORS = np.array([[1.0, 0.0], [-1.0, 0.0]])
NAMES = {"dynamite_rl.py": "DynaMITE-RL", "varibad.py": "VariBAD"}


@dataclass
class Args:
    checkpoints: list[str] = field(default_factory=list)
    """checkpoints of finished dynamite_rl.py / varibad.py runs on dynamite/PointRobot-v0, one column each"""
    output: str = "docs/pointrobot_trajectories"
    """the figure (.png) and its table (.md)"""
    episodes: int = 30
    """greedy test-task episodes per run"""
    prior_draws: int = 20
    """episodes with a latent drawn from the prior, per run"""
    seed: int = 1
    """seeds the test episodes and the prior's draws"""


def latent_name(algo_args) -> str:
    """The paper's notation: Gau(d), Dir(groups, classes), Dir(groups, classes) + Gau(d)."""
    gaussian, dirichlet = f"Gau({algo_args.latent_dim})", f"Dir({algo_args.dirichlet_groups}, {algo_args.dirichlet_classes})"
    return {"gaussian": gaussian, "dirichlet": dirichlet, "dirichlet-gaussian": f"{dirichlet} + {gaussian}"}[algo_args.latent]


def load(path: str) -> dict:
    """The run's module, settings and trained networks (encoder, agent, observation scaling)."""
    run = load_agent(path, tuple(NAMES))
    if run["args"].env_id != ENV_ID:
        raise SystemExit(f"error: {path}: a run on {run['args'].env_id}; the trajectories need {ENV_ID}")
    return {**run, "env_kwargs": {**run["env_kwargs"], "task_set": "test"},
            "label": f"{NAMES[run['script']]}, {latent_name(run['args'])}"}


class PriorPolicy:
    """The trained actor on a belief it is told: (mean, logvar) per episode, the same at every step."""

    def __init__(self, run: dict, mean, logvar, horizon: int):
        self.run, self.mean, self.logvar, self.horizon = run, mean, logvar, horizon

    @torch.no_grad()
    def act(self, obs, t: int) -> np.ndarray:
        run = self.run
        inputs = run["algo"].policy_input(run["agent"], run["obs_scaling"](obs), t, self.horizon, self.mean,
                                          self.logvar, run["args"])
        return envs.protocol.env_action(run["agent"].get_action_and_value(inputs, deterministic=True)[0], run["space"])

    def observe(self, reward, info) -> None:
        pass


def rollout(env_kwargs: dict, policy, num_episodes: int, seed: int) -> dict:
    """Greedy episodes: positions (E, H + 1, 2) from the origin (each step's, before a session end sends the robot back
    to the origin), the session of each position, returns, goals."""
    vector_env = envs.protocol.make_vector_env(ENV_ID, num_episodes, env_kwargs)
    obs, info = vector_env.reset(seed=seed)
    positions, sessions, goals = [obs.astype(np.float64)], [np.zeros(num_episodes, dtype=int)], [info["goal"].copy()]
    total = np.zeros(num_episodes)
    for t in range(envs.protocol.horizon(vector_env)):
        action = policy.act(obs, t)
        moved = np.clip(obs + np.clip(action, -0.1, 0.1), -ARENA, ARENA)  # the step the environment takes
        obs, reward, _, _, info = vector_env.step(action)
        policy.observe(reward, info)
        total += reward
        positions.append(moved), sessions.append(info["session"].copy()), goals.append(info["goal"].copy())
    vector_env.close()
    return {"positions": np.stack(positions, 1), "sessions": np.stack(sessions, 1), "returns": total,
            "goals": np.stack(goals, 1)}


def prior_draws(run: dict, settled_logvar, num_draws: int, seed: int):
    """(mean, logvar) of ``num_draws`` told beliefs: latents drawn from the prior, with the settled log-variance."""
    mean, logvar = run["algo"].latent_prior(run["args"])
    generator = torch.Generator().manual_seed(seed)
    draws = mean + (0.5 * logvar).exp() * torch.randn(num_draws, mean.shape[0], generator=generator)
    return draws, settled_logvar.expand(num_draws, -1)


def measure(run: dict, args: Args) -> dict:
    algo, algo_args = run["algo"], run["args"]
    greedy = algo.GreedyPolicy(args.episodes, run["encoder"], run["agent"], run["obs_scaling"], run["space"],
                               run["horizon"], algo_args, "cpu")
    test = rollout(run["env_kwargs"], greedy, args.episodes, args.seed)
    settled = greedy.logvar.mean(0, keepdim=True)  # the belief's log-variance after the last step
    mean, logvar = prior_draws(run, settled, args.prior_draws, args.seed)
    prior = rollout(run["env_kwargs"], PriorPolicy(run, mean, logvar, run["horizon"]), args.prior_draws,
                    args.seed + 1)
    ends = prior["positions"][:, -1]
    near_anchor = np.linalg.norm(ends[:, None] - ANCHORS[None], axis=-1).min(1) <= run["env_kwargs"].get("goal_radius", 0.2)
    return {"test": test, "prior": prior, "row": {"run": run["label"], "checkpoint": run["path"], "test return": f"{test['returns'].mean():.2f}",
                    "prior: end's distance to the goals' half circle":
                        f"{np.abs(np.linalg.norm(ends, axis=-1) - 1).mean():.2f}",
                    "prior: ends near an anchor": f"{near_anchor.mean():.0%}"}}


def draw(axis, episodes: dict, colors, title: str) -> None:
    angles = np.linspace(0, np.pi, 100)
    axis.plot(np.cos(angles), np.sin(angles), color="0.75", lw=1)
    test_goals = goal_of(task_weights()[NUM_TRAIN_TASKS:])
    axis.scatter(*test_goals.T, marker="*", s=60, color="0.35", zorder=3, label="test goals")
    axis.scatter(*ANCHORS.T, marker="s", s=30, color="black", zorder=3, label="anchors")
    for path, session, color in zip(episodes["positions"], episodes["sessions"], colors):
        for k in np.unique(session):  # one line per session; each starts at the origin
            axis.plot(*np.vstack([np.zeros(2), path[1:][session[1:] == k]]).T, color=color, lw=1, alpha=0.8)
    axis.set_xlim(-1.4, 1.4), axis.set_ylim(-0.4, 1.4), axis.set_aspect("equal"), axis.set_title(title, fontsize=9)


def main(args: Args) -> list[dict]:
    if not args.checkpoints:
        raise SystemExit("error: --checkpoints: give the checkpoint.pt of at least one finished PointRobot run")
    torch.manual_seed(args.seed)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [load(path) for path in args.checkpoints]
    results = [measure(run, args) for run in runs]
    fig, axes = plt.subplots(2, len(runs), figsize=(3.4 * len(runs), 5.6), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for column, (run, result) in enumerate(zip(runs, results)):
        goal_angle = np.arctan2(result["test"]["goals"][:, 0, 1], result["test"]["goals"][:, 0, 0]) / np.pi
        draw(axes[0, column], result["test"], cmap(goal_angle),
             f"{run['label']}\ntest tasks, return {result['test']['returns'].mean():.2f}")
        draw(axes[1, column], result["prior"], ["tab:red"] * args.prior_draws, "latents drawn from the prior")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    fig.savefig(f"{args.output}.png", dpi=110, bbox_inches="tight")
    rows = [result["row"] for result in results]
    header = list(rows[0])
    command = "python benchmarks/pointrobot_trajectories.py " + shlex.join(sys.argv[1:])
    with open(f"{args.output}.md", "w") as f:
        f.write(f"# Point robot: trajectories per latent\n\nCommand: `{command.strip()}`.\n\nTest return: the mean "
                f"greedy return of {args.episodes} episodes on the test tasks. Prior: {args.prior_draws} episodes "
                "each told a latent drawn from the prior, with the log-variance of a settled belief; where they end "
                "(the anchors are the two base tasks' goals, at the ends of the half circle).\n\n")
        f.write("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
        for row in rows:
            f.write("| " + " | ".join(str(row[h]) for h in header) + " |\n")
        f.write(f"\n![{os.path.basename(args.output)}.png]({os.path.basename(args.output)}.png)\n")
    print(f"wrote {args.output}.md and {args.output}.png")
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
