"""One optimisation step, nanoGPT-style: the loss, the backward pass, clipping, the optimizer, the metric sums.

`Objective` is the loss, `estimator(model, x, kl_weight)`; `Step` is one optimisation step around it that keeps
the batch's metric sums on the device; `make_step` applies the wrappers around that one step: DDP and
torch.compile around its forward, a CUDA graph (training/cudagraph.py) around all of it. The stacked-seeds model
(training/stacked.py) supplies its own `update` to the same `Step` bookkeeping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from vaelab.config.schema import Config
from vaelab.core import faults
from vaelab.core.errors import VaelabError
from vaelab.estimators.base import Estimate
from vaelab.estimators.pathwise import AntitheticPair
from vaelab.optim.optimizers import Optimizers
from vaelab.runtime import distributed, hardware
from vaelab.training import by_hand, by_hand_pair, cudagraph


class Objective(nn.Module):
    """The model and its estimator as one module, so DDP and torch.compile see every trained parameter (the
    estimator's control networks too) and buffer. With `autocast` the estimator sees a twin of the model whose
    encoder and decoder (the same modules, so the same parameters) run under autocast; validation and evaluation
    keep using the fp32 model."""

    def __init__(self, model: nn.Module, estimator: nn.Module, autocast: str | None = None) -> None:
        super().__init__()
        self.model, self.estimator = hardware.autocast_twin(model, autocast), estimator

    def forward(self, x: Tensor, kl_weight: float | Tensor = 1.0) -> Estimate:
        return self.estimator(self.model, x, kl_weight)                # the loss, for every model and estimator


def batch_sums(est: Estimate, images: int) -> Tensor:
    """A batch's loss, ELBO, reconstruction and KL summed over its `images` images: [4], nothing read back."""
    return torch.stack([est.loss.detach() * images, est.elbo.sum(), est.rec.sum(), est.kl.sum()])


class Step:
    """One optimisation step on a batch; its loss, ELBO, reconstruction and KL sums are added to `sums` and kept
    per step in `rows` (for TensorBoard's batch/* scalars), all on the device, so nothing waits for the GPU until
    the epoch ends. Under torchrun the loss is weighted by this rank's share of the global batch
    (`distributed.shard`); with `graphed` the whole step is replayed as a CUDA graph (training/cudagraph.py).
    `seeds` = N keeps the sums per seed ([N, 4]) for a stacked step, whose `update` a subclass supplies."""

    def __init__(self, forward: Callable[[Tensor, float | Tensor], Any], optim: Optimizers | torch.optim.Optimizer,
                 grad_clip: float | None, ctx: distributed.Context, steps: int, graphed: bool = False,
                 seeds: tuple[int, ...] = (), by_hand: Callable[[Tensor, float | Tensor], Estimate] | None = None
                 ) -> None:
        self.forward, self.optim, self.grad_clip, self.ctx = forward, optim, grad_clip, ctx
        self.by_hand = by_hand                                                 # forward and backward written out
        self.params = [p for g in optim.param_groups for p in g["params"]]
        self.sums = torch.zeros(*seeds, 4, device=ctx.device)                  # loss, elbo, rec, kl ([N, 4])
        self.rows = torch.zeros(steps, *seeds, 4, device=ctx.device)           # the same, step by step
        self.count = torch.zeros(1, dtype=torch.long, device=ctx.device)       # steps taken (a graph replays it)
        self.run = cudagraph.GraphedUpdate(self.update, optim) if graphed else self.update

    def __call__(self, x: Tensor, kl_weight: float, weight: float = 1.0) -> None:
        self.run(x, kl_weight, weight)

    def update(self, x: Tensor, kl_weight: float | Tensor, weight: float = 1.0) -> None:
        if self.by_hand is not None:
            est = self.by_hand(x, kl_weight)                                   # sets every .grad (by_hand.py)
        else:
            est = self.forward(x, kl_weight)                                   # estimator(model, x, kl_weight)
            self.optim.zero_grad(set_to_none=True)
            (est.loss * weight if self.ctx.distributed else est.loss).backward()  # DDP averages the ranks' grads
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optim.step()
        faults.point("step")                                                   # tests: SIGKILL at step N
        self.record(batch_sums(est, len(x)))

    def record(self, sums: Tensor) -> None:
        """Add one step's metric sums ([4], or [N, 4] stacked) to the epoch's, and keep them as its row."""
        self.sums += sums
        self.rows.index_copy_(0, self.count, sums[None].to(self.rows.dtype))
        self.count += 1

    def reset(self, sums: list[float] | list[list[float]] | None = None, steps: int = 0) -> None:
        """Start an epoch, or continue one a signal stopped after `steps` steps with these `sums`."""
        if sums is None:
            self.sums.zero_()
        else:
            self.sums.copy_(torch.tensor(sums, dtype=self.sums.dtype))
        self.count.fill_(steps)

    def per_image(self, batches: list[Tensor], first: int, upto: int | None = None,
                  ctx: distributed.Context | None = None) -> tuple[list[Any], list[list[float]]]:
        """The epoch's mean loss, ELBO, rec and KL per image ([4], or [N][4] stacked), and each step's from `first`
        (to `upto`; 4 values, or 4 per seed one after another): one all-reduce under torchrun (`ctx`) and one read
        from the device. `batches`: the epoch's image indices, [B] each (or [N, B] stacked)."""
        upto = len(batches) if upto is None else upto
        width = self.sums.numel()                                              # 4, or 4 N stacked
        summed = torch.cat([self.sums.flatten(), self.rows[:upto].flatten()])
        summed = summed if ctx is None else distributed.all_reduce_sum(summed, ctx)   # one collective per epoch
        images = sum(b.shape[-1] for b in batches)
        values = torch.cat([summed[:width] / images, summed[width + width * first:]]).tolist()
        steps = [[v / b.shape[-1] for v in values[width * j: width * j + width]]
                 for j, b in enumerate(batches[first:upto], 1)]
        means = values[:4] if self.sums.dim() == 1 else [values[j: j + 4] for j in range(0, width, 4)]
        return means, steps


def make_step(cfg: Config, model: nn.Module, estimator: nn.Module, optim: Optimizers | torch.optim.Optimizer,
              ctx: distributed.Context, probe: Tensor, steps: int) -> Step:
    """The step `train` runs, wrapped: DDP under torchrun and torch.compile (train.compile) around its forward, a
    CUDA graph around all of it (train.cuda_graph on a GPU; `optim` must then be capturable). `probe`: a few
    images for DDP's unused-parameter check; `steps`: the most steps an epoch takes."""
    t = cfg.train
    forward: Any = Objective(model, estimator, t.autocast)
    forward = distributed.ddp(forward, ctx, probe, sync_buffers=any(True for _ in estimator.buffers()))
    if t.compile:
        forward = hardware.compile_step(forward, t.compile_mode)
    return Step(forward, optim, t.grad_clip, ctx, steps, graphed=cudagraph.enabled(t.cuda_graph, ctx.device),
                by_hand=hand_written(t, model, estimator, ctx))


def hand_written(t: Any, model: nn.Module, estimator: nn.Module,
                 ctx: distributed.Context) -> Callable[[Tensor, float | Tensor], Estimate] | None:
    """The hand-written step (training/by_hand.py) under train.backward: manual (refused, with the reason, where
    there is none), or auto on a CPU with no other wrapper (compile, autocast, DDP) where there is one."""
    if t.backward == "autograd":
        return None
    others = [name for name, on in (("train.compile", t.compile), ("train.autocast", t.autocast),
                                    ("torchrun", ctx.distributed),
                                    ("train.cuda_graph", cudagraph.enabled(t.cuda_graph, ctx.device))) if on]
    step, why = hand_plan(model, estimator)
    if t.backward == "manual" and (step is None or others):
        why = why or f"{others[0]} wraps the autograd step"
        raise VaelabError(f"train.backward = manual: {why}; use train.backward=auto or autograd")
    return step if t.backward == "manual" or (not others and ctx.device.type == "cpu") else None


def hand_plan(model: nn.Module, estimator: nn.Module) -> tuple[Callable[..., Estimate] | None, str]:
    """(the hand-written step of this model and estimator, "") or (None, why there is none): reparam's in
    training/by_hand.py, DisARM's and ARM's in training/by_hand_pair.py (config/names.py HAND_WRITTEN lists them)."""
    return (by_hand_pair.plan if isinstance(estimator, AntitheticPair) else by_hand.plan)(model, estimator)
