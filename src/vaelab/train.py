"""The training loop: one loop for every model; what differs lives in the latent family and the estimator."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import cudagraph, distributed, faults
from .config import Config
from .errors import VaelabError
from .estimators import Estimate
from .evaluate import elbo_terms
from .optim import Optimizers, build_optimizers
from .run import atomic_write_text, build, load_weights, prepare_data, read_checkpoint, resolve_device, save_checkpoint
from .schedules import Schedule, kl_schedule, lr_schedule

RUN_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoint", "checkpoint.old")


class MetricsSink:
    """metrics.jsonl (rewritten atomically from the full history) and TensorBoard scalars, one row per epoch."""

    def __init__(self, run_dir: Path, history: list[dict[str, Any]]) -> None:
        self.path, self.history = run_dir / "metrics.jsonl", list(history)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=len(history) + 1)
        except ImportError:  # TensorBoard is a declared dependency; tolerate its absence in slim installs
            self.tb = None

    def log(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.history))
        if self.tb is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, int | float):
                    self.tb.add_scalar(key.replace("_", "/", 1), value, row["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class MemorySink(MetricsSink):
    """What ranks other than 0 keep under torchrun: the history, no files."""

    def __init__(self, run_dir: Path, history: list[dict[str, Any]]) -> None:
        self.history, self.tb = list(history), None

    def log(self, row: dict[str, Any]) -> None:
        self.history.append(row)


class Updater:
    """One optimisation step on a batch: forward, backward, gradient clipping, Adam; the batch's loss, ELBO,
    reconstruction and KL sums are added to `sums` on the device, so nothing waits for the GPU until the epoch ends.

    `step(x, kl_weight)` is the (DDP-wrapped, compiled) forward of `distributed.make_step`; under torchrun the loss
    is weighted by this rank's share of the global batch (`distributed.shard`)."""

    def __init__(self, step: Callable[[Tensor, float], Estimate], optim: Optimizers | torch.optim.Optimizer,
                 grad_clip: float | None, ctx: distributed.Context) -> None:
        self.step, self.optim, self.grad_clip, self.ctx = step, optim, grad_clip, ctx
        self.params = [p for g in optim.param_groups for p in g["params"]]
        self.sums = torch.zeros(4, device=ctx.device)                            # loss, elbo, rec, kl

    def __call__(self, x: Tensor, kl_weight: float | Tensor, weight: float = 1.0) -> None:
        est = self.step(x, kl_weight)
        self.optim.zero_grad(set_to_none=True)
        (est.loss * weight if self.ctx.distributed else est.loss).backward()    # DDP averages the ranks' grads
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optim.step()
        faults.point("step")                                                     # tests: SIGKILL at step N
        self.sums += torch.stack([est.loss.detach() * len(x), est.elbo.sum(), est.rec.sum(), est.kl.sum()])


def make_update(cfg: Config, model, estimator, optim: torch.optim.Optimizer, ctx: distributed.Context,
                probe: Tensor) -> Updater | cudagraph.GraphedUpdate:
    """The per-batch update `train` runs: the (DDP-wrapped, compiled) step of `distributed.make_step` inside an
    Updater, replayed as a CUDA graph when train.cuda_graph is set on a GPU (`optim` must then be capturable)."""
    step = distributed.make_step(model, estimator, ctx, probe, cfg.train.compile, cfg.train.autocast,
                                 cfg.train.compile_mode)
    update = Updater(step, optim, cfg.train.grad_clip, ctx)
    return cudagraph.GraphedUpdate(update, optim) if cudagraph.enabled(cfg.train.cuda_graph, ctx.device) else update


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to overwrite another run; refuse to resume what is not there."""
    holds_run = run_dir.is_dir() and any((run_dir / m).exists() for m in RUN_MARKERS)
    if resume and not holds_run:
        raise VaelabError(f"--resume {run_dir}: no run there to resume; drop --resume to start a new one")
    if not resume and holds_run:
        raise VaelabError(f"{run_dir} already holds a run: use --resume {run_dir} to continue it, "
                          "or --out a new directory")


def train(cfg: Config, run_dir: str | Path, *, resume: bool = False, quiet: bool = False,
          epochs: int | None = None) -> list[dict[str, Any]]:
    """Train `cfg` into `run_dir` (or continue it; `epochs` then extends or shortens it); returns the per-epoch
    metrics history.

    Under torchrun (WORLD_SIZE > 1) each rank trains on its shard of every batch (distributed.py) and only rank 0
    writes files or prints."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume)
    state: dict[str, Any] = {"epoch": 0, "history": []}
    if resume:
        cfg, tensors, state = read_checkpoint(run_dir)
        if epochs is not None:
            if epochs < 1:
                raise VaelabError(f"--epochs {epochs}: give a positive number of epochs")
            cfg.train.epochs = epochs
    ctx = distributed.setup(resolve_device(cfg.train.device))   # one process unless started by torchrun
    device, quiet = ctx.device, quiet or not ctx.is_main
    with ctx.main_first():
        data = prepare_data(cfg.data, device)
    model, estimator = build(cfg, data, device)
    steps_per_epoch = min(math.ceil(len(data.x_train) / cfg.train.batch_size), cfg.train.steps_per_epoch or math.inf)
    beta = kl_schedule(cfg.train.kl_weight, steps_per_epoch)   # validated before any training
    distributed.check_options(cfg.train.compile, cfg.train.autocast, device, cfg.train.compile_mode)
    cudagraph.check(cfg.train.cuda_graph, cfg.train.compile_mode, ctx.distributed)
    named = {f"model.{k}": p for k, p in model.named_parameters()} | {
        f"estimator.{k}": p for k, p in estimator.named_parameters()}
    optim = build_optimizers(named, cfg.train.lr, cfg.train.adam_eps, cfg.train.param_groups, device,
                             capturable=cudagraph.enabled(cfg.train.cuda_graph, device))
    lr_at = lr_schedule(cfg.train.lr_schedule)                 # epoch -> factor; validated before any training
    gen = torch.Generator(device).manual_seed(cfg.train.seed)
    if resume:
        load_weights(model, estimator, tensors)
        optim.load_state_dict(state["optim"])
        gen.set_state(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
    if ctx.is_main and (not resume or epochs is not None):   # a new run, or one extended to `epochs`
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    update = make_update(cfg, model, estimator, optim, ctx, data.x_valid[:8])
    sink = MetricsSink(run_dir, state["history"]) if ctx.is_main else MemorySink(run_dir, state["history"])
    show = not quiet and sys.stderr.isatty()
    scope = contextlib.ExitStack()
    scope.enter_context(distributed.matmul_precision(cfg.train.tf32, device))
    try:
        for epoch in range(state["epoch"], cfg.train.epochs):
            distributed.seed_sampling(cfg.train.seed, ctx, epoch)   # per-rank noise; one process: no-op
            optim.set_lr_factor(lr_at(epoch))
            row = train_epoch(cfg, model, estimator, optim, data, gen, epoch, show, beta, ctx=ctx, update=update)
            model.eval()
            row |= {f"valid_{k}": v.mean().item() for k, v in elbo_terms(model, data.x_valid).items()}
            model.train()
            if ctx.is_main:
                save_checkpoint(run_dir, cfg, model, estimator, {
                    "epoch": epoch + 1, "history": [*sink.history, row], "optim": optim.state_dict(),
                    "data_rng": gen.get_state(), "torch_rng": torch.get_rng_state(),
                    **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {})})
            sink.log(row)
            if not quiet:
                print(f"epoch {epoch + 1}/{cfg.train.epochs}  train ELBO {row['train_elbo']:.2f}  "
                      f"valid ELBO {row['valid_elbo']:.2f}  (KL {row['valid_kl']:.2f}, "
                      f"rec {row['valid_rec']:.2f})  {row['seconds']:.1f}s"
                      + (f"  KL weight {row['kl_weight']:.3g}" if cfg.train.kl_weight else ""), file=sys.stderr)
        distributed.barrier(ctx)   # ranks leave together: tearing Gloo down while rank 0 still writes can abort
    finally:
        sink.close()
        scope.close()
        distributed.teardown(ctx)
    return sink.history


def train_epoch(cfg: Config, model, estimator, optim, data, gen: torch.Generator, epoch: int,
                show_progress: bool, beta: Schedule = lambda step: 1.0, step=None,
                ctx: distributed.Context | None = None, update: Updater | None = None) -> dict[str, Any]:
    """One pass over a fresh permutation; sums stay on the device and are read once at the end.

    `beta(step)` weights the trained KL (train_loss); train_elbo/rec/kl are the unweighted ELBO terms.
    `update` (an Updater, maybe graphed) takes each batch; by default one around `step(x, kl_weight)`, itself by
    default `estimator(model, x, kl_weight)`; under torchrun `ctx` gives this rank's share of each batch."""
    ctx = ctx or distributed.Context(device=data.x_train.device)
    if update is None:
        step = step or (lambda x, kl_weight: estimator(model, x, kl_weight))
        update = Updater(step, optim, cfg.train.grad_clip, ctx)
    t0 = time.perf_counter()
    model.train()
    x_epoch = data.train_epoch_images(gen)                                       # [N, P]
    batches = torch.randperm(len(x_epoch), generator=gen, device=gen.device).split(cfg.train.batch_size)
    batches = batches[: cfg.train.steps_per_epoch] if cfg.train.steps_per_epoch else batches
    batches = distributed.keep_batches(batches, ctx)                             # every rank gets >= 1 image
    update.sums.zero_()
    step0, beta_sum = epoch * len(batches), 0.0
    for i, idx in enumerate(tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", disable=not show_progress,
                                 leave=False)):
        kl_weight = beta(step0 + i)                                              # a python float: no host sync
        beta_sum += kl_weight
        local, weight = distributed.shard(idx, ctx)                              # one process: idx, 1.0
        update(x_epoch[local], kl_weight, weight)
    sums = distributed.all_reduce_sum(update.sums.clone(), ctx)                  # one collective per epoch
    n = sum(len(i) for i in batches)
    loss, elbo, rec, kl = (sums / n).tolist()
    if not torch.isfinite(sums).all():
        raise VaelabError(f"training diverged in epoch {epoch + 1} (loss {loss}): lower train.lr or set "
                          "train.grad_clip; the last good checkpoint is kept")
    return {"epoch": epoch + 1, "train_loss": loss, "train_elbo": elbo, "train_rec": rec, "train_kl": kl,
            "kl_weight": beta_sum / len(batches), "lr": optim.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t0, "steps": len(batches)}
