"""Validation of a checkpoint's training state (state.pt) before any of it reaches torch.

state.pt holds {"epoch", "history", "optim", "data_rng", "torch_rng"} (+ "cuda_rng" on CUDA, + "partial" when a
signal stopped the run inside an epoch). torch.load(weights_only=True) already refuses anything but tensors and
plain values; these checks refuse the wrong keys, types and sizes, and above all optimizer moments whose shapes do
not match the model: the fused Adam kernel would write past its buffers (a segfault or heap corruption, not an
exception) if such a state were loaded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vaelab.core.errors import VaelabError

FIX = "retrain, or resume from a backup copy"
CPU_RNG_BYTES = torch.Generator().get_state().numel()    # 5056: the CPU Mersenne Twister state
CUDA_RNG_BYTES = 16                                      # the CUDA Philox generator: seed and offset
STATE_KEYS = {"epoch": int, "history": list, "optim": dict, "data_rng": Tensor, "torch_rng": Tensor}
PARTIAL_KEYS = {"step": int, "epoch_rng": Tensor, "sums": list, "beta_sum": float, "seconds": float}
OPTIM_STATE_KEYS = {"adam": {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}, "sgd": {"momentum_buffer"}}


def _bad(ckpt: Path | str, problem: str) -> VaelabError:
    return VaelabError(f"{ckpt}/state.pt {problem}: {FIX}")


def _check_rng(ckpt: Path | str, key: str, value: Any, sizes: tuple[int, ...]) -> None:
    if not isinstance(value, Tensor) or value.dtype != torch.uint8 or value.dim() != 1 or value.numel() not in sizes:
        got = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
        raise _bad(ckpt, f"has a {key} that is not a random-generator state ({got})")


def _check_keys(ckpt: Path | str, values: dict, spec: dict[str, type], where: str) -> None:
    for key, tp in spec.items():
        if key not in values:
            raise _bad(ckpt, f"lacks {where}{key!r}")
        value = values[key]
        ok = isinstance(value, int | float) and not isinstance(value, bool) if tp is float else \
            isinstance(value, tp) and not (tp is int and isinstance(value, bool))
        if not ok:
            raise _bad(ckpt, f"has {where}{key!r} of type {type(value).__name__}, not {tp.__name__}")


def check_state(state: Any, ckpt: Path | str, meta_epoch: str | None = None) -> None:
    """Refuse a state.pt without the keys, types and RNG sizes `train` writes (the optimizer's shapes are checked
    against the live model by `check_optimizer_state`)."""
    if not isinstance(state, dict):
        raise _bad(ckpt, f"holds a {type(state).__name__}, not vaelab's training state")
    _check_keys(ckpt, state, STATE_KEYS, "")
    epoch, history = state["epoch"], state["history"]
    if epoch < 0 or len(history) != epoch:
        raise _bad(ckpt, f"is inconsistent (epoch {epoch}, {len(history)} history rows)")
    check_history(history, ckpt)
    if meta_epoch is not None and meta_epoch != str(epoch):
        raise _bad(ckpt, f"is from epoch {epoch} but the weights beside it from epoch {meta_epoch}")
    _check_rng(ckpt, "torch_rng", state["torch_rng"], (CPU_RNG_BYTES,))
    _check_rng(ckpt, "data_rng", state["data_rng"], (CPU_RNG_BYTES, CUDA_RNG_BYTES))
    if "cuda_rng" in state:
        _check_rng(ckpt, "cuda_rng", state["cuda_rng"], (CUDA_RNG_BYTES,))
    if "partial" in state:
        check_partial(state["partial"], ckpt, state["data_rng"].numel())


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_history(history: list, ckpt: Path | str) -> None:
    """The per-epoch rows `train` keeps: row i a mapping of names to numbers (or None) with "epoch" = i + 1 (an
    int), as the trainer writes them, so that every reader of the history (resume, evaluate, compare, metrics.jsonl
    rewritten from it) meets numbers."""
    for i, row in enumerate(history):
        if not isinstance(row, dict):
            raise _bad(ckpt, f"has history row {i + 1} of type {type(row).__name__}, not a mapping")
        bad = next((k for k, v in row.items() if not isinstance(k, str) or not (v is None or _is_number(v))), None)
        if bad is not None:
            raise _bad(ckpt, f"has history row {i + 1} with {bad!r} = {row[bad]!r:.40}, not a number")
        if not isinstance(row.get("epoch"), int) or row["epoch"] != i + 1:
            raise _bad(ckpt, f"has history row {i + 1} with epoch {row.get('epoch')!r}: the rows are not epochs "
                             "1, 2, ... in order")


def check_partial(partial: Any, ckpt: Path | str, rng_bytes: int) -> None:
    """The record of an epoch stopped by a signal: steps done, the data RNG at the epoch's start, metric sums."""
    if not isinstance(partial, dict):
        raise _bad(ckpt, "has a 'partial' entry that is not a mapping")
    _check_keys(ckpt, partial, PARTIAL_KEYS, "partial ")
    _check_rng(ckpt, "partial epoch_rng", partial["epoch_rng"], (rng_bytes,))
    sums = partial["sums"]
    if partial["step"] < 0 or len(sums) != 4 or not all(isinstance(v, float) and math.isfinite(v) for v in sums):
        raise _bad(ckpt, f"has a partial epoch that is inconsistent (step {partial['step']}, sums {sums!r})")


def _optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    return "sgd" if isinstance(optimizer, torch.optim.SGD) else "adam"


def _check_group(saved: Any, live: dict[str, Any], where: str) -> list:
    """A saved param group: as many parameters as the live one, hyperparameters of the live ones' types."""
    if not isinstance(saved, dict) or not isinstance(saved.get("params"), list) \
            or len(saved["params"]) != len(live["params"]):
        raise VaelabError(f"{where} has param groups of other sizes than the model: "
                          "resume with the config the run was trained with")
    for key, value in saved.items():
        ref = live.get(key)
        if key == "params" or ref is None or isinstance(ref, str):
            continue
        bad = isinstance(ref, bool) and not isinstance(value, bool) or \
            isinstance(ref, int | float) and not isinstance(ref, bool) and (
                not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value)) or \
            isinstance(ref, tuple | list) and (not isinstance(value, tuple | list) or len(value) != len(ref))
        if bad:
            raise VaelabError(f"{where} has param_groups {key} = {value!r}: {FIX}")
    return saved["params"]


def _check_entry(entry: Any, param: Tensor, kind: str, where: str) -> None:
    """One parameter's optimizer state: known keys, finite moments of the parameter's shape, a scalar step."""
    if not isinstance(entry, dict) or not set(entry) <= OPTIM_STATE_KEYS[kind]:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise VaelabError(f"{where} holds state {keys} that the {kind} optimizer does not keep: "
                          "resume with the config the run was trained with")
    for key, value in entry.items():
        if key == "step":
            if not (isinstance(value, Tensor) and value.numel() == 1 or isinstance(value, int | float)):
                raise VaelabError(f"{where} has a step count that is not a number: {FIX}")
            continue
        if value is None and key == "momentum_buffer":
            continue
        if not isinstance(value, Tensor) or value.shape != param.shape or not value.is_floating_point():
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise VaelabError(f"{where} has {key} of shape {shape} for a parameter of shape {tuple(param.shape)}: "
                              "the optimizer state belongs to another model; resume with the run's own checkpoint")
        if not bool(torch.isfinite(value).all()):
            raise VaelabError(f"{where} has NaN or infinite values in {key}: {FIX}")


def check_optimizer_state(optimizers: list[torch.optim.Optimizer], saved: Any, where: str = "the checkpoint") -> None:
    """Refuse an optimizer state that does not fit `optimizers` (param groups, parameter shapes, state keys)
    before `load_state_dict` ever sees it. `saved` is {"optimizers": [...]} or, from runs saved before param
    groups, one Adam state dict."""
    where = f"the optimizer state in {where}"
    states = saved.get("optimizers", [saved]) if isinstance(saved, dict) else None
    if not isinstance(states, list) or len(states) != len(optimizers):
        raise VaelabError(f"{where} does not match train.param_groups: resume with the config the run was "
                          "trained with")
    for optimizer, state in zip(optimizers, states, strict=True):
        if not isinstance(state, dict) or not isinstance(state.get("state"), dict) \
                or not isinstance(state.get("param_groups"), list) \
                or len(state["param_groups"]) != len(optimizer.param_groups):
            raise VaelabError(f"{where} does not have the model's param groups: {FIX}")
        params: dict[Any, Tensor] = {}
        for saved_group, live_group in zip(state["param_groups"], optimizer.param_groups, strict=True):
            params.update(zip(_check_group(saved_group, live_group, where), live_group["params"], strict=True))
        kind = _optimizer_kind(optimizer)
        for pid, entry in state["state"].items():
            if pid not in params:
                raise VaelabError(f"{where} has state for a parameter the model lacks ({pid!r}): {FIX}")
            _check_entry(entry, params[pid], kind, where)
