"""Training: the loss really drops, a killed run resumes bit for bit, a NaN stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from vaelab.errors import VaelabError
from vaelab.estimators import Reparam
from vaelab.evaluate import elbo_terms
from vaelab.run import open_run
from vaelab.train import train


def test_200_steps_on_digits_lower_minus_elbo(tmp_path):
    cfg = tiny_config("train.epochs=10", "train.batch_size=64", "model.hidden=[64]", "model.latent_dim=8")
    history = train(cfg, tmp_path / "run", quiet=True)
    assert sum(r["steps"] for r in history) == 10 * 21   # 1297 digits / 64 = 21 batches a epoch, 210 steps
    first, last = history[0], history[-1]
    assert last["train_elbo"] > first["train_elbo"] + 5 and last["valid_elbo"] > first["valid_elbo"] + 3
    # The logged valid ELBO is the model's: recompute it from the checkpoint (1-sample MC, so within noise).
    run = open_run(tmp_path / "run", "cpu")
    recomputed = elbo_terms(run.model, run.data.x_valid)["elbo"].mean().item()
    assert abs(recomputed - last["valid_elbo"]) < 1.0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, 11))
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "run" / "tb").iterdir())


def _train_cmd(out, *extra):
    return [sys.executable, "-m", "vaelab", "train", "configs/gaussian_vae.yaml", "--data", "digits", "--out",
            str(out), "--quiet", "--device", "cpu", "--set", "model.hidden=[64]", "--set", "train.batch_size=8",
            "--set", "train.epochs=4", *extra]


def _assert_same_weights(a_dir, b_dir):
    a = load_file(a_dir / "checkpoint" / "model.safetensors")
    b = load_file(b_dir / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


STEPS_PER_EPOCH = 163   # 1297 training digits in batches of 8


@pytest.mark.slow
@pytest.mark.parametrize(("fault", "epochs_kept"), [
    (f"step:{STEPS_PER_EPOCH + 50}", 1),      # mid-epoch 2: epoch 1's checkpoint is the last one
    ("checkpoint.written:2", 1),             # epoch 2's checkpoint complete in checkpoint.tmp, not yet swapped in
    ("checkpoint.moved-old:1", 1),           # epoch 1's moved to checkpoint.old, epoch 2's not yet in place
    ("checkpoint.moved-old:2", 2),
])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, fault, epochs_kept):
    """The process kills itself at a fixed point (vaelab.faults), so the test does not depend on timing."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_train_cmd(straight), check=True, env=env, timeout=600)
    proc = subprocess.run(_train_cmd(killed), env=env | {"VAELAB_FAULT": fault}, timeout=600)
    assert proc.returncode == -signal.SIGKILL
    from vaelab.run import read_checkpoint
    assert read_checkpoint(killed)[2]["epoch"] == epochs_kept
    subprocess.run([sys.executable, "-m", "vaelab", "train", "--resume", str(killed), "--quiet"],
                   check=True, env=env, timeout=600)
    _assert_same_weights(straight, killed)
    rows = [json.loads(s) for s in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert not (killed / "checkpoint.tmp").exists() and not (killed / "checkpoint.old").exists()


def test_nan_stops_training_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    train(tiny_config("train.epochs=1"), run_dir, quiet=True)
    good = (run_dir / "checkpoint" / "model.safetensors").read_bytes()
    real_forward = Reparam.forward

    def poisoned(self, model, x, kl_weight=1.0):
        est = real_forward(self, model, x, kl_weight)
        est.loss = est.loss * float("nan")
        return est

    monkeypatch.setattr(Reparam, "forward", poisoned)
    cfg = tiny_config("train.epochs=2")
    with pytest.raises(VaelabError, match="diverged in epoch 1.*no checkpoint was written; it restarts the run"):
        train(cfg, tmp_path / "fresh", quiet=True)
    # resuming the good run into a poisoned epoch 2 fails and leaves epoch 1's checkpoint as it was
    state = torch.load(run_dir / "checkpoint" / "state.pt", weights_only=True)
    assert state["epoch"] == 1
    from vaelab import run as run_mod
    real_read = run_mod.read_checkpoint

    def read_with_two_epochs(path):
        c, t, s = real_read(path)
        c.train.epochs = 2
        return c, t, s

    monkeypatch.setattr("vaelab.train.read_checkpoint", read_with_two_epochs)
    with pytest.raises(VaelabError, match="diverged in epoch 2.*last good checkpoint \\(of epoch 1\\) is kept"):
        train(None, run_dir, resume=True, quiet=True)
    assert (run_dir / "checkpoint" / "model.safetensors").read_bytes() == good
