"""Data without labels and the data a sample-quality classifier knows (issue 17).

A user .npz without y_* arrays trains, evaluates, samples and draws every latent figure (one colour instead of one
per digit); sample-quality scores are refused, in one line, for data the chosen classifier was not trained on (the
shipped one knows MNIST digits) and accepted with a classifier of `vaelab classifier train --data SOURCE`; the
DisARM presets run on Fashion-MNIST and Omniglot with `--data`. The benchmark sets are tiny synthetic files in
their exact formats, placed by hand in the cache folder (as tests/test_sources.py does), with split sizes shrunk.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import scipy.io
import torch

import vaelab
from vaelab.core.errors import VaelabError
from vaelab.data import sources
from vaelab.data.sources import Original, load_dataset
from vaelab.data.splits import NO_LABEL, known_labels
from vaelab.evaluation.classifier import DigitCNN, load_classifier, save_classifier
from vaelab.experiments.reproduce import Settings, Stage, analyse_stage
from vaelab.report.inputs import prepare_report_inputs
from vaelab.viz.latent_figures import coloured_by, plot_embeddings, scatter_digits

SIZES = (40, 10, 12)   # train / valid / test of the shrunk benchmark sets
TINY = ("--set", "model.hidden=[16]", "--set", "train.batch_size=32", "--epochs", "1", "--device", "cpu", "--quiet")


def write_unlabeled(path: Path, n_train: int = 100, n_test: int = 12, side: int = 8) -> str:
    """A user .npz with x_train and x_test only: random 0/1 images of side x side pixels."""
    rng = np.random.default_rng(0)
    np.savez(path, x_train=(rng.random((n_train, side, side)) < 0.3).astype(np.float32),
             x_test=(rng.random((n_test, side, side)) < 0.3).astype(np.float32))
    return str(path)


def place(name: str, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Put tiny originals of benchmark set `name` (fashion-mnist or omniglot) in `cache/name/`, shrink its split
    sizes to SIZES and, for Fashion-MNIST, pin their sha256 (as if published); VAELAB_DATA points at `cache`."""
    folder = cache / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    n_train, n_test = SIZES[0] + SIZES[1], SIZES[2]
    if name == "fashion-mnist":
        arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
                  "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
                  "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
                  "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8)}
        for filename, a in arrays.items():
            header = struct.pack(f">I{a.ndim}I", 2051 if a.ndim == 3 else 2049, *a.shape)
            (folder / filename).write_bytes(gzip.compress(header + a.tobytes()))
    else:   # chardata.mat: images as columns of 784 values in [0, 1], alphabets one-hot [50, N]
        x_train, x_test = rng.random((784, n_train)), rng.random((784, n_test))
        onehot = [np.eye(50)[rng.integers(0, 50, n)].T for n in (n_train, n_test)]
        scipy.io.savemat(folder / "chardata.mat", {"data": x_train, "testdata": x_test, "target": onehot[0],
                                                   "testtarget": onehot[1]})
    spec = sources.SOURCES[name]
    pinned = tuple(Original(o.filename, None, hashlib.sha256((folder / o.filename).read_bytes()).hexdigest()
                            if name == "fashion-mnist" else None) for o in spec.files)
    monkeypatch.setitem(sources.SOURCES, name, dataclasses.replace(spec, sizes=SIZES, files=pinned))
    monkeypatch.setenv("VAELAB_DATA", str(cache))


# --- labels are optional ---------------------------------------------------------------------------------------------


def test_npz_labels_are_optional_but_checked_when_given(tmp_path: Path):
    splits = load_dataset(write_unlabeled(tmp_path / "u.npz"))
    assert (len(splits.x_train), len(splits.x_valid), len(splits.x_test)) == (90, 10, 12)
    for part in ("train", "valid", "test"):
        y = getattr(splits, f"y_{part}")
        assert y.dtype == np.int64 and y.shape == (len(getattr(splits, f"x_{part}")),) and (y == NO_LABEL).all()
        assert known_labels(y) is None
    x, y = np.zeros((5, 4), np.float32), np.arange(5)
    labelled = load_dataset(_save(tmp_path / "l.npz", x_train=x, y_train=y, x_test=x[:2], y_test=y[:2]))
    np.testing.assert_array_equal(labelled.y_valid, [4])
    np.testing.assert_array_equal(known_labels(torch.from_numpy(labelled.y_train)), [0, 1, 2, 3])
    refused = [({"x_train": x, "y_train": y, "x_test": x}, r"has labels \['y_train'\] but not \['y_test'\]"),
               ({"x_train": x, "x_test": x, "y_valid": y}, "required x_train, x_test"),
               ({"x_train": x, "y_train": y[:4], "x_test": x, "y_test": y}, "labels must be 5 integers"),
               ({"x_train": x, "y_train": y * 0.5, "x_test": x, "y_test": y}, "labels must be 5 integers"),
               ({"x_train": x, "y_train": y - 2, "x_test": x, "y_test": y}, "labels must be integers >= 0")]
    for i, (arrays, message) in enumerate(refused):
        with pytest.raises(VaelabError, match=message):
            load_dataset(_save(tmp_path / f"bad{i}.npz", **arrays))


def _save(path: Path, **arrays: np.ndarray) -> str:
    """Save `arrays` as an .npz at `path` and return the path as a data source string."""
    np.savez(path, **arrays)
    return str(path)


def test_scatter_without_labels_is_one_colour_without_legend():
    xy = np.random.default_rng(0).normal(size=(60, 2))
    for labels in (None, np.full(60, NO_LABEL)):
        fig, ax = plt.subplots()
        scatter_digits(ax, xy, labels)
        assert len(np.unique(ax.collections[0].get_facecolors(), axis=0)) == 1 and ax.get_legend() is None
        assert coloured_by(labels) == "no labels: one colour"
        plt.close(fig)
    fig, ax = plt.subplots()
    scatter_digits(ax, xy, np.arange(60) % 3)
    assert len(np.unique(ax.collections[0].get_facecolors(), axis=0)) == 3
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["0", "1", "2"]
    plt.close(fig)


def test_unlabeled_npz_trains_evaluates_samples_and_draws_the_figures(tmp_path: Path, cli, capsys):
    data, ae, vae = write_unlabeled(tmp_path / "u.npz"), tmp_path / "ae", tmp_path / "vae"
    code, _, err = cli("train", "configs/ae_gmm.yaml", "--data", data, *TINY, "--out", ae)
    assert code == 0, err
    code, _, err = cli("fit-density", ae, "--components", "3", "--device", "cpu")
    assert code == 0, err
    for figure in ("latent_codes", "latent_codes_vs_gmm", "latent_gmm_codes", "latent_gmm_samples"):
        assert (ae / "fig" / f"{figure}.png").is_file()
    code, out, err = cli("evaluate", ae, "--iw-samples", "5", "--device", "cpu", "--quiet")
    assert code == 0 and np.isfinite(json.loads(out)["iw_loglik"]), err
    code, _, err = cli("sample", ae, "--n", "4", "--mode", "threshold", "--device", "cpu")
    assert code == 0 and (ae / "fig" / "samples_gmm_threshold.png").is_file(), err
    assert "latent_map" in prepare_report_inputs(ae, quick=True, device="cpu", log=lambda _: None)
    assert (ae / "fig" / "latent_map_plane.png").is_file()
    code, _, err = cli("classifier", "train", "--data", data, "--out", tmp_path / "c.safetensors", "--quiet")
    assert code == 2 and "has images without labels" in err and "Traceback" not in err

    code, _, err = cli("train", "configs/gaussian_vae.yaml", "--data", data, *TINY, "--set", "model.latent_dim=4",
                       "--out", vae)
    assert code == 0, err
    capsys.readouterr()
    settings = Settings(tmp_path / "study", quick=True, device="cpu", iw_samples=5, quality_samples=20)
    scores = analyse_stage(Stage("vae", "configs/gaussian_vae.yaml", "VAE"), settings, vae)   # reproduce's step
    log = capsys.readouterr().err
    assert np.isfinite(scores["elbo"]) and not any(key.startswith("quality_") for key in scores)
    assert "vae: sample quality not scored: sample-quality scores need a classifier trained on" in log
    assert (vae / "fig" / "samples_bernoulli.png").is_file() and (vae / "fig" / "recon_probs.png").is_file()
    assert "codes_2d" in prepare_report_inputs(vae, quick=True, device="cpu", log=lambda _: None)
    with np.load(vae / "fig" / "codes_2d.npz") as z:
        panel = {key: z[key] for key in z.files}
    assert (panel["pca_labels"] == NO_LABEL).all()
    assert plot_embeddings({"VAE": panel}, tmp_path / "codes_2d.png").is_file()


# --- sample quality: only with a classifier of the run's data ------------------------------------------------------


def test_quality_needs_a_classifier_of_the_runs_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli):
    place("fashion-mnist", tmp_path / "cache", monkeypatch)
    run, weights = tmp_path / "run", tmp_path / "fashion_cnn.safetensors"
    code, _, err = cli("train", "configs/gaussian_vae.yaml", "--data", "fashion-mnist", *TINY,
                       "--set", "model.latent_dim=4", "--out", run)
    assert code == 0, err
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    shipped = subprocess.run([sys.executable, "-m", "vaelab", "quality", str(run), "--n", "10", "--device", "cpu"],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert shipped.returncode == 2 and shipped.stdout == ""
    assert len(shipped.stderr.splitlines()) == 1 and "Traceback" not in shipped.stderr
    assert shipped.stderr.startswith("vaelab: error: sample-quality scores need a classifier trained on the run's "
                                     "data: the shipped classifier knows MNIST digits")
    assert (f"this run's data is fashion-mnist: train one for it with `vaelab classifier train --data fashion-mnist "
            f"--out C.safetensors`, then `vaelab quality {run} --classifier C.safetensors`") in shipped.stderr
    with pytest.raises(VaelabError, match="the shipped classifier knows MNIST digits"):
        vaelab.load(run, "cpu").quality(10)

    other = tmp_path / "omniglot_cnn.safetensors"
    save_classifier(DigitCNN((28, 28)), other, {"data": "omniglot"})
    code, _, err = cli("quality", run, "--n", "10", "--device", "cpu", "--classifier", other)
    assert code == 2 and f"classifier {other} was trained on omniglot but this run's data is fashion-mnist" in err
    save_classifier(DigitCNN((28, 28)), other, {})
    code, _, err = cli("quality", run, "--n", "10", "--device", "cpu", "--classifier", other)
    assert code == 2 and "does not record the data it was trained on" in err

    code, _, err = cli("classifier", "train", "--data", "fashion-mnist", "--epochs", "1", "--batch-size", "16",
                       "--out", weights, "--quiet")
    assert code == 0, err
    assert load_classifier(weights).info["data"] == "fashion-mnist"
    code, out, err = cli("quality", run, "--n", "10", "--device", "cpu", "--classifier", weights)
    assert code == 0, err
    scores = json.loads(out)
    assert scores["classifier"] == str(weights) and scores["n_samples"] == 10 and scores["n_reference"] == SIZES[2]
    assert json.loads((run / "eval.json").read_text())["quality_bernoulli_normal"] == scores
    from_python = vaelab.load(run, "cpu").quality(10, classifier=weights)
    assert from_python["fid_classifier_features"] == pytest.approx(scores["fid_classifier_features"])


# --- the DisARM presets on Fashion-MNIST and Omniglot ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["fashion-mnist", "omniglot"])
@pytest.mark.parametrize("preset", ["literature/disarm_linear", "literature/disarm_nonlinear"])
def test_disarm_presets_run_on_other_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli, preset, name):
    place(name, tmp_path / "cache", monkeypatch)
    run = tmp_path / "run"
    code, _, err = cli("train", preset, "--data", name, "--epochs", "1", "--set", "train.steps_per_epoch=2",
                       "--device", "cpu", "--out", run, "--quiet")
    assert code == 0, err
    opened = vaelab.load(run, "cpu")
    assert opened.cfg.data.source == name and opened.cfg.data.binarize == "dynamic" and len(opened.history) == 1
    mean = torch.from_numpy(load_dataset(name).x_train.mean(0))   # the grayscale training images' mean
    torch.testing.assert_close(opened.model.encoder[0].mean, mean)   # demean_input: this data's mean, kept exactly
    last = [m for m in opened.model.decoder.modules() if getattr(m, "bias", None) is not None][-1]
    torch.testing.assert_close(last.bias.reshape(-1), torch.logit(mean.clamp(1e-3, 1 - 1e-3)), atol=2e-3, rtol=0)
    code, out, err = cli("evaluate", run, "--iw-samples", "2", "--device", "cpu", "--quiet")
    assert code == 0 and np.isfinite(json.loads(out)["iw_loglik"]), err
    if name == "omniglot" and preset.endswith("disarm_linear"):   # a classifier of the 50 alphabets, for its runs
        code, _, err = cli("classifier", "train", "--data", name, "--epochs", "1", "--batch-size", "16",
                           "--out", tmp_path / "c.safetensors", "--quiet")
        assert code == 0, err
        net = load_classifier(tmp_path / "c.safetensors")
        assert net.info["data"] == "omniglot" and net.head.out_features == net.info["classes"] >= 2
