"""The training loop: one loop for every model; what differs lives in the latent family and the estimator."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import cudagraph, distributed, faults, hardware, lifecycle
from .atomic import atomic_write_text
from .checks import check_int
from .config import Config, validate
from .errors import Stopped, VaelabError
from .estimators import Estimate
from .evaluate import elbo_terms
from .gradcheck import training_grad_stats
from .hardware import resolve_device
from .lifecycle import RunLock, StopSignals
from .optim import Optimizers, build_optimizers
from .run import build, load_weights, prepare_data, read_checkpoint, save_checkpoint
from .runstate import check_optimizer_state
from .schedules import Schedule, kl_schedule, lr_schedule


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


class Diverged(VaelabError):
    """A non-finite epoch loss; `train` turns it into a message that says what the run directory still holds."""

    def __init__(self, epoch: int, loss: float) -> None:
        super().__init__(f"training diverged in epoch {epoch} (loss {loss}): lower train.lr or set train.grad_clip")
        self.epoch, self.loss = epoch, loss


class EpochStopped(Exception):
    """A stop signal arrived inside an epoch; `partial` is what a checkpoint needs to continue it exactly."""

    def __init__(self, partial: dict[str, Any]) -> None:
        super().__init__("stopped inside an epoch")
        self.partial = partial


def check_run_dir(run_dir: Path, resume: bool) -> str:
    """Refuse to overwrite another run; refuse to resume what is not there (lifecycle.check_run_dir)."""
    return lifecycle.check_run_dir(run_dir, resume)


def _start(cfg: Config | None, run_dir: Path, resume: bool, kind: str,
           epochs: int | None) -> tuple[Config, dict | None, dict[str, Any]]:
    """The config, checkpoint tensors (None for a fresh start) and training state to start from."""
    state: dict[str, Any] = {"epoch": 0, "history": []}
    if resume and kind == "run":
        cfg, tensors, state = read_checkpoint(run_dir)
        if epochs is not None:
            stopped_in = state["epoch"] + 1 if "partial" in state else 0
            if epochs < stopped_in:
                raise VaelabError(f"--epochs {epochs}: the run stopped inside epoch {stopped_in}; "
                                  f"give --epochs {stopped_in} or more")
            cfg.train.epochs = epochs
        return cfg, tensors, state
    if kind == "stranded" and distributed.is_main_process():    # said even with --quiet: it changes what runs
        what = "starting it from step 0 with its config.yaml" if resume else "restarting it"
        print(f"vaelab: {run_dir} holds a run stopped before its first checkpoint: {what}", file=sys.stderr)
    if resume:
        cfg = lifecycle.stranded_config(run_dir)
        cfg.train.epochs = epochs or cfg.train.epochs
    return validate(cfg), None, state


def _restore(model, estimator, optim: Optimizers, gen: torch.Generator, tensors: dict, state: dict[str, Any],
             device: torch.device, run_dir: Path) -> None:
    """Load a checkpoint's weights, optimizer and RNG states, each checked before torch sees it."""
    load_weights(model, estimator, tensors)
    check_optimizer_state(optim.optimizers, state["optim"], str(run_dir))
    optim.load_state_dict(state["optim"])
    if state["data_rng"].numel() != gen.get_state().numel():
        raise VaelabError(f"{run_dir} was trained on another device type (its data RNG state does not fit "
                          f"{device.type}): resume with --set train.device as it was trained, e.g. cuda")
    gen.set_state(state["data_rng"])
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], device)


def _open_for_writing(run_dir: Path, lock: RunLock, resume: bool, kind: str, write_config: bool,
                      cfg: Config) -> None:
    """Rank 0: create the run directory, take its lock (if not yet held), check again under the lock that no
    other process made it a run meanwhile, and write config.yaml."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VaelabError(f"cannot create {run_dir} ({err.strerror}): choose another --out") from err
    if not lock.held:
        lock.acquire()
        kind = check_run_dir(run_dir, resume)
    faults.point("locked")
    if kind == "stranded" and not resume:
        shutil.rmtree(run_dir / "tb", ignore_errors=True)    # the stopped attempt's (empty) TensorBoard files
    if write_config:
        atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())


def train(cfg: Config | None, run_dir: str | Path, *, resume: bool = False, quiet: bool = False,
          epochs: int | None = None) -> list[dict[str, Any]]:
    """Train `cfg` into `run_dir` (or continue it; `epochs` then extends it); returns the per-epoch metrics history.

    Everything is checked before the directory is created or written: the config's ranges, the output path, the
    data, the model, and on --resume the checkpoint. One process writes a run at a time (lifecycle.RunLock). A run
    stopped before its first checkpoint is started from step 0 (with --resume) or restarted (without). SIGINT,
    SIGTERM and SIGHUP checkpoint at the next safe point and raise errors.Stopped.

    Under torchrun (WORLD_SIZE > 1) each rank trains on its shard of every batch (distributed.py) and only rank 0
    writes files or prints."""
    run_dir = Path(run_dir)
    if epochs is not None:
        check_int("--epochs", epochs, 1, fix="give a positive number of epochs")
    kind = check_run_dir(run_dir, resume)
    lock = RunLock(run_dir)
    with contextlib.ExitStack() as stack:
        stack.callback(lock.release)                               # however it was taken (here or when created)
        if kind != "empty" and distributed.is_main_process():    # a run (or a stopped one): lock before reading
            lock.acquire()
            kind = check_run_dir(run_dir, resume)
        cfg, tensors, state = _start(cfg, run_dir, resume, kind, epochs)
        ctx = distributed.setup(resolve_device(cfg.train.device))   # one process unless started by torchrun
        stack.callback(distributed.teardown, ctx)
        write_config = not resume or epochs is not None             # a new run, or one extended to `epochs`
        return _train(cfg, run_dir, ctx, tensors, state, quiet or not ctx.is_main,
                      lambda: _open_for_writing(run_dir, lock, resume, kind, write_config, cfg))


def _train(cfg: Config, run_dir: Path, ctx: distributed.Context, tensors: dict | None, state: dict[str, Any],
           quiet: bool, open_run_dir: Callable[[], None]) -> list[dict[str, Any]]:
    device = ctx.device
    if ctx.distributed and cfg.train.batch_size < ctx.world_size:
        raise VaelabError(f"train.batch_size = {cfg.train.batch_size} is smaller than the {ctx.world_size} "
                          "processes of this job: raise it or start fewer processes")
    with ctx.main_first():
        data = prepare_data(cfg.data, device)
    model, estimator = build(cfg, data, device)
    steps_per_epoch = min(math.ceil(len(data.x_train) / cfg.train.batch_size), cfg.train.steps_per_epoch or math.inf)
    beta = kl_schedule(cfg.train.kl_weight, steps_per_epoch)   # validated before any training
    hardware.check_options(cfg.train.compile, cfg.train.autocast, device, cfg.train.compile_mode)
    cudagraph.check(cfg.train.cuda_graph, cfg.train.compile_mode, ctx.distributed)
    named = {f"model.{k}": p for k, p in model.named_parameters()} | {
        f"estimator.{k}": p for k, p in estimator.named_parameters()}
    optim = build_optimizers(named, cfg.train.lr, cfg.train.adam_eps, cfg.train.param_groups, device,
                             capturable=cudagraph.enabled(cfg.train.cuda_graph, device))
    lr_at = lr_schedule(cfg.train.lr_schedule)                 # epoch -> factor; validated before any training
    gen = torch.Generator(device).manual_seed(cfg.train.seed)
    if tensors is not None:
        _restore(model, estimator, optim, gen, tensors, state, device, run_dir)
    if ctx.is_main:
        open_run_dir()
    update = make_update(cfg, model, estimator, optim, ctx, data.x_valid[:8])
    sink = MetricsSink(run_dir, state["history"]) if ctx.is_main else MemorySink(run_dir, state["history"])
    loop = Loop(cfg, run_dir, model, estimator, optim, data, gen, ctx, update, sink, beta, lr_at, quiet)
    if cfg.train.grad_stats_every and ctx.is_main:
        done = sum(r["steps"] for r in state["history"]) + state.get("partial", {}).get("step", 0)
        loop.probe = GradProbe(cfg, model, estimator, run_dir, sink, done)
    with contextlib.ExitStack() as scope:
        scope.callback(sink.close)
        scope.enter_context(hardware.matmul_precision(cfg.train.tf32, device))
        loop.run(state["epoch"], state.get("partial"))
        distributed.barrier(ctx)   # ranks leave together: tearing Gloo down while rank 0 still writes can abort
    return sink.history


class GradProbe:
    """`train.grad_stats_every` = N: after every N-th step, the encoder gradient's variance and signal-to-noise ratio
    on that step's batch (gradcheck.training_grad_stats, train.grad_stats_draws extra estimator calls, the RNG left
    as it was) -> RUN/grad_stats.jsonl (one row per measurement) and TensorBoard (grad/*). Rows past the
    checkpoint a resumed run starts from are dropped, so a resumed run's file equals an uninterrupted one's."""

    def __init__(self, cfg: Config, model, estimator, run_dir: Path, sink: MetricsSink, done_steps: int) -> None:
        self.model, self.estimator, self.sink = model, estimator, sink
        self.every, self.draws = cfg.train.grad_stats_every, cfg.train.grad_stats_draws
        self.path = run_dir / "grad_stats.jsonl"
        rows = [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.is_file() else []
        kept = [r for r in rows if r["step"] <= done_steps]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def __call__(self, step: int, x: Tensor) -> None:
        if step % self.every:
            return
        row = {"step": step} | training_grad_stats(self.estimator, self.model, x, self.draws)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.sink.tb is not None:
            for key in ("log10_grad_var", "grad_snr"):
                self.sink.tb.add_scalar(f"grad/{key}", row[key], step)


class Loop:
    """The epochs of one `train` call: train, validate, checkpoint, log; stop cleanly on a signal or divergence."""

    def __init__(self, cfg: Config, run_dir: Path, model, estimator, optim: Optimizers, data, gen: torch.Generator,
                 ctx: distributed.Context, update, sink: MetricsSink, beta: Schedule,
                 lr_at: Callable[[int], float], quiet: bool) -> None:
        self.cfg, self.run_dir, self.model, self.estimator, self.optim = cfg, run_dir, model, estimator, optim
        self.data, self.gen, self.ctx, self.update, self.sink = data, gen, ctx, update, sink
        self.beta, self.lr_at, self.quiet = beta, lr_at, quiet
        self.probe: GradProbe | None = None

    def checkpoint(self, epochs_done: int, history: list[dict[str, Any]], partial: dict | None = None) -> None:
        if not self.ctx.is_main:
            return
        device = self.ctx.device
        save_checkpoint(self.run_dir, self.cfg, self.model, self.estimator, {
            "epoch": epochs_done, "history": history, "optim": self.optim.state_dict(),
            "data_rng": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
            **({"partial": partial} if partial is not None else {})})

    def run(self, first_epoch: int, partial: dict | None) -> None:
        cfg, ctx, show = self.cfg, self.ctx, not self.quiet and sys.stderr.isatty()
        with StopSignals() as stop:
            for epoch in range(first_epoch, cfg.train.epochs):
                distributed.seed_sampling(cfg.train.seed, ctx, epoch)   # per-rank noise; one process: no-op
                self.optim.set_lr_factor(self.lr_at(epoch))
                try:
                    row = train_epoch(cfg, self.model, self.estimator, self.optim, self.data, self.gen, epoch, show,
                                      self.beta, ctx=ctx, update=self.update, start=partial,
                                      stop=None if ctx.distributed else stop, probe=self.probe)
                except EpochStopped as halt:
                    self.checkpoint(epoch, self.sink.history, halt.partial)
                    raise Stopped(f"stopped by {stop.name} in epoch {epoch + 1} after step {halt.partial['step']}: "
                                  f"checkpoint written; `vaelab train --resume {self.run_dir}` continues from "
                                  "there", stop.signum) from None
                except Diverged as err:
                    raise self.diverged(err) from None
                partial = None
                self.end_epoch(epoch, row)
                if self.stop_everywhere(stop) and epoch + 1 < cfg.train.epochs:
                    raise Stopped(f"stopped by {stop.name or 'a signal'} after epoch {epoch + 1}: checkpoint "
                                  f"written; `vaelab train --resume {self.run_dir}` continues", stop.signum or 15)

    def end_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        """Validate, checkpoint, log and print one finished epoch."""
        self.model.eval()
        row |= {f"valid_{k}": v.mean().item() for k, v in elbo_terms(self.model, self.data.x_valid).items()}
        self.model.train()
        self.checkpoint(epoch + 1, [*self.sink.history, row])
        self.sink.log(row)
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

    def diverged(self, err: Diverged) -> VaelabError:
        """The divergence message, true to what the run directory holds."""
        if lifecycle.has_checkpoint(self.run_dir):
            done = len(self.sink.history)
            which = f"of epoch {done}" if done else f"from inside epoch {err.epoch}"
            return VaelabError(f"{err}; the last good checkpoint ({which}) is kept: evaluate it, or train with "
                               "new settings into another --out")
        return VaelabError(f"{err}, then rerun `vaelab train CONFIG --out {self.run_dir}` (no checkpoint was "
                           "written; it restarts the run)")


def train_epoch(cfg: Config, model, estimator, optim, data, gen: torch.Generator, epoch: int,
                show_progress: bool, beta: Schedule = lambda step: 1.0, step=None,
                ctx: distributed.Context | None = None, update: Updater | None = None, *,
                start: dict[str, Any] | None = None, stop: StopSignals | None = None,
                probe: Callable[[int, Tensor], None] | None = None) -> dict[str, Any]:
    """One pass over a fresh permutation; sums stay on the device and are read once at the end.

    `beta(step)` weights the trained KL (train_loss); train_elbo/rec/kl are the unweighted ELBO terms.
    `update` (an Updater, maybe graphed) takes each batch; by default one around `step(x, kl_weight)`, itself by
    default `estimator(model, x, kl_weight)`; under torchrun `ctx` gives this rank's share of each batch.
    `start` (a checkpoint's "partial" record) continues an epoch a signal stopped: the same images and
    permutation (the data RNG as it was at the epoch's start), its first steps skipped, its sums restored. When
    `stop` is requested before a step, raises EpochStopped with the record to continue from there."""
    ctx = ctx or distributed.Context(device=data.x_train.device)
    if update is None:
        step = step or (lambda x, kl_weight: estimator(model, x, kl_weight))
        update = Updater(step, optim, cfg.train.grad_clip, ctx)
    t0 = time.perf_counter()
    model.train()
    if start is not None:
        gen.set_state(start["epoch_rng"])
    epoch_rng = gen.get_state()
    x_epoch = data.train_epoch_images(gen)                                       # [N, P]
    batches = torch.randperm(len(x_epoch), generator=gen, device=gen.device).split(cfg.train.batch_size)
    batches = batches[: cfg.train.steps_per_epoch] if cfg.train.steps_per_epoch else batches
    batches = distributed.keep_batches(batches, ctx)                             # every rank gets >= 1 image
    first, beta_sum, before = 0, 0.0, 0.0
    update.sums.zero_()
    if start is not None:
        first, beta_sum, before = start["step"], start["beta_sum"], start["seconds"]
        update.sums.copy_(torch.tensor(start["sums"], dtype=update.sums.dtype))
    step0 = epoch * len(batches)
    for i, idx in enumerate(tqdm(batches[first:], desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                                 disable=not show_progress, leave=False), first):
        if stop is not None and stop.requested:
            raise EpochStopped({"step": i, "epoch_rng": epoch_rng, "sums": update.sums.tolist(),
                                "beta_sum": beta_sum, "seconds": before + time.perf_counter() - t0})
        kl_weight = beta(step0 + i)                                              # a python float: no host sync
        beta_sum += kl_weight
        local, weight = distributed.shard(idx, ctx)                              # one process: idx, 1.0
        update(x_epoch[local], kl_weight, weight)
        if probe is not None:
            probe(step0 + i + 1, x_epoch[local])                                 # train.grad_stats_every
    sums = distributed.all_reduce_sum(update.sums.clone(), ctx)                  # one collective per epoch
    n = sum(len(i) for i in batches)
    loss, elbo, rec, kl = (sums / n).tolist()
    if not torch.isfinite(sums).all():
        raise Diverged(epoch + 1, loss)
    return {"epoch": epoch + 1, "train_loss": loss, "train_elbo": elbo, "train_rec": rec, "train_kl": kl,
            "kl_weight": beta_sum / len(batches), "lr": optim.param_groups[0]["lr"],
            "seconds": before + time.perf_counter() - t0, "steps": len(batches)}
