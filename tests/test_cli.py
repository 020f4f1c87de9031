"""The CLI end to end on digits, and every bad input: one line, exit code 2, nothing overwritten."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

TINY = ["--data", "digits", "--epochs", "1", "--quiet", "--set", "model.hidden=[32]", "--set", "model.latent_dim=4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from vaelab.cli.main import main

    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "configs/gaussian_vae.yaml", "--out", str(out), *TINY]) == 0
    return out


def test_train_sample_evaluate_end_to_end(trained, cli, tmp_path):
    for mode in ("bernoulli", "threshold", "probs"):
        code, out, _ = cli("sample", trained, "--n", 16, "--mode", mode, "--out", tmp_path / f"{mode}.png")
        assert code == 0
        img = np.asarray(Image.open(tmp_path / f"{mode}.png").convert("L"), dtype=float)
        assert img.shape[0] > 50 and img.std() > 10        # a real, non-blank picture
    assert cli("sample", trained, "--reconstruct", "--n", 8)[0] == 0
    assert (trained / "fig" / "recon_bernoulli.png").is_file()
    code, out, _ = cli("evaluate", trained, "--iw-samples", 30, "--quiet")
    assert code == 0
    metrics = json.loads((trained / "eval.json").read_text())
    assert metrics == json.loads(out)
    assert metrics["n_examples"] == 250 and metrics["iw_samples"] == 30
    assert metrics["iw_loglik"] >= metrics["elbo"] - 3 * metrics["elbo_stderr"]
    assert abs(metrics["elbo"] - (metrics["rec"] - metrics["kl"])) < 1e-3


def test_list_shows_registries(cli):
    code, out, _ = cli("list")
    assert code == 0 and "gaussian" in out and "reparam" in out and "mlp" in out


def _err(cli, *args):
    code, _, err = cli(*args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("vaelab: error:"), err
    return lines[0]


def test_unknown_option_config_key_model_and_estimator(cli, tmp_path):
    assert "did you mean train.lr" in _err(cli, "train", "configs/gaussian_vae.yaml", "--set", "train.lrr=1")
    assert "did you mean 'gaussian'" in _err(cli, "train", "configs/gaussian_vae.yaml", *TINY,
                                             "--set", "model.latent=gausian", "--out", tmp_path / "a")
    assert "unknown estimator" in _err(cli, "train", "configs/gaussian_vae.yaml", *TINY,
                                       "--estimator", "nope", "--out", tmp_path / "b")
    assert "not found" in _err(cli, "train", tmp_path / "missing.yaml")
    with pytest.raises(SystemExit) as exc:          # argparse: unknown flag
        cli("train", "--bogus")
    assert exc.value.code == 2


def test_missing_and_bad_data(cli, tmp_path):
    assert "no such file" in _err(cli, "train", "configs/gaussian_vae.yaml", "--data", tmp_path / "x.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((3, 4)))
    assert "x_train" in _err(cli, "train", "configs/gaussian_vae.yaml", "--data", bad, "--out", tmp_path / "r")
    nan = tmp_path / "nan.npz"
    x = np.full((10, 16), np.nan, dtype=np.float32)
    np.savez(nan, x_train=x, y_train=np.zeros(10, int), x_test=x, y_test=np.zeros(10, int))
    assert "NaN" in _err(cli, "train", "configs/gaussian_vae.yaml", "--data", nan, "--out", tmp_path / "r2")
    assert not (tmp_path / "r").exists() and not (tmp_path / "r2").exists()


def test_grayscale_without_binarization_is_refused(cli, tmp_path):
    msg = _err(cli, "train", "configs/gaussian_vae.yaml", *TINY, "--set", "data.binarize=none", "--out", tmp_path / "g")
    assert "grayscale" in msg and "data.binarize" in msg


def test_run_dir_holding_a_run_is_not_overwritten(trained, cli):
    before = (trained / "checkpoint" / "model.safetensors").read_bytes()
    assert "already holds a run" in _err(cli, "train", "configs/gaussian_vae.yaml", *TINY, "--out", trained)
    assert (trained / "checkpoint" / "model.safetensors").read_bytes() == before


def test_unknown_sampling_mode(trained, cli):
    assert "unknown sampling mode" in _err(cli, "sample", trained, "--mode", "median")


def test_damaged_and_foreign_checkpoints(trained, cli, tmp_path):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(trained, damaged)
    (damaged / "checkpoint" / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    assert "damaged" in _err(cli, "evaluate", damaged)
    foreign = tmp_path / "foreign"
    shutil.copytree(trained, foreign)
    import torch
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, foreign / "checkpoint" / "model.safetensors", metadata={"format": "other"})
    assert "not a vaelab checkpoint" in _err(cli, "evaluate", foreign)
    assert "no checkpoint" in _err(cli, "evaluate", tmp_path / "empty")
    assert "no run there to resume" in _err(cli, "train", "--resume", tmp_path / "empty")


def test_cuda_requested_without_gpu(cli, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert "no CUDA GPU" in _err(cli, "train", "configs/gaussian_vae.yaml", *TINY, "--device", "cuda",
                                 "--out", tmp_path / "c")


def test_resume_with_epochs_extends_a_finished_run_as_if_trained_straight(cli, tmp_path):
    from safetensors.torch import load_file

    assert cli("train", "configs/gaussian_vae.yaml", "--out", tmp_path / "straight", *TINY, "--epochs", 3,
               "--seed", 5)[0] == 0
    assert cli("train", "configs/gaussian_vae.yaml", "--out", tmp_path / "ext", *TINY, "--seed", 5)[0] == 0
    assert cli("train", "--resume", tmp_path / "ext", "--epochs", 3, "--quiet")[0] == 0
    a, b = (load_file(tmp_path / d / "checkpoint" / "model.safetensors") for d in ("straight", "ext"))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert len((tmp_path / "ext" / "metrics.jsonl").read_text().splitlines()) == 3
    config = (tmp_path / "ext" / "config.yaml").read_text()
    assert "epochs: 3" in config and "seed: 5" in config
    assert "--resume takes the run's own config" in _err(cli, "train", "--resume", tmp_path / "ext", "--seed", 1)


def test_a_relative_data_path_is_stored_absolute(tmp_path, monkeypatch):
    """Issue 27: `--data d.npz` from one directory, then the run is scored on that file from anywhere."""
    from vaelab.cli.main import absolute_data_path

    (tmp_path / "d.npz").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert absolute_data_path("d.npz") == str(tmp_path.resolve() / "d.npz")
    assert absolute_data_path("./d.npz") == str(tmp_path.resolve() / "d.npz")
    assert absolute_data_path("digits") == "digits"                # a source name stays a name
    assert absolute_data_path("missing.npz") == "missing.npz"      # left for the loader's one-line refusal
