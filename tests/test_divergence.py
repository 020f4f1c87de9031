"""A divergence is stopped, not kept (issue 27, item 2): NaN or infinite weights or optimizer moments after an
epoch's last step stop training with one line, no non-finite checkpoint is ever written, the last finite one stays,
and `--resume` and `evaluate` work on it; `evaluate` refuses a model whose test bound overflows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hostile_helpers import CONFIG, SMALL, mutate_weights, poison_weight

import vaelab.training.trainer as train_module
from vaelab.cli.main import main
from vaelab.core.errors import VaelabError
from vaelab.runs.checkpoint import first_nonfinite, read_checkpoint, save_checkpoint
from vaelab.runs.lifecycle import has_checkpoint
from vaelab.runs.loaded_run import open_run

BLOWUP = ["--set", "train.lr=1e300", "--set", "train.steps_per_epoch=1"]
PRESETS = ["gaussian_vae", "bernoulli_vae", "ae_gmm"]


def run_cli(capsys, *args) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.strip().splitlines()


def one_error(code: int, lines: list[str], fragment: str) -> None:
    assert code == 2 and len(lines) == 1 and lines[0].startswith("vaelab: error: "), lines
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("preset", PRESETS)
def test_a_blown_up_first_epoch_writes_no_checkpoint(preset, tmp_path, capsys):
    """lr=1e300: the one step's loss is finite but it leaves infinite weights; the Gaussian VAE used to end in a
    torch traceback in validation, the others wrote a checkpoint of inf weights and exited 0."""
    out = tmp_path / "run"
    code, lines = run_cli(capsys, "train", Path("configs") / f"{preset}.yaml", "--data", "digits", "--out", out,
                          *SMALL, *BLOWUP)
    one_error(code, lines, "training diverged in epoch 1 (NaN or infinite values in ")
    assert "no checkpoint was written" in lines[0] and not has_checkpoint(out)
    code, lines = run_cli(capsys, "train", "--resume", out, "--quiet")      # the stranded run restarts, diverges
    assert "holds a run stopped before its first checkpoint: starting it from step 0" in lines[0]
    one_error(code, lines[1:], "training diverged in epoch 1")


def poison_epoch(epoch_to_poison: int, what: str, stop: bool = False):
    """An EpochLoop.run that, in epoch `epoch_to_poison` (1-based), leaves inf in the first parameter (`what` =
    "weight") or in its Adam second moment ("moment") after its last step; with `stop`, then stops as a signal
    would."""
    real = train_module.EpochLoop.run

    def fake(self, epoch, *args, **kwargs):
        row = real(self, epoch, *args, **kwargs)
        if epoch + 1 == epoch_to_poison:
            p = next(self.model.parameters())
            target = p if what == "weight" else self.optim.optimizers[0].state[p]["exp_avg_sq"]
            with torch.no_grad():
                target.view(-1)[0] = float("inf")
            if stop:
                raise train_module.EpochStopped({"step": 1, "epoch_rng": self.gen.get_state(), "sums": [0.0] * 4,
                                                 "beta_sum": 1.0, "seconds": 0.0})
        return row
    return fake


@pytest.mark.parametrize("what, stop", [("weight", False), ("moment", False), ("weight", True)],
                         ids=["weight", "optimizer-moment", "weight-then-signal"])
def test_a_later_divergence_keeps_the_last_finite_checkpoint(what, stop, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(train_module.EpochLoop, "run", poison_epoch(2, what, stop))
    code, lines = run_cli(capsys, "train", CONFIG, "--data", "digits", "--out", out, *SMALL, "--epochs", "3")
    named = "in exp_avg_sq of model." if what == "moment" else "in model."
    one_error(code, lines, f"training diverged in epoch 2 (NaN or infinite values {named}")
    assert "the last good checkpoint (of epoch 1) is kept" in lines[0]
    _, tensors, state = read_checkpoint(out)                   # finite weights and moments, epoch 1
    assert state["epoch"] == 1 and first_nonfinite(tensors) is None and first_nonfinite(state["optim"]) is None
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    monkeypatch.undo()
    code, lines = run_cli(capsys, "evaluate", out, "--iw-samples", "2", "--quiet", "--device", "cpu")
    assert code == 0, lines
    assert all(isinstance(v, float) for k, v in json.loads((out / "eval.json").read_text()).items()
               if k in ("elbo", "iw_loglik"))
    code, lines = run_cli(capsys, "train", "--resume", out, "--quiet")
    assert code == 0, lines
    assert read_checkpoint(out)[2]["epoch"] == 3


def test_save_checkpoint_never_writes_a_non_finite_one(tmp_path, capsys):
    """The backstop under every writer (train, stack): the previous checkpoint stays byte-identical."""
    out = tmp_path / "run"
    assert main(["train", CONFIG, "--data", "digits", "--out", str(out), *SMALL]) == 0
    before = (out / "checkpoint" / "model.safetensors").read_bytes()
    cfg, _, state = read_checkpoint(out)
    run = open_run(out, "cpu")
    with torch.no_grad():
        next(run.model.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(VaelabError, match=r"training diverged: NaN or infinite values in model\.\S+ \(the last "
                                          r"finite checkpoint is kept\)"):
        save_checkpoint(out, cfg, run.model, run.estimator, state)
    assert (out / "checkpoint" / "model.safetensors").read_bytes() == before
    assert not (out / "checkpoint.tmp").exists()


def test_first_nonfinite_names_the_first_bad_tensor():
    nest = {"a": torch.zeros(3), "b": [torch.ones(2), torch.tensor([1.0, float("-inf")])],
            "c": torch.tensor([float("nan")]), "n": torch.arange(3)}
    assert first_nonfinite(nest) == "b[1]"
    assert first_nonfinite({"a": torch.zeros(3), "n": torch.arange(3)}) is None
    assert first_nonfinite({}) is None


def test_evaluate_refuses_weights_that_overflow(tmp_path, capsys):
    """Finite weights too large for fp32 arithmetic give a NaN bound: refused in one line, eval.json unwritten."""
    out = tmp_path / "run"
    assert main(["train", CONFIG, "--data", "digits", "--out", str(out), *SMALL]) == 0
    mutate_weights(poison_weight(3e38))(tmp_path, out)
    shutil.rmtree(out / "checkpoint.old", ignore_errors=True)
    code, lines = run_cli(capsys, "evaluate", out, "--iw-samples", "2", "--quiet", "--device", "cpu")
    one_error(code, lines, "(its weights overflow: the run diverged); nothing written")
    assert not (out / "eval.json").exists()


def test_stacked_divergence_writes_no_checkpoint(tmp_path, capsys):
    from conftest import tiny_config

    from vaelab.training.stacked import train_stacked

    runs = [tmp_path / "s0", tmp_path / "s1"]
    cfg = tiny_config("train.lr=1e300", "train.steps_per_epoch=1", "model.hidden=[16]", "model.latent_dim=2")
    with pytest.raises(VaelabError, match=r"diverged in epoch 1 \(NaN or infinite values in .*no checkpoint"):
        train_stacked(cfg, [0, 1], runs, quiet=True)
    assert not any(has_checkpoint(r) for r in runs)
