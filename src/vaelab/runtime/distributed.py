"""One process or many: torchrun's process group, sharding of batches and test images across the ranks, and the
training forward wrapped in DistributedDataParallel (`ddp`; the step itself is training/trainer.py's, device, autocast,
compile and TF32 are runtime/hardware.py's).

Under `torchrun --nproc_per_node N -m vaelab train CONFIG` every rank holds the whole data set, draws the same
epoch permutation from the shared seeded generator, and takes its slice of each global batch of B images (rank r
gets the r-th of N near-equal micro-batches). Its loss is weighted by N * b_r / B, so DDP's gradient average
equals the gradient of the mean loss over the global batch: N processes take the step one process takes on the
combined batch, up to float rounding. Estimator sampling noise comes from the global RNG, reseeded at each epoch
from (seed, epoch, rank), so the ranks' noise is independent and a resumed run redraws it exactly. Per-epoch metric
sums are all-reduced once per epoch. Only rank 0 writes files and prints. Without WORLD_SIZE (or with
WORLD_SIZE=1) nothing here runs and training is exactly the single-process loop.

Buffers: the estimators' running statistics (sfe-avg's average, NVIL's signal mean and variance) are broadcast from
rank 0 before each forward (DDP's `forward_sync_buffers`, formerly `broadcast_buffers`), so every rank uses the
same baseline, one computed from rank 0's micro-batches. It is still built from past batches only, so the gradient
stays unbiased; it just averages 1/N of the data. Estimators without buffers skip that broadcast.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from vaelab.core.errors import VaelabError

TIMEOUT_ENV = "VAELAB_DIST_TIMEOUT_S"   # seconds a collective waits for a stalled rank (default 600)


@dataclass(frozen=True)
class Context:
    """This process's place in the job: rank, world size and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False       # `setup` created the process group, so `teardown` destroys it

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block before the others (a first download or cache write happens once)."""
        if self.distributed and not self.is_main:
            barrier(self)
        yield
        if self.distributed and self.is_main:
            barrier(self)


def _env_int(name: str, lo: int, hi: int | None = None) -> int:
    """An integer torchrun variable in [lo, hi]; missing or malformed is a VaelabError naming the fix."""
    raw = os.environ.get(name)
    fix = "start the job with torchrun (it sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT)"
    if raw is None:
        raise VaelabError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} but {name} is not set: {fix}")
    try:
        value = int(raw)
    except ValueError:
        raise VaelabError(f"{name}={raw!r} is not an integer: {fix}") from None
    if value < lo or (hi is not None and value > hi):
        span = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise VaelabError(f"{name}={value} must be {span}: {fix}")
    return value


def world_env() -> tuple[int, int, int]:
    """(world size, rank, local rank) from torchrun's environment; (1, 0, 0) without WORLD_SIZE or with
    WORLD_SIZE=1. Under a real job (WORLD_SIZE > 1) RANK and MASTER_ADDR / MASTER_PORT must be there and sane."""
    if os.environ.get("WORLD_SIZE") is None:
        return 1, 0, 0
    world = _env_int("WORLD_SIZE", 1)
    if world == 1:
        return 1, 0, 0
    rank = _env_int("RANK", 0, world - 1)
    local = _env_int("LOCAL_RANK", 0) if "LOCAL_RANK" in os.environ else 0
    if not os.environ.get("MASTER_ADDR"):
        raise VaelabError(f"WORLD_SIZE={world} but MASTER_ADDR is not set: start the job with torchrun, or set "
                          "MASTER_ADDR and MASTER_PORT to rank 0's address")
    _env_int("MASTER_PORT", 1, 65535)
    return world, rank, local


def is_main_process() -> bool:
    """True unless torchrun started this process as a rank other than 0 (usable before `setup`)."""
    return world_env()[1] == 0


def setup(device: torch.device) -> Context:
    """Join the torchrun job described by RANK / WORLD_SIZE / LOCAL_RANK (NCCL on CUDA, Gloo on the CPU).

    Without WORLD_SIZE, or with WORLD_SIZE=1, returns a single-process Context on `device` and touches nothing.
    Under torchrun each rank computes on cuda:LOCAL_RANK when `device` is CUDA. Missing or malformed variables
    (RANK, MASTER_ADDR, non-integers) are refused before any connection is tried."""
    world, rank, local = world_env()
    if world <= 1:
        return Context(device=device)
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise VaelabError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs visible: "
                              "lower --nproc_per_node")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    ctx = Context(rank, world, device, owns_group=not dist.is_initialized())
    if ctx.owns_group:
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "600")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout,
                                device_id=device if device.type == "cuda" else None)
    barrier(ctx)
    return ctx


def teardown(ctx: Context) -> None:
    """Leave the process group `setup` joined (a no-op in one process)."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier(device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def keep_batches(batches: tuple[Tensor, ...] | list[Tensor], ctx: Context) -> list[Tensor] | tuple[Tensor, ...]:
    """Drop a final batch with fewer images than ranks (each rank needs at least one); a no-op in one process."""
    return [b for b in batches if len(b) >= ctx.world_size] if ctx.distributed else batches


def shard(idx: Tensor, ctx: Context) -> tuple[Tensor, float]:
    """This rank's micro-batch of the global batch `idx`, and its loss weight N * b_r / B.

    DDP averages the ranks' gradients, so weighting rank r's mean loss by N * b_r / B makes the average the
    gradient of the global batch's mean loss even when B is not a multiple of N."""
    if not ctx.distributed:
        return idx, 1.0
    local = idx.tensor_split(ctx.world_size)[ctx.rank]
    return local, ctx.world_size * len(local) / len(idx)


def all_reduce_sum(values: Tensor, ctx: Context) -> Tensor:
    """Sum `values` over the ranks (in place; returned unchanged in one process)."""
    if ctx.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def rank_seed(seed: int, ctx: Context, *keys: int) -> int:
    """A 63-bit seed for this rank's stream, from numpy's SeedSequence (independent streams for nearby inputs)."""
    return int(np.random.SeedSequence([seed, ctx.rank, *keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def seed_sampling(seed: int, ctx: Context, *keys: int) -> None:
    """Reseed the global RNG (estimator noise) per rank from (seed, rank, keys); nothing in one process, where
    the RNG state is checkpointed instead. Reseeding per epoch makes a multi-process resume exact too."""
    if ctx.distributed:
        torch.manual_seed(rank_seed(seed, ctx, *keys))


def unused_parameters(step: nn.Module, x: Tensor) -> list[str]:
    """Names of trained parameters the loss of `step(x)` (an Estimate) does not reach, found by one backward pass
    in eval mode (estimators update running statistics only in training mode). DDP must be told about them."""
    was_training = step.training
    step.eval()
    step(x).loss.backward()
    step.train(was_training)
    unused = [n for n, p in step.named_parameters() if p.requires_grad and p.grad is None]
    step.zero_grad(set_to_none=True)
    return unused


def ddp(forward: nn.Module, ctx: Context, probe: Tensor, sync_buffers: bool) -> nn.Module:
    """The training forward (train.Objective: `(x, kl_weight) -> Estimate`) in DistributedDataParallel under
    torchrun; `forward` itself in one process.

    `probe` (a few images) finds parameters the loss does not use, the one case where DDP needs
    `find_unused_parameters` (which costs a graph traversal per step). `sync_buffers`: the estimator keeps running
    statistics, broadcast from rank 0 before every forward."""
    if not ctx.distributed:
        return forward
    from torch.nn.parallel import DistributedDataParallel

    unused = unused_parameters(forward, probe)
    new_name = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters   # torch >= 2.13
    return DistributedDataParallel(
        forward, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
        find_unused_parameters=bool(unused), **{"forward_sync_buffers" if new_name else "broadcast_buffers":
                                                sync_buffers})


def gather_rows(values: dict[str, Tensor], total: int, ctx: Context) -> dict[str, Tensor]:
    """Concatenate each rank's per-example [n_r] tensors (rank order = the order of `tensor_split` shards) into
    [total] tensors on every rank; all_gather needs equal sizes, so shards are padded to the largest and trimmed."""
    if not ctx.distributed:
        return values
    sizes = [len(s) for s in torch.arange(total).tensor_split(ctx.world_size)]
    out = {}
    for name, v in values.items():
        padded = torch.zeros(max(sizes), dtype=v.dtype, device=v.device)
        padded[: len(v)] = v
        parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
        dist.all_gather(parts, padded)
        out[name] = torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])   # [total]
    return out
