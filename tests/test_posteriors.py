"""Richer posteriors: IAF (Gaussian) and autoregressive Bernoulli, checked against autograd Jacobians, grid
integrals and exact enumeration; their Monte Carlo KL; and which estimators accept them."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import tiny_config
from torch import nn
from torch.distributions import Normal

from vaelab.core.errors import VaelabError
from vaelab.estimators.pathwise import ESTIMATORS, Reparam, build_estimator
from vaelab.evaluation.bounds import elbo_terms, iw_loglik
from vaelab.models.autoregressive import MADE
from vaelab.models.latents import LATENTS, AutoregressiveBernoulliLatent, GaussianIAFLatent
from vaelab.models.sampling import reconstruct
from vaelab.models.vae import VAE, build_model
from vaelab.runs.loaded_run import open_run
from vaelab.training.trainer import train


def randomized(family: torch.nn.Module, std: float = 0.7) -> torch.nn.Module:
    """Float64 copy with every weight redrawn, so the autoregressive parts are far from the identity."""
    family = family.double()
    with torch.no_grad():
        for p in family.parameters():
            p.normal_(0.0, std)
    return family


def codes(n: int) -> torch.Tensor:
    """All 2^n binary codes: [2^n, n]."""
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=torch.float64)


# --- the masked network -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reverse", [False, True])
def test_made_output_i_depends_only_on_earlier_inputs(reverse):
    made = MADE(5, context_dim=3, hidden=12, outputs_per_dim=2, reverse=reverse).double()
    z, c = torch.randn(5, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: made(v, c), z)          # [k=2, D out, D in]
    order = made.order()
    rank = torch.empty(5, dtype=torch.long)
    rank[order] = torch.arange(5)
    allowed = rank[None, :] < rank[:, None]                                     # [out, in]: input comes earlier
    assert (jac[:, ~allowed] == 0).all()
    assert (jac[:, allowed].abs() > 0).float().mean() > 0.9                     # and it does depend on them


# --- Gaussian IAF -------------------------------------------------------------------------------------------------

def iaf_posterior(dim: int = 3, steps: int = 2, batch: int = 1):
    fam = randomized(GaussianIAFLatent(dim, steps=steps, hidden_units=8), std=0.3)
    h = torch.randn(batch, 3 * dim, dtype=torch.float64) * 0.5
    return fam, fam.posterior(h), h


def test_iaf_log_prob_is_the_change_of_variables_with_autograd_jacobian():
    """log q(z) = log N(eps; 0, I) - log|det dz/deps|, the Jacobian of the whole map taken by autograd."""
    fam, q, h = iaf_posterior(dim=3, steps=3)
    mu, logvar, _ = h.chunk(3, dim=-1)

    def flow(eps):                                                              # [D] -> [D], the map alone
        z = mu[0] + torch.exp(0.5 * logvar[0]) * eps
        for step in q.transforms:
            z = step._call(z[None])[0]
        return z

    for _ in range(4):
        eps = torch.randn(3, dtype=torch.float64)
        z = flow(eps)
        jac = torch.autograd.functional.jacobian(flow, eps)                     # [D, D]
        expected = Normal(0.0, 1.0).log_prob(eps).sum() - torch.linalg.slogdet(jac)[1]
        torch.testing.assert_close(q.log_prob(z[None].clone()), expected[None])   # uncached: exact inverse


def test_iaf_cached_and_inverted_log_probs_agree_and_inverse_recovers_the_base_sample():
    _, q, _ = iaf_posterior(dim=4, steps=2, batch=3)
    z = q.rsample((5,))                                                        # [5, 3, 4]
    torch.testing.assert_close(q.log_prob(z), q.log_prob(z.clone()))          # cache vs D-sweep inverse
    x = z.clone()
    for step in reversed(q.transforms):
        y, x = x, step.inv(x)
        torch.testing.assert_close(step(x), y)


def test_iaf_density_integrates_to_one_and_its_mc_kl_matches_the_grid_integral():
    """D = 2: on a grid, sum q dz = 1 and sum q (log q - log p) dz = KL, which the mean of kl_at estimates."""
    fam, q, _ = iaf_posterior(dim=2, steps=2)
    step = 0.03
    axis = torch.arange(-7.0, 7.0, step, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)[:, None, :]                         # [G, 1, 2]
    with torch.no_grad():
        log_q = q.log_prob(grid)                                               # [G, 1]
        density = log_q.exp() * step**2
        kl_grid = (density * (log_q - fam.prior().log_prob(grid))).sum()
        assert density.sum().item() == pytest.approx(1.0, abs=1e-3)
        z = q.sample((40000,))                                                 # [S, 1, 2]
        kl_mc = fam.kl_at(q, z)                                                # [S, 1]
    se = kl_mc.std().item() / math.sqrt(kl_mc.numel())
    assert abs(kl_mc.mean().item() - kl_grid.item()) < 4 * se + 2e-3
    assert kl_grid.item() > 0.1                                                 # a posterior far from the prior


def test_iaf_reparam_uses_the_same_sample_for_rec_and_kl_and_trains_the_flow():
    cfg = tiny_config("model.latent=gaussian_iaf", "model.latent_kwargs={steps: 2}").model
    model = build_model(cfg, 64, (8, 8))
    estimator = build_estimator("reparam", {}, model)
    x = torch.bernoulli(torch.full((6, 64), 0.3))
    torch.manual_seed(1)
    est = estimator(model, x)
    est.loss.backward()
    torch.manual_seed(1)
    q = model.posterior(x)
    z = q.rsample()
    log_w = model.log_joint(x, z) - q.log_prob(z.clone())                     # [B], independent of any cache
    torch.testing.assert_close(est.elbo, log_w.detach())
    for made in model.latent.steps:
        assert made.inp.weight.grad.abs().sum() > 0 and made.ctx.weight.grad.abs().sum() > 0


# --- autoregressive Bernoulli -------------------------------------------------------------------------------------

def ar_posterior(n: int = 4, batch: int = 3):
    fam = randomized(AutoregressiveBernoulliLatent(n, prior_probs=0.3, hidden_units=7), std=1.0)
    return fam, fam.posterior(torch.randn(batch, 2 * n, dtype=torch.float64))


def test_ar_bernoulli_log_prob_sums_to_one_over_all_codes():
    _, q = ar_posterior(n=4, batch=3)
    all_codes = codes(4)[:, None, :].expand(16, 3, 4)                          # [16, B, 4]
    probs = q.log_prob(all_codes).exp()                                        # [16, B]
    torch.testing.assert_close(probs.sum(0), torch.ones(3, dtype=torch.float64))
    # and it is not factorised: the joint differs from the product of its marginals
    marginals = (probs[:, :, None] * all_codes).sum(0)                         # [B, 4] P(z_i = 1)
    product = torch.where(all_codes.bool(), marginals, 1 - marginals).prod(-1)  # [16, B]
    assert (probs - product).abs().max() > 0.01


def test_ar_bernoulli_samples_follow_its_log_prob():
    """Bit-by-bit sampling and the one-pass density describe the same distribution (per-code frequencies
    within 5 binomial standard errors)."""
    _, q = ar_posterior(n=4, batch=2)
    n_draws = 40000
    z = q.sample((n_draws,))                                                   # [S, B, 4]
    assert z.shape == (n_draws, 2, 4) and set(z.unique().tolist()) <= {0.0, 1.0}
    all_codes = codes(4)
    hits = (z[:, :, None, :] == all_codes).all(-1).double().mean(0)            # [B, 16]
    p = q.log_prob(all_codes[:, None, :].expand(16, 2, 4)).exp().T.detach()    # [B, 16]
    se = (p * (1 - p) / n_draws).sqrt()
    assert ((hits - p).abs() <= 5 * se + 1e-4).all()


def test_ar_bernoulli_mc_kl_estimates_the_exact_kl():
    fam, q = ar_posterior(n=4, batch=2)
    all_codes = codes(4)[:, None, :].expand(16, 2, 4)
    with torch.no_grad():
        log_q = q.log_prob(all_codes)                                          # [16, B]
        exact = (log_q.exp() * (log_q - fam.prior().log_prob(all_codes))).sum(0)  # [B]
        kl_mc = fam.kl_at(q, q.sample((20000,)))                               # [S, B]
    se = kl_mc.std(0) / math.sqrt(kl_mc.shape[0])
    assert ((kl_mc.mean(0) - exact).abs() < 4 * se).all()
    with pytest.raises(VaelabError, match="kl_at"):
        fam.kl(q)


def tiny_ar_model() -> VAE:
    """16 pixels, 3 bits, learned prior, a randomised masked network: small enough to enumerate q exactly."""
    enc = nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 2 * 3))
    dec = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 16))
    latent = randomized(AutoregressiveBernoulliLatent(3, prior_probs=0.3, learn_prior=True, hidden_units=5), 1.0)
    with torch.no_grad():
        latent.prior_logits.fill_(-0.8)
    return VAE(enc, dec, latent, (4, 4)).double()


def sfe_loss(model: VAE, x: torch.Tensor, kl_in_signal: bool) -> torch.Tensor:
    """REINFORCE with the Monte Carlo KL at the drawn z; its z-dependence must enter the learning signal."""
    q = model.posterior(x)
    z = q.sample()                                                             # [B, D]
    rec, kl, log_q = model.likelihood(z).log_prob(x), model.latent.kl_at(q, z), q.log_prob(z)  # [B] each
    signal = (rec - kl if kl_in_signal else rec).detach()
    return (kl - rec - signal * (log_q - log_q.detach())).mean()


def test_score_function_gradient_with_the_mc_kl_matches_the_exact_elbo_gradient():
    """With log q(z|x) - log p(z) in the learning signal the gradient is unbiased (exact ELBO by enumerating the
    8 codes); leaving it out, as a closed-form-KL estimator would, is detectably biased."""
    model = tiny_ar_model()
    x = torch.bernoulli(torch.full((4, 16), 0.5, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    params = list(model.parameters())
    all_codes = codes(3)[:, None, :].expand(8, 4, 3)
    q = model.posterior(x)
    log_q = q.log_prob(all_codes)                                              # [8, B]
    elbo = (log_q.exp() * (model.log_joint(x, all_codes) - log_q)).sum(0).mean()
    exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(elbo, params)])

    def worst_z(kl_in_signal: bool, groups: int = 100, replicas: int = 40) -> float:
        """Largest |mean - exact| / SE over the parameters; each group averages `replicas` independent draws."""
        x_rep = x.repeat(replicas, 1)                                           # [R * B, P]
        grads = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
            -sfe_loss(model, x_rep, kl_in_signal), params)]) for _ in range(groups)])  # [G, n_params]
        se = grads.std(0) / math.sqrt(groups)
        return ((grads.mean(0) - exact).abs() / se.clamp(min=1e-12)).max().item()

    assert worst_z(True) < 4.5
    assert worst_z(False) > 6.0


def test_ar_bernoulli_mean_is_a_code_in_the_unit_cube():
    _, q = ar_posterior(n=5, batch=3)
    mean = q.mean
    assert mean.shape == (3, 5) and ((mean > 0) & (mean < 1)).all()


def test_families_offer_what_they_can_deliver():
    assert GaussianIAFLatent.offers() == {"rsample", "kl_at"}
    assert AutoregressiveBernoulliLatent.offers() == {"discrete", "kl_at"}
    assert {"factorised", "kl", "kl_at"} <= LATENTS.get("bernoulli").offers()
    with pytest.raises(VaelabError, match="steps = 0 must be an integer >= 1"):
        GaussianIAFLatent(3, steps=0)


def ar_model():
    cfg = tiny_config("model.latent=bernoulli_ar", "model.latent_dim=4").model
    return build_model(cfg, 64, (8, 8))


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_every_estimator_either_runs_with_ar_bernoulli_or_is_refused(name):
    """Estimators that accept bernoulli_ar give a finite loss and reach the masked network; DisARM and the
    relaxations need a factorised posterior and the pathwise ones need rsample, so build_estimator refuses them."""
    model = ar_model()
    try:
        estimator = build_estimator(name, {}, model)
    except VaelabError as err:
        assert "needs" in str(err)
        return
    assert name not in ("reparam", "iwae", "disarm", "gumbel", "st")
    x = torch.bernoulli(torch.full((5, 64), 0.4))
    est = estimator(model, x)
    est.loss.backward()
    assert torch.isfinite(est.loss) and torch.isfinite(est.elbo).all() and est.elbo.shape == (5,)
    assert model.latent.made.inp.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("latent, estimator", [("gaussian_iaf", "reparam"), ("gaussian_iaf", "iwae"),
                                               ("bernoulli_ar", None)])
def test_training_evaluation_and_reconstruction_run_with_the_new_families(tmp_path, latent, estimator):
    estimator = estimator or "sfe-avg"
    cfg = tiny_config(f"model.latent={latent}", f"estimator.name={estimator}", "train.epochs=1",
                      "train.steps_per_epoch=3")
    (row,) = train(cfg, tmp_path / "run", quiet=True)
    assert all(math.isfinite(row[k]) for k in ("train_loss", "train_elbo", "valid_elbo", "valid_kl"))
    run = open_run(tmp_path / "run", "cpu")
    x = run.data.x_valid[:20]
    terms = elbo_terms(run.model, x)
    ll = iw_loglik(run.model, x, k=200)
    assert ll.mean() > terms["elbo"].mean()                                    # the bound is tighter on average
    assert reconstruct(run.model, x).shape == x.shape


def test_reparam_is_refused_for_families_without_a_kl_term():
    model = build_model(tiny_config("model.latent=deterministic").model, 64, (8, 8))
    with pytest.raises(VaelabError, match="needs kl_at"):
        build_estimator("reparam", {}, model)
    assert isinstance(build_estimator("reparam", {}, build_model(tiny_config().model, 64, (8, 8))), Reparam)
