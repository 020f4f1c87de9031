"""A trained run rebuilt from its directory: `build` makes the model and estimator of a config, `open_run` reads
the checkpoint, checks its provenance (runs/provenance.py), puts the data on the device and loads the weights into a
`LoadedRun`, for evaluation and sampling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vaelab.config.schema import Config
from vaelab.core.errors import VaelabError
from vaelab.estimators.pathwise import Estimator, build_estimator
from vaelab.models.vae import VAE, build_model
from vaelab.runs.checkpoint import load_weights, read_checkpoint
from vaelab.runs.device_data import DeviceData, prepare_data
from vaelab.runs.provenance import check_data, say_edited
from vaelab.runtime.hardware import resolve_device


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


@dataclass
class LoadedRun:
    """A trained run rebuilt by `open_run`: its checkpoint's config, the model and estimator with its weights (in
    eval mode), its data on `device` and the state.pt dict."""

    cfg: Config
    model: VAE
    estimator: Estimator
    data: DeviceData
    state: dict[str, Any]
    device: torch.device


def open_run(run_dir: str | Path, device: str = "auto", data_source: str | None = None) -> LoadedRun:
    """Rebuild a trained run (config, data, model, estimator) from its directory, for evaluation and sampling;
    `data_source` replaces the data it was trained on. Checks its provenance first (runs/provenance.py)."""
    cfg, tensors, state = read_checkpoint(run_dir)
    say_edited(run_dir, cfg, "opening it")
    check_data(run_dir, state.get("provenance") or {}, data_source or cfg.data.source, data_source is not None)
    if data_source is not None:
        cfg.data.source = data_source
    dev = resolve_device(device)
    data = prepare_data(cfg.data, dev)
    model, estimator = build(cfg, data, dev)
    load_weights(model, estimator, tensors)
    model.eval()
    return LoadedRun(cfg, model, estimator, data, state, dev)
