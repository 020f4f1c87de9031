"""The training loop, one for every model: what differs lives in the latent family and the estimator.

Read top to bottom, nanoGPT-style. `Objective` is the loss, `estimator(model, x, kl_weight)`; `Step` is one
optimisation step around it (forward, backward, clipping, the optimizer, the batch's metric sums kept on the
device); `make_step` applies the wrappers around that one step: DDP and torch.compile around its forward, a CUDA
graph around all of it. `train_epoch` runs the step over one epoch's batches. `TrainState` is everything a
checkpoint holds, with a Fabric-style `state()` / `restore()` pair. `train` builds the rest from the config and runs
the epochs (`Loop`: validate, checkpoint, log, stop cleanly on a signal or a divergence).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vaelab.config.checks import check_int
from vaelab.config.schema import Config
from vaelab.core import faults
from vaelab.core.errors import Stopped, VaelabError
from vaelab.estimators.base import Estimate
from vaelab.evaluation.bounds import elbo_terms
from vaelab.evaluation.gradvar import training_grad_stats
from vaelab.optim.optimizers import Optimizers, build_optimizers
from vaelab.optim.schedules import Schedule, kl_schedule, lr_schedule
from vaelab.runs import best, lifecycle
from vaelab.runs.lifecycle import RunLock, StopSignals
from vaelab.runs.metrics_log import MemorySink, MetricsSink, steps_done
from vaelab.runs.run_files import build, load_weights, nonfinite_training_state, prepare_data, save_checkpoint
from vaelab.runs.train_state import check_optimizer_state
from vaelab.runtime import distributed, hardware
from vaelab.runtime.hardware import resolve_device
from vaelab.training import cudagraph


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


class Step:
    """One optimisation step on a batch; its loss, ELBO, reconstruction and KL sums are added to `sums` and kept
    per step in `rows` (for TensorBoard's batch/* scalars), all on the device, so nothing waits for the GPU until
    the epoch ends. Under torchrun the loss is weighted by this rank's share of the global batch
    (`distributed.shard`); with `graphed` the whole step is replayed as a CUDA graph (training/cudagraph.py)."""

    def __init__(self, forward: Callable[[Tensor, float | Tensor], Estimate], optim: Optimizers |
                 torch.optim.Optimizer, grad_clip: float | None, ctx: distributed.Context, steps: int,
                 graphed: bool = False) -> None:
        self.forward, self.optim, self.grad_clip, self.ctx = forward, optim, grad_clip, ctx
        self.params = [p for g in optim.param_groups for p in g["params"]]
        self.sums = torch.zeros(4, device=ctx.device)                          # loss, elbo, rec, kl
        self.rows = torch.zeros(steps, 4, device=ctx.device)                   # the same, step by step
        self.count = torch.zeros(1, dtype=torch.long, device=ctx.device)       # steps taken (a graph replays it)
        self.run = cudagraph.GraphedUpdate(self.update, optim) if graphed else self.update

    def __call__(self, x: Tensor, kl_weight: float, weight: float = 1.0) -> None:
        self.run(x, kl_weight, weight)

    def update(self, x: Tensor, kl_weight: float | Tensor, weight: float = 1.0) -> None:
        est = self.forward(x, kl_weight)                                       # estimator(model, x, kl_weight)
        self.optim.zero_grad(set_to_none=True)
        (est.loss * weight if self.ctx.distributed else est.loss).backward()  # DDP averages the ranks' grads
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optim.step()
        faults.point("step")                                                   # tests: SIGKILL at step N
        sums = torch.stack([est.loss.detach() * len(x), est.elbo.sum(), est.rec.sum(), est.kl.sum()])
        self.sums += sums
        self.rows.index_copy_(0, self.count, sums[None].to(self.rows.dtype))
        self.count += 1

    def reset(self, sums: list[float] | None = None, steps: int = 0) -> None:
        """Start an epoch, or continue one a signal stopped after `steps` steps with these `sums`."""
        if sums is None:
            self.sums.zero_()
        else:
            self.sums.copy_(torch.tensor(sums, dtype=self.sums.dtype))
        self.count.fill_(steps)

    def per_image(self, batches: list[Tensor], first: int, upto: int | None = None,
                  ctx: distributed.Context | None = None) -> tuple[list[float], list[list[float]]]:
        """The epoch's mean loss, ELBO, rec and KL per image, and each step's from `first` (to `upto`): one
        all-reduce under torchrun (`ctx`) and one read from the device."""
        upto = len(batches) if upto is None else upto
        summed = torch.cat([self.sums, self.rows[:upto].flatten()])
        summed = summed if ctx is None else distributed.all_reduce_sum(summed, ctx)   # one collective per epoch
        values = torch.cat([summed[:4] / sum(len(b) for b in batches), summed[4 + 4 * first:]]).tolist()
        steps = [[v / len(b) for v in values[4 * j: 4 * j + 4]] for j, b in enumerate(batches[first:upto], 1)]
        return values[:4], steps


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
    return Step(forward, optim, t.grad_clip, ctx, steps, graphed=cudagraph.enabled(t.cuda_graph, ctx.device))


class Diverged(VaelabError):
    """A non-finite epoch loss; `train` turns it into a message that says what the run directory still holds."""

    def __init__(self, epoch: int, loss: float, what: str = "") -> None:
        super().__init__(f"training diverged in epoch {epoch} ({what or f'loss {loss}'}): lower train.lr or set "
                         "train.grad_clip")
        self.epoch, self.loss = epoch, loss


class EpochStopped(Exception):
    """A stop signal arrived inside an epoch; `partial` is what a checkpoint needs to continue it exactly."""

    def __init__(self, partial: dict[str, Any]) -> None:
        super().__init__("stopped inside an epoch")
        self.partial = partial


def steps_per_epoch(cfg: Config, images: int) -> int:
    """Batches of `cfg.train.batch_size` in `images` training images, capped by train.steps_per_epoch."""
    return min(math.ceil(images / cfg.train.batch_size), cfg.train.steps_per_epoch or math.inf)


def train_epoch(cfg: Config, model, estimator, optim, data, gen: torch.Generator, epoch: int,
                show_progress: bool = False, beta: Schedule = lambda step: 1.0, ctx: distributed.Context | None = None,
                step: Step | None = None, *, start: dict[str, Any] | None = None, stop: StopSignals | None = None,
                probe: Callable[[int, Tensor], None] | None = None,
                log_batches: Callable[[int, list[list[float]]], None] | None = None) -> dict[str, Any]:
    """One pass over a fresh permutation; `step` (by default an eager Step around `estimator(model, x, kl_weight)`)
    takes each batch, under torchrun this rank's share of it (`ctx`). `beta(step)` weights the trained KL
    (train_loss); train_elbo/rec/kl are the unweighted ELBO terms, summed on the device and read once at the end,
    with each step's values (`log_batches(steps before, values)`, TensorBoard). `start` (a checkpoint's "partial"
    record) continues an epoch a signal stopped: the same images and permutation (the data RNG as it was at the
    epoch's start), its first steps skipped, its sums restored. When `stop` is requested before a step, raises
    EpochStopped with the record to continue from there. `probe(steps done, x)` follows each step."""
    ctx = ctx or distributed.Context(device=data.x_train.device)
    t0 = time.perf_counter()
    model.train()
    if start is not None:
        gen.set_state(start["epoch_rng"])
    epoch_rng = gen.get_state()
    x_epoch = data.train_epoch_images(gen)                                       # [N, P]
    batches = torch.randperm(len(x_epoch), generator=gen, device=gen.device).split(cfg.train.batch_size)
    batches = distributed.keep_batches(batches[: cfg.train.steps_per_epoch or None], ctx)   # each rank gets >= 1
    step = step or Step(Objective(model, estimator), optim, cfg.train.grad_clip, ctx, len(batches))
    first, beta_sum, before = (start["step"], start["beta_sum"], start["seconds"]) if start else (0, 0.0, 0.0)
    step.reset(start and start["sums"], first)
    step0 = epoch * len(batches)
    for i, idx in enumerate(tqdm(batches[first:], desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                                 disable=not show_progress, leave=False), first):
        if stop is not None and stop.requested:                                  # one process: nothing to reduce
            if log_batches is not None:
                log_batches(step0 + first, step.per_image(batches, first, i)[1])
            raise EpochStopped({"step": i, "epoch_rng": epoch_rng, "sums": step.sums.tolist(),
                                "beta_sum": beta_sum, "seconds": before + time.perf_counter() - t0})
        kl_weight = beta(step0 + i)                                              # a python float: no host sync
        beta_sum += kl_weight
        local, weight = distributed.shard(idx, ctx)                              # one process: idx, 1.0
        step(x_epoch[local], kl_weight, weight)                                  # forward, backward, Adam
        if probe is not None:
            probe(step0 + i + 1, x_epoch[local])                                 # train.grad_stats_every
    (loss, elbo, rec, kl), values = step.per_image(batches, first, ctx=ctx)
    if not all(map(math.isfinite, (loss, elbo, rec, kl))):
        raise Diverged(epoch + 1, loss)
    if log_batches is not None:
        log_batches(step0 + first, values)
    return {"epoch": epoch + 1, "train_loss": loss, "train_elbo": elbo, "train_rec": rec, "train_kl": kl,
            "kl_weight": beta_sum / len(batches), "lr": optim.param_groups[0]["lr"],
            "seconds": before + time.perf_counter() - t0, "steps": len(batches)}


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

    @property
    def steps_done(self) -> int:
        return steps_done(self.history, self.partial)

    def state(self) -> dict[str, Any]:
        cuda = self.device.type == "cuda"
        return {"epoch": self.epoch, "history": self.history, "optim": self.optim.state_dict(),
                "data_rng": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state(self.device)} if cuda else {}),
                **({"partial": self.partial} if self.partial is not None else {})}

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
    if ctx.is_main:
        open_run_dir()
    step = make_step(cfg, model, estimator, optim, ctx, data.x_valid[:8], steps)
    sink = MemorySink(ts.history) if not ctx.is_main else MetricsSink(
        run_dir, ts.history, hparams=cfg.to_dict(), done_steps=ts.steps_done, log_every=t.log_every,
        grad_stats=bool(t.grad_stats_every))
    probe = GradProbe(t.grad_stats_every, t.grad_stats_draws, model, estimator, sink) \
        if t.grad_stats_every and ctx.is_main else None
    with contextlib.ExitStack() as scope:
        scope.callback(sink.close)
        scope.enter_context(hardware.matmul_precision(t.tf32, device))
        Loop(cfg, run_dir, ts, data, ctx, step, sink, beta, lr_at, quiet, probe).run()
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

    def __init__(self, cfg: Config, run_dir: Path, ts: TrainState, data, ctx: distributed.Context, step: Step,
                 sink: MetricsSink, beta: Schedule, lr_at: Callable[[int], float], quiet: bool,
                 probe: GradProbe | None) -> None:
        self.cfg, self.run_dir, self.ts, self.data, self.ctx, self.step = cfg, run_dir, ts, data, ctx, step
        self.sink, self.beta, self.lr_at, self.quiet, self.probe = sink, beta, lr_at, quiet, probe

    def checkpoint(self) -> None:
        if self.ctx.is_main:
            save_checkpoint(self.run_dir, self.cfg, self.ts.model, self.ts.estimator, self.ts.state())

    def run(self) -> None:
        cfg, ctx, ts, show = self.cfg, self.ctx, self.ts, not self.quiet and sys.stderr.isatty()
        with StopSignals() as stop:
            for epoch in range(ts.epoch, cfg.train.epochs):
                if best.stop_early(cfg.train, ts.history, ctx, self.quiet):     # train.early_stop_patience
                    break
                distributed.seed_sampling(cfg.train.seed, ctx, epoch)   # per-rank noise; one process: no-op
                ts.optim.set_lr_factor(self.lr_at(epoch))
                try:
                    row = train_epoch(cfg, ts.model, ts.estimator, ts.optim, self.data, ts.gen, epoch, show,
                                      self.beta, ctx, self.step, start=ts.partial, probe=self.probe,
                                      stop=None if ctx.distributed else stop, log_batches=self.sink.log_batches)
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
        if lifecycle.has_checkpoint(self.run_dir):
            done = len(self.ts.history)
            which = f"of epoch {done}" if done else f"from inside epoch {err.epoch}"
            return VaelabError(f"{err}; the last good checkpoint ({which}) is kept: evaluate it, or train with "
                               "new settings into another --out")
        return VaelabError(f"{err}, then rerun `vaelab train CONFIG --out {self.run_dir}` (no checkpoint was "
                           "written; it restarts the run)")
