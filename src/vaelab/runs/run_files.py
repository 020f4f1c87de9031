"""A run directory: the resolved config, data resident on the device, and crash-safe checkpoints.

Layout of RUN_DIR:  config.yaml  metrics.jsonl  tb/  checkpoint/{model.safetensors, state.pt}  eval.json  fig/
Checkpoints are written to `checkpoint.tmp/` and swapped in by renames, so a crash never leaves a half-written
checkpoint in place of a good one. Weights are safetensors; the rest loads with `torch.load(weights_only=True)`.

Provenance (run_dir.PROVENANCE): every checkpoint records, in model.safetensors' metadata and as state.pt's
"provenance", the run's id, the sha256 of its config and what it was trained on (`run_dir.data_identity`: the data
file's absolute path and sha256; a named source by name). `start_provenance` makes the record when training starts
and refuses to resume on a data file that changed; `read_checkpoint` refuses a state.pt whose record is not the
weights' (a foreign optimizer state); `open_run` says in one line that config.yaml was edited after training (the
checkpoint's config is used) and refuses a data file that changed unless the data is given explicitly
(`data_source`: then one line says the numbers do not compare). Checkpoints from before these fields are not
checked.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import shutil
import sys
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from vaelab.config.schema import Config, DataConfig, config_from_yaml_text
from vaelab.core import faults
from vaelab.core.atomic import atomic_write_text, fsync_write
from vaelab.core.errors import VaelabError
from vaelab.core.plugins import PluginMissing
from vaelab.data.binarize import binarize, fixed_draw
from vaelab.data.sources import SOURCES, load_dataset
from vaelab.data.splits import Splits
from vaelab.estimators.pathwise import Estimator, build_estimator
from vaelab.models.vae import VAE, build_model
from vaelab.runs.run_dir import PROVENANCE, RunDir, config_sha256, data_identity
from vaelab.runs.train_state import check_state
from vaelab.runtime.distributed import is_main_process
from vaelab.runtime.hardware import resolve_device

FORMAT = "vaelab-checkpoint-1"


@dataclass
class DeviceData:
    """Images on the training device. Train stays in [0, 1] for dynamic binarization; valid/test are a fixed draw."""

    x_train: Tensor   # [N, P] raw (dynamic) or binarized once (static / threshold / none)
    y_train: Tensor
    x_valid: Tensor   # [Nv, P] binary, fixed seeded draw
    y_valid: Tensor
    x_test: Tensor    # [Nt, P] binary, fixed seeded draw: comparable across runs
    y_test: Tensor
    image_shape: tuple[int, int]
    binarize: str

    def train_epoch_images(self, generator: torch.Generator) -> Tensor:
        """The training images of one epoch: a fresh Bernoulli draw when binarization is dynamic."""
        return binarize(self.x_train, "dynamic", generator) if self.binarize == "dynamic" else self.x_train

    def fixed_train_images(self, seed: int) -> Tensor:
        """The training images as one fixed draw (`data.fixed_draw` seeded by `seed`, the config's data.eval_seed
        where codes must be reproducible) under dynamic binarization; otherwise the run's own fixed training draw."""
        return fixed_draw(self.x_train, "dynamic", seed) if self.binarize == "dynamic" else self.x_train


def resplit_valid(splits: Splits, n_valid: int) -> Splits:
    """Train and valid joined in their original order (for MNIST, the 60,000 training images of the IDX file), the
    last `n_valid` of them as valid: `data.valid_size`, e.g. 400 as in yburda/iwae datasets.py (59,600 / 400)."""
    x = np.concatenate([splits.x_train, splits.x_valid])                     # [Ntr + Nv, P]
    y = np.concatenate([splits.y_train, splits.y_valid])
    if not 0 < n_valid < len(x):
        raise VaelabError(f"data.valid_size = {n_valid} leaves no training images of the {len(x)}: "
                          f"give fewer than {len(x)}")
    return dataclasses.replace(splits, x_train=x[:-n_valid], y_train=y[:-n_valid], x_valid=x[-n_valid:],
                               y_valid=y[-n_valid:])


def prepare_data(cfg: DataConfig, device: torch.device, splits: Splits | None = None) -> DeviceData:
    """Load the splits and put them on `device`. Valid/test are `data.fixed_draw`s from one stream seeded by
    `cfg.eval_seed` (or thresholded), the same tensors whatever `cfg.binarize` says about the training images, so
    every run is scored on the same test draw; a static training draw has its own seed, `cfg.eval_seed + 1`."""
    splits = splits or load_dataset(cfg.source)
    splits = resplit_valid(splits, cfg.valid_size) if cfg.valid_size is not None else splits
    eval_stream = torch.Generator().manual_seed(cfg.eval_seed)              # valid first, then test
    x_valid, x_test = (fixed_draw(torch.from_numpy(a).float(), cfg.binarize, eval_stream).to(device)
                       for a in (splits.x_valid, splits.x_test))
    x_train = torch.from_numpy(splits.x_train).float()
    x_train = x_train if cfg.binarize == "dynamic" else fixed_draw(x_train, cfg.binarize, cfg.eval_seed + 1)
    labels = [torch.from_numpy(y).long().to(device) for y in (splits.y_train, splits.y_valid, splits.y_test)]
    return DeviceData(x_train.to(device), labels[0], x_valid, labels[1], x_test, labels[2],
                      tuple(splits.image_shape), cfg.binarize)


def build(cfg: Config, data: DeviceData, device: torch.device) -> tuple[VAE, Estimator]:
    """Model and estimator for `cfg`, on `device`, seeded by `cfg.train.seed`."""
    torch.manual_seed(cfg.train.seed)
    try:
        model = build_model(cfg.model, data.x_train.shape[1], data.image_shape, data.x_train.mean(0).cpu())
        estimator = build_estimator(cfg.estimator.name, cfg.estimator.kwargs, model)
        return model.to(device), estimator.to(device)
    except (RuntimeError, MemoryError) as err:
        if "alloc" not in str(err).lower() and not isinstance(err, MemoryError | torch.OutOfMemoryError):
            raise
        raise VaelabError(f"the model does not fit in memory on {device} ({str(err).splitlines()[0][:80]}): "
                          "lower model.hidden or model.latent_dim") from err


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
    record = _record(cfg, state.get("provenance"))
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


def _record(cfg: Config, started: dict[str, str] | None) -> dict[str, str]:
    """A checkpoint's provenance: `started` (`start_provenance`'s record) with the hash of `cfg`; without one (a run
    not started by `train`, e.g. a stacked seed) the data as it is now and no run id."""
    started = started or {"run_id": "", **data_identity(cfg.data.source)}
    return {**{k: str(started.get(k, "")) for k in PROVENANCE}, "config_sha256": config_sha256(cfg.to_dict())}


def _short(digest: str) -> str:
    return f"{digest[:12]}…" if digest else "none"


def start_provenance(cfg: Config, run_dir: Path, saved: dict[str, str] | None) -> dict[str, str]:
    """The provenance a run records from now on (state.pt's "provenance", `TrainState.provenance`): its run id
    (`saved`'s when resuming, else a new one), its config's hash and its data's identity, hashed once per process.
    Resuming (`saved`: the checkpoint's record, None for a fresh start or a checkpoint without one) refuses data that
    changed since (one line naming the file and both digests) and says in one line what config.yaml changes
    against the checkpoint's config (the checkpoint's is used)."""
    data = data_identity(cfg.data.source)
    if saved:
        was, now = saved.get("data_sha256", ""), data["data_sha256"]
        if was and now and was != now:
            raise VaelabError(f"{run_dir} was trained on {saved.get('data_source')} with sha256 {_short(was)}, "
                              f"the {_kind(data)} now has {_short(now)}: put the original back, or start a new run")
        _say_edited(run_dir, cfg, "resuming", ("train.epochs",))   # --epochs extends a run: not an edit
    run_id = (saved or {}).get("run_id") or uuid.uuid4().hex
    return {"run_id": run_id, "config_sha256": config_sha256(cfg.to_dict()), **data}


def _kind(data: dict[str, str]) -> str:
    return "folder" if Path(data["data_source"]).expanduser().is_dir() else "file"


def _say_edited(run_dir: str | Path, cfg: Config, doing: str, ignore: tuple[str, ...] = ()) -> None:
    """One line on stderr (rank 0) when RUN/config.yaml no longer says what the checkpoint's config `cfg` says."""
    edit = RunDir(Path(run_dir)).config_edit(cfg, ignore)
    if edit is not None and is_main_process():
        print(f"vaelab: {Path(run_dir) / 'config.yaml'} was edited after training ({edit}): {doing} under the "
              "checkpoint's config, the one it was trained with", file=sys.stderr)


def _check_same_run(meta: dict[str, str], state: dict[str, Any], ckpt: Path) -> None:
    """Refuse a state.pt whose provenance is not the weights' (a foreign optimizer and RNG state: the optimizer
    moments and random streams of another run); nothing to check where neither records one (an older run)."""
    saved = state.get("provenance")
    if saved is None and not any(k in meta for k in PROVENANCE):
        return
    if not isinstance(saved, dict) or not all(isinstance(v, str) for v in saved.values()):
        saved = {}
    for key in ("run_id", "config_sha256"):
        if saved.get(key) != meta.get(key):
            ours, theirs = _short(meta.get(key) or ""), _short(saved.get(key) or "")
            raise VaelabError(f"{ckpt}/state.pt is a foreign optimizer state (its {key} is {theirs}, the weights "
                              f"beside it have {ours}): put the run's own state.pt back, or resume from a backup copy")


def _has_checkpoint(run_dir: Path) -> bool:
    return RunDir(run_dir).has_checkpoint


def _checkpoint_dir(run_dir: Path) -> Path:
    """`RunDir.checkpoint_dir` (kept for runs/bundle.py)."""
    return RunDir(run_dir).checkpoint_dir()


DAMAGED_FIX = "retrain, or resume from a backup copy"


def _load_files(ckpt: Path) -> tuple[dict[str, str], dict[str, Tensor], Any]:
    """Metadata, tensors and the state object of a checkpoint directory; nothing in them is executed."""
    for name in ("model.safetensors", "state.pt"):
        if not (ckpt / name).is_file():
            raise VaelabError(f"checkpoint {ckpt} lacks {name}: {DAMAGED_FIX}")
    try:
        with safe_open(ckpt / "model.safetensors", framework="pt") as f:
            meta = f.metadata() or {}
        tensors = safetensors.torch.load_file(ckpt / "model.safetensors")
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise VaelabError(f"checkpoint {ckpt} is damaged ({str(err).splitlines()[0][:80]}): {DAMAGED_FIX}") from err
    if meta.get("format") != FORMAT:
        raise VaelabError(f"{ckpt} is not a vaelab checkpoint (format {meta.get('format')!r}): "
                          "point to a run directory written by `vaelab train`")
    try:
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
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
    ckpt = _checkpoint_dir(Path(run_dir))
    meta, tensors, state = _load_files(ckpt)
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
    _check_same_run(meta, state, ckpt)
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


@dataclass
class LoadedRun:
    cfg: Config
    model: VAE
    estimator: Estimator
    data: DeviceData
    state: dict[str, Any]
    device: torch.device


def open_run(run_dir: str | Path, device: str = "auto", data_source: str | None = None) -> LoadedRun:
    """Rebuild a trained run (config, data, model, estimator) from its directory, for evaluation and sampling;
    `data_source` replaces the data it was trained on. Checks its provenance first (see the module doc)."""
    cfg, tensors, state = read_checkpoint(run_dir)
    _say_edited(run_dir, cfg, "opening it")
    _check_data(run_dir, state.get("provenance") or {}, data_source or cfg.data.source, data_source is not None)
    if data_source is not None:
        cfg.data.source = data_source
    dev = resolve_device(device)
    data = prepare_data(cfg.data, dev)
    model, estimator = build(cfg, data, dev)
    load_weights(model, estimator, tensors)
    model.eval()
    return LoadedRun(cfg, model, estimator, data, state, dev)


def _check_data(run_dir: str | Path, saved: dict[str, str], source: str, explicit: bool) -> None:
    """Refuse to open a run on a data file that changed since it was trained (its test numbers would not compare
    with the run's own); data given explicitly (`explicit`) is used, with one line when it is not what the run was
    trained on. Nothing to check for a run that records no data identity."""
    was = saved.get("data_sha256", "")
    if not saved.get("data_source"):
        return
    data = data_identity(source)
    now = data["data_sha256"]
    if was and now:                             # files (or folders): compared by content, wherever they are
        if was == now:
            return
    elif not explicit or source == saved["data_source"] or was and source not in SOURCES:
        return                                  # a named source by name; a file that is gone: loading says so
    if explicit:
        if is_main_process():
            print(f"vaelab: {run_dir} is opened on {source} (sha256 {_short(now)}), not on the data it was trained "
                  f"on ({saved['data_source']}, sha256 {_short(was)}): its numbers do not compare with the run's own",
                  file=sys.stderr)
        return
    raise VaelabError(f"{run_dir} was trained on {saved['data_source']} with sha256 {_short(was)}, the {_kind(data)} "
                      f"now has {_short(now)}: its test numbers would not compare; put the original back, or train a "
                      "new run on it")


def write_json(path: Path, values: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(values, indent=2) + "\n")
