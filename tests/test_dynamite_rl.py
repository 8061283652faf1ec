"""DynaMITE-RL: each loss term on hand-made inputs, what each ablation flag changes in the loss and at rollout
time, and the beliefs of a rollout against the teacher-forced ones (what all the algorithm scripts share is tested
in test_scripts.py)."""

import itertools
import json
import os

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import dynamite_rl as dm
import envs.protocol
from conftest import TINY, discrete_args, greedy_episode, run_script

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


def test_kl_follows_the_chain_of_beliefs_from_the_prior_and_the_dynamics_prior_at_later_session_starts():
    gen = torch.Generator().manual_seed(1)
    means, logvars = torch.randn(6, 2, 3, generator=gen), torch.randn(6, 2, 3, generator=gen)
    prior = (torch.randn(2, 3, generator=gen), torch.randn(2, 3, generator=gen))  # the belief at the initial state
    base = (torch.randn(3, generator=gen), torch.randn(3, generator=gen))  # the latent's prior
    dynamics = (torch.randn(6, 2, 3, generator=gen), torch.randn(6, 2, 3, generator=gen))
    sessions = [[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 2]]  # written out
    for with_dynamics in (True, False):
        expected = torch.zeros(7, 2)
        for b in range(2):
            expected[0, b] = dm.gaussian_kl(prior[0][b], prior[1][b], *base)
            for t in range(6):
                later_start = t > 0 and sessions[b][t] != sessions[b][t - 1]
                if later_start and with_dynamics:
                    target = (dynamics[0][t, b], dynamics[1][t, b])
                else:
                    target = (means[t - 1, b], logvars[t - 1, b]) if t > 0 else (prior[0][b], prior[1][b])
                expected[t + 1, b] = dm.gaussian_kl(means[t, b], logvars[t, b], *target)
        kl = dm.kl_loss(means, logvars, SESSION_DONE, prior, base, dynamics if with_dynamics else None)
        torch.testing.assert_close(kl, expected.mean())


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


def test_termination_loss_is_the_cross_entropy_of_each_step_against_the_end_of_the_transition_before_it():
    logits = torch.tensor([[9.0, 9.0], [2.0, -1.0], [0.0, 3.0]])  # step 0 follows no transition: not counted
    done = torch.tensor([[1, 0], [0, 1], [1, 1]], dtype=torch.bool)  # the last step's end has no step after it
    p, before = torch.sigmoid(logits[1:]), done[:-1]
    expected = -(before * p.log() + (~before) * (1 - p).log()).mean()
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


# a batch of the two episodes above, (H, B, ...): 4-dim observations, 5 actions
def hand_made_batch():
    gen = torch.Generator().manual_seed(0)
    obs, next_obs = torch.randn(6, 2, 4, generator=gen), torch.randn(6, 2, 4, generator=gen)
    actions = torch.nn.functional.one_hot(torch.randint(5, (6, 2), generator=gen), 5).float()
    return obs, actions, torch.randn(6, 2, generator=gen), next_obs, SESSION_DONE


def networks(args):
    """Encoder, decoder and latent-dynamics prior of ``args``; the prior's output is moved away from N(0, I), so
    that a KL target taken from it cannot pass for the standard normal."""
    torch.manual_seed(0)
    encoder, decoder, prior_net = dm.Encoder(4, 5, args), dm.Decoder(4, 5, args), dm.LatentDynamicsPrior(args)
    with torch.no_grad():
        prior_net.net[-1].bias.fill_(1.0)
    return encoder, decoder, prior_net


def assert_same_terms(terms, other, names):
    for name in names:
        torch.testing.assert_close(terms[name], other[name], rtol=0, atol=0, msg=name)


def random_batch(horizon: int = 30, batch: int = 8):
    """Random episodes with random session ends (p = 0.1 a step): long enough that the beliefs of an untrained
    encoder sometimes move away from their session's final belief, which the consistency loss penalises."""
    gen = torch.Generator().manual_seed(0)
    obs, next_obs = torch.randn(horizon, batch, 4, generator=gen), torch.randn(horizon, batch, 4, generator=gen)
    actions = torch.nn.functional.one_hot(torch.randint(5, (horizon, batch), generator=gen), 5).float()
    done = torch.rand(horizon, batch, generator=gen) < 0.1
    done[-1] = True
    return obs, actions, torch.randn(horizon, batch, generator=gen), next_obs, done


def test_no_consistency_removes_exactly_the_weighted_consistency_term():
    # every belief decoded (decode_beliefs >= H): no random choice of beliefs between the two losses
    on = discrete_args(dm, latent_dim=3, decode_beliefs=30)
    off = discrete_args(dm, latent_dim=3, decode_beliefs=30, consistency=False)
    nets, batch = networks(on), random_batch()
    loss_on, terms_on = dm.vae_loss(*nets, batch, on, "cpu")
    loss_off, terms_off = dm.vae_loss(*nets, batch, off, "cpu")
    means, logvars, *_ = dm.encode_episodes(nets[0], *batch[:3], batch[4], on, "cpu")
    torch.testing.assert_close(terms_on["consistency"], dm.consistency_loss(means, logvars, batch[4]))
    assert terms_on["consistency"] > 0, "the batch must have a consistency penalty to remove"
    assert set(terms_off) == {"reconstruction", "kl", "termination", "session_clock"}
    assert_same_terms(terms_off, terms_on, terms_off)
    assert torch.equal(loss_on, loss_off + on.consistency_weight * terms_on["consistency"])


def test_the_head_delay_moves_every_session_term_of_the_objective_to_the_delayed_ends():
    """With --head-delay 1 the encoder's sessions, and so the termination target, the KL targets, the consistency
    stretches and the beliefs' reconstruction sessions, end a step after the true ends; the decoded transitions keep
    their true sessions."""
    args = discrete_args(dm, latent_dim=3, decode_beliefs=30, head_delay=1)
    nets, batch = networks(args), random_batch()
    obs, actions, rewards, next_obs, done = batch
    loss, terms = dm.vae_loss(*nets, batch, args, "cpu")
    ends = torch.zeros_like(done)
    ends[1:], ends[-1] = done[:-1], True  # written out: a step later, the episode's end kept
    means, logvars, logits, prev, clock = dm.encode_episodes(nets[0], obs, actions, rewards, ends, args, "cpu")
    torch.testing.assert_close(terms["termination"], dm.termination_loss(logits, ends))
    torch.testing.assert_close(terms["session_clock"], F.binary_cross_entropy_with_logits(clock, ends.float()))
    torch.testing.assert_close(terms["consistency"], dm.consistency_loss(means, logvars, ends))
    torch.testing.assert_close(terms["kl"], dm.kl_loss(means, logvars, ends, nets[0].prior(8), dm.latent_prior(args),
                                                      nets[2](prev)))
    mask = dm.session_index(ends)[:, None] == dm.session_index(done)[None, :]
    torch.testing.assert_close(terms["reconstruction"], dm.reconstruction_loss(
        nets[1], means, logvars, obs, actions, rewards, next_obs, done, mask, torch.arange(30), sample=False, args=args))
    now = dm.vae_loss(*nets, batch, discrete_args(dm, latent_dim=3, decode_beliefs=30), "cpu")[1]
    assert all(not torch.allclose(now[k], terms[k]) for k in terms), "the delay must change every term"


def test_no_session_recon_makes_every_belief_reconstruct_the_whole_episode():
    on, off = discrete_args(dm, latent_dim=3), discrete_args(dm, latent_dim=3, session_recon=False)
    assert on.decode_beliefs >= 6 and on.decode_mean  # every belief decoded, by its mean: no sampling
    nets = networks(on)
    batch = hand_made_batch()
    loss_on, terms_on = dm.vae_loss(*nets, batch, on, "cpu")
    loss_off, terms_off = dm.vae_loss(*nets, batch, off, "cpu")
    obs, actions, rewards, next_obs, done = batch
    means, logvars, *_ = dm.encode_episodes(nets[0], obs, actions, rewards, done, on, "cpu")

    def reconstruction(mask):
        return dm.reconstruction_loss(nets[1], means, logvars, obs, actions, rewards, next_obs, done, mask,
                                      torch.arange(6), sample=False)

    sessions = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 2]]).T  # written out, not computed by the script
    torch.testing.assert_close(terms_on["reconstruction"], reconstruction(sessions[:, None] == sessions[None, :]))
    torch.testing.assert_close(terms_off["reconstruction"], reconstruction(torch.ones(6, 6, 2, dtype=torch.bool)))
    assert terms_off["reconstruction"] > terms_on["reconstruction"] + 1e-3  # the other sessions' targets are added
    assert_same_terms(terms_off, terms_on, ("kl", "termination", "consistency"))
    torch.testing.assert_close(loss_off - loss_on, terms_off["reconstruction"] - terms_on["reconstruction"])


def test_no_conditioning_removes_the_previous_session_belief_and_the_kl_chain_goes_on_through_session_starts():
    on, off = discrete_args(dm, latent_dim=3), discrete_args(dm, latent_dim=3, conditioning=False)
    (encoder_on, decoder, prior_net), (encoder_off, _, _) = networks(on), networks(off)
    assert encoder_on.fc[0].in_features == 3 * on.embed_dim + 2 * on.latent_dim
    assert encoder_off.fc[0].in_features == 3 * off.embed_dim  # the encoder has no such input
    obs, actions, rewards, next_obs, done = batch = hand_made_batch()
    # so its beliefs are those of the same episodes without session ends; with conditioning, those of the
    # sessions after the first one change
    no_ends = torch.zeros_like(done)
    for encoder, args in ((encoder_off, off), (encoder_on, on)):
        with_ends = dm.encode_episodes(encoder, obs, actions, rewards, done, args, "cpu")[0]
        without = dm.encode_episodes(encoder, obs, actions, rewards, no_ends, args, "cpu")[0]
        if args.conditioning:
            torch.testing.assert_close(with_ends[:3, 0], without[:3, 0])  # episode 0's first session: steps 0-2
            assert not torch.allclose(with_ends[3:, 0], without[3:, 0])
        else:
            torch.testing.assert_close(with_ends, without)
    # and the KL: the latent-dynamics prior at a later session's start with conditioning; without, the belief
    # before it, as within a session (one change: the input goes, the chain of beliefs stays as VariBAD's)
    for encoder, args in ((encoder_off, off), (encoder_on, on)):
        means, logvars, _, prev, _ = dm.encode_episodes(encoder, obs, actions, rewards, done, args, "cpu")
        kl = dm.vae_loss(encoder, decoder, prior_net, batch, args, "cpu")[1]["kl"]
        start = (encoder.prior(2), dm.latent_prior(args))
        chain = dm.kl_loss(means, logvars, done, *start)
        if args.conditioning:
            torch.testing.assert_close(kl, dm.kl_loss(means, logvars, done, *start, prior_net(prev)))
            assert not torch.allclose(kl, chain)
        else:
            torch.testing.assert_close(kl, chain)


def test_with_all_three_components_off_the_objective_is_varibads_plus_the_termination_cross_entropy():
    """(the session clock off too: it is a second cross-entropy, tested on its own)"""
    import varibad as vb

    off = discrete_args(dm, latent_dim=3, consistency=False, conditioning=False, session_recon=False, decode_beliefs=4,
                        session_clock=False)
    encoder, decoder, prior_net = networks(off)
    vb_args = discrete_args(vb, latent_dim=3, decode_beliefs=4)
    vb_encoder, vb_decoder = vb.Encoder(4, 5, vb_args), vb.Decoder(4, 5, vb_args)
    missing = vb_encoder.load_state_dict(encoder.state_dict(), strict=False)
    assert missing.missing_keys == [] and {k.split(".")[0] for k in missing.unexpected_keys} == {"termination"}
    vb_decoder.load_state_dict(decoder.state_dict())
    batch = random_batch()
    torch.manual_seed(3)  # the same beliefs drawn for decoding in both
    loss, terms = dm.vae_loss(encoder, decoder, prior_net, batch, off, "cpu")
    torch.manual_seed(3)
    vb_loss, vb_terms = vb.vae_loss(vb_encoder, vb_decoder, batch, vb_args, "cpu")
    assert set(terms) == {"reconstruction", "kl", "termination"} and set(vb_terms) == {"reconstruction", "kl"}
    for name in vb_terms:
        torch.testing.assert_close(terms[name], vb_terms[name], msg=name)
    torch.testing.assert_close(loss, vb_loss + off.termination_weight * terms["termination"])


def test_the_session_clock_predicts_each_step_s_end_from_the_gru_state_after_it_and_no_session_clock_removes_it():
    on, off = discrete_args(dm, latent_dim=3), discrete_args(dm, latent_dim=3, session_clock=False)
    assert on.session_clock  # the default
    nets = networks(on)
    assert networks(off)[0].clock is None
    batch = hand_made_batch()
    obs, actions, rewards, _, done = batch
    loss_on, terms_on = dm.vae_loss(*nets, batch, on, "cpu")
    loss_off, terms_off = dm.vae_loss(*nets, batch, off, "cpu")
    # the GRU states after each step, step by step from the encoder's parts: the clock reads h_t, the target is d_t
    encoder, logits = nets[0], []
    state = dm.BeliefState(2, 5, on, "cpu")
    for t in range(6):
        mean, logvar, _, _ = state.encode(encoder, obs[t], done[t - 1] if t > 0 else None)
        logits.append(encoder.clock(state.hidden).squeeze(-1))
        state.observe(actions[t], rewards[t], mean, logvar)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(torch.stack(logits), done.float())
    torch.testing.assert_close(terms_on["session_clock"], expected)
    assert "session_clock" not in terms_off
    assert_same_terms(terms_off, terms_on, terms_off)
    torch.testing.assert_close(loss_on, loss_off + on.termination_weight * terms_on["session_clock"])


def test_session_encoder_leaves_the_previous_belief_as_the_only_memory_across_sessions():
    obs, actions, rewards, _, done = hand_made_batch()
    changed = obs.clone()
    changed[0, 0] += 3.0  # episode 0's first step, in its first session (steps 0-2)
    for conditioning in (False, True):
        for session_encoder in (False, True):
            args = discrete_args(dm, latent_dim=3, conditioning=conditioning, session_encoder=session_encoder)
            encoder = networks(args)[0]
            before = dm.encode_episodes(encoder, obs, actions, rewards, done, args, "cpu")[0]
            after = dm.encode_episodes(encoder, changed, actions, rewards, done, args, "cpu")[0]
            assert not torch.allclose(before[:3, 0], after[:3, 0])
            later_unchanged = torch.allclose(before[3:, 0], after[3:, 0])
            assert later_unchanged == (session_encoder and not conditioning), (conditioning, session_encoder)
            torch.testing.assert_close(before[:, 1], after[:, 1])  # the other episode is untouched


def test_oracle_sessions_leaves_the_training_loss_as_it_is():
    """The VAE always trains on the true session ends; --oracle-sessions changes only what the rollout is told."""
    on, off = discrete_args(dm, latent_dim=3, oracle_sessions=True), discrete_args(dm, latent_dim=3)
    nets = networks(on)
    loss_on, terms_on = dm.vae_loss(*nets, hand_made_batch(), on, "cpu")
    loss_off, terms_off = dm.vae_loss(*nets, hand_made_batch(), off, "cpu")
    assert torch.equal(loss_on, loss_off) and terms_on.keys() == terms_off.keys()
    assert_same_terms(terms_on, terms_off, terms_on)


def test_a_session_end_is_found_after_the_fact_by_the_head_or_given_by_the_true_ends():
    args = discrete_args(dm, latent_dim=3)
    encoder = networks(args)[0]
    obs = torch.randn(3, 5, 4)
    for logit_bias, given, expected in ((30.0, None, [True] * 5), (-30.0, None, [False] * 5),
                                        (30.0, torch.tensor([1, 0, 0, 1, 0]), [True, False, False, True, False])):
        with torch.no_grad():
            encoder.termination[-1].weight.zero_()
            encoder.termination[-1].bias.fill_(logit_bias)
        state = dm.BeliefState(5, 5, args, "cpu")
        mean, logvar, logit, ended = state.encode(encoder, obs[0], given)
        assert not ended.any() and (logit > 0).all() == (logit_bias > 0)  # the first step follows no transition
        state.observe(torch.zeros(5, 5), torch.zeros(5), mean, logvar)
        last = torch.cat([mean, logvar], -1)
        ended = state.encode(encoder, obs[1], given)[3]
        assert ended.tolist() == expected
        expected_belief = torch.where(torch.tensor(expected)[:, None], last, torch.zeros_like(last))
        torch.testing.assert_close(state.prev_session_belief, expected_belief)  # the ended session's last belief


def test_a_new_episode_of_the_consecutive_protocol_starts_a_session_even_where_the_head_never_fires():
    """The agent sees the reset: the next episode of the same task conditions on the last belief of the one before,
    the first episode on nothing."""
    args = discrete_args(dm, latent_dim=3)
    envs_ = envs.protocol.make_vector_env("dynamite/Gridworld-v0", 4, {})
    space, horizon = envs_.single_action_space, envs.protocol.horizon(envs_)
    encoder = dm.Encoder(envs_.single_observation_space.shape[0], dm.action_size(space), args)
    with torch.no_grad():
        encoder.termination[-1].weight.zero_()
        encoder.termination[-1].bias.fill_(-30.0)  # the head never fires
    scaling = dm.ObservationScaling(envs_.single_observation_space)
    agent = dm.Agent(envs_.single_observation_space.shape[0], space, args)
    policy = dm.GreedyPolicy(4, encoder, agent, scaling, space, horizon, args, "cpu")
    obs, _ = envs_.reset(seed=0)
    for t in range(horizon):
        policy.act(obs, t)
        assert not policy.state.prev_session_belief.any()  # no end found within the episode
        obs, reward, _, _, info = envs_.step(dm.env_action(policy.action, space))
        policy.observe(reward, info)
    last = torch.cat([policy.mean, policy.logvar], -1)
    obs, _ = envs_.reset(options={"keep_task": True})
    policy.act(obs, 0)
    torch.testing.assert_close(policy.state.prev_session_belief, last)
    envs_.close()


def test_teacher_forcing_conditions_each_session_on_the_final_belief_of_the_one_before():
    """prev_session_beliefs[t] is the belief (mean, logvar) at the last step of the previous session, zeros in the
    first session, and it is what the encoder reads at step t."""
    args = discrete_args(dm, latent_dim=3)
    encoder = networks(args)[0]
    obs, actions, rewards, _, done = hand_made_batch()
    read = []
    encoder.fc.register_forward_hook(lambda module, inputs, output: read.append(inputs[0][..., -6:]))
    means, logvars, _, prev, _ = dm.encode_episodes(encoder, obs, actions, rewards, done, args, "cpu")
    read = torch.cat(read)  # (H, B, 6): the encoder runs over stretches of steps
    beliefs = torch.cat([means, logvars], -1)
    last_step = [{0: 2, 1: 5}, {0: 1, 1: 4, 2: 5}]  # episode -> session -> its last step
    sessions = [[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 2]]
    for t, b in itertools.product(range(6), range(2)):
        session = sessions[b][t]
        expected = torch.zeros(6) if session == 0 else beliefs[last_step[b][session - 1], b]
        assert torch.equal(prev[t, b], expected), (t, b)
        assert torch.equal(read[t, b], expected), (t, b)


SCHEDULES = [{"schedule": "fixed"}, {"schedule": "bernoulli", "session_prob": 0.1},
             {"schedule": "poisson", "num_sessions": 6}]


@pytest.mark.parametrize("head_delay", [0, 1])
@pytest.mark.parametrize("session_encoder", [False, True])
@pytest.mark.parametrize("env_kwargs", SCHEDULES)
def test_rollout_beliefs_with_the_true_session_ends_are_the_teacher_forced_beliefs(env_kwargs, session_encoder,
                                                                                   head_delay):
    """The beliefs an agent carries through an episode, told the true session ends (--oracle-sessions), are those
    the VAE trains on: encode_episodes over the same episode with the same ends (--head-delay steps later)."""
    args = discrete_args(dm, oracle_sessions=True, session_encoder=session_encoder, head_delay=head_delay)
    torch.manual_seed(0)
    encoder = dm.Encoder(6, 5, args)
    episode = greedy_episode(dm, encoder, args, env_kwargs)
    done = episode["session_done"]
    if env_kwargs["schedule"] != "fixed":
        assert (done != done[:, :1]).any(), "the sessions end at different steps in different episodes"
    means, logvars, *_ = dm.encode_episodes(encoder, episode["obs"], episode["actions"], episode["rewards"],
                                              dm.encoder_session_done(done, head_delay), args, "cpu")
    torch.testing.assert_close(episode["beliefs"], torch.cat([means, logvars], -1))
    ignoring_ends = dm.encode_episodes(encoder, episode["obs"], episode["actions"], episode["rewards"],
                                       torch.zeros_like(done), args, "cpu")[0]
    assert not torch.allclose(means, ignoring_ends), "the session ends must matter to these beliefs"


def test_the_head_delay_moves_the_encoders_session_ends_later_and_keeps_the_episode_end():
    done = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1], [0, 0], [1, 1]], dtype=torch.bool)  # (H = 6, B = 2)
    assert torch.equal(dm.encoder_session_done(done, 0), done)
    late = torch.tensor([[0, 0], [0, 0], [1, 0], [0, 1], [1, 1], [1, 1]], dtype=torch.bool)
    assert torch.equal(dm.encoder_session_done(done, 1), late)
    assert torch.equal(dm.encoder_session_done(done, 2)[:, 0], torch.tensor([0, 0, 0, 1, 0, 1], dtype=torch.bool))


def test_with_a_head_delay_each_belief_reconstructs_the_session_whose_rewards_it_has_read():
    """The session ends after step 1. The belief at step 2 has read steps 0-1 (its input is step 1's reward): with
    --head-delay 1 it still reconstructs the first session, and the belief at step 3 (step 2's reward) the second."""
    done = torch.tensor([[0], [1], [0], [0], [1]], dtype=torch.bool)
    now = dm.reconstruction_mask(done, True)[:, :, 0]
    late = dm.reconstruction_mask(done, True, dm.encoder_session_done(done, 1))[:, :, 0]
    first, second = torch.tensor([1, 1, 0, 0, 0], dtype=torch.bool), torch.tensor([0, 0, 1, 1, 1], dtype=torch.bool)
    assert [row.tolist() for row in now] == [first.tolist()] * 2 + [second.tolist()] * 3
    assert [row.tolist() for row in late] == [first.tolist()] * 3 + [second.tolist()] * 2
    assert torch.equal(dm.reconstruction_mask(done, False, dm.encoder_session_done(done, 1)),
                       torch.ones(5, 5, 1, dtype=torch.bool))


@pytest.mark.parametrize("fires", [False, True])
def test_without_oracle_sessions_the_rollout_ends_sessions_where_the_termination_head_fires(fires):
    args = discrete_args(dm)
    torch.manual_seed(0)
    encoder = dm.Encoder(6, 5, args)
    with torch.no_grad():  # a head that fires at every step, or never, whatever the true ends
        encoder.termination[-1].weight.zero_()
        encoder.termination[-1].bias.fill_(30.0 if fires else -30.0)
    episode = greedy_episode(dm, encoder, args, SCHEDULES[0])
    marked = torch.full_like(episode["session_done"], fires)
    means, logvars, *_ = dm.encode_episodes(encoder, episode["obs"], episode["actions"], episode["rewards"], marked,
                                              args, "cpu")
    torch.testing.assert_close(episode["beliefs"], torch.cat([means, logvars], -1))


TRAINED_HEAD = os.path.join(os.path.dirname(__file__), "data", "session_head_bernoulli.pt")


def test_a_trained_head_finds_random_session_ends_at_rollout_time():
    """The encoder that `python benchmarks/session_detection.py --schedules bernoulli --save-encoders tests/data`
    trains (3,000 VAE updates on random-action Gridworld episodes with Bernoulli ends, p = 1/15), run step by step as
    a rollout runs it: the head alone decides where a session ends, on episodes it never trained on. (Rerun that
    command if the encoder's layers change.)"""
    import shlex

    import tyro

    import envs.runs
    from benchmarks.session_detection import random_episodes

    saved = torch.load(TRAINED_HEAD, weights_only=True)
    args = tyro.cli(dm.Args, args=shlex.split(saved["extra"]))
    envs.runs.fill_family_defaults(args, envs.protocol.make_vector_env("dynamite/Gridworld-v0", 1, {}))
    obs, actions, rewards, _, done = random_episodes(saved["schedule"], 256, seed=saved["seed"] + 100)
    encoder = dm.Encoder(obs.shape[-1], actions.shape[-1], args)
    encoder.load_state_dict(saved["encoder"])
    state, counts = dm.BeliefState(obs.shape[1], actions.shape[-1], args, "cpu"), envs.protocol.SessionDetection()
    with torch.no_grad():
        for t in range(obs.shape[0]):
            mean, logvar, _, ended = state.encode(encoder, obs[t])
            if t > 0:
                counts.add(ended, done[t - 1])
            state.observe(actions[t], rewards[t], mean, logvar)
    rates = counts.rates()
    assert counts.ends > 500 and rates["recall"] >= 0.9 and rates["precision"] >= 0.9, rates


@pytest.mark.slow
def test_every_component_turned_off_with_true_session_ends_trains_and_evaluates(tmp_path):
    """The ablation flags end to end: the run finishes, logs no consistency loss, and its encoder reads no belief."""
    flags = ["--no-consistency", "--no-conditioning", "--no-session-recon", "--oracle-sessions", "--save-model"]
    run_dir = run_script("dynamite_rl.py", *TINY["dynamite_rl.py"], *flags, cwd=tmp_path)
    result = json.load(open(os.path.join(run_dir, "eval.json")))
    assert result["finished"] and result["evaluations"][-1]["global_step"] == 960
    assert [result["args"][k] for k in ("consistency", "conditioning", "session_recon", "oracle_sessions")] == \
        [False, False, False, True]
    events = EventAccumulator(run_dir)
    events.Reload()
    logged = events.Tags()["scalars"]
    assert {"losses/reconstruction", "losses/kl", "losses/termination"} <= set(logged)
    assert "losses/consistency" not in logged
    weights = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)["modules"]["encoder"]
    assert weights["fc.0.weight"].shape[1] == 3 * result["args"]["embed_dim"]
