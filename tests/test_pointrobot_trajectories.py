"""benchmarks/pointrobot_trajectories.py: the positions it draws are the robot's, sessions start at the origin, draws
from a Dirichlet prior sit near the simplex's corners, and a finished run's figure and table are written."""

import os

import numpy as np
import pytest
import torch

import dynamite_rl
from benchmarks import pointrobot_trajectories as trajectories
from conftest import discrete_args, run_script


class Constant:
    def act(self, obs, t):
        return np.tile([0.1, 0.0], (len(obs), 1))  # along the x axis, to the anchor (1, 0)

    def observe(self, reward, info):
        pass


def test_positions_are_each_step_s_before_a_session_end_sends_the_robot_back():
    result = trajectories.rollout({"session_length": 10}, Constant(), 8, seed=0)  # H = 20: two sessions
    positions, sessions = result["positions"], result["sessions"]
    assert positions.shape == (8, 21, 2) and np.allclose(positions[:, 0], 0)
    assert np.allclose(positions[:, 10], [1.0, 0.0]) and np.allclose(positions[:, 11], [0.1, 0.0])  # 10 steps, reset
    assert (sessions[:, 1:11] == 0).all() and (sessions[:, 11:] == 1).all()
    distance = np.linalg.norm(positions[:, 1:] - result["goals"][:, 1:], axis=-1)  # each step's goal, as it paid
    assert np.allclose(result["returns"], np.where(distance <= 0.2, 1 - distance, 0).sum(1))
    assert (result["returns"] > 0).any()  # some goals lie near (1, 0)

def test_draws_from_a_dirichlet_prior_sit_near_a_corner_and_keep_the_settled_variance():
    args = discrete_args(dynamite_rl, latent="dirichlet", dirichlet_groups=1, dirichlet_classes=2)
    run = {"algo": dynamite_rl, "args": args}
    settled = torch.full((1, 2), -3.0)
    mean, logvar = trajectories.prior_draws(run, settled, 4000, seed=0)
    assert torch.equal(logvar, settled.expand(4000, -1))
    near_corner = {}
    for alpha in (0.2, 1.0):  # Dir(0.2, 0.2) against the uniform Dir(1, 1)
        args.dirichlet_alpha = alpha
        weights = dynamite_rl.to_latent(trajectories.prior_draws(run, settled, 4000, seed=0)[0], args)
        assert torch.allclose(weights.sum(-1), torch.ones(4000))
        near_corner[alpha] = (weights.max(-1).values > 0.9).float().mean().item()
    assert near_corner[0.2] > 5 * near_corner[1.0]  # about 0.32 against 0.03
    assert trajectories.latent_name(discrete_args(dynamite_rl, latent="dirichlet-gaussian", latent_dim=2)) == \
        "Dir(2, 4) + Gau(2)"


def test_no_checkpoint_is_refused_in_one_line():
    with pytest.raises(SystemExit, match="--checkpoints: give the checkpoint.pt"):
        trajectories.main(trajectories.Args())


@pytest.mark.slow
def test_a_finished_run_s_figure_and_table(tmp_path):
    flags = ["--env-id", "dynamite/PointRobot-v0", "--num-envs", "8", "--num-minibatches", "2", "--total-timesteps",
             "320", "--eval-episodes", "4", "--encoder-updates", "2", "--encoder-batch-episodes", "8",
             "--encoder-train-steps", "160", "--policy-num-envs", "8", "--save-model"]
    runs = [run_script("dynamite_rl.py", *flags, "--latent", latent, cwd=tmp_path / latent)
            for latent in ("gaussian", "dirichlet")]
    output = str(tmp_path / "trajectories")
    results = trajectories.main(trajectories.Args(checkpoints=[os.path.join(r, "checkpoint.pt") for r in runs],
                                                  output=output, episodes=6, prior_draws=5))
    table = open(f"{output}.md").read()
    assert os.path.getsize(f"{output}.png") > 10_000
    assert "| DynaMITE-RL, Gau(16) |" in table and "| DynaMITE-RL, Dir(2, 4) |" in table
    assert [r["test"]["positions"].shape for r in results] == [(6, 21, 2)] * 2
    assert [r["prior"]["positions"].shape for r in results] == [(5, 21, 2)] * 2
    gridworld = run_script("dynamite_rl.py", *flags[2:], "--env-id", "dynamite/Gridworld-v0", cwd=tmp_path / "g")
    with pytest.raises(SystemExit, match="the trajectories need dynamite/PointRobot-v0"):
        trajectories.main(trajectories.Args(checkpoints=[os.path.join(gridworld, "checkpoint.pt")], output=output))
