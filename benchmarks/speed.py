"""Training speed: vaelab's epoch vs a minimal plain-PyTorch loop of the same model, alternating in one process.

Run by hand on a quiet machine:  .venv/bin/python benchmarks/speed.py [--repeats 3] [--device cpu]
Prints a markdown table and writes benchmarks/results/speed.json. The seed model is 784-512-256-20 and back,
batch 128, one 50,000-image epoch of dynamically binarized MNIST. `--steps N` caps each epoch at N batches (a
quick check that the benchmark runs; it writes no results file).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.config.schema import load_config
from vaelab.optim.optimizers import adam
from vaelab.runs.device_data import prepare_data
from vaelab.runs.loaded_run import build
from vaelab.runtime.hardware import resolve_device
from vaelab.training.trainer import train_epoch


def matmul_peak_gflops(device: torch.device, n: int = 2048, reps: int = 20,
                       dtype: torch.dtype = torch.float32) -> float:
    """Measured matmul throughput of this device in `dtype` (fp32 follows the current TF32 setting on CUDA): the
    ceiling for MLP training."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def flops_per_sample(sizes: list[int]) -> float:
    """Forward + backward FLOPs of the encoder and decoder MLPs: 3 x 2 x MACs (backward ~ 2 x forward)."""
    macs = sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    return 6.0 * macs


def plain_epoch(x_raw: torch.Tensor, enc: nn.Module, dec: nn.Module, opt, batch: int, gen,
                steps: int | None = None) -> float:
    """The minimal eager loop a researcher would write: reparameterize, BCE, analytic KL, Adam (`steps` caps the
    batches of the epoch)."""
    t = time.perf_counter()
    x_epoch = torch.bernoulli(x_raw, generator=gen)
    for idx in torch.randperm(len(x_epoch), generator=gen, device=x_raw.device).split(batch)[:steps]:
        xb = x_epoch[idx]
        mu, logvar = enc(xb).chunk(2, -1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        rec = F.binary_cross_entropy_with_logits(dec(z), xb, reduction="none").sum(-1)
        kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(-1)
        loss = (rec + kl).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(x_raw.device)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, help="batches per epoch (default: the whole epoch); writes no results")
    args = ap.parse_args()
    device = resolve_device(args.device)
    cfg = load_config("configs/gaussian_vae.yaml", [f"train.batch_size={args.batch_size}", f"train.device={device}",
                                                    f"train.steps_per_epoch={args.steps or 'null'}"])
    data = prepare_data(cfg.data, device)
    model, estimator = build(cfg, data, device)
    opt = adam(list(model.parameters()), 1e-3, device)
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 40)).to(device)
    dec = nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 784)).to(device)
    plain_opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)
    gen = torch.Generator(device).manual_seed(0)
    times: dict[str, list[float]] = {"plain": [], "vaelab": []}
    for r in range(args.repeats + 1):             # the first round warms up and is dropped
        tp = plain_epoch(data.x_train, enc, dec, plain_opt, args.batch_size, gen, args.steps)
        t = time.perf_counter()
        train_epoch(cfg, model, estimator, opt, data, gen, 0, False)
        sync(device)
        tv = time.perf_counter() - t
        if r:
            times["plain"].append(tp)
            times["vaelab"].append(tv)
        print(f"round {r}: plain {tp:.2f}s  vaelab {tv:.2f}s{'  (warm-up)' if not r else ''}")
    peak = matmul_peak_gflops(device)
    fps = flops_per_sample([784, 512, 256, 40]) + flops_per_sample([20, 256, 512, 784])
    n = min(len(data.x_train), args.batch_size * (args.steps or len(data.x_train)))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "device": str(device), "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "batch_size": args.batch_size,
        "epoch_seconds": med, "all_seconds": times,
        "samples_per_second": {k: n / v for k, v in med.items()},
        "vaelab_over_plain": med["vaelab"] / med["plain"],
        "mflop_per_sample": fps / 1e6, "matmul_peak_gflops": peak,
        "fraction_of_peak": {k: n * fps / v / 1e9 / peak for k, v in med.items()},
    }
    print(json.dumps(result, indent=2))
    if args.steps:
        return
    out = Path("benchmarks/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"speed_{device.type}_b{args.batch_size}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
