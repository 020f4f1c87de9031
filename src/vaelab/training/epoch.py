"""One epoch of training, for a single run and for stacked seeds alike: `EpochLoop.run`.

The loop draws each data stream's epoch (fresh binarization, then a permutation, from the stream's generator),
cuts it into steps (`steps_per_epoch`), feeds every batch to the step it was given (training/step.py's, or the
stacked model's) with the KL weight of that step, and reads the metric sums back once at the end. It is the one
place that knows the step count, the permutation, how a signal stops an epoch (`EpochStopped`, with the record to
continue it) and what a divergence says (`Diverged`, `divergence_message`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vaelab.config.schema import Config
from vaelab.core.errors import VaelabError
from vaelab.optim.schedules import Schedule
from vaelab.runs.lifecycle import StopSignals
from vaelab.runtime import distributed
from vaelab.training.step import Objective, Step


class Diverged(VaelabError):
    """A non-finite epoch loss; `divergence_message` turns it into one that says what the run directory holds."""

    def __init__(self, epoch: int, loss: float | list[float], what: str = "") -> None:
        super().__init__(f"training diverged in epoch {epoch} ({what or f'loss {loss}'}): lower train.lr or set "
                         "train.grad_clip")
        self.epoch, self.loss = epoch, loss


def divergence_message(err: Diverged, kept: bool, epochs_done: int, rerun: str) -> VaelabError:
    """The divergence message, true to what the run directory holds: its last good checkpoint (`kept`, of epoch
    `epochs_done`, or from inside the diverged epoch), or none, and then `rerun` restarts it."""
    if kept:
        which = f"of epoch {epochs_done}" if epochs_done else f"from inside epoch {err.epoch}"
        return VaelabError(f"{err}; the last good checkpoint ({which}) is kept: evaluate it, or train with new "
                           "settings into another --out")
    return VaelabError(f"{err}, then rerun {rerun} (no checkpoint was written; it restarts the run)")


class EpochStopped(Exception):
    """A stop signal arrived inside an epoch; `partial` is what a checkpoint needs to continue it exactly."""

    def __init__(self, partial: dict[str, Any]) -> None:
        super().__init__("stopped inside an epoch")
        self.partial = partial


def steps_per_epoch(cfg: Config, images: int) -> int:
    """Batches of `cfg.train.batch_size` in `images` training images, capped by train.steps_per_epoch."""
    return min(math.ceil(images / cfg.train.batch_size), cfg.train.steps_per_epoch or math.inf)


def epoch_order(data, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """One data stream's epoch, drawn from `gen` in this order: its images [M, P] and their permutation [M]."""
    x_epoch = data.train_epoch_images(gen)                                       # [M, P]
    return x_epoch, torch.randperm(len(x_epoch), generator=gen, device=gen.device)


@dataclass
class EpochLoop:
    """What one epoch needs, held between epochs: the config, the data, the data generator (`gen`; one per seed,
    a list, for a stacked step), the model (put in training mode), the `step` that takes each batch, its optimizer
    (for the row's lr), the KL weight schedule `beta(step)`, the process context under torchrun, and the hooks:
    `probe(steps done, x)` after each step (train.grad_stats_every) and `log_batches(steps before, values)` with each
    step's values (TensorBoard)."""

    cfg: Config
    data: Any
    gen: torch.Generator | list[torch.Generator]
    model: nn.Module
    step: Step
    optim: Any
    beta: Schedule = lambda step: 1.0
    ctx: distributed.Context | None = None
    show_progress: bool = False
    probe: Callable[[int, Tensor], None] | None = None
    log_batches: Callable[[int, list[list[float]]], None] | None = None

    def __post_init__(self) -> None:
        self.ctx = self.ctx or distributed.Context(device=self.data.x_train.device)

    def draw(self) -> tuple[Tensor, list[Tensor]]:
        """The epoch's images ([M, P], or [N, M, P] stacked) and its steps' indices ([B] each, or [N, B])."""
        if isinstance(self.gen, torch.Generator):
            x_epoch, order = epoch_order(self.data, self.gen)                   # [M, P], [M]
        else:
            x_epochs, orders = zip(*(epoch_order(self.data, g) for g in self.gen), strict=True)
            x_epoch, order = torch.stack(x_epochs), torch.stack(orders)         # [N, M, P], [N, M]
        batches = order.split(self.cfg.train.batch_size, dim=-1)[: self.cfg.train.steps_per_epoch or None]
        return x_epoch, distributed.keep_batches(batches, self.ctx)              # each rank gets >= 1

    def rng_state(self) -> Tensor | list[Tensor]:
        return self.gen.get_state() if isinstance(self.gen, torch.Generator) else [g.get_state() for g in self.gen]

    def run(self, epoch: int, start: dict[str, Any] | None = None, stop: StopSignals | None = None) -> dict[str, Any]:
        """One pass over a fresh permutation; under torchrun each step takes this rank's share of its batch.
        `beta(step)` weights the trained KL (train_loss); train_elbo/rec/kl are the unweighted ELBO terms (per seed
        for a stacked step), summed on the device and read once at the end. `start` (a checkpoint's "partial"
        record) continues an epoch a signal stopped: the same images and permutation (the data RNG as it was at
        the epoch's start), its first steps skipped, its sums restored. When `stop` is requested before a step,
        raises EpochStopped with the record to continue from there."""
        t0, step, show = time.perf_counter(), self.step, self.show_progress
        self.model.train()
        if start is not None:
            _set_rng_state(self.gen, start["epoch_rng"])
        epoch_rng = self.rng_state()
        x_epoch, batches = self.draw()                                            # [(N,) M, P], [(N,) B] each
        first, beta_sum, before = (start["step"], start["beta_sum"], start["seconds"]) if start else (0, 0.0, 0.0)
        step.reset(start and start["sums"], first)
        step0 = epoch * len(batches)
        for i, idx in enumerate(tqdm(batches[first:], desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}",
                                     disable=not show, leave=False), first):
            if stop is not None and stop.requested:                              # one process: nothing to reduce
                if self.log_batches is not None:
                    self.log_batches(step0 + first, step.per_image(batches, first, i)[1])
                raise EpochStopped({"step": i, "epoch_rng": epoch_rng, "sums": step.sums.tolist(),
                                    "beta_sum": beta_sum, "seconds": before + time.perf_counter() - t0})
            kl_weight = self.beta(step0 + i)                                     # a python float: no host sync
            beta_sum += kl_weight
            local, weight = distributed.shard(idx, self.ctx)                     # one process: idx, 1.0
            x = _take(x_epoch, local)                                            # [(N,) B, P]
            step(x, kl_weight, weight)                                           # forward, backward, Adam
            if self.probe is not None:
                self.probe(step0 + i + 1, x)                                     # train.grad_stats_every
        means, values = step.per_image(batches, first, ctx=self.ctx)            # [4] or, stacked, [N][4]
        stacked = isinstance(means[0], list)
        if not all(map(math.isfinite, sum(means, []) if stacked else means)):
            raise Diverged(epoch + 1, means[0], f"losses {[m[0] for m in means]}" if stacked else "")
        if self.log_batches is not None:
            self.log_batches(step0 + first, values)
        loss, elbo, rec, kl = map(list, zip(*means, strict=True)) if stacked else means   # stacked: per seed
        return {"epoch": epoch + 1, "train_loss": loss, "train_elbo": elbo, "train_rec": rec, "train_kl": kl,
                "kl_weight": beta_sum / len(batches), "lr": self.optim.param_groups[0]["lr"],
                "seconds": before + time.perf_counter() - t0, "steps": len(batches)}


def _take(x_epoch: Tensor, idx: Tensor) -> Tensor:
    """The batch idx [B] of x_epoch [M, P] -> [B, P]; stacked, each seed's idx [N, B] of its [N, M, P] -> [N, B, P]."""
    if idx.dim() == 1:
        return x_epoch[idx]
    seeds = torch.arange(len(idx), device=idx.device)[:, None]                  # [N, 1]
    return x_epoch[seeds, idx]


def _set_rng_state(gen: torch.Generator | list[torch.Generator], state: Tensor | list[Tensor]) -> None:
    for g, s in zip(gen, state, strict=True) if isinstance(gen, list) else [(gen, state)]:
        g.set_state(s)


def train_epoch(cfg: Config, model: nn.Module, estimator: nn.Module, optim, data, gen: torch.Generator, epoch: int,
                show_progress: bool = False, beta: Schedule = lambda step: 1.0, ctx: distributed.Context | None = None,
                step: Step | None = None) -> dict[str, Any]:
    """One epoch of `model` with `estimator` in one call, as the benchmarks time it: `EpochLoop.run` over `step`
    (by default an eager Step around `estimator(model, x, kl_weight)`). Training keeps an `EpochLoop` instead."""
    ctx = ctx or distributed.Context(device=data.x_train.device)
    if step is None:
        step = Step(Objective(model, estimator), optim, cfg.train.grad_clip, ctx,
                    steps_per_epoch(cfg, len(data.x_train)))
    return EpochLoop(cfg, data, gen, model, step, optim, beta, ctx, show_progress).run(epoch)
