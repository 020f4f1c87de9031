"""Crash-safe checkpoints: weights in safetensors (config and provenance in its metadata), the rest in state.pt,
loaded with `torch.load(weights_only=True)`. Checkpoints are written to `checkpoint.tmp/` and swapped in by renames,
so a crash never leaves a half-written checkpoint in place of a good one; a non-finite one is never written
(`first_nonfinite`, `nonfinite_training_state`). `read_checkpoint` refuses damaged or foreign files with one line;
`load_weights` puts the tensors into a model and estimator. Provenance records and checks: runs/provenance.py.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import Tensor, nn

from vaelab.config.schema import Config, config_from_yaml_text
from vaelab.core import faults
from vaelab.core.atomic import fsync_write
from vaelab.core.errors import VaelabError
from vaelab.core.plugins import PluginMissing
from vaelab.estimators.pathwise import Estimator
from vaelab.models.vae import VAE
from vaelab.runs.provenance import check_same_run, provenance_record
from vaelab.runs.run_dir import RunDir
from vaelab.runs.train_state import check_state

FORMAT = "vaelab-checkpoint-1"


def _float_tensors(value: Any, name: str) -> Iterator[tuple[str, Tensor]]:
    """The floating-point tensors in a nest of dicts, lists and tuples, each with its dotted name."""
    if isinstance(value, Tensor):
        if value.is_floating_point() and value.numel():
            yield name, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _float_tensors(item, f"{name}.{key}" if name else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _float_tensors(item, f"{name}[{i}]")


def first_nonfinite(value: Any) -> str | None:
    """The name of the first floating tensor in `value` (a tensor or a nest of dicts and lists) holding NaN or an
    infinity; None when all are finite. One host sync per device, whatever the number of tensors."""
    named = list(_float_tensors(value, ""))
    bad: list[int] = []
    for device in {t.device for _, t in named}:
        index = [i for i, (_, t) in enumerate(named) if t.device == device]
        finite = torch.stack([torch.isfinite(named[i][1]).all() for i in index])      # [T] bool
        bad += [index[int(j)] for j in (~finite).nonzero().flatten().tolist()]
    return named[min(bad)][0] if bad else None


def nonfinite_training_state(model: nn.Module, estimator: nn.Module, optim: Any) -> str | None:
    """The first of the weights, buffers and optimizer moments (`optim`: a torch optimizer or optim.Optimizers)
    that holds NaN or an infinity, named ("model.decoder.0.weight", "exp_avg_sq of model.decoder.0.weight"), or
    None: a training step that left one is a divergence even when its loss was finite."""
    names = {id(p): f"{prefix}.{k}" for prefix, module in (("model", model), ("estimator", estimator))
             for k, p in module.named_parameters()}
    moments = {f"{key} of {names.get(id(p), 'a parameter')}": v for o in getattr(optim, "optimizers", [optim])
               for p, entry in o.state.items() for key, v in entry.items()}
    return first_nonfinite({"model": model.state_dict(), "estimator": estimator.state_dict(), **moments})


def save_checkpoint(run_dir: Path, cfg: Config, model: VAE, estimator: Estimator, state: dict[str, Any]) -> None:
    """Write weights (safetensors, config in metadata) and training state to checkpoint.tmp/, then swap them in by
    renames. A failed write (disk full, a file-size limit, permissions) removes checkpoint.tmp/ and leaves the
    previous checkpoint as it was; so does a weight or optimizer moment holding NaN or an infinity (a divergence:
    a non-finite checkpoint is never written)."""
    tmp, final, old = run_dir / "checkpoint.tmp", run_dir / "checkpoint", run_dir / "checkpoint.old"
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors |= {f"estimator.{k}": v.detach().contiguous() for k, v in estimator.state_dict().items()}
    bad = first_nonfinite(tensors) or first_nonfinite({"optimizer state": state.get("optim")})
    if bad is not None:
        kept = "the last finite checkpoint is kept" if _has_checkpoint(run_dir) else "no checkpoint was written"
        raise VaelabError(f"training diverged: NaN or infinite values in {bad} ({kept}): lower train.lr or set "
                          "train.grad_clip")
    record = provenance_record(cfg, state.get("provenance"))
    state = {**state, "provenance": record}
    weights = safetensors.torch.save(tensors, metadata={"format": FORMAT, "config": cfg.to_yaml(),
                                                        "epoch": str(state.get("epoch", 0)), **record})
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        fsync_write(tmp / "model.safetensors", weights)
        fsync_write(tmp / "state.pt", buffer.getvalue())
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = "the previous checkpoint is intact" if _has_checkpoint(run_dir) else "no checkpoint was written yet"
        raise VaelabError(f"cannot write the checkpoint in {run_dir} ({err.strerror or err}; {kept}): free disk "
                          f"space or make it writable, then `vaelab train --resume {run_dir}` continues") from err
    faults.point("checkpoint.written")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        faults.point("checkpoint.moved-old")
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _has_checkpoint(run_dir: Path) -> bool:
    return RunDir(run_dir).has_checkpoint


def _checkpoint_dir(run_dir: Path) -> Path:
    """`RunDir.checkpoint_dir` (kept for runs/bundle.py)."""
    return RunDir(run_dir).checkpoint_dir()


DAMAGED_FIX = "retrain, or resume from a backup copy"


MEMBERS = ("model.safetensors", "state.pt")
RETRIES = 3   # a writer swapping checkpoints in while we read: each retry starts from the directory it left


def _read_member(dir_fd: int, name: str) -> bytes:
    """One file of a checkpoint directory, opened relative to the directory's descriptor."""
    fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def read_members(run_dir: Path) -> tuple[Path, dict[str, bytes]]:
    """The bytes of model.safetensors and state.pt of ONE checkpoint, read through one descriptor of its directory:
    `save_checkpoint` swaps whole directories by rename and never rewrites a file in place, so a `vaelab evaluate`
    beside a training run cannot pair the weights of one checkpoint with the state of the next. A directory removed
    under us (the writer's cleanup of checkpoint.old/) is read again from where the writer left the run."""
    for attempt in range(RETRIES):
        ckpt = _checkpoint_dir(run_dir)
        try:
            dir_fd = os.open(ckpt, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue
        try:
            return ckpt, {name: _read_member(dir_fd, name) for name in MEMBERS}
        except FileNotFoundError as err:
            if attempt == RETRIES - 1:
                raise VaelabError(f"checkpoint {ckpt} lacks {Path(err.filename or '?').name}: {DAMAGED_FIX}") from err
        except OSError as err:
            raise VaelabError(f"cannot read checkpoint {ckpt} ({err.strerror or err}): {DAMAGED_FIX}") from err
        finally:
            os.close(dir_fd)
    raise VaelabError(f"no whole checkpoint in {run_dir} after {RETRIES} tries (a writer kept replacing it): "
                      "rerun the command")


def safetensors_metadata(raw: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file's bytes: an 8-byte little-endian header length, then the JSON
    header (the format's specification); ValueError when the bytes do not hold one."""
    if len(raw) < 8:
        raise ValueError("shorter than a safetensors header")
    size = int.from_bytes(raw[:8], "little")
    if size > len(raw) - 8:
        raise ValueError("header longer than the file")
    header = json.loads(raw[8:8 + size].decode("utf-8"))
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def _load_files(ckpt: Path, raw: dict[str, bytes]) -> tuple[dict[str, str], dict[str, Tensor], Any]:
    """Metadata, tensors and the state object of one checkpoint's bytes; nothing in them is executed."""
    try:
        meta = safetensors_metadata(raw["model.safetensors"])
        tensors = safetensors.torch.load(raw["model.safetensors"])
    except (SafetensorError, RuntimeError, ValueError) as err:
        raise VaelabError(f"checkpoint {ckpt} is damaged ({str(err).splitlines()[0][:80]}): {DAMAGED_FIX}") from err
    if meta.get("format") != FORMAT:
        raise VaelabError(f"{ckpt} is not a vaelab checkpoint (format {meta.get('format')!r}): "
                          "point to a run directory written by `vaelab train`")
    try:
        state = torch.load(io.BytesIO(raw["state.pt"]), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):         # torch refused a global: a pickle payload, never run
            raise VaelabError(f"{ckpt}/state.pt holds objects other than tensors and plain values (refused "
                              f"unread): {DAMAGED_FIX}") from err
        raise VaelabError(f"{ckpt}/state.pt is damaged (not a torch.save file): {DAMAGED_FIX}") from err
    except (OSError, RuntimeError, EOFError, ValueError, TypeError, AttributeError, KeyError,
            zipfile.BadZipFile) as err:
        raise VaelabError(f"{ckpt}/state.pt is damaged ({str(err).splitlines()[0][:80]}): {DAMAGED_FIX}") from err
    return meta, tensors, state


def read_checkpoint(run_dir: str | Path) -> tuple[Config, dict[str, Tensor], dict[str, Any]]:
    """Config, weights and training state of a run, refusing damaged or foreign files with a clear error: the
    config is re-validated, the weights must be finite, state.pt must hold the keys and types `train` writes."""
    ckpt, raw = read_members(Path(run_dir))
    meta, tensors, state = _load_files(ckpt, raw)
    if "config" not in meta:
        raise VaelabError(f"checkpoint {ckpt} carries no config in its metadata: {DAMAGED_FIX}")
    try:
        cfg = config_from_yaml_text(meta["config"], f"the config stored in {ckpt}", DAMAGED_FIX)
    except PluginMissing as err:
        raise PluginMissing(f"run {Path(run_dir)} needs a plugin: {err}") from err
    except VaelabError as err:
        if "stored in" in str(err):
            raise
        raise VaelabError(f"the config stored in {ckpt} is invalid ({err}); {DAMAGED_FIX}") from err
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise VaelabError(f"checkpoint {ckpt} holds NaN or infinite values in {key}: {DAMAGED_FIX}")
    check_state(state, ckpt, meta.get("epoch"))
    check_same_run(meta, state, ckpt)
    return cfg, tensors, state


def load_weights(model: VAE, estimator: Estimator, tensors: dict[str, Tensor]) -> None:
    """Load checkpoint tensors into model and estimator; a key mismatch is a foreign checkpoint."""
    for prefix, module in (("model.", model), ("estimator.", estimator)):
        part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(part)
        except RuntimeError as err:
            detail = " ".join(str(err).split("\n", 1)[-1].split())[:120]    # the first mismatch, on one line
            raise VaelabError(f"checkpoint does not match its config ({detail}): was it copied from another "
                              "run?") from err
