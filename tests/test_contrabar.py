"""ContraBAR: the InfoNCE loss, which futures the encoder is asked to tell apart, and how they are scored."""

import pytest
import torch
import torch.nn.functional as F

import contrabar as cb
from conftest import discrete_args


def test_infonce_is_the_cross_entropy_of_picking_each_querys_positive_among_its_candidates():
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(3, 5, 7, generator=gen), torch.randint(7, (3, 5), generator=gen)
    valid = torch.ones(3, 5, dtype=torch.bool)
    valid[2, 1:] = False
    terms = [-F.log_softmax(logits[n, b], 0)[labels[n, b]] for n in range(3) for b in range(5) if valid[n, b]]
    torch.testing.assert_close(cb.infonce_loss(logits, labels, valid), torch.stack(terms).mean())
    # a query that singles out its positive: loss near 0; one blind to all candidates: log(number of candidates)
    sure = torch.zeros(3, 5, 7).scatter(-1, labels[..., None], 50.0)
    assert cb.infonce_loss(sure, labels, torch.ones(3, 5, dtype=torch.bool)) < 1e-3
    torch.testing.assert_close(cb.infonce_loss(torch.zeros(3, 5, 7), labels, torch.ones(3, 5, dtype=torch.bool)),
                               torch.log(torch.tensor(7.0)))


def cpc_batch(horizon=60, batch=4):
    gen = torch.Generator().manual_seed(1)
    obs, next_obs = torch.randn(horizon, batch, 6, generator=gen), torch.randn(horizon, batch, 6, generator=gen)
    actions = F.one_hot(torch.randint(5, (horizon, batch), generator=gen), 5).float()
    return obs, actions, torch.randn(horizon, batch, generator=gen), next_obs, torch.zeros(horizon, batch, dtype=torch.bool)


def spy_on_loss(monkeypatch, predictor):
    seen = {}
    original_score, original_loss = predictor.score, cb.infonce_loss

    def score(queries, candidates):
        seen.update(queries=queries, candidates=candidates)
        return original_score(queries, candidates)

    def loss(logits, labels, valid):
        seen.update(logits=logits, labels=labels, valid=valid)
        return original_loss(logits, labels, valid)

    monkeypatch.setattr(predictor, "score", score)
    monkeypatch.setattr(cb, "infonce_loss", loss)
    return seen


def test_other_steps_negatives_come_from_any_step_of_the_other_episodes_never_the_querys_own(monkeypatch):
    torch.manual_seed(0)
    args = discrete_args(cb, cpc_anchors=60, cpc_steps=3, num_negatives=40)
    encoder, predictor = cb.Encoder(6, 5, args), cb.FuturePredictor(6, 5, args)
    obs, actions, rewards, next_obs, done = batch = cpc_batch()
    seen = spy_on_loss(monkeypatch, predictor)
    cb.cpc_loss(encoder, predictor, batch, args, "cpu")
    candidates, labels, valid = seen["candidates"], seen["labels"], seen["valid"]
    assert candidates.shape == (3, 60, 4, 41, args.cpc_dim) and not labels.any()  # the positive first, 40 negatives
    embedded = predictor.embed(rewards, next_obs)  # (H, B, D): what each transition (r_j, s_{j+1}) looks like
    flat = embedded.reshape(-1, args.cpc_dim)
    steps_seen = set()
    for k in range(3):
        for t in range(60 - k):
            torch.testing.assert_close(candidates[k, t, :, 0], embedded[t + k])  # the positive: step t + k
            for b in range(4):
                # each negative is the embedding of some step of another episode
                match = torch.cdist(candidates[k, t, b, 1:], flat).argmin(-1)
                assert (match % 4 != b).all(), (k, t, b)
                steps_seen.update((match // 4).tolist())
        assert valid[k, : 60 - k].all() and not valid[k, 60 - k :].any()
    assert len(steps_seen) == 60  # drawn from every step, not only the query's
    # the queries: h_t rolled forward over the actions
    hiddens = cb.encode_episodes(encoder, obs, actions, rewards, args, "cpu")
    torch.testing.assert_close(seen["queries"][:, 5], predictor.queries(hiddens[5], actions[5:8]))


def test_same_step_negatives_are_the_other_episodes_at_the_querys_step(monkeypatch):
    torch.manual_seed(0)
    args = discrete_args(cb, cpc_anchors=60, cpc_steps=3, negatives="same-step")
    encoder, predictor = cb.Encoder(6, 5, args), cb.FuturePredictor(6, 5, args)
    obs, actions, rewards, next_obs, done = batch = cpc_batch()
    seen = spy_on_loss(monkeypatch, predictor)
    cb.cpc_loss(encoder, predictor, batch, args, "cpu")
    candidates, labels = seen["candidates"], seen["labels"]
    assert candidates.shape == (3, 60, 4, 4, args.cpc_dim)
    embedded = predictor.embed(rewards, next_obs)
    for k in range(3):
        for t in range(60 - k):
            for b in range(4):
                torch.testing.assert_close(candidates[k, t, b], embedded[t + k])  # every episode at step t + k
                assert labels[k, t, b] == b  # its own is the positive


@pytest.mark.parametrize("scorer", ["dot", "mlp"])
def test_the_scorer_gives_one_logit_per_candidate_and_learns(scorer):
    torch.manual_seed(0)
    args = discrete_args(cb, scorer=scorer)
    predictor = cb.FuturePredictor(6, 5, args)
    queries, candidates = torch.randn(2, 3, args.cpc_dim), torch.randn(2, 3, 7, args.cpc_dim)
    logits = predictor.score(queries, candidates)
    assert logits.shape == (2, 3, 7)
    if scorer == "dot":
        torch.testing.assert_close(logits[1, 2, 4], queries[1, 2] @ candidates[1, 2, 4])
        assert predictor.scorer is None
    else:  # a learned MLP on (query, candidate): it has parameters, and they get gradients
        logits.sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in predictor.scorer.parameters())
        swapped = predictor.score(candidates[..., 0, :], queries[..., None, :])
        assert not torch.allclose(swapped[..., 0], logits[..., 0])  # not symmetric, unlike a dot product
