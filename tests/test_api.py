"""The Python API: fit/load/Run give the CLI's numbers; presets resolve from any directory and from a wheel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vaelab
from vaelab.api import overrides_from
from vaelab.errors import VaelabError

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
