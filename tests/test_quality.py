"""Sample-quality scores: Fréchet distance vs scipy, k-NN precision/recall vs brute force, the shipped MNIST
classifier on real test digits, scores that separate real from bad samples, and `vaelab quality` on digits."""

import json
import math
import shutil

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import torch
from safetensors.torch import save_file

from vaelab.core.errors import VaelabError
from vaelab.evaluation.classifier import DigitCNN, load_classifier, save_classifier, train_classifier
from vaelab.evaluation.quality import digit_coverage, frechet_distance, precision_recall, quality_scores


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula with scipy's matrix square root, as in Heusel et al.'s reference code."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


@pytest.mark.parametrize("dim", [1, 16, 64])
def test_frechet_distance_matches_scipy_on_random_gaussians(dim):
    """Agreement to 1e-6 relative: both are float64; the two matrix square roots differ only by rounding."""
    rng = np.random.default_rng(dim)
    a = rng.normal(size=(600, dim)) @ rng.normal(size=(dim, dim))
    b = rng.normal(size=(500, dim)) @ rng.normal(size=(dim, dim)) * 0.5 + rng.normal(size=dim)
    got = frechet_distance(torch.from_numpy(a), torch.from_numpy(b))
    assert got == pytest.approx(scipy_frechet(a, b), rel=1e-6)
    assert abs(frechet_distance(torch.from_numpy(a), torch.from_numpy(a))) < 1e-6 * np.cov(a, rowvar=False).sum()


def brute_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkäänniemi et al. 2019 by plain loops over scipy distances."""
    def share(points, centers):
        radii = np.sort(scipy.spatial.distance.cdist(centers, centers), axis=1)[:, k]
        return np.mean([(scipy.spatial.distance.cdist(p[None], centers)[0] <= radii).any() for p in points])
    return share(fake, real), share(real, fake)


def test_precision_recall_by_hand_and_against_brute_force():
    real = torch.arange(10.0)[:, None]                       # 0..9 on a line: every k=1 radius is 1
    fake = torch.tensor([[0.5], [20.0]])                     # one inside, one far; fake radii are 19.5
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)
    rng = np.random.default_rng(0)
    r, f = rng.normal(size=(300, 5)), rng.normal(size=(200, 5)) * 1.5 + 0.5
    got = precision_recall(torch.from_numpy(r).float(), torch.from_numpy(f).float(), k=3, chunk=37)
    assert got == pytest.approx(brute_precision_recall(r, f, 3), abs=1.5 / 200)   # at most one borderline point
    with pytest.raises(VaelabError, match="k=3"):
        precision_recall(real[:3], fake, k=3)


def test_digit_coverage_entropy_and_confidence():
    uniform = torch.eye(10).repeat(5, 1) * 0.9 + 0.01        # 50 images, each digit 5 times, confidence 0.91
    cov = digit_coverage(uniform)
    assert cov["digit_entropy_nats"] == pytest.approx(math.log(10))
    assert cov["digit_entropy_fraction"] == pytest.approx(1.0)
    assert cov["mean_confidence"] == pytest.approx(0.91)
    assert cov["digit_counts"] == [5] * 10
    one = digit_coverage(uniform[:1].repeat(50, 1))
    assert one["digit_entropy_nats"] == pytest.approx(0.0, abs=1e-12) and one["digit_counts"][0] == 50


@pytest.fixture(scope="module")
def mnist_test():
    from vaelab.data.binarize import binarize
    from vaelab.data.sources import load_dataset

    splits = load_dataset("mnist")
    gray = torch.from_numpy(splits.x_test)
    binary = binarize(gray, "dynamic", torch.Generator().manual_seed(0))
    return gray, binary, torch.from_numpy(splits.y_test)


@pytest.mark.slow
def test_shipped_classifier_reads_real_test_digits(mnist_test):
    gray, binary, labels = mnist_test
    model = load_classifier()
    assert model.image_shape == (28, 28) and model.info["data"] == "mnist"
    assert model.info["test_accuracy_gray"] >= 0.98 and model.info["test_accuracy_binarized"] >= 0.98
    for x in (gray, binary):
        accuracy = (model(x[:200]).argmax(1) == labels[:200]).double().mean()
        assert accuracy >= 0.98


@pytest.mark.slow
def test_scores_separate_real_from_noise_and_a_repeated_digit(mnist_test):
    _, binary, _ = mnist_test
    model = load_classifier()
    reference, half = binary[:2000], binary[2000:4000]                  # disjoint halves of the test set
    noise = torch.bernoulli(torch.full((2000, 784), 0.5), generator=torch.Generator().manual_seed(1))
    same = reference[:1].expand(2000, -1)                               # one real digit, 2000 times
    real, bad, single = (quality_scores(x, reference, model) for x in (half, noise, same))
    assert real["fid_classifier_features"] < 0.01 * min(bad["fid_classifier_features"],
                                                        single["fid_classifier_features"])
    assert real["precision"] > 0.85 and real["recall"] > 0.85
    assert real["digit_entropy_fraction"] > 0.99 and real["mean_confidence"] > 0.95
    # Noise: no test digit lies near it (recall 0), it is read as few digits, with less confidence, and its FID
    # is huge. Precision does NOT flag it: the shipped classifier maps Bernoulli(1/2) noise onto one tight spot
    # of feature space inside real digits' k-NN balls (measured 0.98 vs 0.89 for real digits), a known weakness
    # of k-NN precision far out of distribution; read it together with FID and recall (README, quality docs).
    assert bad["recall"] < 0.01
    assert bad["digit_entropy_fraction"] < 0.5 and bad["mean_confidence"] < real["mean_confidence"] - 0.1
    assert single["precision"] == 1.0 and single["recall"] < 0.01      # realistic but no diversity
    assert single["digit_entropy_nats"] == pytest.approx(0.0, abs=1e-12)


def test_classifier_files_bad_or_missing_are_clear_errors(tmp_path):
    with pytest.raises(VaelabError, match="not found"):
        load_classifier(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(VaelabError, match="damaged"):
        load_classifier(tmp_path / "junk.safetensors")
    save_file({"w": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    with pytest.raises(VaelabError, match="foreign"):
        load_classifier(tmp_path / "foreign.safetensors")
    model = DigitCNN((8, 8))
    save_classifier(model, tmp_path / "ok.safetensors", {"data": "digits"})
    loaded = load_classifier(tmp_path / "ok.safetensors")
    x = torch.rand(3, 64)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    with pytest.raises(VaelabError, match="--classifier"):
        quality_scores(torch.rand(10, 784), torch.rand(10, 784), loaded)


def test_training_is_seeded():
    first, info = train_classifier("digits", epochs=1, seed=3, quiet=True)
    second, _ = train_classifier("digits", epochs=1, seed=3, quiet=True)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert set(info) >= {"test_accuracy_binarized", "test_accuracy_gray", "seed"}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A 2-epoch Gaussian VAE on digits and a digits classifier (10 epochs, seconds), made through the CLI."""
    from vaelab.cli.main import main

    root = tmp_path_factory.mktemp("quality")
    run, weights = root / "run", root / "digits_cnn.safetensors"
    assert main(["train", "configs/gaussian_vae.yaml", "--data", "digits", "--epochs", "2", "--quiet",
                 "--set", "model.hidden=[32]", "--set", "model.latent_dim=4", "--out", str(run)]) == 0
    assert main(["classifier", "train", "--data", "digits", "--epochs", "10", "--batch-size", "32",
                 "--out", str(weights), "--quiet"]) == 0
    return run, weights


@pytest.mark.slow
def test_cli_quality_on_digits(cli, digits_run):
    run, weights = digits_run
    (run / "eval.json").write_text(json.dumps({"elbo": -1.0}))
    assert load_classifier(weights).info["test_accuracy_gray"] > 0.9
    code, out, err = cli("quality", run, "--n", "200", "--mode", "threshold", "--classifier", weights)
    assert code == 0, err
    scores = json.loads(out)
    assert 0 <= scores["precision"] <= 1 and 0 <= scores["recall"] <= 1 and scores["fid_classifier_features"] > 0
    assert sum(scores["digit_counts"]) == 200 and scores["n_reference"] == 250
    saved = json.loads((run / "eval.json").read_text())
    assert saved["elbo"] == -1.0 and saved["quality_threshold_normal"] == scores
    code, _, err = cli("quality", run, "--n", "200")                     # the shipped MNIST classifier: 28x28
    assert code == 2 and "--classifier" in err
    code, _, err = cli("quality", run, "--n", "200", "--prior", "gmm", "--classifier", weights)
    assert code == 2 and "fit-density" in err


def test_cli_quality_with_a_fitted_mixture_prior(cli, digits_run, tmp_path):
    from vaelab.models import density
    run, weights = tmp_path / "run", digits_run[1]
    shutil.copytree(digits_run[0], run)                                    # the other test needs it without one
    codes = np.random.default_rng(0).normal(size=(300, 4)) * 3.0           # a mixture far wider than N(0, I)
    density.GMMDensity(2, "full", 0).fit(codes).save(run / "density.npz")
    code, out, err = cli("quality", run, "--n", "200", "--prior", "gmm", "--classifier", weights)
    assert code == 0, err
    saved = json.loads((run / "eval.json").read_text())["quality_bernoulli_gmm"]
    assert saved == json.loads(out) and saved["prior"] == "gmm"
