"""Evaluation: the importance-weighted estimate is a tighter bound than the ELBO and grows with K."""

import torch

from vaelab.config.schema import ModelConfig
from vaelab.evaluation.bounds import elbo_terms, iw_loglik, summarize
from vaelab.models.vae import build_model


def tiny_model(latent="gaussian"):
    torch.manual_seed(1)
    return build_model(ModelConfig(latent=latent, latent_dim=3, hidden=[16]), 20, (4, 5)).double()


def test_elbo_terms_are_rec_minus_kl_and_kl_is_analytic():
    model = tiny_model()
    x = torch.bernoulli(torch.full((30, 20), 0.3, dtype=torch.float64))
    terms = elbo_terms(model, x, batch_size=7)
    torch.testing.assert_close(terms["elbo"], terms["rec"] - terms["kl"])
    torch.testing.assert_close(terms["kl"], model.kl(model.posterior(x)).detach())


def test_iw_bound_above_elbo_on_average_and_increasing_in_k():
    model = tiny_model()
    x = torch.bernoulli(torch.full((40, 20), 0.3, dtype=torch.float64))
    # The ELBO's expectation equals the K=1 bound; average 200 one-sample ELBO draws to remove its noise.
    elbo = torch.stack([elbo_terms(model, x)["elbo"] for _ in range(200)]).mean(0)
    bounds = {k: iw_loglik(model, x, k=k, batch_size=40) for k in (1, 10, 1000)}
    assert bounds[10].mean() > elbo.mean() + 0.05
    assert bounds[1000].mean() > bounds[10].mean() + 0.01
    # K=1 is an unbiased estimate of the ELBO: equal to the 200-draw mean within Monte Carlo error.
    k1 = torch.stack([iw_loglik(model, x, k=1) for _ in range(200)]).mean(0)
    se = elbo_terms(model, x)["elbo"].std() / 200 ** 0.5
    assert abs(k1.mean() - elbo.mean()) < 4 * se


def test_chunked_estimate_matches_a_plain_loop(monkeypatch):
    """13 short chunks agree with a plain all-at-once reference within the reference's Monte Carlo error."""
    from vaelab.runtime import hardware

    model = tiny_model()
    x = torch.bernoulli(torch.full((6, 20), 0.5, dtype=torch.float64))
    k = 4000
    q = model.posterior(x)
    z = q.sample((k,))                                                    # [K, B, D]
    log_w = (model.log_joint(x, z) - q.log_prob(z)).detach()              # [K, B]
    reference = torch.logsumexp(log_w, 0) - torch.log(torch.tensor(float(k)))
    w = torch.exp(log_w - log_w.max(0).values)
    se = w.std(0) / w.mean(0) / k ** 0.5                                  # delta-method SE of log mean w
    monkeypatch.setitem(hardware.ROWS_PER_CHUNK, "cpu", 6 * 307)                # 307 samples a chunk, last one short
    chunked = iw_loglik(model, x, k=k)
    assert chunked.dtype == torch.float64
    assert ((chunked - reference).abs() < 5 * se * 2 ** 0.5 + 1e-9).all()


def test_summarize_gives_mean_and_standard_error():
    out = summarize({"a": torch.tensor([1.0, 2.0, 3.0, 4.0])})
    assert out["a"] == 2.5 and abs(out["a_stderr"] - 1.2909944487358056 / 2) < 1e-9


def test_monte_carlo_standard_error_matches_the_spread_of_independent_repeats():
    """The delta-method MC error of the test-set mean IW estimate against the empirical standard deviation of
    400 independent re-estimates (the spread of 400 repeats is known to ~4%; the delta method runs ~10% high at
    K = 100 on this model, so the ratio must lie in [0.8, 1.3])."""
    from vaelab.evaluation.bounds import iw_loglik_terms

    model = tiny_model()
    x = torch.bernoulli(torch.full((25, 20), 0.3, dtype=torch.float64))
    k = 100
    repeats = torch.stack([iw_loglik(model, x, k=k).mean() for _ in range(400)])
    values, mc_var = iw_loglik_terms(model, x, k=k)
    predicted = summarize({"iw_loglik": values, "iw_loglik_mc_var": mc_var})["iw_loglik_mc_stderr"]
    assert 0.8 < predicted / repeats.std().item() < 1.3
    # per image too: the delta-method variance of each image against its spread over the repeats
    per_image = torch.stack([iw_loglik(model, x, k=k) for _ in range(200)]).std(0)
    ratio = mc_var.sqrt() / per_image
    assert 0.7 < ratio.median().item() < 1.4
