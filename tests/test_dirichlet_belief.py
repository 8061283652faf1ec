"""benchmarks/dirichlet_belief.py: sessions' first and last steps, the class-to-latent map, and what a belief that
names the latent, and one that holds nothing of it, score; a finished run's table and figure."""

import os

import numpy as np
import pytest

from benchmarks import dirichlet_belief as db
from conftest import TINY, run_script


def test_first_and_last_steps_of_each_session():
    sessions = np.array([[0, 0, 1, 1, 1, 2], [0, 0, 0, 0, 0, 0]])
    first, last = db.session_steps(sessions)
    assert first.tolist() == [[1, 0, 1, 0, 0, 1], [1, 0, 0, 0, 0, 0]]
    assert last.tolist() == [[0, 1, 0, 0, 1, 1], [0, 0, 0, 0, 0, 1]]


def test_latent_index_of_a_one_hot_and_of_mixture_weights():
    assert db.latent_index(np.array([[0, 0, 1, 0], [1, 0, 0, 0]])).tolist() == [2, 0]
    assert db.latent_index(np.array([[0.9, 0.1], [0.3, 0.7]])).tolist() == [0, 1]


def test_the_map_puts_the_most_mass_on_the_paying_latent_s_class():
    table = np.array([[0.1, 0.1, 0.7, 0.1],   # latent 0 -> class 2
                      [0.6, 0.2, 0.1, 0.1],   # latent 1 -> class 0
                      [0.1, 0.3, 0.5, 0.1]])  # latent 2 would like class 2 too: one-to-one, so class 1
    assert db.best_map(table) == (2, 0, 1)
    assert db.best_map(np.array([[np.nan, np.nan], [0.2, 0.8]])) == (0, 1)  # an unseen latent counts for nothing
    with pytest.raises(ValueError, match="3 latents cannot map one-to-one to 2 classes"):
        db.best_map(np.ones((3, 2)))


def test_a_belief_that_names_the_latent_and_one_that_holds_nothing_of_it():
    rng = np.random.default_rng(0)
    episodes, horizon, classes = 40, 6, 4
    sessions = np.repeat([[0, 0, 0, 1, 1, 1]], episodes, 0)
    latents = rng.integers(3, size=(episodes, 2)).repeat(3, 1)  # 3 latents, one per session
    stands_for = np.array([3, 0, 2])  # the class of each latent
    probs = np.full((episodes, horizon, 2, classes), 0.25)
    knows = np.arange(horizon) % 3 == 2  # group 1 knows the latent at each session's last step only
    probs[:, knows, 0] = 0.1 / 3
    np.put_along_axis(probs[:, :, 0], stands_for[latents][..., None], np.where(knows, 0.9, 0.25)[None, :, None], -1)
    probs[:, :, 1] = [0.1, 0.6, 0.2, 0.1]  # group 2 is the same whatever the latent
    informed, blind = db.measure(probs, latents, sessions, 3)
    assert informed["classes"] == (3, 0, 2)
    assert informed["last"]["named"] == 1.0 and np.isclose(informed["last"]["mass"], 0.9)
    assert np.isclose(informed["last"]["others"], 0.1 / 3)
    assert informed["first"]["named"] < 0.5 and np.isclose(informed["first"]["mass"], 0.25)  # ties: latent 0 named
    held = latents[episodes // 2:, 0]
    assert np.isclose(informed["last"]["chance"], max((held == k).mean() for k in range(3)))
    assert np.allclose(informed["named"][knows], 1.0)
    assert blind["last"]["named"] <= blind["last"]["chance"]  # it names one latent always: at best the most frequent


def test_the_probe_reads_a_latent_its_features_hold_and_not_one_they_do_not():
    rng = np.random.default_rng(0)
    latents = rng.integers(3, size=600)
    fit, test = np.arange(300), np.arange(300, 600)
    held = np.eye(3)[latents] + 0.1 * rng.normal(size=(600, 3))
    noise = rng.normal(size=(600, 3))
    assert db.probe_accuracy(held, latents, fit, test, 3, seed=0) > 0.95
    assert db.probe_accuracy(noise, latents, fit, test, 3, seed=0) < 0.5  # chance is about 1/3


def test_no_checkpoint_and_too_few_episodes_are_refused_in_one_line():
    with pytest.raises(SystemExit, match="--checkpoints: give the checkpoint.pt"):
        db.main(db.Args())
    with pytest.raises(SystemExit, match="at least 2"):
        db.main(db.Args(checkpoints=["x.pt"], episodes=1))


@pytest.mark.slow
def test_a_finished_run_s_table_and_figure(tmp_path, finished_run):
    run = run_script("dynamite_rl.py", *TINY["dynamite_rl.py"], "--env-kwargs", '{"num_goals": 4}', "--latent",
                     "dirichlet-gaussian", "--latent-dim", "2", "--save-model", cwd=tmp_path)
    output = str(tmp_path / "belief")
    results = db.main(db.Args(checkpoints=[os.path.join(run, "checkpoint.pt")], output=output, episodes=8))
    table = open(f"{output}.md").read()
    assert os.path.getsize(f"{output}.png") > 10_000
    assert table.count("| DynaMITE-RL, Dir(2, 4) + Gau(2) |") == 2 + 1  # one row per group, and one of the probes
    recorded = results[0]["recorded"]
    horizon = results[0]["run"]["horizon"]
    assert recorded["probs"].shape == (8, horizon, 2, 4) and np.allclose(recorded["probs"].sum(-1), 1, atol=1e-5)
    assert recorded["latents"].max() <= 3 and recorded["sessions"][:, 0].tolist() == [0] * 8
    assert recorded["beliefs"].shape == (8, horizon, 8 + 2 + 8 + 2)  # the simplex points, Gau(2), log-variances
    assert set(results[0]["probes"]) == {"observation", "observation + Dirichlet means", "observation + belief"}
    assert "| + Dirichlet means | + belief |" in table
    with pytest.raises(SystemExit, match="a run with a Gaussian latent"):
        db.main(db.Args(checkpoints=[os.path.join(finished_run("dynamite_rl.py"), "checkpoint.pt")], output=output))
