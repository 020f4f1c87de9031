"""The training loop, one for every model: what differs lives in the latent family and the estimator.

Read top to bottom, nanoGPT-style. training/step.py holds the step: `Objective` is the loss,
`estimator(model, x, kl_weight)`; `Step` is one optimisation step around it (forward, backward, clipping, the
optimizer, the batch's metric sums kept on the device); `make_step` applies the wrappers around that one step: DDP
and torch.compile around its forward, a CUDA graph around all of it. training/epoch.py's `EpochLoop.run` runs the
step over one epoch's batches. Here: `TrainState` is everything a checkpoint holds, with a Fabric-style `state()` /
`restore()` pair; `train` builds the rest from the config and runs the epochs (`Loop`: validate, checkpoint, log,
stop cleanly on a signal or a divergence). The stacked-seeds model (training/stacked.py) runs its step through the
same `EpochLoop` and writes the same `TrainState` checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vaelab.config.checks import check_int
from vaelab.config.schema import Config
from vaelab.core.errors import Stopped, VaelabError
from vaelab.evaluation.bounds import elbo_terms
from vaelab.evaluation.gradvar import training_grad_stats
from vaelab.optim.optimizers import Optimizers, build_optimizers
from vaelab.optim.schedules import kl_schedule, lr_schedule
from vaelab.runs import best, lifecycle
from vaelab.runs.checkpoint import load_weights, nonfinite_training_state, save_checkpoint
from vaelab.runs.device_data import prepare_data
from vaelab.runs.lifecycle import StopSignals
from vaelab.runs.loaded_run import build
from vaelab.runs.metrics_log import MemorySink, MetricsSink, steps_done
from vaelab.runs.provenance import start_provenance
from vaelab.runs.run_dir import RunLock
from vaelab.runs.train_state import check_optimizer_state
from vaelab.runtime import distributed, hardware
from vaelab.runtime.hardware import resolve_device
from vaelab.training import cudagraph
from vaelab.training.epoch import (  # noqa: F401  (re-exported: benchmarks and tests import them from here)
    Diverged,
    EpochLoop,
    EpochStopped,
    divergence_message,
    steps_per_epoch,
    train_epoch,
)
from vaelab.training.step import Objective, Step, make_step  # noqa: F401  (re-exported, as above)


@dataclass
class TrainState:
    """Everything a checkpoint holds, live (Fabric-style): the weights of `model` and `estimator`
    (model.safetensors); and in state.pt the optimizer, the data generator `gen`, the global torch (and CUDA) RNG,
    the epochs done, the metrics history and, for a run a signal stopped inside an epoch, the record to continue it
    (`partial`). `state()` is state.pt's dict, `restore()` puts a checkpoint back (runs/train_state.py checks each part
    before torch sees it)."""

    model: nn.Module
    estimator: nn.Module
    optim: Optimizers
    gen: torch.Generator
    device: torch.device
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: dict[str, Any] | None = None
    provenance: dict[str, str] | None = None   # run id, config hash, data identity: provenance.start_provenance

    @property
    def steps_done(self) -> int:
        return steps_done(self.history, self.partial)

    def state(self) -> dict[str, Any]:
        cuda = self.device.type == "cuda"
        return {"epoch": self.epoch, "history": self.history, "optim": self.optim.state_dict(),
                "data_rng": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state(self.device)} if cuda else {}),
                **({"partial": self.partial} if self.partial is not None else {}),
                **({"provenance": self.provenance} if self.provenance is not None else {})}

    def restore(self, tensors: dict[str, Tensor], state: dict[str, Any], run_dir: Path) -> None:
        load_weights(self.model, self.estimator, tensors)
        check_optimizer_state(self.optim.optimizers, state["optim"], str(run_dir))
        self.optim.load_state_dict(state["optim"])
        if state["data_rng"].numel() != self.gen.get_state().numel():
            raise VaelabError(f"{run_dir} was trained on another device type (its data RNG state does not fit "
                              f"{self.device.type}): resume with --set train.device as it was trained, e.g. cuda")
        self.gen.set_state(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.epoch, self.history, self.partial = state["epoch"], list(state["history"]), state.get("partial")


def train(cfg: Config | None, run_dir: str | Path, *, resume: bool = False, quiet: bool = False,
          epochs: int | None = None) -> list[dict[str, Any]]:
    """Train `cfg` into `run_dir` (or continue it; `epochs` then extends it); returns the per-epoch metrics history.

    Everything is checked before the directory is created or written: the config's ranges, the output path, the
    data, the model, and on --resume the checkpoint. One process writes a run at a time (lifecycle.RunLock). A run
    stopped before its first checkpoint is started from step 0 (with --resume) or restarted (without). SIGINT,
    SIGTERM and SIGHUP checkpoint at the next safe point and raise errors.Stopped.

    Under torchrun (WORLD_SIZE > 1) each rank trains on its shard of every batch (runtime/distributed.py) and only
    rank 0 writes files or prints."""
    run_dir = Path(run_dir)
    if epochs is not None:
        check_int("--epochs", epochs, 1, fix="give a positive number of epochs")
    kind = lifecycle.check_run_dir(run_dir, resume)
    lock = RunLock(run_dir)
    with contextlib.ExitStack() as stack:
        stack.callback(lock.release)                               # however it was taken (here or when created)
        if kind != "empty" and distributed.is_main_process():    # a run (or a stopped one): lock before reading
            lock.acquire()
            kind = lifecycle.check_run_dir(run_dir, resume)
        cfg, tensors, state = lifecycle.starting_point(cfg, run_dir, resume, kind, epochs)
        ctx = distributed.setup(resolve_device(cfg.train.device))   # one process unless started by torchrun
        stack.callback(distributed.teardown, ctx)
        write_config = not resume or epochs is not None             # a new run, or one extended to `epochs`
        return _train(cfg, run_dir, ctx, tensors, state, quiet or not ctx.is_main,
                      lambda: lifecycle.open_for_writing(run_dir, lock, resume, kind, write_config, cfg))


def _train(cfg: Config, run_dir: Path, ctx: distributed.Context, tensors: dict | None, state: dict[str, Any],
           quiet: bool, open_run_dir: Callable[[], None]) -> list[dict[str, Any]]:
    t, device = cfg.train, ctx.device
    if ctx.distributed and t.batch_size < ctx.world_size:
        raise VaelabError(f"train.batch_size = {t.batch_size} is smaller than the {ctx.world_size} "
                          "processes of this job: raise it or start fewer processes")
    with ctx.main_first():
        data = prepare_data(cfg.data, device)
    model, estimator = build(cfg, data, device)
    steps = steps_per_epoch(cfg, len(data.x_train))
    beta, lr_at = kl_schedule(t.kl_weight, steps), lr_schedule(t.lr_schedule)   # validated before any training
    hardware.check_options(t.compile, t.autocast, device, t.compile_mode)
    cudagraph.check(t.cuda_graph, t.compile_mode, ctx.distributed)
    named = {f"model.{k}": p for k, p in model.named_parameters()} | {
        f"estimator.{k}": p for k, p in estimator.named_parameters()}
    optim = build_optimizers(named, t.lr, t.adam_eps, t.param_groups, device,
                             capturable=cudagraph.enabled(t.cuda_graph, device))
    ts = TrainState(model, estimator, optim, torch.Generator(device).manual_seed(t.seed), device)
    if tensors is not None:
        ts.restore(tensors, state, run_dir)
    ts.provenance = start_provenance(cfg, run_dir, state.get("provenance") if tensors is not None else None)
    step = make_step(cfg, model, estimator, optim, ctx, data.x_valid[:8], steps)   # refuses an impossible
    if ctx.is_main:                                                  # train.backward=manual before the run dir exists
        open_run_dir()
    sink = MemorySink(ts.history) if not ctx.is_main else MetricsSink(
        run_dir, ts.history, hparams=cfg.to_dict(), done_steps=ts.steps_done, log_every=t.log_every,
        grad_stats=bool(t.grad_stats_every))
    probe = GradProbe(t.grad_stats_every, t.grad_stats_draws, model, estimator, sink) \
        if t.grad_stats_every and ctx.is_main else None
    show = not quiet and sys.stderr.isatty()
    epochs = EpochLoop(cfg, data, ts.gen, model, step, optim, beta, ctx, show, probe, sink.log_batches)
    with contextlib.ExitStack() as scope:
        scope.callback(sink.close)
        scope.enter_context(hardware.matmul_precision(t.tf32, device))
        Loop(cfg, run_dir, ts, epochs, sink, lr_at, quiet).run()
        sink.finish()
        distributed.barrier(ctx)   # ranks leave together: tearing Gloo down while rank 0 still writes can abort
    return ts.history


class GradProbe:
    """`train.grad_stats_every` = N: after every N-th step, the encoder gradient's variance and signal-to-noise ratio
    on that step's batch (gradvar.training_grad_stats, `draws` extra estimator calls, the RNG left as it was)
    -> the sink (grad_stats.jsonl, one row per measurement, and TensorBoard's grad/*)."""

    def __init__(self, every: int, draws: int, model, estimator, sink: MetricsSink) -> None:
        self.every, self.draws, self.model, self.estimator, self.sink = every, draws, model, estimator, sink

    def __call__(self, step: int, x: Tensor) -> None:
        if step % self.every == 0:
            self.sink.log_grad_stats(step, training_grad_stats(self.estimator, self.model, x, self.draws))


class Loop:
    """The epochs of one `train` call: train, validate, checkpoint, log; stop cleanly on a signal or divergence."""

    def __init__(self, cfg: Config, run_dir: Path, ts: TrainState, epochs: EpochLoop, sink: MetricsSink,
                 lr_at: Callable[[int], float], quiet: bool) -> None:
        self.cfg, self.run_dir, self.ts, self.epochs, self.sink = cfg, run_dir, ts, epochs, sink
        self.data, self.ctx, self.lr_at, self.quiet = epochs.data, epochs.ctx, lr_at, quiet

    def checkpoint(self) -> None:
        if self.ctx.is_main:
            save_checkpoint(self.run_dir, self.cfg, self.ts.model, self.ts.estimator, self.ts.state())

    def run(self) -> None:
        cfg, ctx, ts = self.cfg, self.ctx, self.ts
        with StopSignals() as stop:
            for epoch in range(ts.epoch, cfg.train.epochs):
                if best.stop_early(cfg.train, ts.history, ctx, self.quiet):     # train.early_stop_patience
                    break
                distributed.seed_sampling(cfg.train.seed, ctx, epoch)   # per-rank noise; one process: no-op
                ts.optim.set_lr_factor(self.lr_at(epoch))
                try:
                    row = self.epochs.run(epoch, ts.partial, None if ctx.distributed else stop)
                except EpochStopped as halt:
                    ts.partial = halt.partial
                    self.check_finite(epoch + 1)
                    self.checkpoint()
                    raise Stopped(f"stopped by {stop.name} in epoch {epoch + 1} after step {halt.partial['step']}: "
                                  f"checkpoint written; `vaelab train --resume {self.run_dir}` continues from "
                                  "there", stop.signum) from None
                except Diverged as err:
                    raise self.diverged(err) from None
                ts.partial = None
                self.check_finite(epoch + 1)                           # before validating or checkpointing it
                self.end_epoch(epoch, row)
                if self.stop_everywhere(stop) and epoch + 1 < cfg.train.epochs:
                    raise Stopped(f"stopped by {stop.name or 'a signal'} after epoch {epoch + 1}: checkpoint "
                                  f"written; `vaelab train --resume {self.run_dir}` continues", stop.signum or 15)

    def end_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        """Validate, checkpoint, log and print one finished epoch."""
        model = self.ts.model
        model.eval()
        row |= {f"valid_{k}": v.mean().item() for k, v in elbo_terms(model, self.data.x_valid).items()}
        model.train()
        self.ts.epoch, self.ts.history = epoch + 1, [*self.ts.history, row]
        best.keep_best(self.cfg, self.run_dir, self.ts, self.ctx.is_main)   # train.keep_best: RUN/best/
        self.checkpoint()
        self.sink.log(row)
        self.sink.log_samples(model)                                         # TensorBoard's sample grid
        if not self.quiet:
            print(f"epoch {epoch + 1}/{self.cfg.train.epochs}  train ELBO {row['train_elbo']:.2f}  "
                  f"valid ELBO {row['valid_elbo']:.2f}  (KL {row['valid_kl']:.2f}, "
                  f"rec {row['valid_rec']:.2f})  {row['seconds']:.1f}s"
                  + (f"  KL weight {row['kl_weight']:.3g}" if self.cfg.train.kl_weight else ""), file=sys.stderr)

    def stop_everywhere(self, stop: StopSignals) -> bool:
        """Whether any process was asked to stop (one all-reduce per epoch under torchrun)."""
        if not self.ctx.distributed:
            return stop.requested
        flag = torch.tensor([1.0 if stop.requested else 0.0], device=self.ctx.device)
        return bool(distributed.all_reduce_sum(flag, self.ctx).item() > 0)

    def check_finite(self, epoch: int) -> None:
        """NaN or infinite weights or optimizer moments after a step are a divergence even when the epoch's loss was
        finite: stop before they are validated or checkpointed (the last finite checkpoint is kept)."""
        if (bad := nonfinite_training_state(self.ts.model, self.ts.estimator, self.ts.optim)) is not None:
            raise self.diverged(Diverged(epoch, math.nan, f"NaN or infinite values in {bad} after its last step"))

    def diverged(self, err: Diverged) -> VaelabError:
        """The divergence message, true to what the run directory holds."""
        return divergence_message(err, lifecycle.has_checkpoint(self.run_dir), len(self.ts.history),
                                  f"`vaelab train CONFIG --out {self.run_dir}`")
