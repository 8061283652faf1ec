"""What a trained DynaMITE-RL agent carries from one episode into the next, and what it costs it.

    python benchmarks/consecutive_episodes.py --checkpoints runs/benchmark_gridworld_poisson/dynamite/seed1/checkpoint.pt

The evaluation protocol's consecutive episodes (the paper's Figure 6) play 5 episodes back to back in the same task:
the goals stay, the latent's dynamics go on, and the agent keeps whatever it carries. A DynaMITE-RL agent carries
two things: the GRU's hidden state and the belief it conditions the next session on (with the last action and
reward, the encoder's next input). For each checkpoint this plays the protocol four times, with the same seed, and
at every new episode the agent keeps

* ``everything``: the protocol as every method is evaluated;
* ``belief``: the previous session's belief, the GRU starting again from zero;
* ``hidden``: the GRU's state, the previous session's belief reset to zero;
* ``nothing``: a fresh agent, as at the first episode (the task still goes on).

Writes --output.md: the return of each consecutive episode and the termination head's recall in it.
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

import dynamite_rl
import envs.protocol
from benchmarks.trained import load_agent

MODES = ("everything", "belief", "hidden", "nothing")


@dataclass
class Args:
    checkpoints: list[str] = field(default_factory=list)
    """checkpoints of dynamite_rl.py runs (--save-model)"""
    output: str = "docs/consecutive_episodes"
    """the table (.md)"""
    episodes: int = 500
    """episodes played side by side (each of them --consecutive episodes back to back)"""
    consecutive: int = 5
    """consecutive episodes in the same task"""
    seed: int = 7
    """seeds the task draws (the same for every mode)"""


class CarryPolicy:
    """DynaMITE-RL's greedy policy that, at the start of every episode after the first, forgets what ``mode`` does
    not keep; detections are the policy's own (the protocol counts them per episode)."""

    def __init__(self, policy: dynamite_rl.GreedyPolicy, mode: str):
        self.policy, self.mode, self.episode = policy, mode, -1

    @property
    def detections(self):
        return self.policy.detections

    @detections.setter
    def detections(self, value):
        self.policy.detections = value

    def forget(self) -> None:
        """What ``mode`` does not keep, back to where a first episode starts."""
        state = self.policy.state
        if self.mode in ("belief", "nothing"):
            state.hidden = torch.zeros_like(state.hidden)
        if self.mode in ("hidden", "nothing"):
            state.prev_session_belief, state.belief = (torch.zeros_like(state.prev_session_belief),
                                                       torch.zeros_like(state.belief))
        if self.mode == "nothing":
            state.prev_action, state.reward = torch.zeros_like(state.prev_action), torch.zeros_like(state.reward)
            state.started, self.policy.true_ends = False, []

    def act(self, obs, t: int) -> np.ndarray:
        if t == 0:
            self.episode += 1
            if self.episode > 0:
                self.forget()
        return self.policy.act(obs, t)

    def observe(self, reward, info) -> None:
        self.policy.observe(reward, info)


def measure(run: dict, mode: str, args: Args) -> dict:
    """The protocol's consecutive episodes with ``mode``'s carry: returns and the head's recall per episode."""
    make = lambda n: CarryPolicy(dynamite_rl.GreedyPolicy(n, run["encoder"], run["agent"], run["obs_scaling"],
                                                          run["space"], run["horizon"], run["args"], "cpu"), mode)
    result = envs.protocol.evaluate(run["args"].env_id, run["eval_env_kwargs"], make, args.episodes,
                                    consecutive=args.consecutive, seed=args.seed)
    return {"returns": result["consecutive_episode_returns"],
            "recall": [rates["recall"] for rates in result["consecutive_session_detection"]]}


def main(args: Args) -> list[str]:
    if not args.checkpoints:
        raise SystemExit("error: give --checkpoints, the checkpoint.pt of one or more dynamite_rl.py runs")
    if args.consecutive < 2:
        raise SystemExit(f"error: --consecutive must be at least 2 (episodes back to back), got {args.consecutive}")
    torch.set_num_threads(1)
    rows = []
    for path in args.checkpoints:
        run = load_agent(path, ("dynamite_rl.py",))
        for mode in MODES:
            measured = measure(run, mode, args)
            rows.append(f"| {path} | {mode} | " + ", ".join(f"{v:.1f}" for v in measured["returns"]) + " | "
                        + ", ".join(f"{v:.2f}" for v in measured["recall"]) + " |")
            print(rows[-1], flush=True)
    lines = ["# What DynaMITE-RL carries into the next episode", "",
             f"Command: `python benchmarks/consecutive_episodes.py {shlex.join(sys.argv[1:])}`. {args.episodes} "
             f"episodes side by side, each played {args.consecutive} times back to back in the same task (the "
             "evaluation protocol's consecutive episodes); at each new episode the agent keeps everything (the "
             "protocol), only the previous session's belief (its GRU restarts from zero), only the GRU's state (the "
             "belief it conditions on reset to zero), or nothing (a fresh agent in a task that goes on).", "",
             "| run | kept | return of each episode | head's recall in each episode |", "| --- | --- | --- | --- |",
             *rows]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(f"{args.output}.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.output}.md")
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))
