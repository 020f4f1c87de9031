"""GPU checks of issues 13 and 14, one script for one lease: stacked seeds against one seed, then the DisARM linear
preset at its published 1e6 steps with `train.cuda_graph`.

    python benchmarks/gpu_seeds.py --out DIR --runs /tmp/runs --budget 540 [--sections stack,disarm] [--smoke]

Sections (each appends to DIR/gpu_seeds.json as soon as it has a number):
- `stack`: the study's Gaussian VAE (configs/gaussian_vae.yaml) on MNIST, 2 epochs of --steps steps; ms a step of
  one seed (`vaelab train`, eager and `train.cuda_graph`) and of N stacked seeds (`vaelab stack`, N = 1, 8, 32),
  read from the second epoch's metrics row (the first pays warm-up and capture); and how far seed 0 of the stacked
  runs is from its own run (max |weight difference|, Adam, float32).
- `disarm`, `sfe-avg`, `rloo`: `vaelab train literature/disarm_linear --set train.cuda_graph=true` with that
  estimator (seed 0, 1000 epochs of 1000 steps; rloo with 2 samples) until done or until the budget's end (SIGTERM:
  it checkpoints and stops), then `vaelab evaluate` (its 100-sample test bound); metrics.jsonl and eval.json are
  copied to DIR.
- `equiv`: seed 1 of a 2-seed stacked run against its own run on this device, plain SGD, digits.
`--smoke` runs both on tiny digits on the CPU (cuda_graph then changes nothing): the check before a lease.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from vaelab.config.schema import load_config
from vaelab.runs.checkpoint import read_checkpoint
from vaelab.training.stacked import train_stacked
from vaelab.training.trainer import train


class Record:
    def __init__(self, out: Path) -> None:
        self.path, self.data = out / "gpu_seeds.json", {"device": torch.cuda.get_device_name(0) if
                                                        torch.cuda.is_available() else "cpu",
                                                        "torch": torch.__version__}
        out.mkdir(parents=True, exist_ok=True)
        self.save()

    def put(self, key: str, value) -> None:
        self.data[key] = value
        print(f"{key}: {value}", flush=True)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.path)


def ms_per_step(run_dir: Path) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return 1000 * rows[-1]["seconds"] / rows[-1]["steps"]


def stack_section(rec: Record, runs: Path, steps: int, smoke: bool) -> None:
    device = "cpu" if smoke else "cuda"
    base = ["train.epochs=2", f"train.steps_per_epoch={steps}", f"train.device={device}"] + (
        ["data.source=digits", "model.hidden=[32]"] if smoke else [])
    cfg = load_config("gaussian_vae", base)
    train(cfg, runs / "one-eager", quiet=True)
    rec.put("one_seed_eager_ms_per_step", ms_per_step(runs / "one-eager"))
    graphed = load_config("gaussian_vae", [*base, "train.cuda_graph=true"])
    train(graphed, runs / "one-graph", quiet=True)
    rec.put("one_seed_cuda_graph_ms_per_step", ms_per_step(runs / "one-graph"))
    for n in (1, 8, 32):
        dirs = [runs / f"stack{n}" / f"seed={s}" for s in range(n)]
        t0 = time.perf_counter()
        train_stacked(cfg, list(range(n)), dirs, quiet=True)
        rec.put(f"stacked_{n}_ms_per_step", ms_per_step(dirs[0]))
        rec.put(f"stacked_{n}_wall_s_two_epochs_with_checkpoints", time.perf_counter() - t0)
    _, a, _ = read_checkpoint(runs / "stack32" / "seed=0")
    _, b, _ = read_checkpoint(runs / "one-eager")
    rec.put("stacked32_seed0_vs_own_run_max_abs_weight_diff", max((a[k] - b[k]).abs().max().item() for k in a))


ESTIMATOR_ARGS = {"disarm": [], "sfe-avg": ["--estimator", "sfe-avg"],
                  "rloo": ["--estimator", "rloo", "--set", "estimator.kwargs={num_samples: 2}"]}


def equiv_section(rec: Record, runs: Path, smoke: bool) -> None:
    """Seed i of a stacked run against its own run on this device, plain SGD (as tests/test_stacked.py on the
    CPU), 2 epochs of 5 steps on digits: the max |weight difference| per estimator."""
    for preset, name in (("gaussian_vae", "reparam"), ("bernoulli_vae", "disarm"), ("bernoulli_vae", "sfe-avg")):
        cfg = load_config(preset, ["data.source=digits", "train.epochs=2", "train.steps_per_epoch=5",
                                   f"train.device={'cpu' if smoke else 'cuda'}", f"estimator.name={name}",
                                   "estimator.kwargs={}"])
        cfg.train.param_groups = {g: {"optimizer": "sgd", "lr": 0.02} for g in ("encoder", "decoder")}
        dirs = [runs / f"eq-{name}-{s}" for s in (0, 1)]
        train_stacked(cfg, [0, 1], dirs, quiet=True)
        cfg.train.seed = 1
        train(cfg, runs / f"eq-{name}-own1", quiet=True)
        _, a, _ = read_checkpoint(dirs[1])
        _, b, _ = read_checkpoint(runs / f"eq-{name}-own1")
        rec.put(f"equiv_sgd_{name}_max_abs_weight_diff", max((a[k] - b[k]).abs().max().item() for k in a))


def disarm_section(rec: Record, out: Path, runs: Path, deadline: float, smoke: bool, estimator: str) -> None:
    run, tag = runs / f"{estimator}1m", f"{estimator}1m"
    sets = ["--set", "train.cuda_graph=true"] + (["--set", "data.source=digits", "--epochs", "3", "--set",
                                                 "train.device=cpu"] if smoke else ["--device", "cuda"])
    cmd = [sys.executable, "-m", "vaelab", "train", "literature/disarm_linear", "--out", str(run), "--quiet", *sets,
           *ESTIMATOR_ARGS[estimator]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=max(10.0, deadline - time.time() - 45))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)                           # checkpoints at the next step and stops
        output, _ = proc.communicate()
    rec.put(f"{tag}_train_exit", proc.returncode)
    rec.put(f"{tag}_train_output_tail", output[-600:])
    metrics = run / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        rec.put(f"{tag}_epochs", len(rows))
        rec.put(f"{tag}_steps", sum(r["steps"] for r in rows))
        rec.put(f"{tag}_ms_per_step_last_epoch", 1000 * rows[-1]["seconds"] / rows[-1]["steps"])
        shutil.copy(metrics, out / f"{tag}_metrics.jsonl")
    if (run / "checkpoint").is_dir():
        ev = subprocess.run([sys.executable, "-m", "vaelab", "evaluate", str(run), "--quiet"], capture_output=True,
                            text=True)
        rec.put(f"{tag}_eval_exit", ev.returncode)
        if (run / "eval.json").is_file():
            shutil.copy(run / "eval.json", out / f"{tag}_eval.json")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--runs", required=True)
    p.add_argument("--budget", type=float, default=540)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--sections", default="stack,disarm", help="of equiv, stack, disarm, sfe-avg, rloo (in order)")
    args = p.parse_args()
    deadline, out, runs = time.time() + args.budget, Path(args.out), Path(args.runs)
    shutil.rmtree(runs, ignore_errors=True)
    rec = Record(out)
    sections = {"equiv": lambda: equiv_section(rec, runs, args.smoke),
                "stack": lambda: stack_section(rec, runs, args.steps, args.smoke),
                **{e: (lambda e=e: disarm_section(rec, out, runs, deadline, args.smoke, e)) for e in ESTIMATOR_ARGS}}
    for name in args.sections.split(","):
        try:
            sections[name]()
        except Exception as err:                                   # keep what the other section measures
            rec.put(f"{name}_error", f"{type(err).__name__}: {err}"[:500])


if __name__ == "__main__":
    main()
