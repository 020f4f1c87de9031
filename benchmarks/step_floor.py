"""How far a small-batch training step is from its arithmetic (issue 25): vaelab's step, a plain-PyTorch step of the
same model and the matmul floor, alternating in one process, on one thread.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/step_floor.py [--repeats 3] [--steps 500] [--presets ...]

For each preset (default: literature/iwae_vae_1layer, batch 20; literature/disarm_linear and disarm_nonlinear, 200
Bernoulli latents, batch 50) and each round, in turn:
  vaelab  `train.train_epoch` as the trainer runs it (the step `make_step` builds: hand-written where there is one,
          training/by_hand*.py; the config's optimizers) over an epoch of `--steps` batches: the training set is
          cut to steps x batch images, so the per-epoch work
          (binarization, permutation, the final read of the sums) weighs per step as in a full epoch;
  autograd  the same with `train.backward: autograd` (vaelab's eager autograd step);
  plain   the loop a researcher writes: binarize, permute, then per batch the forward, autograd, Adam (and SGD for
          the DisARM prior logits, as the preset) with torch.optim defaults;
  floor   the step's matmuls alone, forward (X W^T) and backward (dY W where an input gradient is needed, dY^T X),
          on preallocated tensors: no autograd, no elementwise work, no optimizer.
  adam    (for reference, not a step) the preset's optimizer update alone (vaelab's fused Adam, SGD for the prior),
          on gradients already there: memory traffic over every parameter that no matmul floor counts.
The images are synthetic grey levels of MNIST's shape (784 pixels, 50,000/10,000/10,000): the time of a step does
not depend on them. Times are the process's CPU time (one thread, so a busy machine's other work does not count;
wall-clock medians are kept too). Prints a table of median ms per step and the ratios; writes
benchmarks/results/step_floor.json (not with --steps below 100, a quick check). No test reads these numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vaelab.config.schema import Config, load_config
from vaelab.data.splits import Splits
from vaelab.optim.optimizers import build_optimizers
from vaelab.optim.schedules import kl_schedule
from vaelab.runs.device_data import prepare_data
from vaelab.runs.loaded_run import build
from vaelab.runtime import distributed
from vaelab.training.trainer import make_step, train_epoch

PRESETS = ("literature/iwae_vae_1layer", "literature/disarm_linear", "literature/disarm_nonlinear")


def synthetic_splits(seed: int = 0) -> Splits:
    """Grey-level images of MNIST's shape and split sizes (the content does not change a step's time)."""
    rng = np.random.default_rng(seed)
    x = [rng.random((n, 784), dtype=np.float32) for n in (50_000, 10_000, 10_000)]
    y = [np.zeros(len(a), np.int64) for a in x]
    return Splits(x[0], y[0], x[1], y[1], x[2], y[2], (28, 28), "synthetic")


class Vaelab:
    """vaelab's own pieces, built as `train._train` builds them."""

    def __init__(self, cfg: Config, splits: Splits, steps: int) -> None:
        device = torch.device("cpu")
        self.cfg = cfg
        data = prepare_data(cfg.data, device, splits)
        self.data = dataclasses.replace(data, x_train=data.x_train[: steps * cfg.train.batch_size])
        self.model, self.estimator = build(cfg, data, device)
        named = {f"model.{k}": p for k, p in self.model.named_parameters()} | {
            f"estimator.{k}": p for k, p in self.estimator.named_parameters()}
        t = cfg.train
        self.optim = build_optimizers(named, t.lr, t.adam_eps, t.param_groups, device)
        self.ctx = distributed.Context(device=device)
        self.step = make_step(cfg, self.model, self.estimator, self.optim, self.ctx, data.x_valid[:8], steps)
        self.beta = kl_schedule(t.kl_weight, steps)
        self.gen = torch.Generator(device).manual_seed(t.seed)
        self.epoch = 0

    def run(self) -> float:
        """Seconds of one (cut) epoch of train_epoch."""
        t = time.perf_counter()
        train_epoch(self.cfg, self.model, self.estimator, self.optim, self.data, self.gen, self.epoch, False,
                    self.beta, self.ctx, self.step)
        self.epoch += 1
        return time.perf_counter() - t


def mlp(sizes: list[int], act: type[nn.Module]) -> nn.Sequential:
    """Linear layers of `sizes` with `act` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers += [nn.Linear(a, b)] + ([act()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


class Plain:
    """The minimal eager loop of the same model: reparam (Gaussian) or DisARM (Bernoulli, learned prior)."""

    def __init__(self, cfg: Config, splits: Splits, steps: int) -> None:
        m, self.batch = cfg.model, cfg.train.batch_size
        self.x = torch.from_numpy(splits.x_train[: steps * self.batch])           # [N, 784]
        self.mean = self.x.mean(0)                                                 # [784]
        self.gaussian = m.latent == "gaussian"
        act = nn.Tanh if m.activation == "tanh" else (lambda: nn.LeakyReLU(0.3))
        d = m.latent_dim
        torch.manual_seed(0)
        self.enc = mlp([784, *m.hidden, 2 * d if self.gaussian else d], act)
        self.dec = mlp([d, *reversed(m.hidden), 784], act)
        self.prior = nn.Parameter(torch.zeros(d))
        params = [*self.enc.parameters(), *self.dec.parameters()]
        self.opts = [torch.optim.Adam(params, lr=cfg.train.lr, eps=cfg.train.adam_eps)]
        if not self.gaussian:
            self.opts.append(torch.optim.SGD([self.prior], lr=1e-2))
        self.gen = torch.Generator().manual_seed(0)

    def loss(self, xb: torch.Tensor) -> torch.Tensor:
        if self.gaussian:
            mu, logvar = self.enc(xb).chunk(2, -1)                                 # [B, D] each
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)               # [B, D]
            rec = -F.binary_cross_entropy_with_logits(self.dec(z), xb, reduction="none").sum(-1)   # [B]
            kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(-1)         # [B]
            return (kl - rec).mean()
        logits = self.enc(xb - self.mean)                                          # [B, D]
        probs = torch.sigmoid(logits.detach())
        u = torch.rand_like(probs)
        b = torch.stack([u < probs, 1.0 - u < probs]).to(probs.dtype)            # [2, B, D]
        f = -F.binary_cross_entropy_with_logits(self.dec(b), xb.expand(2, -1, -1), reduction="none").sum(-1)
        g = 0.5 * (f[0] - f[1]).detach()[:, None] * (1 - 2 * b[1]) * (b[0] != b[1]) * torch.sigmoid(logits.abs())
        q = torch.sigmoid(logits)                                                  # [B, D]
        kl = (q * (F.logsigmoid(logits) - F.logsigmoid(self.prior)) + (1 - q) * (
            F.logsigmoid(-logits) - F.logsigmoid(-self.prior))).sum(-1)           # [B] analytic
        return (kl - f.mean(0) - ((logits - logits.detach()) * g.detach()).sum(-1)).mean()

    def run(self) -> float:
        t = time.perf_counter()
        x_epoch = torch.bernoulli(self.x, generator=self.gen)
        for idx in torch.randperm(len(x_epoch), generator=self.gen).split(self.batch):
            loss = self.loss(x_epoch[idx])
            for o in self.opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o in self.opts:
                o.step()
        return time.perf_counter() - t


class Floor:
    """The step's forward and backward matmuls alone, on preallocated tensors. The Gaussian VAE decodes one z and
    differentiates into it; DisARM with signal: rec decodes and differentiates its antithetic pair (2B rows); with
    signal: elbo (the reference setting) it decodes the pair forward only and a fresh draw forward and backward."""

    def __init__(self, cfg: Config, steps: int) -> None:
        m, b = cfg.model, cfg.train.batch_size
        d, gaussian = m.latent_dim, m.latent == "gaussian"
        enc = [784, *m.hidden, 2 * d if gaussian else d]
        dec = [d, *reversed(m.hidden), 784]
        elbo = cfg.estimator.kwargs.get("signal") == "elbo"
        pairs = lambda sizes: enumerate(zip(sizes[:-1], sizes[1:], strict=True))   # noqa: E731
        self.layers = [self._layer(b, b, i, o, need_dx=k > 0) for k, (i, o) in pairs(enc)]
        fwd, bwd = (b, b) if gaussian else (3 * b, b) if elbo else (2 * b, 2 * b)
        self.layers += [self._layer(fwd, bwd, i, o, need_dx=k > 0 or gaussian)   # reparam: z needs its gradient
                        for k, (i, o) in pairs(dec)]
        self.steps = steps
        self.flops = sum(2 * w.shape[0] * w.shape[1] * (len(x) + len(dy) * (2 if dx else 1))
                         for x, w, dy, dx in self.layers)

    @staticmethod
    def _layer(fwd_rows: int, bwd_rows: int, n_in: int, n_out: int, need_dx: bool):
        return torch.rand(fwd_rows, n_in), torch.rand(n_out, n_in), torch.rand(bwd_rows, n_out), need_dx

    def run(self) -> float:
        t = time.perf_counter()
        for _ in range(self.steps):
            for x, w, dy, need_dx in self.layers:
                torch.mm(x, w.t())                          # forward [fwd_rows, out]
                if need_dx:
                    torch.mm(dy, w)                         # input gradient [bwd_rows, in]
                torch.mm(dy.t(), x[: len(dy)])              # weight gradient [out, in]
        return time.perf_counter() - t


class AdamOnly:
    """The optimizer update of a `Vaelab` alone, `steps` times, on gradients set once."""

    def __init__(self, vaelab: Vaelab, steps: int) -> None:
        self.optim, self.steps = vaelab.optim, steps

    def run(self) -> float:
        for p in self.optim.params():
            p.grad = torch.zeros_like(p) if p.grad is None else p.grad
        t = time.perf_counter()
        for _ in range(self.steps):
            self.optim.step()
        return time.perf_counter() - t


def variants_of(cfg: Config, splits: Splits, steps: int) -> dict:
    """vaelab (its default step: hand-written where there is one), vaelab's autograd step, plain, floor and adam
    for one preset (adam on its own copy of vaelab's model, not the timed one)."""
    autograd = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, backward="autograd"))
    return {"vaelab": Vaelab(cfg, splits, steps), "autograd": Vaelab(autograd, splits, steps),
            "plain": Plain(cfg, splits, steps), "floor": Floor(cfg, steps),
            "adam": AdamOnly(Vaelab(cfg, splits, 1), steps)}


def measure(presets: list[str], steps: int, repeats: int) -> dict[str, dict]:
    """Median CPU ms per step of each variant for each preset (and wall ms), alternating within a round."""
    splits = synthetic_splits()
    cfgs = {p: load_config(p, ["train.device=cpu"]) for p in presets}
    variants = {p: variants_of(cfgs[p], splits, steps) for p in presets}
    times = {p: {k: [] for k in v} for p, v in variants.items()}
    wall = {p: {k: [] for k in v} for p, v in variants.items()}
    for r in range(repeats + 1):                        # round 0 warms up and is dropped
        line = []
        for p, runs in variants.items():
            ms = {}
            for name, runner in runs.items():
                cpu = time.process_time()
                seconds = runner.run()
                ms[name] = 1e3 * (time.process_time() - cpu) / steps
                times[p][name] += [ms[name]] if r else []
                wall[p][name] += [1e3 * seconds / steps] if r else []
            line.append(f"{p.split('/')[-1]} " + " ".join(f"{k} {v:.2f}" for k, v in ms.items()))
        print(f"round {r}{' (warm-up)' if not r else ''}, CPU ms per step: " + " | ".join(line), flush=True)
    out = {}
    for p in presets:
        med = {k: statistics.median(v) for k, v in times[p].items()}
        out[p] = {"ms_per_step": med, "all_ms_per_step": times[p], "batch_size": cfgs[p].train.batch_size,
                  "wall_ms_per_step": {k: statistics.median(v) for k, v in wall[p].items()},
                  "estimator": cfgs[p].estimator.name, "matmul_mflop_per_step": variants[p]["floor"].flops / 1e6,
                  "hand_written": variants[p]["vaelab"].step.by_hand is not None,
                  "vaelab_over_floor": med["vaelab"] / med["floor"], "plain_over_floor": med["plain"] / med["floor"],
                  "autograd_over_floor": med["autograd"] / med["floor"],
                  "vaelab_over_plain": med["vaelab"] / med["plain"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=500, help="steps per timed epoch")
    ap.add_argument("--presets", nargs="+", default=list(PRESETS))
    ap.add_argument("--out", default="benchmarks/results/step_floor.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = measure(args.presets, args.steps, args.repeats)
    print("\n| preset | batch | vaelab | vaelab autograd | plain | matmul floor | Adam alone | vaelab/floor | "
          "autograd/floor | plain/floor |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p, r in results.items():
        ms = r["ms_per_step"]
        print(f"| {p}{' (hand-written)' if r['hand_written'] else ''} | {r['batch_size']} | {ms['vaelab']:.3f} | "
              f"{ms['autograd']:.3f} | {ms['plain']:.3f} | {ms['floor']:.3f} | {ms['adam']:.3f} | "
              f"{r['vaelab_over_floor']:.2f} | {r['autograd_over_floor']:.2f} | {r['plain_over_floor']:.2f} |")
    print("(CPU ms per step, medians; one thread)")
    if args.steps < 100:
        return
    record = {"torch": torch.__version__, "threads": torch.get_num_threads(), "steps_per_epoch": args.steps,
              "repeats": args.repeats, "cpu": platform.processor() or platform.machine(), "presets": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
