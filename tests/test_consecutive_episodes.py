"""benchmarks/consecutive_episodes.py: each mode forgets what it says at a new episode and nothing else, and a
finished run's table is written."""

import os

import gymnasium as gym
import pytest
import torch

import dynamite_rl
from benchmarks import consecutive_episodes as consecutive
from conftest import discrete_args

MEMORY = ("hidden", "prev_session_belief", "belief", "prev_action", "reward")


@pytest.mark.parametrize("mode, forgotten", [
    ("everything", set()), ("belief", {"hidden"}), ("hidden", {"prev_session_belief", "belief"}),
    ("nothing", set(MEMORY))])
def test_each_mode_forgets_what_it_does_not_keep(mode, forgotten):
    args = discrete_args(dynamite_rl)
    policy = dynamite_rl.GreedyPolicy(3, None, None, None, gym.spaces.Discrete(5), 60, args, "cpu")
    for name in MEMORY:
        setattr(policy.state, name, torch.ones_like(getattr(policy.state, name)))
    policy.state.started, policy.true_ends = True, [torch.ones(3, dtype=torch.bool)]
    consecutive.CarryPolicy(policy, mode).forget()
    assert {name for name in MEMORY if not getattr(policy.state, name).any()} == forgotten
    assert all(getattr(policy.state, name).all() for name in set(MEMORY) - forgotten)
    assert policy.state.started == (mode != "nothing") and (policy.true_ends == []) == (mode == "nothing")


def test_without_a_checkpoint_or_with_one_episode_it_says_what_to_give():
    with pytest.raises(SystemExit, match="give --checkpoints"):
        consecutive.main(consecutive.Args())
    with pytest.raises(SystemExit, match="--consecutive must be at least 2"):
        consecutive.main(consecutive.Args(checkpoints=["x"], consecutive=1))


@pytest.mark.slow
def test_a_finished_run_s_table_has_every_mode(finished_run, tmp_path):
    path = os.path.join(finished_run("dynamite_rl.py"), "checkpoint.pt")
    rows = consecutive.main(consecutive.Args(checkpoints=[path], output=str(tmp_path / "c"), episodes=4,
                                             consecutive=3))
    assert [row.split(" | ")[1] for row in rows] == list(consecutive.MODES)
    assert all(len(row.split(" | ")[2].split(", ")) == 3 for row in rows)
    assert (tmp_path / "c.md").read_text().count("\n| ") == 6  # the header, its rule and a row per mode
    with pytest.raises(SystemExit, match="this needs dynamite_rl.py runs"):
        consecutive.main(consecutive.Args(checkpoints=[os.path.join(finished_run("rl2.py"), "checkpoint.pt")],
                                          output=str(tmp_path / "d")))
