"""Latent families: closed-form KLs against torch.distributions, generic shape checks over the registry."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, kl_divergence

from vaelab.models.latents import LATENTS, BernoulliLatent, GaussianLatent


def test_gaussian_kl_matches_torch():
    fam = GaussianLatent(6).double()
    h = torch.randn(50, 12, dtype=torch.float64) * 2
    q = fam.posterior(h)
    expected = kl_divergence(q, fam.prior().expand((50,)))
    torch.testing.assert_close(fam.kl(q), expected)


@pytest.mark.parametrize("p", [0.5, 0.2, 0.9])
def test_bernoulli_kl_matches_torch(p):
    fam = BernoulliLatent(7, prior_probs=p).double()
    logits = torch.randn(40, 7, dtype=torch.float64) * 3
    q = fam.posterior(logits)
    prior = Independent(Bernoulli(logits=fam.prior_logits.expand(40, 7)), 1)  # torch's KL needs equal shapes
    torch.testing.assert_close(fam.kl(q), kl_divergence(q, prior))


def test_bernoulli_kl_is_minus_entropy_plus_n_log2_at_half():
    """The study's eq. 8: KL[q || Bern(1/2)^n] = -H[q] + n log 2."""
    n = 9
    fam = BernoulliLatent(n).double()
    q = fam.posterior(torch.randn(30, n, dtype=torch.float64) * 4)
    torch.testing.assert_close(fam.kl(q), -q.entropy() + n * math.log(2))


def test_learned_prior_is_a_parameter_and_refuses_bad_probs():
    fam = BernoulliLatent(3, learn_prior=True)
    assert any(p is fam.prior_logits for p in fam.parameters())
    with pytest.raises(Exception, match="strictly between"):
        BernoulliLatent(3, prior_probs=1.0)


@pytest.mark.parametrize("name", [n for n in LATENTS if LATENTS.get(n).has_kl])
def test_every_family_gives_batch_and_event_shapes(name):
    cls = LATENTS.get(name)
    fam = cls(5)
    q = fam.posterior(torch.randn(8, cls.params_per_dim * 5))
    z = q.sample((3,))
    assert q.batch_shape == (8,) and q.event_shape == (5,) and z.shape == (3, 8, 5)
    assert q.log_prob(z).shape == (3, 8) and fam.prior().log_prob(z).shape == (3, 8)
    assert fam.kl(q).shape == (8,) and (fam.kl(q) >= -1e-5).all()


def test_bernoulli_image_log_prob_matches_torch_including_extreme_logits():
    from vaelab.models.vae import BernoulliImage

    logits = torch.cat([torch.randn(3, 4, 50, dtype=torch.float64) * 5,
                        torch.full((3, 4, 2), 60.0, dtype=torch.float64),
                        torch.full((3, 4, 2), -60.0, dtype=torch.float64)], -1)   # [S, B, P]
    x = torch.bernoulli(torch.full((4, 54), 0.5, dtype=torch.float64))           # [B, P], broadcast over S
    expected = Independent(Bernoulli(logits=logits), 1).log_prob(x)
    torch.testing.assert_close(BernoulliImage(logits).log_prob(x), expected)
    logits.requires_grad_(True)
    BernoulliImage(logits).log_prob(x).sum().backward()
    torch.testing.assert_close(logits.grad, (x - torch.sigmoid(logits)).detach())  # d/dl log p = x - sigmoid(l)
