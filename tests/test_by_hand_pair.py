"""The hand-written antithetic step (training/by_hand_pair.py: disarm, arm) against the autograd estimators: on the
same seed, the same loss and reported terms and every gradient equal to float rounding (float64), for both learning
signals, a linear net with a learned prior, demeaned input and a centered decoder input and a leaky-ReLU MLP with a
fixed prior; and `plan` refusing, with its reason, what it does not cover."""

from __future__ import annotations

import pytest
import torch

from vaelab.config.schema import load_config
from vaelab.estimators.base import ESTIMATORS
from vaelab.models.vae import build_model
from vaelab.training import by_hand_pair

MODELS = {   # preset, overrides
    "linear_learned_prior": ("literature/disarm_linear", ["model.latent_dim=40"]),  # demean, centered, learned prior
    "leaky_fixed_prior": ("literature/disarm_nonlinear_analytic_kl", [
        "model.latent_dim=30", "model.hidden=[64, 48]", "model.demean_input=false",
        "model.latent_kwargs={prior_probs: 0.3, learn_prior: false}"]),
}


def model_for(preset: str, overrides: list[str]):
    cfg = load_config(preset, overrides)
    torch.manual_seed(0)
    mean = torch.rand(784, dtype=torch.float64) * 0.8 + 0.1                     # [P] a training mean image
    model = build_model(cfg.model, 784, (28, 28), mean).double()
    with torch.no_grad():                                                       # prior logits away from 0
        model.latent.prior_logits.copy_(torch.randn_like(model.latent.prior_logits))
    return model


def grads(model) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("beta", [1.0, 0.3, "tensor"])
@pytest.mark.parametrize("signal", ["rec", "elbo"])
@pytest.mark.parametrize("name", ["disarm", "arm"])
@pytest.mark.parametrize("case", sorted(MODELS))
def test_loss_terms_and_every_gradient_equal_autograd(case, name, signal, beta):
    model = model_for(*MODELS[case])
    assert model.latent.prior_logits.requires_grad == (case == "linear_learned_prior")
    beta = torch.tensor(0.7, dtype=torch.float64) if beta == "tensor" else beta
    x = torch.bernoulli(torch.rand(9, 784, dtype=torch.float64))                # [B, P]
    est = ESTIMATORS.get(name)(signal=signal)
    torch.manual_seed(5)
    ref = est(model, x, beta)
    ref.loss.backward()
    expected = grads(model)
    assert all(g.abs().sum() > 0 for g in expected.values())                    # every parameter is trained
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))                               # overwritten, not accumulated
    step, why = by_hand_pair.plan(model, est)
    assert step is not None, why
    torch.manual_seed(5)                                                        # the same u (and fresh z)
    got = step(x, beta)
    for term in ("loss", "elbo", "rec", "kl"):
        torch.testing.assert_close(getattr(got, term), getattr(ref, term).detach(), rtol=1e-12, atol=1e-12)
    for k, g in grads(model).items():
        torch.testing.assert_close(g, expected[k], rtol=1e-9, atol=1e-12, msg=lambda m, k=k: f"{k}: {m}")
    assert torch.rand(()).item() == pytest.approx(_after_draws(model, est, x, beta))  # the same number of draws


def _after_draws(model, est, x, beta) -> float:
    """The next uniform after the autograd estimator's draws on seed 5."""
    torch.manual_seed(5)
    est(model, x, beta)
    return torch.rand(()).item()


@pytest.mark.parametrize("overrides, estimator, reason", [
    ([], "rloo", "estimator RLOO"),
    ([], "gumbel", "estimator BinaryConcrete"),
    (["model.latent=gaussian", "model.decoder_input=code", "model.latent_kwargs={}"], "disarm",
     "factorised Bernoulli latent"),
    (["model.latent=bernoulli_ar"], "disarm", "factorised Bernoulli latent"),
    (["model.activation=elu"], "arm", "ELU has no hand-written backward"),
])
def test_plan_names_why_a_model_has_no_hand_written_step(overrides, estimator, reason):
    cfg = load_config("literature/disarm_nonlinear", ["model.latent_dim=8", "model.hidden=[16]", *overrides])
    model = build_model(cfg.model, 784, (28, 28), torch.full((784,), 0.3))
    step, why = by_hand_pair.plan(model, ESTIMATORS.get(estimator)())
    assert step is None and reason in why
