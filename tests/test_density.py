"""Tests for vaelab.models.density and vaelab.evaluation.ae_likelihood: the ex-post Gaussian mixture (sklearn EM,
torch export, safe storage), the AE's importance-sampled log-likelihood against grid quadrature, the latent
figures, and the CLI end to end."""

from __future__ import annotations

import json
import math

import matplotlib.image
import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.mixture import GaussianMixture
from torch import nn

from vaelab.cli.main import main
from vaelab.config.schema import ModelConfig
from vaelab.core.errors import VaelabError
from vaelab.evaluation.ae_likelihood import (
    PROPOSAL_INFLATIONS,
    DefensiveMixture,
    WithPrior,
    fit_proposal,
    laplace_precision,
    laplace_proposal,
)
from vaelab.evaluation.bounds import iw_loglik
from vaelab.models import density as density_mod
from vaelab.models.density import COVARIANCE_TYPES, GMMDensity, encode, select_components
from vaelab.models.latents import DeterministicLatent
from vaelab.models.vae import VAE
from vaelab.viz.latent_figures import plot_codes, plot_codes_vs_gmm

TRUE_WEIGHTS = np.array([0.5, 0.3, 0.2])
TRUE_MEANS = np.array([[-4.0, 0.0], [3.0, 3.0], [2.0, -4.0]])
TRUE_COVS = np.array([[[1.0, 0.5], [0.5, 1.0]], [[0.5, 0.0], [0.0, 2.0]], [[1.5, -0.6], [-0.6, 0.8]]])


def mixture_data(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n draws [n, 2] from the known 3-component mixture, and their component labels."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n, p=TRUE_WEIGHTS)
    z = np.stack([rng.multivariate_normal(TRUE_MEANS[k], TRUE_COVS[k]) for k in labels])
    return z, labels


@pytest.fixture(scope="module")
def codes() -> np.ndarray:
    return mixture_data()[0]


def test_recovers_known_mixture(codes):
    fit = GMMDensity(3, "full", seed=0).fit(codes)
    dist = np.linalg.norm(fit.means_[:, None] - TRUE_MEANS[None], axis=-1)   # [K fitted, K true]
    rows, cols = linear_sum_assignment(dist)
    # standard error of a component mean is about sqrt(1.5 / (0.2 * 3000)) = 0.05; allow ~4 of them
    assert dist[rows, cols].max() < 0.2
    np.testing.assert_allclose(fit.weights_[rows], TRUE_WEIGHTS[cols], atol=0.04)   # SE ~ 0.009
    np.testing.assert_allclose(fit.covariances_[rows], TRUE_COVS[cols], atol=0.3)
    assert fit.converged_


def test_bic_selects_the_true_number_of_components(codes):
    best, curve = select_components(codes, candidates=range(1, 7))
    assert best == 3 and sorted(curve) == [1, 2, 3, 4, 5, 6]
    assert curve[3] == min(curve.values())


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_torch_log_prob_matches_sklearn(codes, covariance_type):
    fit = GMMDensity(4, covariance_type, seed=1).fit(codes)
    reference = GaussianMixture(4, covariance_type=covariance_type, max_iter=500, random_state=1).fit(codes)
    z = np.random.default_rng(2).normal(0, 4, size=(200, 2))
    np.testing.assert_allclose(fit.score_samples(z), reference.score_samples(z), rtol=1e-12)   # rebuilt scorer
    log_p64 = fit.to_torch(dtype=torch.float64).log_prob(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(log_p64, fit.score_samples(z), rtol=1e-10)
    log_p32 = fit.to_torch().log_prob(torch.from_numpy(z).float()).numpy()
    np.testing.assert_allclose(log_p32, fit.score_samples(z), rtol=1e-4, atol=1e-4)


def test_samples_have_the_mixture_mean(codes):
    fit = GMMDensity(3, "diag", seed=0).fit(codes)
    mean = fit.weights_ @ fit.means_
    for draws in (fit.sample(20000, seed=3), fit.to_torch(dtype=torch.float64).sample((20000,)).numpy()):
        se = draws.std(0) / math.sqrt(len(draws))
        assert (np.abs(draws.mean(0) - mean) < 4 * se).all()
    first, again = fit.sample(500, seed=4), fit.sample(500, seed=4)
    np.testing.assert_array_equal(first, again)
    assert len(np.unique(fit.mixture_.predict(first[:50]))) > 1   # shuffled, not grouped by component


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_save_load_round_trip_is_identical(codes, covariance_type, tmp_path):
    fit = GMMDensity(3, covariance_type, seed=5).fit(codes)
    back = GMMDensity.load(fit.save(tmp_path / "density.npz"))
    assert back.covariance_type == covariance_type and back.seed == 5
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_array_equal(getattr(back, name), getattr(fit, name))
    np.testing.assert_array_equal(back.score_samples(codes), fit.score_samples(codes))
    np.testing.assert_array_equal(back.sample(100), fit.sample(100))
    assert not (tmp_path / "density.npz.tmp").exists()


def damage(path, how: str) -> None:
    """Break a stored density in one of several ways."""
    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "random":
        path.write_bytes(np.random.default_rng(0).bytes(len(raw)))
    elif how == "missing_key":
        with np.load(path) as f:
            np.savez(path, **{k: f[k] for k in f.files if k != "covariances"})
    elif how == "foreign_format":
        with np.load(path) as f:
            np.savez(path, **({k: f[k] for k in f.files} | {"format": np.array("something-else")}))
    elif how == "pickled":
        with np.load(path) as f:
            np.savez(path, **({k: f[k] for k in f.files} | {"weights": np.array([{"a": 1}], dtype=object)}))
    elif how == "bad_shape":
        with np.load(path) as f:
            np.savez(path, **({k: f[k] for k in f.files} | {"covariances": np.ones((2, 2))}))


@pytest.mark.parametrize("how", ["truncated", "random", "missing_key", "foreign_format", "pickled", "bad_shape"])
def test_damaged_file_is_a_clear_error(codes, tmp_path, how):
    path = GMMDensity(2, "full").fit(codes).save(tmp_path / "density.npz")
    damage(path, how)
    with pytest.raises(VaelabError, match="fit-density"):
        GMMDensity.load(path)


def test_missing_file_and_bad_input_are_clear_errors(codes, tmp_path):
    with pytest.raises(VaelabError, match="run `vaelab fit-density"):
        GMMDensity.load(tmp_path / "density.npz")
    with pytest.raises(VaelabError, match="fewer components"):
        GMMDensity(20).fit(codes[:5])
    with pytest.raises(VaelabError, match="NaN"):
        GMMDensity(2).fit(np.full((10, 2), np.nan))
    with pytest.raises(VaelabError, match="choose one of"):
        GMMDensity(2, "banana")


# ----- one likelihood for all models: importance sampling vs quadrature ---------------------------------------


def small_autoencoder(prior, seed: int = 0) -> VAE:
    """A 16-pixel autoencoder with a 2-D code, in float64: a random linear decoder (so the posterior is close to
    unimodal) and a linear encoder fitted by least squares to (x, z) pairs drawn from the model, the role an
    AE's trained encoder plays: its code lands near, not on, the posterior mode."""
    torch.manual_seed(seed)
    decoder, encoder = nn.Linear(2, 16).double(), nn.Linear(16, 2).double()
    with torch.no_grad():
        decoder.weight.normal_(0.0, 2.0)
        decoder.bias.normal_(0.0, 1.0)
        model = VAE(encoder, decoder, DeterministicLatent(2), (4, 4)).eval()
        z = prior.sample((4000,))                                                    # [N, 2]
        x = torch.bernoulli(model.decode_probs(z))                                   # [N, 16]
        solution = torch.linalg.lstsq(torch.cat([x, torch.ones_like(x[:, :1])], 1), z).solution   # [17, 2]
        encoder.weight.copy_(solution[:16].T)
        encoder.bias.copy_(solution[16])
    return model


@torch.no_grad()
def quadrature_loglik(model: VAE, x: torch.Tensor, prior, n: int = 400, half_width: float = 9.0) -> torch.Tensor:
    """log p(x) = log sum_grid p(z) p(x|z) dA on an n x n grid over [-w, w]^2 (midpoint rule): [B]."""
    edges = torch.linspace(-half_width, half_width, n + 1, dtype=torch.float64)
    mids = (edges[1:] + edges[:-1]) / 2
    z = torch.cartesian_prod(mids, mids)[:, None]                       # [G, 1, 2]
    log_joint = prior.log_prob(z) + model.likelihood(z).log_prob(x)     # [G, B]
    return torch.logsumexp(log_joint, 0) + 2 * math.log(2 * half_width / n)


@pytest.fixture(scope="module")
def ae_with_gmm(codes):
    """(AE whose prior is a 3-component GMM with its mass inside [-6, 6]^2, 8 test images, 64 held-out images)."""
    prior = GMMDensity(3, "full", seed=0).fit(codes / 2.5).to_torch(dtype=torch.float64)
    model = WithPrior(small_autoencoder(prior), prior)
    torch.manual_seed(1)
    with torch.no_grad():
        x = torch.bernoulli(model.decode_probs(prior.sample((72,))))                 # [72, 16]
    return model, x[:8], x[8:]


def test_quadrature_reference_has_converged(ae_with_gmm):
    model, x, _ = ae_with_gmm
    fine, coarse = quadrature_loglik(model, x, model.prior(), 400), quadrature_loglik(model, x, model.prior(), 200)
    torch.testing.assert_close(fine, coarse, atol=1e-6, rtol=0)
    wider = quadrature_loglik(model, x, model.prior(), 300, half_width=13.5)
    torch.testing.assert_close(fine, wider, atol=1e-6, rtol=0)


def test_importance_sampling_matches_quadrature(ae_with_gmm):
    model, x, x_fit = ae_with_gmm
    exact = quadrature_loglik(model, x, model.prior())                                  # [8]
    proposal, inflation, curve = fit_proposal(model, x_fit, k=64)
    assert inflation in PROPOSAL_INFLATIONS and curve[inflation] == max(curve.values())
    torch.manual_seed(0)
    runs = torch.stack([iw_loglik(model, x, 5000, proposal=proposal) for _ in range(10)])   # [10, 8]
    mean, se = runs.mean(0), runs.std(0) / math.sqrt(len(runs))   # se ~ 0.008 nats
    assert (mean - exact).abs().max() < 0.05                       # stated tolerance: 0.05 nats, 10 x K = 5000
    assert ((mean - exact).abs() < 4 * se + 1e-3).all()            # and within 4 standard errors


def test_importance_sampling_does_not_exceed_log_px_on_average(ae_with_gmm):
    model, x, _ = ae_with_gmm
    exact = quadrature_loglik(model, x, model.prior())                                  # [8]
    proposal = laplace_proposal(model, inflation=1.0)
    torch.manual_seed(1)
    gap = torch.stack([iw_loglik(model, x, 5, proposal=proposal) - exact for _ in range(200)])   # [200, 8]
    se = gap.std() / math.sqrt(gap.numel())
    assert gap.mean() <= 3 * se              # Jensen: E[log mean w] <= log p(x)
    assert gap.mean() < -se                  # and with K = 5 the bias is visible


def test_defensive_weights_are_bounded(ae_with_gmm):
    model, x, _ = ae_with_gmm
    alpha = 0.1
    q = laplace_proposal(model, inflation=0.05, alpha=alpha)(x)            # a far too narrow local part
    z = q.sample((2000,))                                                   # [S, B, 2]
    log_w = model.log_joint(x, z) - q.log_prob(z)                           # [S, B]
    assert log_w.max() <= -math.log(alpha) + 1e-9


def test_defensive_mixture_density_and_draws(codes):
    from scipy.stats import multivariate_normal

    fit = GMMDensity(3, "full").fit(codes)
    loc, cov = torch.tensor([[1.0, -2.0]], dtype=torch.float64), torch.tensor([[0.3, 0.1], [0.1, 0.2]])
    q = DefensiveMixture(torch.distributions.MultivariateNormal(loc, cov.double()), fit.to_torch(dtype=torch.float64),
                         alpha=0.25)
    z = np.random.default_rng(0).normal(0, 3, size=(50, 2))
    expected = np.logaddexp(np.log(0.75) + multivariate_normal(loc[0].numpy(), cov.numpy()).logpdf(z),
                            np.log(0.25) + fit.score_samples(z))
    np.testing.assert_allclose(q.log_prob(torch.from_numpy(z)[:, None]).squeeze(1).numpy(), expected, rtol=1e-10)
    torch.manual_seed(0)
    draws = q.sample((40000,))[:, 0].numpy()                                # [S, 2]
    mean = 0.75 * loc[0].numpy() + 0.25 * fit.weights_ @ fit.means_
    assert (np.abs(draws.mean(0) - mean) < 4 * draws.std(0) / math.sqrt(len(draws))).all()
    with pytest.raises(VaelabError, match="alpha"):
        DefensiveMixture(q.local, q.prior, alpha=1.0)


def test_laplace_precision_is_the_exact_hessian_for_a_linear_decoder(codes):
    prior = GMMDensity(1, "full").fit(codes).to_torch(dtype=torch.float64)    # one Gaussian: its precision is exact
    model = WithPrior(small_autoencoder(prior), prior)                          # linear decoder: GGN is exact
    x = torch.bernoulli(torch.full((1, 16), 0.5, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    z = torch.tensor([[0.3, -0.7]], dtype=torch.float64)
    exact = torch.autograd.functional.hessian(lambda v: -model.log_joint(x, v[None]).sum(), z[0])
    torch.testing.assert_close(laplace_precision(model, z)[0], exact, rtol=1e-10, atol=1e-12)


def test_with_prior_shares_the_networks(ae_with_gmm):
    model, _, _ = ae_with_gmm
    plain = small_autoencoder(model.prior())
    wrapped = WithPrior(plain, model.prior())
    assert wrapped.decoder is plain.decoder and wrapped.encoder is plain.encoder
    assert wrapped.prior() is model.prior()
    with pytest.raises(VaelabError, match="fit-density"):
        plain.prior()


def test_discrete_codes_are_refused():
    from vaelab.models.vae import build_model

    model = build_model(ModelConfig(latent="bernoulli", latent_dim=3, hidden=[8]), 16, (4, 4))
    with pytest.raises(VaelabError, match="continuous"):
        encode(model, torch.zeros(4, 16))


# ----- figures and CLI --------------------------------------------------------------------------------------------


def non_blank(path) -> bool:
    image = matplotlib.image.imread(path)
    return image.ndim == 3 and image[..., :3].std() > 0.05


@pytest.mark.parametrize("dim", [2, 5])
def test_figures_are_written_and_not_blank(tmp_path, dim):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 2000)
    codes = rng.normal(size=(2000, dim)) + labels[:, None]
    samples = GMMDensity(3, "diag").fit(codes).sample(2000)
    assert non_blank(plot_codes(codes, labels, tmp_path / "codes.png"))
    assert non_blank(plot_codes_vs_gmm(codes, samples, tmp_path / "vs.png"))
    with pytest.raises(VaelabError, match="D >= 2"):
        plot_codes(codes[:, :1], labels, tmp_path / "bad.png")
    with pytest.raises(VaelabError, match="one digit label per code"):
        plot_codes(codes, labels[:-1], tmp_path / "bad.png")


@pytest.mark.slow
def test_cli_end_to_end_on_digits(tmp_path, monkeypatch, capsys):
    run = tmp_path / "ae"
    common = ["--device", "cpu"]
    assert main(["train", "configs/ae_gmm.yaml", "--data", "digits", "--epochs", "1", "--quiet",
                 "--set", "train.steps_per_epoch=3", "--out", str(run), *common]) == 0
    assert main(["sample", str(run), *common]) == 2                       # no density yet
    assert "fit-density" in capsys.readouterr().err
    assert main(["fit-density", str(run), "--components", "3", *common]) == 0
    summary = json.loads(capsys.readouterr().out.split("\nwrote")[0])
    assert summary["n_components"] == 3 and summary["n_codes"] == 1297
    assert GMMDensity.load(run / "density.npz").n_components == 3
    for name in ("latent_codes.png", "latent_codes_vs_gmm.png"):
        assert non_blank(run / "fig" / name)
    assert main(["sample", str(run), "--prior", "gmm", "--n", "16", *common]) == 0
    assert (run / "fig" / "samples_gmm_bernoulli.png").is_file()
    assert main(["sample", str(run), "--prior", "normal", *common]) == 2
    assert main(["evaluate", str(run), "--iw-samples", "50", "--quiet", *common]) == 0
    metrics = json.loads((run / "eval.json").read_text())
    assert metrics["elbo"] is None and metrics["kl"] is None and metrics["n_examples"] == 250
    assert math.isfinite(metrics["iw_loglik"]) and metrics["iw_loglik"] < 0 and metrics["proposal"] == "laplace+gmm"

    monkeypatch.setattr(density_mod, "AUTO_COMPONENTS", (1, 2, 3))
    assert main(["fit-density", str(run), "--components", "auto", "--covariance", "diag", "--no-figures",
                 *common]) == 0
    bic = json.loads((run / "bic.json").read_text())
    assert sorted(bic["bic"]) == ["1", "2", "3"] and bic["best_k"] == int(min(bic["bic"], key=bic["bic"].get))
    assert main(["fit-density", str(run), "--components", "many", *common]) == 2


@pytest.mark.slow
def test_cli_gmm_prior_for_a_vae(tmp_path):
    run = tmp_path / "vae"
    common = ["--device", "cpu"]
    assert main(["train", "configs/gaussian_vae.yaml", "--data", "digits", "--epochs", "1", "--quiet",
                 "--set", "train.steps_per_epoch=2", "--set", "model.latent_dim=4", "--out", str(run), *common]) == 0
    assert main(["fit-density", str(run), "--components", "2", *common]) == 0
    assert non_blank(run / "fig" / "latent_codes_vs_gmm.png")
    assert main(["sample", str(run), "--prior", "gmm", "--n", "9", *common]) == 0
    assert main(["sample", str(run), "--n", "9", *common]) == 0
    assert (run / "fig" / "samples_gmm_bernoulli.png").is_file() and (run / "fig" / "samples_bernoulli.png").is_file()


def test_covariance_cholesky_inverts_the_precision_and_survives_rounding():
    from vaelab.evaluation.ae_likelihood import covariance_cholesky

    torch.manual_seed(0)
    a = torch.randn(5, 6, 6, dtype=torch.float64)
    precision = a @ a.transpose(-1, -2) + 0.1 * torch.eye(6, dtype=torch.float64)
    chol = covariance_cholesky(precision)
    torch.testing.assert_close(chol @ chol.transpose(-1, -2), torch.linalg.inv(precision))
    # a float32 sum that is a hair off positive definite (one eigenvalue ~ -1e-7) still gives a valid factor
    v = torch.randn(6, dtype=torch.float64)
    nearly = (v[:, None] * v[None, :] * 1e3 - 1e-7 * torch.eye(6, dtype=torch.float64)).float()
    chol = covariance_cholesky(nearly[None])
    assert torch.isfinite(chol).all() and (torch.diagonal(chol, dim1=-2, dim2=-1) > 0).all()
