"""N seeds of one config trained in one process as one stacked model (issue 14): `train_stacked`.

Every parameter, buffer and optimizer moment gets a leading seed dimension [N, ...]; one `torch.func.vmap` of the
unchanged step (`estimator(model, x, kl_weight)`, through `functional_call`) computes all N losses, one backward
gives each seed its own gradient (the seeds share nothing) and one Adam update moves them all (Adam is
elementwise). Each seed keeps its own data stream (permutation and binarization from its generator, as `train`
makes them) and its own estimator noise (training/stacked_noise.py), so seed i's run equals `vaelab train --seed i`
to float rounding (tests/test_stacked.py: 1e-6 on the CPU). What comes out is N ordinary run directories:
`evaluate`, `compare` and `train --resume` read them like any other run.

It is trained by the single run's machinery: `StackedStep` (this model's optimisation step, with per-seed gradient
clipping) runs inside training/epoch.py's `EpochLoop` (the step count, each seed's permutation, the signal and
divergence handling), and each seed's checkpoint is its `TrainState`'s (trainer.py), written from its unstacked
copy; what is this module's own is the per-seed bookkeeping (`SeedRun`, `Stack`, `_end_epoch`).

On a GPU this turns N launch-bound small steps into one step of N-times-larger kernels: the point of stacking
(benchmarks/RESULTS.md measures 32 seeds against one). Stacking covers the eager single-process step: it refuses
torchrun, train.compile, train.cuda_graph, autocast and grad_stats_every, and estimators whose draws cannot be made
ahead (training/stacked_noise.py). A signal stops it at the next step; each run keeps its last epoch's checkpoint and
`train_stacked(..., resume=True)` (or `train --resume` per run) continues from there.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call, vmap

from vaelab.config.schema import Config
from vaelab.core.errors import Stopped, VaelabError
from vaelab.evaluation.bounds import elbo_terms
from vaelab.optim.optimizers import build_optimizers
from vaelab.optim.schedules import kl_schedule, lr_schedule
from vaelab.runs.checkpoint import first_nonfinite, read_checkpoint, save_checkpoint
from vaelab.runs.device_data import prepare_data
from vaelab.runs.lifecycle import StopSignals, check_run_dir, has_checkpoint, open_for_writing
from vaelab.runs.loaded_run import build
from vaelab.runs.metrics_log import MetricsSink
from vaelab.runs.provenance import start_provenance
from vaelab.runs.run_dir import RunLock
from vaelab.runtime import distributed
from vaelab.runtime.hardware import resolve_device
from vaelab.training import stacked_noise
from vaelab.training.epoch import Diverged, EpochLoop, EpochStopped, divergence_message, steps_per_epoch
from vaelab.training.step import Objective, Step, batch_sums
from vaelab.training.trainer import TrainState


class SeedRun:
    """One seed's run: its config, directory, modules (the unstacked copy the checkpoints are written from) and
    `TrainState` (optimizer, data generator, epochs done, metrics history), and its estimator noise stream."""

    def __init__(self, cfg: Config, run_dir: Path, data, device: torch.device, resume: bool) -> None:
        self.cfg, self.run_dir, self.lock = cfg, run_dir, RunLock(run_dir)
        model, estimator = build(cfg, data, device)
        self.objective = Objective(model, estimator)   # one module: functional_call swaps model.* and estimator.*
        optim = _optimizers(cfg, dict(self.objective.named_parameters()), device)
        self.state = TrainState(model, estimator, optim, torch.Generator(device).manual_seed(cfg.train.seed), device)
        state = None
        if resume:
            _, tensors, state = read_checkpoint(run_dir)
            if "partial" in state:
                raise VaelabError(f"{run_dir} stopped inside an epoch: finish it with `vaelab train --resume "
                                  f"{run_dir}`, then stack again")
            self.state.restore(tensors, state, run_dir)
        self.state.provenance = start_provenance(cfg, run_dir, state.get("provenance") if state else None)
        self.noise_gen = torch.Generator(device)                   # where the single run's global RNG stands now
        self.noise_gen.set_state(torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state())
        self.cpu_rng = torch.get_rng_state()

    @contextlib.contextmanager
    def rng_swapped(self) -> Iterator[None]:
        """Run the enclosed code with this seed's random streams as torch's global generators, as its own run
        would have them: validation draws from its noise stream, and its checkpoint records them."""
        device = self.noise_gen.device
        cuda = device.type == "cuda"
        outer_cpu, outer_cuda = torch.get_rng_state(), torch.cuda.get_rng_state(device) if cuda else None
        if cuda:
            torch.cuda.set_rng_state(self.noise_gen.get_state(), device)
        torch.set_rng_state(self.cpu_rng if cuda else self.noise_gen.get_state())
        try:
            yield
        finally:
            self.noise_gen.set_state(torch.cuda.get_rng_state(device) if cuda else torch.get_rng_state())
            if cuda:
                self.cpu_rng = torch.get_rng_state()
                torch.cuda.set_rng_state(outer_cuda, device)
            torch.set_rng_state(outer_cpu)


def _optimizers(cfg: Config, named: dict[str, Tensor], device: torch.device):
    """train's optimizers (train.param_groups) over `named` parameters, a seed's or the stacked ones."""
    return build_optimizers(named, cfg.train.lr, cfg.train.adam_eps, cfg.train.param_groups, device)


def _check(cfg: Config, seeds: list[int], run_dirs: list[Path]) -> None:
    t = cfg.train
    if len(seeds) != len(run_dirs) or not seeds:
        raise VaelabError("stacked training needs one run directory per seed")
    if len(set(seeds)) != len(seeds):
        raise VaelabError(f"seeds {seeds}: each seed once")
    for name, on in (("train.compile", t.compile), ("train.cuda_graph", t.cuda_graph),
                     ("train.autocast", t.autocast not in (None, "none", False)),
                     ("train.grad_stats_every", bool(t.grad_stats_every)),
                     ("train.keep_best", t.keep_best is not None),
                     ("train.early_stop_patience", t.early_stop_patience is not None),
                     ("train.backward=manual", t.backward == "manual")):
        if on:
            raise VaelabError(f"{name} is not available in a stacked run (the eager step is vmapped): turn it off, "
                              "or train the seeds separately (sweep: stack: false)")


class Stack:
    """The seeds' parameters, buffers and optimizer state stacked along a leading seed dimension."""

    def __init__(self, runs: list[SeedRun], cfg: Config, device: torch.device) -> None:
        self.runs, self.template = runs, runs[0].objective
        objectives = [r.objective for r in runs]
        self.params = {k: torch.stack([dict(o.named_parameters())[k].detach() for o in objectives]).requires_grad_()
                       for k, _ in self.template.named_parameters()}            # name -> [N, ...]
        self.buffers = {k: torch.stack([dict(o.named_buffers())[k] for o in objectives])
                        for k, _ in self.template.named_buffers()}              # name -> [N, ...]
        self.optim = _optimizers(cfg, self.params, device)
        if runs[0].state.epoch:
            self.optim.load_state_dict(_stack_state([r.state.optim.state_dict() for r in runs]))
        self.plans: dict[torch.Size, Any] = {}

    def _one(self, params: dict, buffers: dict, x: Tensor, kl_weight: float, *noise: Tensor):
        with stacked_noise.NoisePlan(noise):
            est = functional_call(self.template, (params, buffers), (x, kl_weight))
        return est.loss, batch_sums(est, x.shape[0])                          # [], [4] (per seed)

    def losses(self, params: dict, buffers: dict, x: Tensor, kl_weight: float,
               gens: list[torch.Generator]) -> tuple[Tensor, Tensor]:
        """Every seed's loss [N] and metric sums [N, 4] on its batch x [N, B, P], its noise drawn from `gens`."""
        if x.shape[1:] not in self.plans:                          # the draws one seed's step makes, in order
            first = {k: v[0].detach().clone() for k, v in (params | buffers).items()}
            self.plans[x.shape[1:]] = stacked_noise.record(
                lambda xb: functional_call(self.template, first, (xb, kl_weight)), x[0])
        noise = stacked_noise.draw(self.plans[x.shape[1:]], gens)             # [N, *shape] each
        with warnings.catch_warnings():      # ops without a batching rule (NVIL's lerp_) run seed by seed: correct
            warnings.filterwarnings("ignore", message="There is a performance drop")
            return vmap(self._one, in_dims=(0, 0, 0, None, *[0] * len(noise)))(params, buffers, x, kl_weight, *noise)

    def trial(self, x: Tensor) -> None:
        """One step's forward and backward on copies (nothing trained, no generator moved): refuse, before any
        run directory is written, a step that cannot be stacked."""
        params = {k: v.detach().clone().requires_grad_() for k, v in self.params.items()}
        buffers = {k: v.clone() for k, v in self.buffers.items()}
        gens = [torch.Generator(r.noise_gen.device).set_state(r.noise_gen.get_state()) for r in self.runs]
        try:
            self.losses(params, buffers, x, 1.0, gens)[0].sum().backward()
        except RuntimeError as err:
            raise VaelabError(f"this estimator's step cannot be stacked ({str(err).splitlines()[0][:100]}): train "
                              "the seeds separately (sweep: stack: false)") from None

    def unstack(self, i: int) -> None:
        """Copy seed i's slice into its own modules and optimizer (for validation and its checkpoint)."""
        run = self.runs[i]
        with torch.no_grad():
            for k, p in run.objective.named_parameters():
                p.copy_(self.params[k][i])
            for k, b in run.objective.named_buffers():
                b.copy_(self.buffers[k][i])
        run.state.optim.load_state_dict(_slice_state(self.optim.state_dict(), i, len(self.runs)))

    def check_finite(self, epoch: int) -> None:
        """NaN or infinite weights, buffers or optimizer moments of any seed after epoch `epoch`'s last step are a
        divergence even when its losses were finite: stop before they are validated or checkpointed."""
        names = {id(p): k for k, p in self.params.items()}
        moments = {f"{key} of {names.get(id(p), 'a parameter')}": value for o in self.optim.optimizers
                   for p, entry in o.state.items() for key, value in entry.items()}
        if (bad := first_nonfinite({**self.params, **self.buffers, **moments})) is not None:
            raise Diverged(epoch, float("nan"), f"NaN or infinite values in {bad} after its last step")


class StackedStep(Step):
    """The stacked model's optimisation step, run by the same `EpochLoop` as a single run's: every seed's loss from
    one vmapped call, one backward (the seeds share nothing: grad i = seed i's), each seed's gradient clipped to its
    own norm, one update of all; the metric sums are kept per seed ([N, 4])."""

    def __init__(self, stack: Stack, grad_clip: float | None, ctx: distributed.Context, steps: int) -> None:
        super().__init__(stack.losses, stack.optim, grad_clip, ctx, steps, seeds=(len(stack.runs),))
        self.stack, self.gens = stack, [r.noise_gen for r in stack.runs]

    def update(self, x: Tensor, kl_weight: float | Tensor, weight: float = 1.0) -> None:
        stack = self.stack
        losses, sums = stack.losses(stack.params, stack.buffers, x, kl_weight, self.gens)   # [N], [N, 4]; x [N, B, P]
        self.optim.zero_grad(set_to_none=True)
        losses.sum().backward()                                    # the seeds share nothing: grad i = seed i's
        if self.grad_clip:
            self.clip_per_seed()
        self.optim.step()
        self.record(sums.detach())

    def clip_per_seed(self) -> None:
        """clip_grad_norm_ seed by seed: each seed's gradient scaled to norm <= train.grad_clip."""
        grads = [p.grad for p in self.stack.params.values() if p.grad is not None]
        norms = torch.stack([g.flatten(1).square().sum(1) for g in grads]).sum(0).sqrt()   # [N]
        coef = (self.grad_clip / (norms + 1e-6)).clamp(max=1.0)                           # [N]
        for g in grads:
            g.mul_(coef.view(-1, *[1] * (g.dim() - 1)))


def _stack_state(states: list[dict]) -> dict:
    """Per-seed optimizer state dicts -> one whose tensors carry a leading seed dimension (step counts shared)."""
    def stack(values):
        first = values[0]
        if isinstance(first, dict):
            return {k: stack([v[k] for v in values]) for k in first}
        if isinstance(first, list):
            return [stack([v[j] for v in values]) for j in range(len(first))]
        if isinstance(first, Tensor) and first.dim() > 0:
            return torch.stack(values)
        return first
    return stack(states)


def _slice_state(state: dict, i: int, n: int) -> dict:
    """Seed i's optimizer state from the stacked one."""
    def pick(value):
        if isinstance(value, dict):
            return {k: pick(v) for k, v in value.items()}
        if isinstance(value, list):
            return [pick(v) for v in value]
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == n:
            return value[i].clone()
        return value
    return pick(state)


def _end_epoch(stack: Stack, data, row: dict[str, Any], sinks: list[MetricsSink], quiet: bool) -> None:
    """Per seed: unstack, validate on its own noise stream, checkpoint (its `TrainState`), log one metrics row.
    `row` is the EpochLoop's, its train_* values one per seed."""
    for i, (run, sink) in enumerate(zip(stack.runs, sinks, strict=True)):
        seed_row = {k: v[i] if isinstance(v, list) else v for k, v in row.items()}
        stack.unstack(i)
        ts = run.state
        ts.model.eval()
        with run.rng_swapped():                  # on the CPU the noise stream is the global generator's
            seed_row |= {f"valid_{k}": v.mean().item() for k, v in elbo_terms(ts.model, data.x_valid).items()}
            ts.epoch, ts.history = row["epoch"], [*ts.history, seed_row]
            state = ts.state()                   # its random streams as its own run's checkpoint records them
        ts.model.train()
        save_checkpoint(run.run_dir, run.cfg, ts.model, ts.estimator, state)
        sink.log(seed_row)
    if not quiet:
        elbos = row["train_elbo"]
        print(f"epoch {row['epoch']}/{stack.runs[0].cfg.train.epochs}  {len(elbos)} seeds  train ELBO "
              f"{sum(elbos) / len(elbos):.2f} (mean)  "
              f"{row['seconds']:.1f}s", file=sys.stderr)


def _run_epochs(stack: Stack, epochs: EpochLoop, lr_at, sinks: list[MetricsSink], quiet: bool) -> None:
    """The epochs left: the shared EpochLoop over the stacked step, then each seed's bookkeeping. A signal stops
    it at the next step (each run keeps its last checkpoint); a divergence says what the run directories hold."""
    start = stack.runs[0].state.epoch
    with StopSignals() as stop:
        for epoch in range(start, epochs.cfg.train.epochs):
            stack.optim.set_lr_factor(lr_at(epoch))
            try:
                row = epochs.run(epoch, stop=stop)
                stack.check_finite(epoch + 1)
            except EpochStopped:
                raise Stopped(f"stopped by {stop.name} in epoch {epoch + 1}: each run keeps its checkpoint of "
                              f"epoch {epoch}; train again with resume to continue", stop.signum) from None
            except Diverged as err:
                raise divergence_message(err, has_checkpoint(stack.runs[0].run_dir), epoch,
                                         "the same `vaelab stack` command") from None
            _end_epoch(stack, epochs.data, row, sinks, quiet)


def train_stacked(cfg: Config, seeds: list[int], run_dirs: list[str | Path], *, resume: bool = False,
                  quiet: bool = False) -> list[list[dict[str, Any]]]:
    """Train `cfg` once per seed, all seeds as one stacked model; run i goes to run_dirs[i] (a normal run
    directory). With `resume`, every run continues from its checkpoint (all at the same epoch) to cfg.train.epochs.
    Returns each run's metrics history."""
    run_dirs = [Path(d) for d in run_dirs]
    _check(cfg, seeds, run_dirs)
    for d in run_dirs:
        check_run_dir(d, resume)
    device = resolve_device(cfg.train.device)
    data = prepare_data(cfg.data, device)
    runs = [SeedRun(_with_seed(cfg, s), d, data, device, resume) for s, d in zip(seeds, run_dirs, strict=True)]
    if len({r.state.epoch for r in runs}) > 1:
        raise VaelabError("the runs to stack stopped at different epochs: resume them one by one "
                          f"({', '.join(f'{r.run_dir}: {r.state.epoch}' for r in runs)})")
    stack = Stack(runs, cfg, device)
    stack.trial(data.x_train[: cfg.train.batch_size].expand(len(runs), -1, -1))
    steps = steps_per_epoch(cfg, len(data.x_train))
    beta, lr_at = kl_schedule(cfg.train.kl_weight, steps), lr_schedule(cfg.train.lr_schedule)   # checked first
    step = StackedStep(stack, cfg.train.grad_clip, distributed.Context(device=device), steps)
    epochs = EpochLoop(cfg, data, [r.state.gen for r in runs], stack.template.model, step, stack.optim, beta)
    with contextlib.ExitStack() as scope:
        sinks = []
        for run in runs:
            scope.callback(run.lock.release)
            open_for_writing(run.run_dir, run.lock, resume, "run" if resume else "empty", True, run.cfg)
            sinks.append(MetricsSink(run.run_dir, run.state.history, hparams=run.cfg.to_dict()))
            scope.callback(sinks[-1].close)
        _run_epochs(stack, epochs, lr_at, sinks, quiet)
        for sink in sinks:
            sink.finish()                          # TensorBoard's HPARAMS tab: the run ended
        return [s.history for s in sinks]


def _with_seed(cfg: Config, seed: int) -> Config:
    """A copy of `cfg` with train.seed = seed."""
    copy = deepcopy(cfg)
    copy.train.seed = seed
    return copy
