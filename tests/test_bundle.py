"""Run bundles (vaelab.runs.bundle): a run written as one .safetensors file and unpacked elsewhere resumes bit for bit
as the original does; damaged, edited or foreign files and occupied targets are refused with one line, exit 2."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vaelab.core import faults
from vaelab.runs.bundle import digest

RUN_ARGS = ["bernoulli_vae", "--data", "digits", "--quiet", "--device", "cpu", "--epochs", "2",
            "--set", "model.hidden=[16]", "--set", "model.latent_dim=4", "--set", "train.batch_size=32",
            "--set", "train.steps_per_epoch=4", "--set", "train.grad_stats_every=3",
            "--set", "train.grad_stats_draws=2", "--set", "train.log_every=1"]
STEPS = 4                                  # train.steps_per_epoch


def rows(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock field."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoint" / "model.safetensors")


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def same(a: object, b: object) -> bool:
    """Equal values of equal types, tensors bit for bit (dtype, shape, contents), dict keys in the same order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.fixture
def trained(tmp_path, cli) -> Path:
    """A run of 2 epochs of 4 steps (sfe-avg: an estimator buffer, Adam moments, sampling noise, grad_stats.jsonl)."""
    run = tmp_path / "run"
    assert cli("train", *RUN_ARGS, "--out", run)[0] == 0
    return run


@pytest.mark.parametrize("stop", [None, f"step:{STEPS + 2}:TERM"])   # at an epoch's end; inside epoch 2
def test_an_unpacked_bundle_resumes_bit_for_bit_like_the_original(stop, tmp_path, cli, monkeypatch):
    original, moved, bundle = tmp_path / "original", tmp_path / "elsewhere" / "run", tmp_path / "run.safetensors"
    faults.reset()
    if stop:
        monkeypatch.setenv(faults.ENV, stop)
    code, _, err = cli("train", *RUN_ARGS, "--out", original)
    assert code == (143 if stop else 0), err
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.reset()
    assert cli("bundle", original, "--out", bundle)[0] == 0
    code, out, err = cli("unbundle", bundle, "--out", moved)
    assert code == 0 and f"vaelab train --resume {moved}" in out, err
    assert sorted(p.name for p in moved.iterdir()) == ["checkpoint", "config.yaml", "grad_stats.jsonl",
                                                       "metrics.jsonl"]
    for name in ("config.yaml", "metrics.jsonl", "grad_stats.jsonl"):
        assert (moved / name).read_text() == (original / name).read_text(), name
    state = [torch.load(run / "checkpoint" / "state.pt", weights_only=True) for run in (original, moved)]
    assert ("partial" in state[0]) == bool(stop) and same(state[0], state[1])     # tensors, types, key order
    for run in (original, moved):
        code, _, err = cli("train", "--resume", run, "--epochs", "4", "--quiet")
        assert code == 0, err
    a, b = rows(original), rows(moved)
    assert [r["epoch"] for r in a] == [1, 2, 3, 4] and a == b
    assert a[3]["train_elbo"] != a[1]["train_elbo"]                  # the resumed epochs really trained
    wa, wb = weights(original), weights(moved)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (original / "grad_stats.jsonl").read_text().count("\n") == 16 // 3
    assert (original / "grad_stats.jsonl").read_text() == (moved / "grad_stats.jsonl").read_text()


def test_the_bundle_holds_the_checkpoint_and_texts_and_nothing_else(trained, tmp_path, cli):
    bundle = tmp_path / "b.safetensors"
    assert cli("bundle", trained, "--out", bundle)[0] == 0
    ckpt = trained / "checkpoint"
    tensors = list(load_file(ckpt / "model.safetensors").values())
    stack = [torch.load(ckpt / "state.pt", weights_only=True)]
    while stack:                                                     # every tensor of state.pt, independently found
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            tensors.append(item)
        elif isinstance(item, dict):
            stack += list(item.values())
        elif isinstance(item, list | tuple):
            stack += list(item)
    data = bundle.read_bytes()
    (header,) = struct.unpack("<Q", data[:8])
    assert len(data) - 8 - header == sum(t.numel() * t.element_size() for t in tensors)   # the data section
    with safe_open(bundle, framework="pt") as f:
        meta = f.metadata()
    assert meta["file:metrics.jsonl"] == (trained / "metrics.jsonl").read_text()
    assert meta["file:config.yaml"] == (trained / "config.yaml").read_text()
    assert any((trained / "tb").iterdir()) and not any(k.startswith("file:tb") for k in meta)
    assert len(data) < dir_size(trained)


def test_a_damaged_edited_or_foreign_bundle_is_refused_in_one_line(trained, tmp_path, cli):
    bundle = tmp_path / "b.safetensors"
    assert cli("bundle", trained, "--out", bundle)[0] == 0
    good = bundle.read_bytes()
    epoch_row = b'\\"epoch\\": 1'                                     # inside metrics.jsonl's text in the header
    cases = {
        "flipped-byte.safetensors": (good[:-1] + bytes([good[-1] ^ 1]), "do not match its sha256"),
        "edited-metrics.safetensors": (good.replace(epoch_row, b'\\"epoch\\": 7', 1), "do not match its sha256"),
        "truncated.safetensors": (good[: len(good) // 2], "damaged or not a safetensors file"),
        "empty.safetensors": (b"", "damaged or not a safetensors file"),
        "checkpoint.safetensors": ((trained / "checkpoint" / "model.safetensors").read_bytes(),
                                   "not a vaelab run bundle"),
    }
    assert epoch_row in good
    for name, (content, problem) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        out = tmp_path / f"out-{name}"
        code, _, err = cli("unbundle", path, "--out", out)
        line = one_line(err)
        assert code == 2 and str(path) in line and problem in line and "vaelab bundle" in line, line
        assert not out.exists() and not list(tmp_path.glob(".out-*"))   # nothing written, no temp dir left


def test_a_bundle_with_a_valid_digest_but_a_broken_state_is_refused(trained, tmp_path, cli):
    """Checked past its digest: an RNG state of the wrong size (re-signed) is caught before anything is written."""
    bundle, forged = tmp_path / "b.safetensors", tmp_path / "forged.safetensors"
    assert cli("bundle", trained, "--out", bundle)[0] == 0
    tensors = load_file(bundle)
    with safe_open(bundle, framework="pt") as f:
        meta = f.metadata()
    tensors["state.torch_rng"] = tensors["state.torch_rng"][:100].clone()
    meta["sha256"] = digest(tensors, meta)
    save_file(tensors, forged, metadata=meta)
    code, _, err = cli("unbundle", forged, "--out", tmp_path / "out")
    line = one_line(err)
    assert code == 2 and "does not hold a resumable run" in line and "random-generator state" in line, line
    assert not (tmp_path / "out").exists()


def test_unbundling_over_a_non_empty_directory_is_refused(trained, tmp_path, cli):
    bundle, target = tmp_path / "b.safetensors", tmp_path / "target"
    assert cli("bundle", trained, "--out", bundle)[0] == 0
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    code, _, err = cli("unbundle", bundle, "--out", target)
    assert code == 2 and "is not empty" in one_line(err)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    code, _, err = cli("unbundle", bundle, "--out", trained)          # the original run itself
    assert code == 2 and "is not empty" in one_line(err)
    (target / "notes.txt").unlink()                                  # an empty directory is taken
    assert cli("unbundle", bundle, "--out", target)[0] == 0
    assert rows(target) == rows(trained)


def test_bundling_what_is_not_a_trained_run_is_refused(tmp_path, cli):
    (tmp_path / "empty").mkdir()
    code, _, err = cli("bundle", tmp_path / "empty", "--out", tmp_path / "b.safetensors")
    assert code == 2 and "no checkpoint" in one_line(err)
    assert not (tmp_path / "b.safetensors").exists()
