"""train.keep_best (RUN/best/), train.early_stop_patience, `vaelab evaluate [--best]` in TensorBoard (test/* scalars,
the HPARAMS session's eval.iw_samples) and the per-epoch sample grid (issue 28 item 4)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image
from safetensors.torch import load_file
from tensorboard_helpers import accumulator, hparams, scalars

from vaelab.models.sampling import sample
from vaelab.runs.best import best_epoch
from vaelab.runs.loaded_run import open_run
from vaelab.runs.metrics_log import image_grid
from vaelab.training.trainer import train

NOISY = ("train.lr=5e-2", "train.steps_per_epoch=3")   # a curve whose best valid ELBO is not the last epoch's


def _weights(ckpt):
    return load_file(ckpt / "model.safetensors")


def test_best_holds_the_weights_of_the_epoch_with_the_highest_recorded_valid_elbo(tmp_path):
    run = tmp_path / "run"
    train(tiny_config("train.epochs=8", "train.keep_best=valid_elbo", *NOISY), run, quiet=True)
    curve = [json.loads(line)["valid_elbo"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = int(np.argmax(curve)) + 1
    assert best < len(curve), "precondition: the best epoch is not the last one"
    state = torch.load(run / "best" / "checkpoint" / "state.pt", weights_only=True)
    assert state["epoch"] == best and [r["valid_elbo"] for r in state["history"]] == curve[:best]
    short = tmp_path / "short"                                     # the same run stopped at that epoch
    train(tiny_config(f"train.epochs={best}", *NOISY), short, quiet=True)
    a, b = _weights(run / "best" / "checkpoint"), _weights(short / "checkpoint")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], v) for k, v in _weights(run / "checkpoint").items())   # last != best
    assert not (tmp_path / "short" / "best").exists()               # keep_best null: no RUN/best/


def _expected_stop(curve, patience):
    """The epochs a run trains with early stopping, from a full run's curve (written independently of best.py)."""
    top, top_at = -float("inf"), 0
    for epoch, value in enumerate(curve, 1):
        if value > top:
            top, top_at = value, epoch
        if epoch - top_at >= patience:
            return epoch
    return len(curve)


@pytest.mark.parametrize("patience", [1, 2])
def test_early_stop_ends_the_run_where_the_recorded_curve_says(tmp_path, capsys, patience):
    extra = ("train.lr=2e-1", "train.steps_per_epoch=3")   # valid ELBO falls in epochs 2 and 3
    full = train(tiny_config("train.epochs=8", *extra), tmp_path / "full", quiet=True)
    expected = _expected_stop([r["valid_elbo"] for r in full], patience)
    assert expected < 8, "precondition: the curve stalls"
    capsys.readouterr()
    run = tmp_path / "run"
    history = train(tiny_config("train.epochs=8", f"train.early_stop_patience={patience}", *extra), run)
    assert len(history) == expected
    assert [r["valid_elbo"] for r in history] == [r["valid_elbo"] for r in full[:expected]]
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("early stop")]
    assert len(lines) == 1 and f"after epoch {expected}:" in lines[0]
    assert len(train(None, run, resume=True, quiet=True)) == expected   # resuming it trains nothing more


def test_best_epoch_takes_the_first_of_equal_scores_and_skips_non_finite_ones():
    rows = [{"valid_elbo": v} for v in (-3.0, float("nan"), -1.0, -1.0, -2.0)]
    assert best_epoch(rows) == 3 and best_epoch([]) is None and best_epoch([{"valid_elbo": float("nan")}]) is None


def test_evaluate_writes_eval_json_values_to_tensorboard_and_the_k_it_used(tmp_path, cli):
    run = tmp_path / "run"
    history = train(tiny_config("train.keep_best=valid_elbo", "train.epochs=3", *NOISY), run, quiet=True)
    assert hparams(run)[0]["eval.iw_samples"] == 20                  # the config's, before any evaluation
    assert cli("evaluate", run, "--iw-samples", "7", "--device", "cpu", "--quiet")[0] == 0
    assert cli("evaluate", run, "--best", "--iw-samples", "5", "--device", "cpu", "--quiet")[0] == 0
    last, best = (json.loads((d / "eval.json").read_text()) for d in (run, run / "best"))
    tb = scalars(run)
    steps = sum(r["steps"] for r in history)
    for key in ("elbo", "kl", "rec", "iw_loglik"):
        assert tb[f"test/{key}"] == [(steps, pytest.approx(last[key], rel=1e-6))]
        assert tb[f"test_best/{key}"] == [(best["steps_trained"], pytest.approx(best[key], rel=1e-6))]
    assert tb["test/iw_samples"] == [(steps, 7.0)] and last["iw_samples"] == 7
    assert best["checkpoint"] == "best" and best["epochs_trained"] == best_epoch(history)
    values, status = hparams(run)
    assert values["eval.iw_samples"] == 5 and values["train.lr"] == 5e-2 and status is not None
    assert tb["valid/elbo"][-1][1] == pytest.approx(history[-1]["valid_elbo"])   # the training scalars survive


def test_evaluate_best_without_a_best_checkpoint_is_one_line(tmp_path, cli):
    train(tiny_config("train.epochs=1"), tmp_path / "run", quiet=True)
    code, _, err = cli("evaluate", tmp_path / "run", "--best", "--device", "cpu")
    assert code == 2 and "train.keep_best" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("setting, words", [("train.keep_best=valid_loss", "valid_elbo"),
                                            ("train.early_stop_patience=0", "train.early_stop_patience")])
def test_bad_best_settings_are_refused_before_training(tmp_path, cli, setting, words):
    code, _, err = cli("train", "configs/gaussian_vae.yaml", "--data", "digits", "--out", tmp_path / "run",
                       "--set", setting, "--quiet")
    assert code == 2 and words in err and not (tmp_path / "run").exists()


def test_each_epoch_logs_a_grid_of_64_prior_samples(tmp_path):
    run = tmp_path / "run"
    history = train(tiny_config(), run, quiet=True)
    images = accumulator(run).Images("samples")
    assert [e.step for e in images] == [21, 42] and len(history) == 2
    loaded = open_run(run, "cpu")
    torch.manual_seed(0)
    expected = image_grid(sample(loaded.model, 64, "probs"), (8, 8))[0]           # [64, 64], 8x8 digits
    png = np.asarray(Image.open(io.BytesIO(images[-1].encoded_image_string)).convert("L"), dtype=np.float64)
    assert png.shape == (64, 64)
    assert np.abs(png / 255 - expected.numpy()).max() <= 1 / 255 + 1e-6


def test_image_grid_places_images_row_by_row():
    images = torch.arange(5.0)[:, None].repeat(1, 6)                              # [5, 2*3], image i all i
    grid = image_grid(images, (2, 3))[0]                                            # 3 columns, 2 rows of cells
    assert grid.shape == (4, 9)
    assert grid[0::2, 0::3].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 0.0]]           # the blank last cell: 0
