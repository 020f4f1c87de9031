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

from vaelab.core.errors import VaelabError
from vaelab.estimators.pathwise import Reparam
from vaelab.evaluation.bounds import elbo_terms
from vaelab.runs.loaded_run import open_run
from vaelab.runs.metrics_log import MetricsSink
from vaelab.training.by_hand import ReparamByHand
from vaelab.training.trainer import train


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


def test_tensorboard_holds_each_steps_batch_values_the_epoch_rows_and_the_hyperparameters(tmp_path):
    from tensorboard.plugins.hparams import api_pb2
    from tensorboard_helpers import hparams, scalars

    run = tmp_path / "run"
    history = train(tiny_config("train.log_every=1", "train.lr=2e-3", "train.grad_clip=5.0"), run, quiet=True)
    tb = scalars(run)
    sizes = [64] * 20 + [17]                                      # 1297 digits: 21 batches an epoch
    assert [s for s, _ in tb["batch/loss"]] == list(range(1, 43))
    for epoch, row in enumerate(history):                         # each epoch's mean is its batches' weighted mean
        for key in ("loss", "elbo", "rec", "kl"):
            batch = [v for _, v in tb[f"batch/{key}"][21 * epoch: 21 * (epoch + 1)]]
            assert sum(v * n for v, n in zip(batch, sizes, strict=True)) / 1297 == pytest.approx(row[f"train_{key}"],
                                                                                              rel=1e-5)
    assert [v for _, v in tb["batch/loss"]] == pytest.approx([-v for _, v in tb["batch/elbo"]], rel=1e-5)  # KL weight 1
    for key in ("train_elbo", "valid_elbo", "valid_kl", "lr", "epoch"):   # epoch rows at the step ending the epoch
        assert tb[key.replace("_", "/", 1)] == [(21 * (e + 1), pytest.approx(r[key])) for e, r in enumerate(history)]
    values, status = hparams(run)
    assert values["train.lr"] == 2e-3 and values["train.grad_clip"] == 5.0 and values["train.batch_size"] == 64
    assert values["estimator.name"] == "reparam" and values["data.source"] == "digits"
    assert values["model.hidden"] == "[32]"
    assert values["train.compile"] is False and "train.steps_per_epoch" not in values   # null: an empty cell
    assert status == api_pb2.STATUS_SUCCESS
    assert [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] == history


def test_an_epoch_is_a_plain_pytorch_loop_over_a_fresh_permutation(tmp_path):
    """The trainer's epoch against the textbook loop written out here: its data generator binarizes the epoch, then
    permutes it; train.steps_per_epoch batches of the permutation, each one Adam step on the estimator's loss; the
    epoch's train_loss is the image-weighted mean of the batch losses."""
    from vaelab.runs.device_data import prepare_data
    from vaelab.runs.loaded_run import build

    cfg = tiny_config("train.epochs=1", "train.steps_per_epoch=5", "train.batch_size=50")
    history = train(cfg, tmp_path / "run", quiet=True)
    data = prepare_data(cfg.data, torch.device("cpu"))
    model, estimator = build(cfg, data, torch.device("cpu"))         # seeded by train.seed, as `train` builds it
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, eps=cfg.train.adam_eps)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    x_epoch = data.train_epoch_images(gen)                            # [N, P]
    order = torch.randperm(len(x_epoch), generator=gen)
    total, images = torch.zeros(()), 0
    for idx in order.split(50)[:5]:
        loss = estimator(model, x_epoch[idx], 1.0).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total, images = total + loss.detach() * len(idx), images + len(idx)
    assert history[0]["steps"] == 5 and history[0]["train_loss"] == pytest.approx((total / images).item(), rel=1e-6)
    trained = load_file(tmp_path / "run" / "checkpoint" / "model.safetensors")
    mine = {f"model.{k}": v for k, v in model.state_dict().items()}
    assert all(torch.allclose(trained[k], mine[k], rtol=1e-6, atol=1e-7) for k in mine if k in trained)
    assert any(k in trained for k in mine)


def test_batch_values_are_kept_every_log_every_steps(tmp_path):
    from tensorboard_helpers import scalars

    sink = MetricsSink(tmp_path, [], log_every=5)
    sink.log_batches(18, [[float(i), 0.0, 0.0, 0.0] for i in range(10)])   # steps 19..28
    sink.log_batches(28, [[float(i), 0.0, 0.0, 0.0] for i in range(10, 12)])   # steps 29, 30
    sink.close()
    assert scalars(tmp_path)["batch/loss"] == [(20, 1.0), (25, 6.0), (30, 11.0)]


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
    """The process kills itself at a fixed point (vaelab.core.faults), so the test does not depend on timing."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_train_cmd(straight), check=True, env=env, timeout=600)
    proc = subprocess.run(_train_cmd(killed), env=env | {"VAELAB_FAULT": fault}, timeout=600)
    assert proc.returncode == -signal.SIGKILL
    from vaelab.runs.checkpoint import read_checkpoint
    assert read_checkpoint(killed)[2]["epoch"] == epochs_kept
    subprocess.run([sys.executable, "-m", "vaelab", "train", "--resume", str(killed), "--quiet"],
                   check=True, env=env, timeout=600)
    _assert_same_weights(straight, killed)
    rows = [json.loads(s) for s in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    from tensorboard_helpers import scalars
    assert scalars(killed) == scalars(straight)        # what the killed attempt logged past its checkpoint: purged
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
    real_by_hand = ReparamByHand.__call__

    def poisoned_by_hand(self, x, kl_weight=1.0):                  # the CPU's hand-written step (training/by_hand.py)
        est = real_by_hand(self, x, kl_weight)
        est.loss = est.loss * float("nan")
        return est

    monkeypatch.setattr(ReparamByHand, "__call__", poisoned_by_hand)
    cfg = tiny_config("train.epochs=2")
    with pytest.raises(VaelabError, match="diverged in epoch 1.*no checkpoint was written; it restarts the run"):
        train(cfg, tmp_path / "fresh", quiet=True)
    # resuming the good run into a poisoned epoch 2 fails and leaves epoch 1's checkpoint as it was
    state = torch.load(run_dir / "checkpoint" / "state.pt", weights_only=True)
    assert state["epoch"] == 1
    from vaelab.runs import checkpoint as run_mod
    real_read = run_mod.read_checkpoint

    def read_with_two_epochs(path):
        c, t, s = real_read(path)
        c.train.epochs = 2
        return c, t, s

    monkeypatch.setattr("vaelab.runs.lifecycle.read_checkpoint", read_with_two_epochs)
    with pytest.raises(VaelabError, match="diverged in epoch 2.*last good checkpoint \\(of epoch 1\\) is kept"):
        train(None, run_dir, resume=True, quiet=True)
    assert (run_dir / "checkpoint" / "model.safetensors").read_bytes() == good
