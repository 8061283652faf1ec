"""ContraBAR: the InfoNCE loss, and which futures the encoder is asked to tell apart."""

import torch
import torch.nn.functional as F

import contrabar as cb
from conftest import discrete_args


def test_infonce_is_the_cross_entropy_of_each_query_against_every_trajectory():
    gen = torch.Generator().manual_seed(0)
    queries, targets = torch.randn(3, 5, 4, generator=gen), torch.randn(3, 5, 4, generator=gen)
    valid = torch.ones(3, 5, dtype=torch.bool)
    valid[2, 1:] = False
    terms = []
    for n in range(3):
        for b in range(5):
            if valid[n, b]:
                logits = torch.stack([queries[n, b] @ targets[n, other] for other in range(5)])
                terms.append(-F.log_softmax(logits, 0)[b])
    torch.testing.assert_close(cb.infonce_loss(queries, targets, valid), torch.stack(terms).mean())
    # queries that pick out their own trajectory's target: loss near 0; queries blind to it: log(batch)
    distinct = torch.eye(5).expand(3, 5, 5)
    assert cb.infonce_loss(10 * distinct, distinct, torch.ones(3, 5, dtype=torch.bool)) < 1e-3
    torch.testing.assert_close(cb.infonce_loss(torch.zeros(3, 5, 5), distinct, torch.ones(3, 5, dtype=torch.bool)),
                               torch.log(torch.tensor(5.0)))


def test_negatives_are_other_trajectories_at_the_same_step_never_the_positives_own(monkeypatch):
    torch.manual_seed(0)
    args = discrete_args(cb, cpc_anchors=60, cpc_steps=3)
    encoder, predictor = cb.Encoder(6, 5, args), cb.FuturePredictor(6, 5, args)
    horizon, batch = 60, 4
    obs, next_obs = torch.randn(horizon, batch, 6), torch.randn(horizon, batch, 6)
    actions = F.one_hot(torch.randint(5, (horizon, batch)), 5).float()
    rewards = torch.randn(horizon, batch)
    seen = {}
    original = cb.infonce_loss

    def spy(queries, targets, valid):
        seen.update(queries=queries, targets=targets, valid=valid)
        return original(queries, targets, valid)

    monkeypatch.setattr(cb, "infonce_loss", spy)
    cb.cpc_loss(encoder, predictor, (obs, actions, rewards, next_obs, torch.zeros(horizon, batch, dtype=torch.bool)),
                args, "cpu")
    targets, valid = seen["targets"], seen["valid"]
    assert targets.shape == (3, horizon, batch, args.cpc_dim)  # (k, anchor t, trajectory, dim)
    embedded = predictor.embed(rewards, next_obs)  # what each transition (r_j, s_{j+1}) looks like
    for k in range(3):
        for t in range(horizon - k):
            # the candidates for the anchor at t, k + 1 steps ahead: transition t + k of every trajectory; the
            # anchor's own trajectory contributes only its positive, the others are the negatives
            torch.testing.assert_close(targets[k, t], embedded[t + k])
        assert valid[k, : horizon - k].all() and not valid[k, horizon - k :].any()
    # and the query of trajectory b is scored against trajectory b's target as the positive
    queries = seen["queries"]
    hiddens = cb.encode_episodes(encoder, obs, actions, rewards, args, "cpu")
    torch.testing.assert_close(queries[:, 5], predictor.queries(hiddens[5], actions[5:8]))
