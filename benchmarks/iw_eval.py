"""Importance-weighted log-likelihood (K = 5000): vaelab's batched, chunked estimator vs a straightforward loop
that handles one test image at a time (as Pythae's `get_nll` does), on the same trained model and images.

Run by hand on a quiet machine, after `make demo` (it reads the quick study's Gaussian VAE):
    .venv/bin/python benchmarks/iw_eval.py [--run reports/quick/gaussian_vae] [--images 200] [--k 5000]
Writes benchmarks/results/iw_eval.json; per-image times extrapolate to the 10,000 test images.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from vaelab.evaluation.bounds import iw_loglik
from vaelab.runs.loaded_run import open_run


@torch.no_grad()
def per_image_loop(model, x: torch.Tensor, k: int, chunk: int = 1000) -> torch.Tensor:
    """The straightforward estimator: for each image, K samples in chunks, log-mean-exp of the weights."""
    out = []
    for xi in x:
        q = model.posterior(xi[None])                       # batch [1]
        log_w = []
        for start in range(0, k, chunk):
            z = q.sample((min(chunk, k - start),))          # [S, 1, D]
            log_w.append(model.log_joint(xi[None], z) - q.log_prob(z))   # [S, 1]
        out.append(torch.logsumexp(torch.cat(log_w), 0) - math.log(k))
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="reports/quick/gaussian_vae")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--k", type=int, default=5000)
    args = ap.parse_args()
    run = open_run(args.run, "cpu")
    x = run.data.x_test[: args.images]
    torch.manual_seed(0)
    t = time.perf_counter()
    loop = per_image_loop(run.model, x, args.k)
    t_loop = time.perf_counter() - t
    torch.manual_seed(1)
    t = time.perf_counter()
    batched = iw_loglik(run.model, x, args.k, batch_size=500)
    t_batched = time.perf_counter() - t
    diff = (batched - loop).mean().item()
    result = {"run": args.run, "images": args.images, "k": args.k, "threads": torch.get_num_threads(),
              "loop_seconds": t_loop, "batched_seconds": t_batched, "speedup": t_loop / t_batched,
              "loop_ms_per_image": 1000 * t_loop / args.images, "batched_ms_per_image": 1000 * t_batched / args.images,
              "batched_minutes_for_10000": t_batched / args.images * 10000 / 60,
              "mean_loop": loop.mean().item(), "mean_batched": batched.mean().item(),
              "mean_difference": diff, "difference_stderr": (batched - loop).std().item() / math.sqrt(args.images)}
    Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
    Path("benchmarks/results/iw_eval.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
