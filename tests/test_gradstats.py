"""train.grad_stats_every: the encoder gradient's variance and SNR logged during training, without changing it."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file
from tensorboard_helpers import scalars

from vaelab.core.errors import VaelabError
from vaelab.evaluation.gradvar import GradMoments, estimator_grads, training_grad_stats
from vaelab.runs.device_data import prepare_data
from vaelab.runs.loaded_run import build
from vaelab.training.trainer import train

BERNOULLI = ("model.latent=bernoulli", "estimator.name=disarm", "model.latent_dim=6", "train.epochs=2")


def weights(run):
    return load_file(run / "checkpoint" / "model.safetensors")


def test_measuring_changes_nothing_and_logs_every_n_steps(tmp_path):
    train(tiny_config(*BERNOULLI), tmp_path / "plain", quiet=True)
    train(tiny_config(*BERNOULLI, "train.grad_stats_every=5", "train.grad_stats_draws=4"), tmp_path / "probed",
          quiet=True)
    a, b = weights(tmp_path / "plain"), weights(tmp_path / "probed")
    assert all(torch.equal(a[k], b[k]) for k in a)                 # the RNG is restored around each measurement
    rows = [json.loads(line) for line in (tmp_path / "probed" / "grad_stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(5, 2 * 21 + 1, 5))   # 21 steps an epoch on digits
    assert all(r["grad_var"] > 0 and r["grad_snr"] > 0 for r in rows)
    assert not (tmp_path / "plain" / "grad_stats.jsonl").exists()


def test_stats_are_the_spread_of_the_estimators_draws_and_rank_the_estimators():
    cfg = tiny_config("model.latent=bernoulli", "model.latent_dim=6", "estimator.name=sfe")
    data = prepare_data(cfg.data, torch.device("cpu"))
    model, sfe = build(cfg, data, torch.device("cpu"))
    _, disarm = build(tiny_config(*BERNOULLI), data, torch.device("cpu"))
    x = data.x_train[:64]
    torch.manual_seed(1)
    stats = training_grad_stats(sfe, model, x, draws=200)
    torch.manual_seed(1)
    grads = estimator_grads(sfe, model, x, list(model.encoder.parameters()), 200).double()  # two-pass reference
    assert stats["grad_var"] == pytest.approx(grads.var(0).sum().item(), rel=1e-9)
    assert stats["grad_snr"] == pytest.approx(grads.mean(0).norm().item() / grads.var(0).sum().sqrt().item(),
                                              rel=1e-9)
    # DisARM's antithetic pair has far less variance than plain REINFORCE at the same parameters (>= 3x here;
    # each trace is estimated from 200 draws, within ~15%)
    assert training_grad_stats(disarm, model, x, draws=200)["grad_var"] * 3 < stats["grad_var"]


def test_resumed_run_drops_rows_past_its_checkpoint(tmp_path):
    probe = ("train.grad_stats_every=7", "train.grad_stats_draws=3")
    train(tiny_config(*BERNOULLI, *probe), tmp_path / "straight", quiet=True)
    run = tmp_path / "resumed"
    train(tiny_config(*BERNOULLI, *probe, "train.epochs=1"), run, quiet=True)
    with open(run / "grad_stats.jsonl", "a") as f:            # a crash after the checkpoint measured step 28
        f.write(json.dumps({"step": 28, "grad_var": -1.0}) + "\n")
    train(None, run, resume=True, quiet=True, epochs=2)
    assert (run / "grad_stats.jsonl").read_text().count("\n") == 6
    straight = [json.loads(x) for x in (tmp_path / "straight" / "grad_stats.jsonl").read_text().splitlines()]
    resumed = [json.loads(x) for x in (run / "grad_stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [r["step"] for r in straight] == [7, 14, 21, 28, 35, 42]
    tb = scalars(run)                                          # TensorBoard: the same steps, one axis with the rest
    assert [s for s, _ in tb["grad/grad_snr"]] == [7, 14, 21, 28, 35, 42]
    assert [v for _, v in tb["grad/grad_snr"]] == pytest.approx([r["grad_snr"] for r in resumed], rel=1e-6)
    assert [r["grad_var"] for r in resumed] == pytest.approx([r["grad_var"] for r in straight])


def test_bad_settings_are_refused():
    with pytest.raises(VaelabError, match="grad_stats_every"):
        tiny_config("train.grad_stats_every=0")
    with pytest.raises(VaelabError, match="grad_stats_draws"):
        tiny_config("train.grad_stats_draws=1")


def test_streamed_moments_equal_the_two_pass_statistics_of_the_stacked_draws():
    """Welford's one-pass mean and variance (float64) against torch's two-pass ones on the whole matrix, with a large
    common offset that a naive sum-of-squares would lose; fewer than 2 draws is a clear error."""
    rows = torch.randn(300, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 1e4
    moments = GradMoments.of(iter(rows))
    assert moments.n == 300
    torch.testing.assert_close(moments.mean, rows.mean(0), rtol=0, atol=1e-10)
    assert moments.variance_trace() == pytest.approx(rows.var(0).sum().item(), rel=1e-9)
    with pytest.raises(VaelabError, match="at least 2 draws"):
        GradMoments.of(iter(rows[:1]))
