"""VariBAD: the KL chain from the prior, every belief decoding the whole episode, and rollout beliefs that are the
ones it trains on."""

import pytest
import torch

import varibad as vb
from conftest import discrete_args, greedy_episode

# two episodes of H = 6 steps with session ends marked (VariBAD ignores sessions except where the observation
# after a session's last step is the next session's start)
SESSION_DONE = torch.tensor([[0, 0], [0, 1], [1, 0], [0, 0], [0, 1], [1, 1]], dtype=torch.bool)


def test_the_prior_is_the_belief_at_the_initial_hidden_state():
    encoder = vb.Encoder(6, 5, discrete_args(vb, latent_dim=3))
    mean, logvar = encoder.prior(4)
    assert mean.shape == (4, 3)
    torch.testing.assert_close(mean, encoder.belief_mean.bias.expand(4, 3))
    torch.testing.assert_close(logvar, encoder.belief_logvar.bias.expand(4, 3))


def test_kl_chains_each_belief_to_the_one_before_and_the_prior_to_a_standard_normal():
    gen = torch.Generator().manual_seed(3)
    means, logvars = torch.randn(6, 2, 3, generator=gen), torch.randn(6, 2, 3, generator=gen)
    prior = (torch.randn(2, 3, generator=gen), torch.randn(2, 3, generator=gen))
    terms = [vb.gaussian_kl(prior[0], prior[1], torch.zeros(2, 3), torch.zeros(2, 3)),
             vb.gaussian_kl(means[0], logvars[0], *prior)]
    terms += [vb.gaussian_kl(means[t], logvars[t], means[t - 1], logvars[t - 1]) for t in range(1, 6)]
    torch.testing.assert_close(vb.kl_loss(means, logvars, prior), torch.stack(terms).mean())


def test_every_belief_reconstructs_every_transition_of_the_episode(monkeypatch):
    torch.manual_seed(0)
    args = discrete_args(vb, latent_dim=3, decode_beliefs=6)
    encoder, decoder = vb.Encoder(4, 5, args), vb.Decoder(4, 5, args)
    obs, next_obs = torch.randn(6, 2, 4), torch.randn(6, 2, 4)
    actions = torch.nn.functional.one_hot(torch.randint(5, (6, 2)), 5).float()
    rewards = torch.randn(6, 2)
    seen = {}

    def spy(*inputs, **kwargs):
        seen["mask"], seen["steps"] = inputs[8], inputs[9]
        return original(*inputs, **kwargs)

    original = vb.reconstruction_loss
    monkeypatch.setattr(vb, "reconstruction_loss", spy)
    vb.vae_loss(encoder, decoder, (obs, actions, rewards, next_obs, SESSION_DONE), args, "cpu")
    assert seen["mask"].shape == (6, 6, 2) and seen["mask"].all()
    assert seen["steps"].tolist() == list(range(6))
    # the first belief is scored on a reward of the episode's last session, which it has not seen yet
    means, logvars = vb.encode_episodes(encoder, obs, actions, rewards, args, "cpu")
    later = rewards.clone()
    later[3, 0] += 5.0
    first = torch.tensor([0])
    assert original(decoder, means, logvars, obs, actions, later, next_obs, SESSION_DONE, seen["mask"], first) != \
        original(decoder, means, logvars, obs, actions, rewards, next_obs, SESSION_DONE, seen["mask"], first)


@pytest.mark.parametrize("env_kwargs", [{"schedule": "fixed"}, {"schedule": "bernoulli", "session_prob": 0.1},
                                        {"schedule": "poisson", "num_sessions": 6}])
def test_rollout_beliefs_are_the_beliefs_encode_episodes_trains_on(env_kwargs):
    """The belief an agent carries through an episode is the one encode_episodes gives on the same episode, whatever
    the schedule of its sessions (which VariBAD's posterior does not see)."""
    args = discrete_args(vb)
    torch.manual_seed(0)
    encoder = vb.Encoder(6, 5, args)
    episode = greedy_episode(vb, encoder, args, env_kwargs)
    means, logvars = vb.encode_episodes(encoder, episode["obs"], episode["actions"], episode["rewards"], args, "cpu")
    torch.testing.assert_close(episode["beliefs"], torch.cat([means, logvars], -1))
