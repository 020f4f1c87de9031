"""A run as one portable file: `vaelab bundle RUN --out FILE.safetensors` writes it, `vaelab unbundle FILE --out
RUN2` turns it back into a run directory that `vaelab train --resume RUN2` continues exactly as RUN would have.

A bundle is one safetensors file. Its tensors are the run's checkpoint: the weights of model.safetensors under
"weights.<name>" and every tensor of state.pt (optimizer moments, the data and torch RNG states, a stopped epoch's
RNG) under "state.<path>", the dotted path of the tensor in state.pt. Its string metadata holds the rest:

- "format": "vaelab-bundle-1"; "vaelab_version": the writer's version;
- "weights_metadata": model.safetensors' own metadata as JSON (the config the weights belong to, the epoch);
- "state": state.pt without its tensors as JSON; each tensor stands as {"$tensor": name}, a tuple as
  {"$tuple": [...]}, a dict with keys that are not text (the optimizer's parameter ids) as {"$items": [[k, v]]};
  the metrics history as {"$file": "metrics.jsonl"};
- "file:config.yaml", "file:metrics.jsonl" (the history as `train` writes it) and, when the run logs gradient
  statistics, "file:grad_stats.jsonl" (its rows up to the checkpoint's step);
- "sha256": a digest of every tensor (name, dtype, shape, bytes) and every other metadata entry, so a damaged or
  edited bundle is refused rather than resumed.

TensorBoard files, eval.json and figures are left out: a resumed run writes its own TensorBoard log from the step
the checkpoint holds. Reading a bundle executes nothing (safetensors and JSON only; state.pt is written with
torch.save of plain values and read back with weights_only=True), and the unpacked directory is checked as
`train --resume` checks a checkpoint before it is put in place. The RNG states are the writer's device's: a run
trained on a GPU resumes on a GPU.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from vaelab.core.atomic import atomic_write_bytes, fsync_write, write_error
from vaelab.core.errors import VaelabError
from vaelab.core.provenance import __version__
from vaelab.runs.checkpoint import _checkpoint_dir, read_checkpoint
from vaelab.runs.metrics_log import GRAD_STATS, read_jsonl, steps_done

FORMAT = "vaelab-bundle-1"
FILES = ("config.yaml", "metrics.jsonl", GRAD_STATS)   # the run's text files that a resume reads or keeps
REWRITE = "write it again with `vaelab bundle RUN_DIR --out FILE.safetensors` from the run directory"


def _encode(value: Any, path: str, tensors: dict[str, Tensor]) -> Any:
    """`value` (a nest of dicts, lists, tuples, tensors and plain values) as JSON-able data; each tensor is put in
    `tensors` under "state<path>" (`path`: ".optim.optimizers.0.state.3.exp_avg") and replaced by
    {"$tensor": name}."""
    if isinstance(value, Tensor):
        name = f"state{path}"
        tensors[name] = value.detach().cpu().contiguous().clone()
        return {"$tensor": name}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _encode(v, f"{path}.{k}", tensors) for k, v in value.items()}
        return {"$items": [[_encode(k, f"{path}.key", {}), _encode(v, f"{path}.{k}", tensors)]
                           for k, v in value.items()]}
    if isinstance(value, list | tuple):
        items = [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(value)]
        return {"$tuple": items} if isinstance(value, tuple) else items
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise VaelabError(f"state.pt holds a {type(value).__name__} at {path}, which a bundle cannot carry: "
                      "report this with the run's config")


def _decode(value: Any, tensors: dict[str, Tensor], used: set[str], where: str) -> Any:
    """The inverse of `_encode`: JSON data back to dicts, lists, tuples and tensors (each used at most once)."""
    if isinstance(value, list):
        return [_decode(v, tensors, used, where) for v in value]
    if not isinstance(value, dict):
        return value
    special = [k for k in value if k.startswith("$")]
    if not special:
        return {k: _decode(v, tensors, used, where) for k, v in value.items()}
    if len(value) != 1 or special[0] not in ("$tensor", "$tuple", "$items"):
        raise VaelabError(f"{where} has an unknown entry {sorted(value)[:3]} in its state: {REWRITE}")
    key, inner = special[0], value[special[0]]
    if key == "$tensor":
        if not isinstance(inner, str) or inner not in tensors or inner in used:
            raise VaelabError(f"{where} refers to a tensor {inner!r} it does not hold: {REWRITE}")
        used.add(inner)
        return tensors[inner]
    if not isinstance(inner, list) or key == "$items" and not all(isinstance(p, list) and len(p) == 2
                                                                  for p in inner):
        raise VaelabError(f"{where} has a malformed {key} entry in its state: {REWRITE}")
    if key == "$tuple":
        return tuple(_decode(v, tensors, used, where) for v in inner)
    pairs = [(_decode(k, tensors, used, where), _decode(v, tensors, used, where)) for k, v in inner]
    try:
        return dict(pairs)
    except TypeError as err:                         # a list or tensor as a key
        raise VaelabError(f"{where} has a dict key that is not a plain value in its state: {REWRITE}") from err


def digest(tensors: dict[str, Tensor], metadata: dict[str, str]) -> str:
    """sha256 of every tensor (name, dtype, shape, bytes) and every metadata entry but "sha256" itself."""
    h = hashlib.sha256()
    for key in sorted(k for k in metadata if k != "sha256"):
        h.update(b"meta\0" + key.encode() + b"\0" + metadata[key].encode() + b"\0")
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"tensor\0{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())          # [numel * itemsize] raw bytes
    return h.hexdigest()


def _checkpoint_id(run_dir: Path) -> tuple[int, int] | None:
    """Which checkpoint directory RUN/checkpoint is now (a training process swaps in a new one by renames)."""
    try:
        st = (run_dir / "checkpoint").stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _read_run(run_dir: Path) -> tuple[dict[str, str], dict[str, Tensor], dict[str, Any]]:
    """model.safetensors' metadata, the weights and state.pt of `run_dir`'s checkpoint, all from one checkpoint:
    when a training process swaps in a new checkpoint during the read, it is read again (up to three tries)."""
    for _ in range(3):
        before = _checkpoint_id(run_dir)
        try:
            _, weights, state = read_checkpoint(run_dir)
            with safe_open(_checkpoint_dir(run_dir) / "model.safetensors", framework="pt") as f:
                meta = dict(f.metadata() or {})
        except (VaelabError, SafetensorError, OSError):
            if _checkpoint_id(run_dir) == before:    # not a swap under way: the run's own fault
                raise
            continue
        if meta.get("epoch") == str(state["epoch"]) and _checkpoint_id(run_dir) == before:
            return meta, weights, state
    raise VaelabError(f"the checkpoint of {run_dir} kept changing while it was read: run again")


def write_bundle(run_dir: str | Path, path: str | Path) -> Path:
    """Write the resumable bundle of the run in `run_dir` to `path` (atomically); returns `path`."""
    run_dir, path = Path(run_dir), Path(path)
    if path.is_dir():
        raise VaelabError(f"--out {path} is a directory: give a file path such as {path / 'run.safetensors'}")
    meta, weights, state = _read_run(run_dir)
    tensors = {f"weights.{k}": v.contiguous() for k, v in weights.items()}
    history = state["history"]
    skeleton = _encode({**state, "history": None}, "", tensors)         # state.pt's key order kept
    skeleton["history"] = {"$file": "metrics.jsonl"}
    config = run_dir / "config.yaml"
    files = {"config.yaml": config.read_text() if config.is_file() else meta.get("config", ""),
             "metrics.jsonl": "".join(json.dumps(row) + "\n" for row in history)}
    grad = run_dir / GRAD_STATS
    if grad.is_file():
        done = steps_done(history, state.get("partial"))
        rows = read_jsonl(grad, f"delete it (its rows are in TensorBoard's grad/*) and bundle {run_dir} again")
        files[GRAD_STATS] = "".join(json.dumps(r) + "\n" for r in rows
                                    if isinstance(r.get("step"), int) and r["step"] <= done)
    metadata = {"format": FORMAT, "vaelab_version": __version__, "weights_metadata": json.dumps(meta),
                "state": json.dumps(skeleton), **{f"file:{name}": text for name, text in files.items()}}
    metadata["sha256"] = digest(tensors, metadata)
    return atomic_write_bytes(path, safetensors.torch.save(tensors, metadata=metadata))


def read_bundle(path: str | Path) -> tuple[dict[str, str], dict[str, Tensor], dict[str, Any], dict[str, str]]:
    """A bundle's weights metadata, weights, state (as state.pt holds it) and text files, checked against its
    digest; a missing, damaged or foreign file is one VaelabError naming it."""
    path = Path(path)
    if not path.is_file():
        raise VaelabError(f"no bundle at {path}: give the file `vaelab bundle RUN_DIR --out FILE` wrote")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = dict(f.metadata() or {})
        tensors = safetensors.torch.load_file(path)
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise VaelabError(f"{path} is damaged or not a safetensors file ({str(err).splitlines()[0][:80]}): "
                          f"{REWRITE}") from err
    if metadata.get("format") != FORMAT:
        raise VaelabError(f"{path} is not a vaelab run bundle (format {metadata.get('format')!r}): give a file "
                          "written by `vaelab bundle`")
    if metadata.get("sha256") != digest(tensors, metadata):
        raise VaelabError(f"{path} is damaged (its contents do not match its sha256): {REWRITE}")
    files = {k[len("file:"):]: v for k, v in metadata.items() if k.startswith("file:")}
    try:
        weights_meta, skeleton = json.loads(metadata["weights_metadata"]), json.loads(metadata["state"])
        history = [json.loads(line) for line in files.get("metrics.jsonl", "").splitlines() if line.strip()]
    except (KeyError, ValueError, RecursionError) as err:
        raise VaelabError(f"{path} lacks or has unreadable metadata ({str(err)[:60]}): {REWRITE}") from err
    if not isinstance(skeleton, dict) or skeleton.get("history") != {"$file": "metrics.jsonl"} \
            or "metrics.jsonl" not in files or not isinstance(weights_meta, dict) \
            or not all(isinstance(v, str) for v in weights_meta.values()):
        raise VaelabError(f"{path} does not hold a run's state and metrics: {REWRITE}")
    used: set[str] = set()
    try:
        state = _decode({**skeleton, "history": None}, tensors, used, str(path))
    except RecursionError as err:
        raise VaelabError(f"{path} has a state nested too deeply to be a run's: {REWRITE}") from err
    state["history"] = history
    weights = {k[len("weights."):]: v for k, v in tensors.items() if k.startswith("weights.")}
    stray = set(tensors) - used - {f"weights.{k}" for k in weights}
    if stray:
        raise VaelabError(f"{path} holds tensors outside the run's state ({sorted(stray)[0]}): {REWRITE}")
    return weights_meta, weights, state, files


def _free_target(run_dir: Path) -> None:
    """Refuse to unpack over anything but an empty directory or a new path."""
    if run_dir.is_symlink() or run_dir.exists() and not run_dir.is_dir():
        raise VaelabError(f"--out {run_dir} is a file: give a new directory path")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise VaelabError(f"--out {run_dir} is not empty: give a new or empty directory (nothing was written)")


def _write_run(tmp: Path, weights_meta: dict[str, str], weights: dict[str, Tensor], state: dict[str, Any],
               files: dict[str, str]) -> None:
    """The run directory's files in `tmp`: checkpoint/{model.safetensors, state.pt} and the text files."""
    ckpt = tmp / "checkpoint"
    ckpt.mkdir(parents=True)
    fsync_write(ckpt / "model.safetensors", safetensors.torch.save(weights, metadata=weights_meta))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    fsync_write(ckpt / "state.pt", buffer.getvalue())
    for name in FILES:
        if name in files:
            fsync_write(tmp / name, files[name].encode())


def unpack_bundle(path: str | Path, run_dir: str | Path) -> dict[str, Any]:
    """Write the run of the bundle at `path` as the new run directory `run_dir`, checked as `train --resume`
    checks a checkpoint, and put in place by one rename; returns its training state (epoch, history, ...)."""
    path, run_dir = Path(path), Path(run_dir)
    _free_target(run_dir)
    weights_meta, weights, state, files = read_bundle(path)
    tmp = run_dir.parent / f".{run_dir.name}.unbundle-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        _write_run(tmp, weights_meta, weights, state, files)
        try:
            read_checkpoint(tmp)                     # config, finite weights, state.pt's keys, types and RNG sizes
        except VaelabError as err:
            raise VaelabError(f"{path} does not hold a resumable run ({err}); {REWRITE}") from err
        _free_target(run_dir)
        if run_dir.is_dir():
            run_dir.rmdir()
        os.replace(tmp, run_dir)
    except OSError as err:
        raise write_error(run_dir, err, "free disk space or make the folder writable, then unbundle again") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return state
