"""DynaMITE-RL: each loss term on hand-made inputs and a smoke run of every flag combination (what all the
algorithm scripts share is tested in test_scripts.py)."""

import itertools
import json
import os

import pytest
import torch

import dynamite_rl as dm
from conftest import TINY, discrete_args, run_script

# two episodes of H = 6 steps, sessions by step: [0 0 0 1 1 1] and [0 0 1 1 1 2]
SESSION_DONE = torch.tensor([[0, 0], [0, 1], [1, 0], [0, 0], [0, 1], [1, 1]], dtype=torch.bool)


def test_session_index_and_final_index():
    assert dm.session_index(SESSION_DONE).T.tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 2]]
    assert dm.session_final_index(SESSION_DONE).T.tolist() == [[2, 2, 2, 5, 5, 5], [1, 1, 4, 4, 4, 5]]


def test_reconstruction_mask_selects_exactly_the_same_session_pairs():
    mask = dm.reconstruction_mask(SESSION_DONE, session_recon=True)
    assert mask.shape == (6, 6, 2)
    sessions = [[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 2]]
    for b, (belief, target) in itertools.product(range(2), itertools.product(range(6), range(6))):
        assert mask[belief, target, b] == (sessions[b][belief] == sessions[b][target])
    assert dm.reconstruction_mask(SESSION_DONE, session_recon=False).all()


def test_kl_uses_previous_belief_inside_a_session_and_the_prior_at_its_start():
    gen = torch.Generator().manual_seed(1)
    means, logvars = torch.randn(6, 2, 3, generator=gen), torch.randn(6, 2, 3, generator=gen)
    prior = (torch.randn(6, 2, 3, generator=gen), torch.randn(6, 2, 3, generator=gen))
    expected = torch.zeros(6, 2)
    for b in range(2):
        for t in range(6):
            start = t == 0 or bool(SESSION_DONE[t - 1, b])
            target = (prior[0][t, b], prior[1][t, b]) if start else (means[t - 1, b], logvars[t - 1, b])
            expected[t, b] = dm.gaussian_kl(means[t, b], logvars[t, b], *target)
    torch.testing.assert_close(dm.kl_loss(means, logvars, SESSION_DONE, prior), expected.mean())


def test_session_start_prior_is_standard_normal_in_the_first_session():
    args = discrete_args(dm, latent_dim=3)
    prior_net = dm.LatentDynamicsPrior(args)
    beliefs = torch.randn(6, 2, 6)
    mean, logvar = dm.session_start_prior(prior_net, beliefs, SESSION_DONE, args)
    first = dm.session_index(SESSION_DONE) == 0
    assert (mean[first] == 0).all() and (logvar[first] == 0).all()
    learned_mean, _ = prior_net(beliefs)
    torch.testing.assert_close(mean[~first], learned_mean[~first])
    off_mean, off_logvar = dm.session_start_prior(prior_net, beliefs, SESSION_DONE, discrete_args(dm, latent_dim=3, conditioning=False))
    assert (off_mean == 0).all() and (off_logvar == 0).all()


def converging_posteriors():
    """Beliefs that approach their session's final belief step by step (the KL to it never increases)."""
    finals = {(0, 0): 2.0, (0, 1): -1.0, (1, 0): 0.5, (1, 1): 3.0, (1, 2): -2.0}
    sessions = dm.session_index(SESSION_DONE)
    final_index = dm.session_final_index(SESSION_DONE)
    means = torch.zeros(6, 2, 1)
    for t, b in itertools.product(range(6), range(2)):
        target = finals[(b, int(sessions[t, b]))]
        steps_left = int(final_index[t, b]) - t
        means[t, b, 0] = target + 0.5 * steps_left  # the distance shrinks by 0.5 a step
    return means, torch.zeros(6, 2, 1)


def test_consistency_is_zero_when_beliefs_converge_and_positive_when_they_drift():
    means, logvars = converging_posteriors()
    assert dm.consistency_loss(means, logvars, SESSION_DONE) == 0
    drifting = means.clone()
    drifting[1, 0, 0] += 5.0  # step 1 moves away from its session's final belief (step 2)
    loss = dm.consistency_loss(drifting, logvars, SESSION_DONE)
    # one increase, delta_1 - delta_0, over the 7 consecutive same-session pairs
    delta = lambda t: dm.gaussian_kl(drifting[t, 0], logvars[t, 0], drifting[2, 0], logvars[2, 0])  # noqa: E731
    torch.testing.assert_close(loss, (delta(1) - delta(0)) / 7)
    # a jump at a session boundary is not penalised: only consecutive steps of the same session count
    across = means.clone()
    across[3, 0, 0] += 50.0
    assert dm.consistency_loss(across, logvars, SESSION_DONE) == 0


def test_consistency_gradient_does_not_flow_into_the_final_belief():
    means, logvars = converging_posteriors()
    means[0, 0, 0] = 2.1  # step 0 sits closer to the final belief (2.0) than step 1 (2.5): a penalised increase
    means.requires_grad_(True)
    logvars.requires_grad_(True)
    loss = dm.consistency_loss(means, logvars, SESSION_DONE)
    assert loss > 0
    loss.backward()
    final_steps = dm.session_final_index(SESSION_DONE)
    assert means.grad[0, 0].abs().sum() > 0 and means.grad[1, 0].abs().sum() > 0
    for t, b in itertools.product(range(6), range(2)):
        if final_steps[t, b] == t:
            assert means.grad[t, b].abs().sum() == 0 and logvars.grad[t, b].abs().sum() == 0


def test_termination_loss_is_binary_cross_entropy():
    logits = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    done = torch.tensor([[1, 0], [0, 1]], dtype=torch.bool)
    p = torch.sigmoid(logits)
    expected = -(done * p.log() + (~done) * (1 - p).log()).mean()
    torch.testing.assert_close(dm.termination_loss(logits, done), expected)


def test_reconstruction_ignores_masked_out_targets():
    torch.manual_seed(0)
    args = discrete_args(dm, latent_dim=3)
    decoder = dm.Decoder(4, 5, args)
    obs, actions = torch.randn(6, 2, 4), torch.nn.functional.one_hot(torch.randint(5, (6, 2)), 5).float()
    rewards, means, logvars = torch.randn(6, 2), torch.randn(6, 2, 3), torch.full((6, 2, 3), -30.0)
    mask = dm.reconstruction_mask(SESSION_DONE, session_recon=True)
    steps = torch.tensor([0])  # the belief at step 0 of each episode: its session is steps 0-2 / 0-1

    def loss(r):
        return dm.reconstruction_loss(decoder, means, logvars, obs, actions, r, obs, SESSION_DONE, mask, steps)

    base = loss(rewards)
    outside = rewards.clone()
    outside[4, 0] += 10.0  # step 4 of episode 0 is in another session
    torch.testing.assert_close(loss(outside), base)
    inside = rewards.clone()
    inside[1, 0] += 10.0
    assert loss(inside) > base + 1.0
    last = rewards.clone()
    last[2, 0] += 10.0  # the session's last transition: followed by the next session's start, not decoded
    torch.testing.assert_close(loss(last), base)
    full = dm.reconstruction_mask(SESSION_DONE, session_recon=False)
    assert dm.reconstruction_loss(decoder, means, logvars, obs, actions, outside, obs, SESSION_DONE, full, steps) != \
        dm.reconstruction_loss(decoder, means, logvars, obs, actions, rewards, obs, SESSION_DONE, full, steps)


FLAGS = list(itertools.product([True, False], repeat=4))


@pytest.mark.parametrize("consistency,conditioning,session_recon,oracle", FLAGS)
def test_every_flag_combination_trains(tmp_path, consistency, conditioning, session_recon, oracle):
    flags = [f"--{'' if on else 'no-'}{name}" for name, on in
             (("consistency", consistency), ("conditioning", conditioning), ("session-recon", session_recon))]
    if oracle:
        flags.append("--oracle-sessions")
    run_dir = run_script("dynamite_rl.py", *TINY["dynamite_rl.py"], *flags, cwd=tmp_path)
    result = json.load(open(os.path.join(run_dir, "eval.json")))
    final = result["evaluations"][-1]
    assert final["global_step"] == 960 and len(final["return_per_session"]) == 4
    assert len(final["consecutive_episode_returns"]) == 5
    assert result["bayes_optimal_return"] == pytest.approx(47.370, abs=1e-3)
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(run_dir))
