"""IWAE: K = 1 is the ELBO at the same sample, K > 1 is tighter on average, the loss is the (weighted) bound."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_config

from vaelab.core.errors import VaelabError
from vaelab.estimators.pathwise import IWAE, build_estimator
from vaelab.models.vae import build_model


def gaussian_model(latent: str = "gaussian"):
    cfg = tiny_config(f"model.latent={latent}").model
    return build_model(cfg, 64, (8, 8)).double()


def binary_batch(n: int = 16) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 64), 0.3, dtype=torch.float64), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("latent", ["gaussian", "gaussian_iaf"])
def test_k1_bound_is_the_elbo_at_the_same_sample(latent):
    model, x = gaussian_model(latent), binary_batch()
    torch.manual_seed(7)
    est = IWAE(num_samples=1)(model, x)
    torch.manual_seed(7)
    q = model.posterior(x)
    z = q.rsample()                                                            # the same eps
    elbo = model.likelihood(z).log_prob(x) + model.prior().log_prob(z) - q.log_prob(z.clone())  # [B]
    torch.testing.assert_close(est.stats["iw_bound"], elbo.detach())
    torch.testing.assert_close(est.loss, -elbo.mean())


def test_bound_is_the_log_mean_of_the_importance_weights():
    model, x = gaussian_model(), binary_batch(4)
    torch.manual_seed(2)
    est = IWAE(num_samples=6)(model, x)
    torch.manual_seed(2)
    q = model.posterior(x)
    z = q.rsample((6,))                                                        # [K, B, D]
    w = (model.log_joint(x, z) - q.log_prob(z)).exp()                          # [K, B] plain weights (float64)
    torch.testing.assert_close(est.stats["iw_bound"], w.mean(0).log().detach())
    # reported terms are the ordinary ELBO's: rec averaged over the K samples, the analytic KL
    torch.testing.assert_close(est.rec, model.likelihood(z).log_prob(x).mean(0).detach())
    torch.testing.assert_close(est.kl, model.kl(q).detach())
    torch.testing.assert_close(est.elbo, est.rec - est.kl)


def test_k_sample_bound_exceeds_the_elbo_on_average():
    """E[log mean_k w_k] >= E[log w] (Burda et al. 2016, Theorem 1): over 200 draws the gap is many SEs wide."""
    model, x = gaussian_model(), binary_batch(8)
    with torch.no_grad():
        bound5 = torch.stack([IWAE(5)(model, x).stats["iw_bound"] for _ in range(200)])   # [R, B]
        bound1 = torch.stack([IWAE(1)(model, x).stats["iw_bound"] for _ in range(200)])   # [R, B]
    gap = (bound5 - bound1).mean(1)                                              # [R]
    assert gap.mean() > 5 * gap.std() / math.sqrt(len(gap))


def test_kl_weight_enters_the_loss_but_not_the_reported_bound():
    model, x = gaussian_model(), binary_batch(4)
    torch.manual_seed(5)
    weighted = IWAE(3)(model, x, kl_weight=0.0)
    torch.manual_seed(5)
    plain = IWAE(3)(model, x)
    torch.testing.assert_close(weighted.stats["iw_bound"], plain.stats["iw_bound"])
    torch.manual_seed(5)
    z = model.posterior(x).rsample((3,))
    rec = model.likelihood(z).log_prob(x)                                        # [K, B]; beta = 0 keeps rec only
    torch.testing.assert_close(weighted.loss, -(torch.logsumexp(rec, 0) - math.log(3)).mean())


def test_iwae_trains_gradients_through_the_encoder_and_is_refused_where_it_cannot_work():
    model, x = gaussian_model(), binary_batch(4)
    IWAE(4)(model, x).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    with pytest.raises(VaelabError, match="num_samples = 0 must be an integer >= 1"):
        build_estimator("iwae", {"num_samples": 0}, model)
    for latent in ("bernoulli", "deterministic"):
        with pytest.raises(VaelabError, match="needs"):
            build_estimator("iwae", {}, build_model(tiny_config(f"model.latent={latent}").model, 64, (8, 8)))
