"""Stacked seeds (stacked.py, `vaelab stack`, sweep `stack: true`): seed i of a stacked run equals `vaelab train
--seed i`, for every registered estimator that stacks; what cannot stack is refused before anything is written."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
import yaml

from vaelab.config.schema import load_config
from vaelab.core.errors import VaelabError
from vaelab.estimators.pathwise import ESTIMATORS
from vaelab.runs.checkpoint import read_checkpoint
from vaelab.training.stacked import train_stacked
from vaelab.training.trainer import train

TINY = ["data.source=digits", "train.epochs=2", "train.steps_per_epoch=4", "train.batch_size=16",
        "train.device=cpu", "model.hidden=[24]", "model.latent_dim=6"]
# every estimator whose step has shape-determined draws and vmaps: these must stack (relax differentiates inside
# its step, which vmap cannot do, and is refused)
MUST_STACK = {"reparam", "iwae", "ae", "sfe", "sfe-avg", "rloo", "vimco", "disarm", "nvil", "st", "gumbel"}


def preset_for(name: str) -> str:
    needs = ESTIMATORS.get(name).needs
    return "ae_gmm" if name == "ae" else "gaussian_vae" if "rsample" in needs else "bernoulli_vae"


def sgd_config(name: str, epochs: int = 2):
    """A tiny config of `name` trained by plain SGD: without Adam's division by sqrt(v), which turns
    rounding-level gradient differences on near-zero gradients into steps of size lr, two float32 computations of
    the same run stay within 1e-6 of each other."""
    cfg = load_config(preset_for(name), [*TINY, f"estimator.name={name}", "estimator.kwargs={}",
                                         f"train.epochs={epochs}"])
    cfg.train.param_groups = {g: {"optimizer": "sgd", "lr": 0.005} for g in ("encoder", "decoder")}
    if name == "nvil":                                  # its baseline net, slowly (faster, it blows up)
        cfg.train.param_groups["control"] = {"optimizer": "sgd", "lr": 1e-4}
    return cfg


def separate(cfg, seed, run_dir):
    one = copy.deepcopy(cfg)
    one.train.seed = seed
    train(one, run_dir, quiet=True)
    return read_checkpoint(run_dir)


def assert_same_run(a, b, atol: float, rtol: float) -> None:
    (_, wa, sa), (_, wb, sb) = a, b
    assert wa.keys() == wb.keys()
    worst = max((wa[k].double() - wb[k].double()).abs().max().item() / max(1.0, wb[k].abs().max().item())
                for k in wa)                            # absolute, relative for tensors beyond 1 in size
    assert worst <= atol, f"weights differ by {worst}"
    assert len(sa["history"]) == len(sb["history"])
    for ra, rb in zip(sa["history"], sb["history"], strict=True):
        for key in ra.keys() - {"seconds"}:
            assert ra[key] == pytest.approx(rb[key], rel=rtol, abs=rtol), key


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_each_seed_of_a_stacked_run_equals_its_own_run(name, tmp_path):
    cfg, seeds = sgd_config(name), [0, 3]
    dirs = [tmp_path / f"stacked-{s}" for s in seeds]
    try:
        train_stacked(cfg, seeds, dirs, quiet=True)
    except VaelabError as err:
        assert name not in MUST_STACK, f"{name} should stack: {err}"
        assert "stack" in str(err) and not any(d.exists() for d in dirs), "refused only before writing"
        return
    for seed, d in zip(seeds, dirs, strict=True):
        assert_same_run(read_checkpoint(d), separate(cfg, seed, tmp_path / f"alone-{seed}"), atol=1e-6, rtol=1e-6)


def test_adam_stacked_run_matches_within_rounding(tmp_path):
    """With the preset's Adam the runs agree to float rounding amplified by Adam's normalisation (1e-4)."""
    cfg = load_config("gaussian_vae", TINY)
    train_stacked(cfg, [0, 1, 2], [tmp_path / f"s{s}" for s in range(3)], quiet=True)
    assert_same_run(read_checkpoint(tmp_path / "s2"), separate(cfg, 2, tmp_path / "alone"), atol=1e-4, rtol=1e-5)


def test_stacked_resume_continues_exactly(tmp_path):
    """One epoch, then resumed to two, is the two-epoch stacked run; `train --resume` of one of its runs continues
    it as a single run (the checkpoints are ordinary ones)."""
    cfg1, cfg2 = sgd_config("sfe-avg", epochs=1), sgd_config("sfe-avg", epochs=2)
    whole, parts = [tmp_path / f"whole{s}" for s in (0, 1)], [tmp_path / f"part{s}" for s in (0, 1)]
    train_stacked(cfg2, [0, 1], whole, quiet=True)
    train_stacked(cfg1, [0, 1], parts, quiet=True)
    train_stacked(cfg2, [0, 1], parts, resume=True, quiet=True)
    assert_same_run(read_checkpoint(parts[1]), read_checkpoint(whole[1]), atol=0.0, rtol=0.0)
    single = tmp_path / "single"
    train_stacked(cfg1, [1], [single], quiet=True)
    train(None, single, resume=True, quiet=True, epochs=2)
    assert_same_run(read_checkpoint(single), separate(cfg2, 1, tmp_path / "alone"), atol=1e-6, rtol=1e-6)


def vaelab(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vaelab", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=cwd, timeout=600)


@pytest.mark.parametrize("args, says", [
    (["--seeds", "1,1"], "each seed once"),
    (["--seeds", "0,x"], "--seeds"),
    (["--seeds", "0,1", "--set", "train.cuda_graph=true"], "train.cuda_graph"),
    (["--seeds", "0,1", "--set", "train.keep_best=valid_elbo"], "train.keep_best is not available in a stacked"),
    (["--seeds", "0,1", "--set", "train.early_stop_patience=3"], "train.early_stop_patience is not available"),
    (["--seeds", "0,1", "--set", "train.backward=manual"], "train.backward=manual is not available"),
    (["--seeds", "0,1", "--set", "estimator.name=relax"], "cannot be stacked"),
])
def test_stack_cli_refuses_in_one_line(args, says, tmp_path):
    preset = "bernoulli_vae" if "relax" in str(args) else "gaussian_vae"
    proc = vaelab("stack", preset, "--out", tmp_path / "out", *args, *sum((["--set", s] for s in TINY), []))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out" / "seed=0" / "checkpoint").exists()


def test_sweep_stack_trains_seeds_together_then_evaluates(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"base": "gaussian_vae", "set": {k: yaml.safe_load(v) for k, v in
                                                                    (s.split("=") for s in TINY[:4])},
                                    "seeds": 2, "evaluate": {"iw_samples": 10}, "stack": True}))
    proc = vaelab("sweep", spec, "--out", tmp_path / "sw", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert "stacking 2 seeds" in proc.stderr
    runs = yaml.safe_load((tmp_path / "sw" / "sweep.yaml").read_text())["runs"]
    assert all(r["state"] == "done" for r in runs.values()) and len(runs) == 2
    for name in runs:                     # trained by the stack, not again by the sweep: one train log line
        assert (tmp_path / "sw" / name / "eval.json").is_file()
        assert "vaelab train" not in (tmp_path / "sw" / "logs" / f"{name}.log").read_text()


def test_a_stacked_seeds_checkpoint_is_its_own_runs_state(tmp_path):
    """Each seed's state.pt is the one its own `vaelab train` writes: the same entries, the same optimizer step count,
    and its data and noise generators exactly where its own run leaves them (what `train --resume` continues from)."""
    cfg = sgd_config("reparam")
    train_stacked(cfg, [0, 3], [tmp_path / "s0", tmp_path / "s3"], quiet=True)
    (_, _, stacked), (_, _, alone) = read_checkpoint(tmp_path / "s3"), separate(cfg, 3, tmp_path / "alone")
    assert stacked.keys() == alone.keys() and stacked["epoch"] == alone["epoch"] == 2
    assert torch.equal(stacked["data_rng"], alone["data_rng"]) and torch.equal(stacked["torch_rng"], alone["torch_rng"])
    steps = [[s["step"] for s in o["state"].values()] for o in alone["optim"]["optimizers"]]
    assert [[s["step"] for s in o["state"].values()] for o in stacked["optim"]["optimizers"]] == steps


def test_a_stacked_loss_that_diverges_says_so_in_the_trainers_words(tmp_path, monkeypatch):
    from vaelab.estimators.pathwise import Reparam
    from vaelab.runs.lifecycle import has_checkpoint

    real = Reparam.forward

    def poisoned(self, model, x, kl_weight=1.0):
        est = real(self, model, x, kl_weight)
        est.loss = est.loss * float("nan")
        return est

    monkeypatch.setattr(Reparam, "forward", poisoned)
    runs = [tmp_path / "s0", tmp_path / "s1"]
    with pytest.raises(VaelabError) as err:
        train_stacked(sgd_config("reparam"), [0, 1], runs, quiet=True)
    assert str(err.value) == ("training diverged in epoch 1 (losses [nan, nan]): lower train.lr or set "
                              "train.grad_clip, then rerun the same `vaelab stack` command (no checkpoint was "
                              "written; it restarts the run)")
    assert not any(has_checkpoint(r) for r in runs)
