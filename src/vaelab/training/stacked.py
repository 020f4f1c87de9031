"""N seeds of one config trained in one process as one stacked model (issue 14): `train_stacked`.

Every parameter, buffer and optimizer moment gets a leading seed dimension [N, ...]; one `torch.func.vmap` of the
unchanged step (`estimator(model, x, kl_weight)`, through `functional_call`) computes all N losses, one backward
gives each seed its own gradient (the seeds share nothing) and one Adam update moves them all (Adam is
elementwise). Each seed keeps its own data stream (permutation and binarization from its generator, as `train`
makes them) and its own estimator noise (training/stacked_noise.py), so seed i's run equals `vaelab train --seed i`
to float rounding (tests/test_stacked.py: 1e-6 on the CPU). What comes out is N ordinary run directories:
`evaluate`, `compare` and `train --resume` read them like any other run.

On a GPU this turns N launch-bound small steps into one step of N-times-larger kernels: the point of stacking
(benchmarks/RESULTS.md measures 32 seeds against one). Stacking covers the eager single-process step: it refuses
torchrun, train.compile, train.cuda_graph, autocast and grad_stats_every, and estimators whose draws cannot be made
ahead (training/stacked_noise.py). A signal stops it at the next step; each run keeps its last epoch's checkpoint and
`train_stacked(..., resume=True)` (or `train --resume` per run) continues from there.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
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
from vaelab.runs.lifecycle import RunLock, StopSignals, check_run_dir, open_for_writing
from vaelab.runs.metrics_log import MetricsSink
from vaelab.runs.run_files import build, first_nonfinite, prepare_data, read_checkpoint, save_checkpoint
from vaelab.runtime.hardware import resolve_device
from vaelab.training import stacked_noise
from vaelab.training.trainer import Objective, TrainState


class Seed:
    """One seed's run: its config, directory, modules (the unstacked copy the checkpoints are written from),
    its data generator, its noise generator and its metrics."""

    def __init__(self, cfg: Config, run_dir: Path, data, device: torch.device, resume: bool) -> None:
        self.cfg, self.run_dir, self.lock = cfg, run_dir, RunLock(run_dir)
        self.history: list[dict[str, Any]] = []
        model, estimator = build(cfg, data, device)
        self.objective = Objective(model, estimator)   # one module: functional_call swaps model.* and estimator.*
        self.optim = _optimizers(cfg, dict(self.objective.named_parameters()), device)
        self.data_gen = torch.Generator(device).manual_seed(cfg.train.seed)
        self.epoch = 0
        if resume:
            _, tensors, state = read_checkpoint(run_dir)
            if "partial" in state:
                raise VaelabError(f"{run_dir} stopped inside an epoch: finish it with `vaelab train --resume "
                                  f"{run_dir}`, then stack again")
            TrainState(model, estimator, self.optim, self.data_gen, device).restore(tensors, state, run_dir)
            self.epoch, self.history = state["epoch"], state["history"]
        self.noise_gen = torch.Generator(device)                   # where the single run's global RNG stands now
        self.noise_gen.set_state(torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state())
        self.cpu_rng = torch.get_rng_state()

    def rng_swapped(self):
        """Run the enclosed code on this seed's noise stream as the global generator (validation draws)."""
        device = self.noise_gen.device
        get = (lambda: torch.cuda.get_rng_state(device)) if device.type == "cuda" else torch.get_rng_state
        put = (lambda s: torch.cuda.set_rng_state(s, device)) if device.type == "cuda" else torch.set_rng_state

        @contextlib.contextmanager
        def swapped():
            outer = get()
            put(self.noise_gen.get_state())
            try:
                yield
            finally:
                self.noise_gen.set_state(get())
                put(outer)
        return swapped()


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
                     ("train.grad_stats_every", bool(t.grad_stats_every))):
        if on:
            raise VaelabError(f"{name} is not available in a stacked run (the eager step is vmapped): turn it off, "
                              "or train the seeds separately (sweep: stack: false)")


class Stack:
    """The seeds' parameters, buffers and optimizer state stacked along a leading seed dimension."""

    def __init__(self, runs: list[Seed], cfg: Config, device: torch.device) -> None:
        self.runs, self.template = runs, runs[0].objective
        objectives = [r.objective for r in runs]
        self.params = {k: torch.stack([dict(o.named_parameters())[k].detach() for o in objectives]).requires_grad_()
                       for k, _ in self.template.named_parameters()}            # name -> [N, ...]
        self.buffers = {k: torch.stack([dict(o.named_buffers())[k] for o in objectives])
                        for k, _ in self.template.named_buffers()}              # name -> [N, ...]
        self.optim = _optimizers(cfg, self.params, device)
        if runs[0].epoch:
            self.optim.load_state_dict(_stack_state([r.optim.state_dict() for r in runs]))
        self.grad_clip, self.plans = cfg.train.grad_clip, {}
        self.sums = torch.zeros(len(runs), 4, device=device)                      # [N, 4] loss, elbo, rec, kl

    def _one(self, params: dict, buffers: dict, x: Tensor, kl_weight: float, *noise: Tensor):
        with stacked_noise.NoisePlan(noise):
            est = functional_call(self.template, (params, buffers), (x, kl_weight))
        sums = torch.stack([est.loss.detach() * x.shape[0], est.elbo.sum(), est.rec.sum(), est.kl.sum()])
        return est.loss, sums

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

    def update(self, x: Tensor, kl_weight: float) -> None:
        """One optimisation step of every seed on its own batch x [N, B, P]."""
        losses, sums = self.losses(self.params, self.buffers, x, kl_weight, [r.noise_gen for r in self.runs])
        self.optim.zero_grad(set_to_none=True)
        losses.sum().backward()                                    # the seeds share nothing: grad i = seed i's
        if self.grad_clip:
            self._clip()
        self.optim.step()
        self.sums += sums.detach()

    def _clip(self) -> None:
        """clip_grad_norm_ seed by seed: each seed's gradient scaled to norm <= train.grad_clip."""
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        norms = torch.stack([g.flatten(1).square().sum(1) for g in grads]).sum(0).sqrt()   # [N]
        coef = (self.grad_clip / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.view(-1, *[1] * (g.dim() - 1)))

    def unstack(self, i: int) -> None:
        """Copy seed i's slice into its own modules and optimizer (for validation and its checkpoint)."""
        run = self.runs[i]
        with torch.no_grad():
            for k, p in run.objective.named_parameters():
                p.copy_(self.params[k][i])
            for k, b in run.objective.named_buffers():
                b.copy_(self.buffers[k][i])
        run.optim.load_state_dict(_slice_state(self.optim.state_dict(), i, len(self.runs)))


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


def _epoch_batches(stack: Stack, data, cfg: Config) -> tuple[Tensor, list[Tensor]]:
    """Every seed's epoch images and batches, drawn as `train_epoch` draws them: [N, M, P] and steps of [N, B]."""
    images, orders = [], []
    for run in stack.runs:
        x_epoch = data.train_epoch_images(run.data_gen)                          # [M, P]
        images.append(x_epoch)
        orders.append(torch.randperm(len(x_epoch), generator=run.data_gen, device=run.data_gen.device))
    steps = torch.stack(orders).split(cfg.train.batch_size, dim=1)              # each [N, B]
    return torch.stack(images), list(steps[: cfg.train.steps_per_epoch] if cfg.train.steps_per_epoch else steps)


def _train_epoch(stack: Stack, data, cfg: Config, epoch: int, beta, stop: StopSignals) -> dict[str, Any]:
    """One epoch of every seed; the per-seed rows `train_epoch` would return (seconds: the stacked epoch's)."""
    t0 = time.perf_counter()
    images, steps = _epoch_batches(stack, data, cfg)
    seeds = torch.arange(len(stack.runs), device=images.device)[:, None]        # [N, 1]
    stack.sums.zero_()
    beta_sum = 0.0
    for i, idx in enumerate(steps):
        if stop.requested:
            raise Stopped(f"stopped by {stop.name} in epoch {epoch + 1}: each run keeps its checkpoint of epoch "
                          f"{epoch}; train again with resume to continue", stop.signum)
        kl_weight = beta(epoch * len(steps) + i)
        beta_sum += kl_weight
        stack.update(images[seeds, idx], kl_weight)                              # batch [N, B, P]
    n = sum(idx.shape[1] for idx in steps)
    sums = (stack.sums / n).tolist()
    if not all(math.isfinite(v) for row in sums for v in row):
        raise VaelabError(f"training diverged in epoch {epoch + 1} (losses {[row[0] for row in sums]}): "
                          "lower train.lr or set train.grad_clip")
    _check_finite(stack, epoch)
    return {"sums": sums, "kl_weight": beta_sum / len(steps), "lr": stack.optim.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t0, "steps": len(steps)}


def _check_finite(stack: Stack, epoch: int) -> None:
    """NaN or infinite weights, buffers or optimizer moments of any seed after the epoch's last step are a
    divergence even when its losses were finite: stop before they are validated or checkpointed."""
    names = {id(p): k for k, p in stack.params.items()}
    moments = {f"{key} of {names.get(id(p), 'a parameter')}": value for o in stack.optim.optimizers
               for p, entry in o.state.items() for key, value in entry.items()}
    bad = first_nonfinite({**stack.params, **stack.buffers, **moments})
    if bad is not None:
        kept = f"each run keeps its checkpoint of epoch {epoch}" if epoch else "no checkpoint was written"
        raise VaelabError(f"training diverged in epoch {epoch + 1} (NaN or infinite values in {bad} after its last "
                          f"step; {kept}): lower train.lr or set train.grad_clip")


def _end_epoch(stack: Stack, data, epoch: int, out: dict[str, Any], sinks: list[MetricsSink], quiet: bool) -> None:
    """Per seed: unstack, validate on its own noise stream, checkpoint, log one metrics row."""
    for i, (run, sink) in enumerate(zip(stack.runs, sinks, strict=True)):
        loss, elbo, rec, kl = out["sums"][i]
        row = {"epoch": epoch + 1, "train_loss": loss, "train_elbo": elbo, "train_rec": rec, "train_kl": kl,
               "kl_weight": out["kl_weight"], "lr": out["lr"], "seconds": out["seconds"], "steps": out["steps"]}
        stack.unstack(i)
        model = run.objective.model
        model.eval()
        with run.rng_swapped():
            row |= {f"valid_{k}": v.mean().item() for k, v in elbo_terms(model, data.x_valid).items()}
        model.train()
        device = run.noise_gen.device
        save_checkpoint(run.run_dir, run.cfg, model, run.objective.estimator, {
            "epoch": epoch + 1, "history": [*sink.history, row], "optim": run.optim.state_dict(),
            "data_rng": run.data_gen.get_state(),     # on the CPU the noise stream is the global generator's
            "torch_rng": run.noise_gen.get_state() if device.type == "cpu" else run.cpu_rng,
            **({"cuda_rng": run.noise_gen.get_state()} if device.type == "cuda" else {})})
        sink.log(row)
    if not quiet:
        elbos = [row[1] for row in out["sums"]]
        print(f"epoch {epoch + 1}/{stack.runs[0].cfg.train.epochs}  {len(elbos)} seeds  train ELBO "
              f"{sum(elbos) / len(elbos):.2f} (mean)  "
              f"{out['seconds']:.1f}s", file=sys.stderr)


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
    runs = [Seed(_with_seed(cfg, s), d, data, device, resume) for s, d in zip(seeds, run_dirs, strict=True)]
    if len({r.epoch for r in runs}) > 1:
        raise VaelabError("the runs to stack stopped at different epochs: resume them one by one "
                          f"({', '.join(f'{r.run_dir}: {r.epoch}' for r in runs)})")
    stack = Stack(runs, cfg, device)
    stack.trial(data.x_train[: cfg.train.batch_size].expand(len(runs), -1, -1))
    steps = min(math.ceil(len(data.x_train) / cfg.train.batch_size), cfg.train.steps_per_epoch or math.inf)
    beta, lr_at = kl_schedule(cfg.train.kl_weight, steps), lr_schedule(cfg.train.lr_schedule)
    with contextlib.ExitStack() as scope:
        sinks = []
        for run in runs:
            scope.callback(run.lock.release)
            open_for_writing(run.run_dir, run.lock, resume, "run" if resume else "empty", True, run.cfg)
            sinks.append(MetricsSink(run.run_dir, run.history, hparams=run.cfg.to_dict()))
            scope.callback(sinks[-1].close)
        stop = scope.enter_context(StopSignals())
        for epoch in range(runs[0].epoch, cfg.train.epochs):
            stack.optim.set_lr_factor(lr_at(epoch))
            out = _train_epoch(stack, data, cfg, epoch, beta, stop)
            _end_epoch(stack, data, epoch, out, sinks, quiet)
        for sink in sinks:
            sink.finish()                          # TensorBoard's HPARAMS tab: the run ended
        return [s.history for s in sinks]


def _with_seed(cfg: Config, seed: int) -> Config:
    """A copy of `cfg` with train.seed = seed."""
    copy = deepcopy(cfg)
    copy.train.seed = seed
    return copy
