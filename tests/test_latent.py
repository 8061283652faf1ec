"""The structured latent of dynamite_rl.py and varibad.py: the Laplace approximation of the Dirichlet prior, the
KL to it, samples on the simplex, gradients through them, and what each kind of latent changes."""

import numpy as np
import pytest
import torch

import dynamite_rl
import varibad
from conftest import discrete_args


@pytest.fixture(params=[dynamite_rl, varibad])
def algo(request):
    return request.param


def polygamma(n: int, x: float) -> float:
    return float(torch.special.polygamma(n, torch.tensor(x, dtype=torch.float64)))


def log_ratio_moments(alpha, samples: int = 400_000):
    """Monte-Carlo mean and variance of the softmax-basis coordinates log x_k - mean_i log x_i of x ~ Dir(alpha)."""
    x = np.random.default_rng(0).dirichlet(alpha, size=samples)
    y = np.log(x) - np.log(x).mean(1, keepdims=True)
    return y.mean(0), y.var(0)


def prior_of(algo, alpha, classes=4, groups=1):
    args = discrete_args(algo, latent="dirichlet", dirichlet_groups=groups, dirichlet_classes=classes,
                         dirichlet_alpha=alpha)
    mean, logvar = algo.latent_prior(args)
    return mean.numpy(), logvar.exp().numpy()


def test_the_laplace_approximation_is_the_softmax_basis_gaussian_of_the_dirichlet(algo):
    """Its mean is exact for a symmetric Dirichlet; its variance replaces the trigamma psi'(a) of the exact
    variance psi'(a)(1 - 1/K) by 1/a, close for a large concentration and far for a small one."""
    for alpha, ratio in [(1.0, polygamma(1, 1.0) * 1.0), (10.0, polygamma(1, 10.0) * 10.0), (0.2, polygamma(1, 0.2) * 0.2)]:
        mc_mean, mc_var = log_ratio_moments([alpha] * 4)
        mean, var = prior_of(algo, alpha)
        np.testing.assert_allclose(mean, 0.0, atol=1e-6)
        np.testing.assert_allclose(mc_mean, mean, atol=0.02 * np.sqrt(mc_var).max())
        np.testing.assert_allclose(var, (1 / alpha) * (1 - 1 / 4), rtol=1e-5)  # (1/a)(1 - 2/K) + K/(K^2 a)
        np.testing.assert_allclose(mc_var / var, ratio, rtol=0.03)  # the Monte-Carlo variance is the trigamma one
    assert polygamma(1, 1.0) * 1.0 == pytest.approx(1.645, abs=1e-3)  # alpha = 1: the std 28% too small
    assert polygamma(1, 10.0) * 10.0 == pytest.approx(1.052, abs=1e-3)  # alpha = 10: 2.5%
    assert polygamma(1, 0.2) * 0.2 == pytest.approx(5.25, abs=0.01)  # alpha = 0.2, the paper's: 2.3 times too small
    mean, var = prior_of(algo, 2.0, classes=3, groups=2)  # two groups repeat the same prior
    assert mean.shape == (6,) and np.allclose(var[:3], var[3:])


def test_the_paper_s_prior_dir_0_2_over_four_classes_is_a_gaussian_of_variance_3_75_on_the_logits():
    args = discrete_args(dynamite_rl, latent="dirichlet", dirichlet_groups=1, dirichlet_classes=4)
    mean, logvar = dynamite_rl.latent_prior(args)
    assert torch.allclose(mean, torch.zeros(4)) and torch.allclose(logvar.exp(), torch.full((4,), 3.75))


def test_the_kl_to_the_prior_is_zero_at_the_prior_and_positive_elsewhere(algo):
    args = discrete_args(algo, latent="dirichlet-gaussian", latent_dim=2, dirichlet_groups=2, dirichlet_classes=4)
    mean, logvar = algo.latent_prior(args)
    assert mean.shape == (10,) and torch.equal(mean[8:], torch.zeros(2)) and torch.equal(logvar[8:], torch.zeros(2))
    assert algo.gaussian_kl(mean, logvar, mean, logvar).abs() < 1e-6
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        other_mean, other_logvar = mean + torch.randn(10, generator=gen), logvar + torch.randn(10, generator=gen)
        assert algo.gaussian_kl(other_mean, other_logvar, mean, logvar) > 0


def test_samples_lie_on_the_simplex_and_gradients_flow_through_them(algo):
    args = discrete_args(algo, latent="dirichlet-gaussian", latent_dim=3, dirichlet_groups=2, dirichlet_classes=4)
    mean = torch.randn(5, 11, requires_grad=True)
    logvar = torch.randn(5, 11, requires_grad=True)
    latent = algo.to_latent(mean + torch.randn(5, 11) * (0.5 * logvar).exp(), args)
    simplex = latent[:, :8].reshape(5, 2, 4)
    assert (simplex >= 0).all() and torch.allclose(simplex.sum(-1), torch.ones(5, 2))
    (latent * torch.randn(5, 11)).sum().backward()
    assert mean.grad.abs().sum() > 0 and logvar.grad[:, :8].abs().sum() > 0 and logvar.grad[:, 8:].abs().sum() > 0
    gaussian = discrete_args(algo, latent_dim=3)
    assert algo.belief_size(gaussian) == 3 and torch.equal(algo.to_latent(mean, gaussian), mean)  # the default: as is
    assert algo.belief_size(discrete_args(algo, latent="dirichlet", latent_dim=3)) == 8


def test_the_policy_reads_the_dirichlet_means_on_the_simplex_and_the_logit_variances(algo):
    args = discrete_args(algo, latent="dirichlet", dirichlet_groups=1, dirichlet_classes=3)
    mean, logvar = torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[-1.0, 0.0, 1.0]])
    torch.testing.assert_close(algo.policy_belief(mean, logvar, args), torch.cat([mean.softmax(-1), logvar], -1))


def test_every_kind_of_latent_trains_a_vae_step_to_a_finite_loss(algo):
    torch.manual_seed(0)
    for kind in ("gaussian", "dirichlet", "dirichlet-gaussian"):
        args = discrete_args(algo, latent=kind, latent_dim=2, encoder_batch_episodes=4)
        encoder, decoder = algo.Encoder(6, 5, args), algo.Decoder(6, 5, args)
        nets = [encoder, decoder] + ([dynamite_rl.LatentDynamicsPrior(args)] if algo is dynamite_rl else [])
        session_done = torch.zeros(60, 4, dtype=torch.bool)
        session_done[14::15] = True
        batch = (torch.rand(60, 4, 6), torch.nn.functional.one_hot(torch.randint(5, (60, 4)), 5).float(),
                 torch.randn(60, 4), torch.rand(60, 4, 6), session_done)
        loss, terms = algo.vae_loss(*nets, batch, args, "cpu")
        assert torch.isfinite(loss) and all(torch.isfinite(v) for v in terms.values())
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)
