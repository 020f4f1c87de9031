"""The Python API: fit/load/Run give the CLI's numbers; presets resolve from any directory and from a wheel;
arrays as data; encode, reconstruct and log_prob against the networks and exact enumeration; argument checks."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import vaelab
from vaelab.api import overrides_from
from vaelab.core.atomic import atomic_write_text
from vaelab.core.errors import VaelabError

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"data": "digits", "epochs": 2, "seed": 3, "model": {"hidden": [16], "latent_dim": 4}}


def same_weights(a: Path, b: Path) -> bool:
    x, y = (load_file(p / "checkpoint" / "model.safetensors") for p in (a, b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_overrides_from_keywords():
    assert overrides_from({"estimator": "disarm", "epochs": 3, "train": {"lr": 0.001, "batch_size": 8},
                           "model.hidden": [8, 4]}) == [
        "estimator.name=disarm", "train.epochs=3", "train.lr=0.001", "train.batch_size=8", "model.hidden=[8, 4]"]


def test_fit_to_a_directory_equals_the_cli_run(tmp_path, cli):
    run = vaelab.fit("gaussian_vae", out=tmp_path / "api", **SMALL)
    assert cli("train", "gaussian_vae", "--data", "digits", "--epochs", 2, "--seed", 3, "--set", "model.hidden=[16]",
               "--set", "model.latent_dim=4", "--out", tmp_path / "cli", "--quiet")[0] == 0
    assert same_weights(tmp_path / "api", tmp_path / "cli")
    assert [r["epoch"] for r in run.history] == [1, 2] and run.cfg.train.seed == 3


def test_in_memory_run_evaluates_samples_saves_and_closes(tmp_path):
    run = vaelab.fit("bernoulli_vae", estimator="disarm", **SMALL)
    scores = run.evaluate(iw_samples=20)
    assert scores["iw_samples"] == 20 and scores["iw_loglik"] >= scores["elbo"] - 3 * scores["elbo_stderr"]
    images = run.sample(5, mode="threshold")
    assert images.shape == (5, 64) and set(images.unique().tolist()) <= {0.0, 1.0}
    saved = run.save(tmp_path / "kept")
    again = vaelab.load(saved, "cpu")
    assert same_weights(saved, run.path) and again.cfg.estimator.name == "disarm"
    with pytest.raises(VaelabError, match="exists: save to a new path"):
        run.save(saved)
    temp = run.path
    run.close()
    assert not temp.exists() and saved.is_dir()


def test_fit_refuses_bad_overrides():
    with pytest.raises(VaelabError, match="unknown config key"):
        vaelab.fit("gaussian_vae", trian={"epochs": 1})
    with pytest.raises(VaelabError, match="did you mean 'gaussian_vae'"):
        vaelab.fit("gausian_vae", epochs=1)


@pytest.mark.parametrize("script", sorted((ROOT / "examples").glob("*.py")), ids=lambda p: p.name)
def test_examples_run_from_any_directory(script, tmp_path):
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "test log p(x) >=" in proc.stdout


@pytest.mark.slow
def test_the_wheel_ships_the_presets_and_trains_from_an_empty_directory(tmp_path):
    """Build the wheel, install it alone into a folder first on the path, and train a preset by name from an empty
    directory: nothing is read from the source tree."""
    wheels, target, empty = tmp_path / "wheels", tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(wheels), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("vaelab-*.whl")
    with zipfile.ZipFile(wheel) as zf:           # the licence and the typing marker ship in the wheel
        names = zf.namelist()
        assert "vaelab/py.typed" in names
        (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert zf.read(license_file) == (ROOT / "LICENSE").read_bytes()
        assert "License-File: LICENSE" in zf.read(license_file.replace("licenses/LICENSE", "METADATA")).decode()
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    env = {"PYTHONPATH": str(target), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    where = subprocess.run([sys.executable, "-c", "import vaelab; print(vaelab.__file__)"], cwd=empty, env=env,
                           capture_output=True, text=True)
    assert where.stdout.startswith(str(target)), where.stdout + where.stderr
    train = subprocess.run([sys.executable, "-m", "vaelab", "train", "literature/disarm_linear", "--data", "digits",
                            "--epochs", "1", "--set", "train.steps_per_epoch=2", "--out", "run", "--quiet"],
                           cwd=empty, env=env, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr
    assert (empty / "run" / "checkpoint" / "model.safetensors").is_file()
    version = subprocess.run([sys.executable, "-m", "vaelab", "--version"], cwd=empty, env=env, capture_output=True,
                             text=True)
    assert version.stdout.strip() == f"vaelab {vaelab.__version__}"


# ---------------------------------------------------------------------------------------------------------------
# Arrays as data, the Run's tensor methods, argument checks, file modes (issue 28)

TINY = {"epochs": 1, "seed": 0, "model": {"hidden": [16], "latent_dim": 3}, "train": {"batch_size": 64}}


def binary_images(n: int, p: int = 64, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, p)) < 0.3).astype(np.float32)


@pytest.fixture(scope="module")
def array_run():
    """A Gaussian VAE trained on (x_train, x_test) arrays with labels, in a temporary directory."""
    x_train, x_test = binary_images(120), binary_images(30, seed=1)
    data = {"x_train": x_train, "x_test": torch.from_numpy(x_test),
            "y_train": np.arange(120) % 3, "y_test": np.arange(30) % 3}
    with vaelab.fit("gaussian_vae", data=data, **TINY) as run:
        yield run, x_train, x_test


@pytest.fixture(scope="module")
def bits_run():
    """A Bernoulli VAE with 3 latent bits (8 codes: log p(x) is enumerable by hand) on digits."""
    with vaelab.fit("bernoulli_vae", data="digits", estimator="disarm", **TINY) as run:
        yield run


def test_array_data_is_stored_in_the_run_and_round_trips(array_run):
    run, x_train, x_test = array_run
    stored = run.path / "data.npz"
    assert run.cfg.data.source == str(stored.resolve()) and Path(run.cfg.data.source).is_absolute()
    with np.load(stored) as z:
        assert np.array_equal(z["x_train"], x_train) and np.array_equal(z["x_test"], x_test)
        assert np.array_equal(z["y_test"], np.arange(30) % 3)
    assert torch.equal(run.data.x_test.cpu(), torch.from_numpy(x_test))   # binary data: the fixed draw is itself
    assert len(run.data.x_train) + len(run.data.x_valid) == 120          # valid: the last tenth of x_train
    assert torch.equal(run.data.x_valid.cpu(), torch.from_numpy(x_train[-12:]))
    assert run.cfg.name == "gaussian_vae-data" and "arrays given to vaelab.fit" in run.cfg.description


def test_a_lone_array_holds_out_its_last_tenth_as_the_test_set(tmp_path):
    x = binary_images(50)
    run = vaelab.fit("gaussian_vae", tmp_path / "run", data=torch.from_numpy(x), **TINY)
    assert torch.equal(run.data.x_test.cpu(), torch.from_numpy(x[-5:]))
    assert (tmp_path / "run" / "data.npz").is_file() and run.cfg.data.source == str(tmp_path / "run" / "data.npz")


@pytest.mark.parametrize(("data", "error", "message"), [
    (np.full((20, 64), 2.0), ValueError, r"^data: x_train has values in \[2.0, 2.0\]: scale images to \[0, 1\]"),
    (np.zeros((4, 2, 8, 8)), ValueError, r"^data: x_train has shape \(4, 2, 8, 8\)"),
    ((np.zeros((20, 64)), np.zeros((5, 49))), ValueError, "differ in size"),
    ({"x_train": np.zeros((20, 64)), "x_tst": np.zeros((5, 64))}, ValueError, "did you mean 'x_test'"),
    ({"x_train": np.zeros((20, 64)), "x_test": np.zeros((5, 64)), "y_train": np.zeros(20, int)}, ValueError,
     r"labels \['y_train'\] but not \['y_test'\]"),
    ([[0.0, 1.0]], TypeError, "data is a list: give a numpy array or a torch tensor"),
    ((np.zeros((20, 64)),), ValueError, "data is a tuple of 1"),
])
def test_bad_arrays_are_one_line_errors_and_write_nothing(tmp_path, data, error, message):
    with pytest.raises(error, match=message) as info:
        vaelab.fit("gaussian_vae", tmp_path / "run", data=data, **TINY)
    assert isinstance(info.value, VaelabError) and "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


def test_paths_and_numpy_scalars_are_accepted(tmp_path):
    preset = ROOT / "configs" / "gaussian_vae.yaml"
    run = vaelab.fit(preset, tmp_path / "run", data="digits", epochs=np.int64(1), seed=np.int32(2),
                     lr=np.float32(0.002), model={"hidden": [np.int64(8)], "latent_dim": 2})
    assert run.cfg.train.epochs == 1 and type(run.cfg.train.epochs) is int and run.cfg.train.seed == 2
    assert run.cfg.train.lr == pytest.approx(0.002) and run.cfg.model.hidden == [8]
    assert (tmp_path / "run" / "checkpoint").is_dir()


def test_encode_and_reconstruct_match_the_networks(array_run):
    run, _, x_test = array_run
    x = torch.from_numpy(x_test)
    with torch.no_grad():
        mu = run.model.encoder(x)[:, :3]                      # the Gaussian head is [mu | log sigma^2]
        probs = torch.sigmoid(run.model.decoder(mu))          # [N, P]
    assert torch.allclose(run.encode(x_test), mu, atol=1e-6)
    assert torch.allclose(run.encode(x.reshape(30, 8, 8)), mu, atol=1e-6)  # [N, H, W] images too
    assert torch.allclose(run.reconstruct(x), probs, atol=1e-6)
    assert torch.equal(run.reconstruct(x, mode="threshold"), (probs > 0.5).float())


def exact_terms(run, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(x) and the ELBO per image [N] by enumerating the 8 codes of 3 bits, from the networks' logits alone."""
    codes = torch.tensor([[(c >> i) & 1 for i in range(3)] for c in range(8)], dtype=torch.float32)   # [8, 3]
    with torch.no_grad():
        h = run.model.encoder(x)                                                          # [N, 3] logits
        log_q = (codes[:, None] * F.logsigmoid(h) + (1 - codes[:, None]) * F.logsigmoid(-h)).sum(-1)   # [8, N]
        logits = run.model.decoder(codes)                                                 # [8, P]
        log_px_z = (x[None] * F.logsigmoid(logits[:, None]) + (1 - x[None]) * F.logsigmoid(-logits[:, None]))
        log_joint = 3 * math.log(0.5) + log_px_z.sum(-1)                                  # [8, N]
    return torch.logsumexp(log_joint, 0), (log_q.exp() * (log_joint - log_q)).sum(0)


def test_log_prob_against_exact_enumeration(bits_run):
    x = bits_run.data.x_test[:16]
    exact, elbo = exact_terms(bits_run, x)
    tight = bits_run.log_prob(x, k=4000)
    assert tight.shape == (16,) and torch.allclose(tight, exact, atol=0.05)
    repeats = 400                                      # k = 1: one importance weight, whose mean is the ELBO
    one = bits_run.log_prob(x.repeat(repeats, 1), k=1).reshape(repeats, 16)
    stderr = one.std(0) / math.sqrt(repeats)
    assert ((one.mean(0) - elbo).abs() < 5 * stderr + 1e-4).all()
    assert (elbo < exact).all()


def test_run_methods_refuse_bad_arguments_in_one_line(array_run, tmp_path):
    run, _, x_test = array_run
    cases = [(lambda: run.sample(0), ValueError, "n 0: give a number from 1 to 10,000"),
             (lambda: run.sample(10**9), ValueError, "the limit"),
             (lambda: run.sample(2.5), TypeError, "n = 2.5 is a float"),
             (lambda: run.sample(True), TypeError, "is a bool"),
             (lambda: run.sample(4, seed=-1), ValueError, "seed -1"),
             (lambda: run.sample(4, seed=2**63), ValueError, "seed 9223372036854775808"),
             (lambda: run.sample(4, mode="thresold"), ValueError, "did you mean 'threshold'"),
             (lambda: run.sample(4, prior="gaussian"), ValueError, "prior = 'gaussian' is not known"),
             (lambda: run.log_prob(x_test, k=0), ValueError, "k 0"),
             (lambda: run.log_prob(x_test * 0.5 + 0.25), ValueError, "not binary"),
             (lambda: run.encode(x_test[:, :10]), ValueError, r"shape \(30, 10\): give images \[N, 64\]"),
             (lambda: run.encode([1, 0]), TypeError, "x is a list"),
             (lambda: run.save_grid(tmp_path / "grid.txt", 4), ValueError, "unknown image extension"),
             (lambda: run.save_grid(tmp_path, 4), ValueError, "is a directory"),
             (lambda: run.evaluate(iw_samples=-1), ValueError, "iw_samples -1")]
    for call, error, message in cases:
        with pytest.raises(error, match=message) as info:
            call()
        assert isinstance(info.value, VaelabError) and "\n" not in str(info.value)
    assert run.sample(np.int64(3), seed=np.uint8(1)).shape == (3, 64)


def test_save_grid_writes_the_samples_as_an_image(array_run, tmp_path):
    run, _, _ = array_run
    path = run.save_grid(tmp_path / "grid.png", 9, mode="threshold", seed=4)
    assert path == tmp_path / "grid.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) >= 3 * 8 and image[..., :3].std() > 0.05


def test_with_block_removes_the_temporary_run_and_a_saved_copy_opens_in_the_cli(tmp_path, cli):
    with vaelab.fit("gaussian_vae", data=(binary_images(60), binary_images(10, seed=1)), **TINY) as run:
        temp = run.path
        saved = run.save(tmp_path / "kept")
        codes = run.encode(run.data.x_test)
    assert not temp.exists() and (saved / "data.npz").is_file()
    again = vaelab.load(saved, "cpu")
    assert again.cfg.data.source == str((saved / "data.npz").resolve())
    assert torch.allclose(again.encode(again.data.x_test), codes)
    code, out, err = cli("evaluate", saved, "--iw-samples", 5, "--quiet")
    assert code == 0, err
    assert json.loads(out)["n_examples"] == 10


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        run = vaelab.fit("gaussian_vae", tmp_path / "run", data="digits", **TINY)
        run.evaluate(iw_samples=2)
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    for path in (tmp_path / "a.json", *(tmp_path / "run" / name for name in ("config.yaml", "eval.json",
                                                                              "metrics.jsonl"))):
        assert stat.S_IMODE(path.stat().st_mode) == want, (path.name, oct(path.stat().st_mode))
