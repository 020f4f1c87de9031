"""RunDir (runs/run_dir.py): the one answer to what a run directory holds, what to do with it next, and who may
clear it. Kinds of hand-built directories, the checkpoint answer against what `vaelab train` leaves, eval.json read
back when damaged, train/resume/skip, and clearing a stranded run only while nobody else holds its lock."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest
from safetensors.torch import save_file

from vaelab.config.schema import Config
from vaelab.core.errors import VaelabError
from vaelab.evaluation.run_eval import merge_eval
from vaelab.experiments.sweep_run import Job, RunFailed, execute_run, train_step
from vaelab.runs import checkpoint, lifecycle
from vaelab.runs.checkpoint import FORMAT, read_checkpoint
from vaelab.runs.run_dir import LOCK_FILE, RunDir

CONFIG = "configs/gaussian_vae.yaml"
ARGS = ["--data", "digits", "--quiet", "--device", "cpu", "--set", "model.hidden=[16]", "--set",
        "model.latent_dim=2", "--set", "train.batch_size=64"]


def make(root: Path, *names: str) -> Path:
    """A directory holding `names` (a trailing "/" makes a folder; any other name an empty file)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if name.endswith("/") else path.write_text("")
    return root


def fake_checkpoint(run: Path, epoch: int, cfg: Config | None = None, name: str = "checkpoint") -> Path:
    """A checkpoint whose safetensors header says `cfg` and `epoch`, as save_checkpoint writes it (no real model:
    the header is all RunDir reads)."""
    import torch

    ckpt = run / name
    ckpt.mkdir(parents=True)
    save_file({"model.w": torch.zeros(2)}, ckpt / "model.safetensors",
              metadata={"format": FORMAT, "config": (cfg or Config()).to_yaml(), "epoch": str(epoch)})
    return ckpt


# ------------------------------------------------------------------------------------------------------ kinds

@pytest.mark.parametrize(("names", "kind"), [
    ((), "empty"),
    (("fig/", "logs/x.log"), "empty"),                              # no run files
    (("config.yaml",), "stranded"),
    (("metrics.jsonl",), "stranded"),
    (("checkpoint/",), "stranded"),                                 # a checkpoint folder without its weights
    (("config.yaml", "checkpoint.tmp/model.safetensors"), "stranded"),   # never swapped in
    (("checkpoint/model.safetensors",), "run"),
    (("config.yaml", "checkpoint.old/model.safetensors"), "run"),   # a crash between the two renames
], ids=["bare", "no-run-files", "config", "metrics", "empty-checkpoint", "tmp-only", "checkpoint", "old-only"])
def test_kind_of_hand_built_directories(tmp_path, names, kind):
    run = RunDir(make(tmp_path / "run", *names))
    assert run.kind == kind
    assert run.has_checkpoint == (kind == "run") == lifecycle.has_checkpoint(run.path)
    if kind != "run":
        assert run.plan(1).action == "train" and run.checkpoint_header() is None
    else:                                          # the weights file above is empty: its header is unreadable
        with pytest.raises(VaelabError, match=r"model.safetensors is unreadable .*: delete .* to retrain it"):
            run.plan(1)


def test_kind_of_paths_that_are_no_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    assert RunDir(tmp_path / "missing").kind == "empty" and RunDir(tmp_path / "file").kind == "empty"
    with pytest.raises(VaelabError, match="is a file, not a run directory"):
        RunDir(tmp_path / "file").checkpoint_dir()
    with pytest.raises(VaelabError, match="no checkpoint in"):
        RunDir(tmp_path / "missing").checkpoint_dir()


def test_checkpoint_dir_prefers_the_swapped_in_one(tmp_path):
    run = make(tmp_path / "run", "checkpoint.old/model.safetensors")
    assert RunDir(run).checkpoint_dir() == run / "checkpoint.old" == checkpoint._checkpoint_dir(run)
    make(run, "checkpoint/model.safetensors")
    assert RunDir(run).checkpoint_dir() == run / "checkpoint" and RunDir(run).weights_path.parent.name == "checkpoint"


# ------------------------------------------------------------------------------- what `vaelab train` leaves

def test_has_checkpoint_agrees_with_what_train_leaves(tmp_path, cli):
    """A finished 1-epoch run is a "run" whose header says what read_checkpoint reads in full; a run that diverged
    in its first epoch (nothing checkpointed) is "stranded", and both plans follow."""
    run = RunDir(tmp_path / "run")
    assert cli("train", CONFIG, "--out", run.path, *ARGS, "--epochs", 1)[0] == 0
    cfg, _, state = read_checkpoint(run.path)
    header = run.checkpoint_header()
    assert run.kind == "run" and run.has_checkpoint and not run.lock_path.exists()
    assert header.epoch == state["epoch"] == 1 and header.config == cfg == run.config()
    assert [r["epoch"] for r in run.metrics()] == [1] and run.eval() == {}
    assert run.plan(1).action == "skip" and run.plan(3).action == "resume" and run.plan(3).epoch == 1
    assert run.plan(1).differences(cfg) == []

    diverged = RunDir(tmp_path / "diverged")
    code, _, err = cli("train", CONFIG, "--out", diverged.path, *ARGS, "--epochs", 1, "--set", "train.lr=1e30")
    assert code == 2 and "no checkpoint was written" in err
    assert diverged.kind == "stranded" and not diverged.has_checkpoint and diverged.plan(1).action == "train"
    assert diverged.config().train.lr == 1e30


# ------------------------------------------------------------------------------------------------- eval.json

@pytest.mark.parametrize(("content", "strict_error"), [
    (None, None),                                                       # missing
    (b"\x00garbage", None),                                             # not JSON: unreadable, never an error
    (b'{"elbo": -1.0, "iw_loglik": ', None),                             # torn
    (b"[1, 2]", None),                                                  # not an object
    (b"\xff\xfe{}", None),                                              # not UTF-8
    (b'{"elbo": "-100.5"}', "has elbo = '-100.5', not a number"),
    (b'{"elbo": -100.0, "epochs_trained": true}', "has epochs_trained = True, not a number"),
], ids=["missing", "garbage", "torn", "list", "not-utf8", "string-number", "bool"])
def test_a_damaged_eval_json_is_empty_or_one_line(tmp_path, content, strict_error):
    run = RunDir(make(tmp_path / "run"))
    if content is not None:
        run.eval_path.write_bytes(content)
    assert run.eval() == {}
    if strict_error is None:
        assert run.eval(strict=True) == {}
    else:
        with pytest.raises(VaelabError, match=strict_error) as err:
            run.eval(strict=True)
        assert "\n" not in str(err.value) and f"rerun `vaelab evaluate {run.path}`" in str(err.value)
    merge_eval(run.path, {"iw_samples": 5})                             # the next evaluation replaces it
    assert json.loads(run.eval_path.read_text()) == {"iw_samples": 5} == run.eval(strict=True)


def test_a_sound_eval_json_is_read_as_written(tmp_path):
    run = RunDir(make(tmp_path / "run"))
    values = {"elbo": -90.5, "iw_loglik": None, "epochs_trained": 2, "quality_bernoulli_normal": {"fid": 1.5}}
    run.eval_path.write_text(json.dumps(values))
    assert run.eval() == values == run.eval(strict=True)


# ------------------------------------------------------------------------------------- train, resume or skip

def test_plan_from_the_checkpoint_header(tmp_path):
    cfg = Config()
    run = RunDir(tmp_path / "run")
    assert run.plan(3).action == "train" and run.plan(3).epoch == 0
    fake_checkpoint(run.path, 2, cfg, name="checkpoint.old")
    assert [(run.plan(n).action, run.plan(n).epoch) for n in (1, 2, 3)] == [("skip", 2), ("skip", 2), ("resume", 2)]
    other = Config()
    other.train.lr, other.train.device, other.description = cfg.train.lr * 2, "cuda:3", "relabelled"
    plan = run.plan(3)
    assert plan.differences(other) == ["description", "train.lr"]
    assert plan.differences(other, ignore=("train.device", "description", "train.lr")) == []
    assert plan.header.config == cfg                                    # differences changes no saved config


def test_the_sweep_trains_resumes_or_skips_by_the_plan(tmp_path):
    """sweep_run.train_step decides by RunDir.plan: train (clearing a stranded run), resume (dropping the stale
    eval.json and density.npz), skip, or refuse a checkpoint past the spec's epochs."""
    cfg = Config()
    config_path = tmp_path / "cfg.yaml"
    config_path.write_text(cfg.to_yaml())
    run = tmp_path / "run"

    def job(epochs: int) -> Job:
        return Job("r", str(run), str(config_path), str(tmp_path / "r.log"), epochs, 20, False, "cpu", 1,
                   str(tmp_path))

    make(run, "config.yaml", "metrics.jsonl", "tb/events", "checkpoint.tmp/state.pt")
    assert train_step(job(2)) == ("trained", [["train", str(config_path), "--out", str(run)]])
    assert sorted(p.name for p in run.iterdir()) == []                  # cleared, its lock file removed too
    fake_checkpoint(run, 1, cfg)
    make(run, "eval.json", "density.npz")
    assert train_step(job(1)) == ("already trained", []) and (run / "eval.json").exists()
    assert train_step(job(2))[0] == "resumed at epoch 2"
    assert not (run / "eval.json").exists() and not (run / "density.npz").exists()
    with pytest.raises(RunFailed, match="trained for 1 epochs, more than the spec's 0"):
        train_step(job(0))


# ------------------------------------------------------------------------------- clearing a stranded run

def hold_lock(run: Path) -> int:
    """Another writer: an flock on RUN/train.lock taken on a descriptor of its own (what a second process holds)."""
    fd = os.open(run / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"pid 4242 on elsewhere\n")
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_clearing_a_stranded_run_waits_for_nobody_and_deletes_nothing_while_it_is_held(tmp_path):
    run = RunDir(make(tmp_path / "run", "config.yaml", "metrics.jsonl", "tb/events", "checkpoint.tmp/state.pt"))
    fd = hold_lock(run.path)
    before = sorted(p.relative_to(run.path) for p in run.path.rglob("*"))         # train.lock among them
    try:
        with pytest.raises(VaelabError, match=r"is being written by another vaelab process \(pid 4242 on elsewhere"):
            run.clear_stranded()
        assert sorted(p.relative_to(run.path) for p in run.path.rglob("*")) == before   # nothing deleted
        job = Job("r", str(run.path), "unused.yaml", str(tmp_path / "r.log"), 1, None, False, "cpu", 1,
                  str(tmp_path))
        with pytest.raises(VaelabError, match="being written by another vaelab process"):
            train_step(job)                                             # the sweep asks the same, under the lock
        result = execute_run(job)                                       # and records a failed run, not a crash
        assert result["state"] == "failed" and "being written by another vaelab process" in result["error"]
        assert sorted(p.relative_to(run.path) for p in run.path.rglob("*")) == before
    finally:
        os.close(fd)                                                    # the other writer ends
    assert run.clear_stranded() is True
    assert sorted(p.name for p in run.path.iterdir()) == [] and run.kind == "empty"
    assert run.clear_stranded() is False                                # nothing stranded left


def test_clearing_leaves_a_run_with_a_checkpoint_alone(tmp_path):
    run = RunDir(tmp_path / "run")
    fake_checkpoint(run.path, 1)
    make(run.path, "config.yaml", "eval.json")
    assert run.clear_stranded() is False and run.config_path.exists() and run.eval_path.exists()
