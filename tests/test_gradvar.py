"""Exact enumeration (log p(x), ELBO, K-sample bound, their gradients), the gradient diagnostics, and the CLI
commands `vaelab gradvar` and `vaelab evaluate --exact`, against independent computations."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli

from vaelab.config.schema import load_config
from vaelab.core.errors import VaelabError
from vaelab.estimators.pathwise import build_estimator
from vaelab.evaluation import exact as exact_mod
from vaelab.evaluation import gradvar as gradvar_mod
from vaelab.evaluation.bounds import iw_loglik
from vaelab.evaluation.exact import check_enumerable, exact_elbo, exact_iw_bound, exact_loglik
from vaelab.evaluation.gradvar import diagnose, exact_grad
from vaelab.evaluation.gradvar_run import format_table
from vaelab.models.latents import BernoulliLatent
from vaelab.models.vae import VAE, build_model

P = 16


def tiny_model(dim: int, seed: int = 0, scale: float = 3.0) -> VAE:
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Linear(P, 8), nn.Tanh(), nn.Linear(8, dim))
    dec = nn.Sequential(nn.Linear(dim, 8), nn.Tanh(), nn.Linear(8, P))
    with torch.no_grad():
        for layer in (dec[0], dec[2]):
            layer.weight.mul_(scale)
    return VAE(enc, dec, BernoulliLatent(dim, prior_probs=0.3, learn_prior=True), (4, 4)).double()


def batch(n: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, P), 0.5, dtype=torch.float64), generator=torch.Generator().manual_seed(seed))


def test_exact_loglik_equals_a_brute_force_loop_over_codes_and_pixels():
    model, x = tiny_model(3), batch()
    prior = model.latent.prior_logits.detach()
    expected = []
    for xi in x:
        terms = []
        for bits in itertools.product([0.0, 1.0], repeat=3):
            z = torch.tensor(bits, dtype=torch.float64)
            logits = model.decoder(z).detach()
            log_pz = sum(Bernoulli(logits=prior[i]).log_prob(z[i]).item() for i in range(3))
            log_px = sum(Bernoulli(logits=logits[j]).log_prob(xi[j]).item() for j in range(P))
            terms.append(math.exp(log_pz + log_px))
        expected.append(math.log(math.fsum(terms)))
    torch.testing.assert_close(exact_loglik(model, x), torch.tensor(expected, dtype=torch.float64))


def test_exact_loglik_is_chunk_independent_and_above_the_elbo(monkeypatch):
    model, x = tiny_model(4), batch(7)
    whole = exact_loglik(model, x)
    monkeypatch.setattr(exact_mod, "chunk_rows", lambda device, pixels: 5)     # one code per chunk
    torch.testing.assert_close(exact_loglik(model, x, batch_size=3), whole)
    with torch.no_grad():
        elbo = exact_elbo(model, x)
    assert (whole > elbo).all()                               # log p(x) - ELBO = KL[q || p(z|x)] > 0 here


def test_iw_estimate_approaches_exact_loglik_as_k_grows():
    """Tolerance from the delta method with the exact weight variance: sd_K = sqrt((E_q[w^2] / p(x)^2 - 1) / K)."""
    model, x = tiny_model(4, scale=4.0), batch(6)
    with torch.no_grad():
        log_p = exact_loglik(model, x)
        codes = exact_mod.all_codes(4, torch.float64)[:, None, :].expand(-1, len(x), -1)
        log_joint, log_q = model.log_joint(x, codes), model.posterior(x).log_prob(codes)     # [C, B]
        rel_var = torch.exp(torch.logsumexp(2 * log_joint - log_q, 0) - 2 * log_p) - 1     # Var(w) / p(x)^2
    errors = {}
    for k in (1, 1000):
        est = iw_loglik(model, x, k).double()
        sd = (rel_var / k).sqrt()
        errors[k] = (est - log_p).abs()
        if k == 1000:
            assert (errors[k] <= 5 * sd + sd.square() + 1e-4).all()
    assert errors[1000].mean() < errors[1].mean() / 5


def test_exact_grad_matches_finite_differences(monkeypatch):
    model, x = tiny_model(3), batch(4)
    monkeypatch.setattr(exact_mod, "chunk_rows", lambda device, pixels: 8)     # 2 codes per chunk: accumulation
    params = list(model.parameters())
    grad = exact_grad(model, x, params)
    flat = torch.nn.utils.parameters_to_vector(params).detach()
    numeric = torch.empty_like(flat)
    h = 1e-6
    with torch.no_grad():
        for i in range(len(flat)):
            values = []
            for step in (h, -h):
                shifted = flat.clone()
                shifted[i] += step
                torch.nn.utils.vector_to_parameters(shifted, params)
                values.append(exact_elbo(model, x).mean())
            numeric[i] = (values[0] - values[1]) / (2 * h)
        torch.nn.utils.vector_to_parameters(flat, params)
    torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-7)


def test_exact_iw_bound_is_the_elbo_at_one_sample_and_tightens():
    model, x = tiny_model(3), batch(4)
    with torch.no_grad():
        elbo, log_p = exact_elbo(model, x), exact_loglik(model, x)
        one, two, three = (exact_iw_bound(model, x, k) for k in (1, 2, 3))
    torch.testing.assert_close(one, elbo)
    assert (elbo < two).all() and (two < three).all() and (three < log_p).all()


def test_enumeration_refuses_what_it_cannot_do():
    gaussian = build_model(load_config("configs/gaussian_vae.yaml").model, 784, (28, 28))
    with pytest.raises(VaelabError, match="Bernoulli latent"):
        check_enumerable(gaussian)
    with pytest.raises(VaelabError, match="2\\^21"):
        check_enumerable(tiny_model(21))
    with pytest.raises(VaelabError, match="tuples"):
        exact_iw_bound(tiny_model(3), batch(2), num_samples=8)


def test_diagnose_exact_and_reference_targets(monkeypatch):
    model, x = tiny_model(3), batch(4)
    ests = {n: build_estimator(n, {}, model).double() for n in ("sfe", "disarm", "gumbel", "vimco")}
    result = diagnose(ests, model, x, draws=300)
    rows = {r["estimator"]: r for r in result["rows"]}
    assert result["reference"].startswith("exact")
    for name in ("sfe", "disarm", "vimco"):          # unbiased: bias within noise
        assert rows[name]["bias_norm"] < 4 * rows[name]["bias_noise_floor"]
    assert rows["gumbel"]["bias_norm"] > 4 * rows["gumbel"]["bias_noise_floor"]
    assert rows["vimco"]["target"] == "iw bound, K=4"
    assert rows["disarm"]["variance"] < rows["sfe"]["variance"]
    assert rows["sfe"]["mse"] == pytest.approx(rows["sfe"]["bias_norm"] ** 2 + rows["sfe"]["variance"])
    assert "disarm" in format_table(result)

    monkeypatch.setattr(gradvar_mod, "EXACT_MAX_DIM", 2)      # pretend 3 bits are too many to enumerate
    result = diagnose({"disarm": ests["disarm"], "vimco": ests["vimco"]}, model, x, draws=100,
                      reference_draws=10, reference_samples=200)
    assert result["reference"].startswith("reference") and result["reference_noise"] > 0
    row, vimco = result["rows"]
    floor = math.hypot(row["bias_noise_floor"], result["reference_noise"])
    assert row["bias_norm"] < 4 * floor
    assert vimco["bias_norm"] is None                       # no independent target for the K-sample bound


TINY = """name: tiny_bernoulli
data: {source: digits}
model: {latent: bernoulli, latent_dim: 4, hidden: [16]}
estimator: {name: sfe-avg}
train: {batch_size: 16}
"""


def test_cli_gradvar_on_a_config_writes_table_json_and_png(cli, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "gv"
    code, stdout, err = cli("gradvar", cfg, "--estimators", "sfe,sfe-avg,disarm,gumbel", "--draws", 50,
                            "--warmup", 5, "--out", out)
    assert code == 0, err
    assert "exact: enumeration of all 2^4 codes" in stdout and "gumbel" in stdout
    result = json.loads((out / "gradvar.json").read_text())
    assert [r["estimator"] for r in result["rows"]] == ["sfe", "sfe-avg", "disarm", "gumbel"]
    assert result["draws"] == 50 and result["batch"] == 16 and result["warmup_steps"] == 5
    assert (out / "gradvar.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = cli("gradvar", cfg, "--estimators", "sfe,nope", "--draws", 5, "--out", out)
    assert code == 2 and "nope" in err


@pytest.mark.slow
def test_cli_train_bernoulli_then_evaluate_exact_and_gradvar_on_the_run(cli, tmp_path):
    run = tmp_path / "run"
    code, _, err = cli("train", "configs/bernoulli_vae.yaml", "--data", "digits", "--epochs", 1, "--quiet",
                       "--set", "train.steps_per_epoch=3", "--set", "model.latent_dim=4", "--out", run)
    assert code == 0, err
    code, _, err = cli("evaluate", run, "--exact", "--iw-samples", 50, "--quiet", "--device", "cpu")
    assert code == 0, err
    metrics = json.loads((run / "eval.json").read_text())
    assert metrics["exact_loglik"] > metrics["elbo"]
    assert abs(metrics["iw_loglik"] - metrics["exact_loglik"]) < 0.5   # 16 codes, 50 samples: close
    code, stdout, err = cli("gradvar", run, "--estimators", "sfe-avg,disarm", "--draws", 20, "--device", "cpu")
    assert code == 0, err
    result = json.loads((run / "gradvar" / "gradvar.json").read_text())
    assert result["config"] == "bernoulli_vae-digits" and len(result["rows"]) == 2   # the run's name (train --data)
