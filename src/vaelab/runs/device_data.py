"""The data of a run, resident on the training device: `DeviceData` (train images raw or binarized once, valid/test a
fixed seeded draw), `prepare_data` that loads and places it, and `resplit_valid` for `data.valid_size`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from vaelab.config.schema import DataConfig
from vaelab.core.errors import VaelabError
from vaelab.data.binarize import binarize, fixed_draw
from vaelab.data.sources import load_dataset
from vaelab.data.splits import Splits


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
