"""vaelab vs Pythae 0.1.2 on the seed model: training epoch time and the K = 5000 importance-sampled log-likelihood.

One script, two virtual environments (Pythae pins its own stack, so it lives in a venv of its own; the issue's
recipe: `pip install torch==2.13.0` then `pip install pythae==0.1.2`). `bash benchmarks/run_all.sh pythae` runs:

  .venv/bin/python benchmarks/pythae_compare.py export DIR             # static binarized data for both sides
  .venv/bin/python benchmarks/pythae_compare.py vaelab DIR --round R   # vaelab's train() for E epochs, then NLL
  PYTHAE_PY benchmarks/pythae_compare.py pythae DIR --round R          # Pythae's TrainingPipeline, then get_nll
  .venv/bin/python benchmarks/pythae_compare.py report DIR             # table + benchmarks/results/pythae.json

alternating vaelab and Pythae rounds. Both sides train the same model (784-512-256-20 and back, ReLU, Gaussian
latent, Bernoulli decoder, Adam 1e-3, batch 128) on the same statically binarized 50k training images with the
same 10k validation images. Both log-likelihoods are computed for the same trained weights (vaelab's, copied into
Pythae's modules) on the same test images, so their means must agree within Monte Carlo error.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

SIZES_ENC, SIZES_DEC = [784, 512, 256, 40], [20, 256, 512, 784]
BATCH, LR, K = 128, 1e-3, 5000


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between: the same module layout as vaelab.models.nets.mlp, so state dicts match."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2))


# ----------------------------------------------------------------------------------------------- vaelab side
VARIANTS = {"fp32": [], "bf16": ["train.autocast=bf16"], "bf16-compile": ["train.autocast=bf16", "train.compile=true"],
            "fp32-compile": ["train.compile=true"]}


def vaelab_config(epochs: int, variant: str = "fp32"):
    from vaelab.config.schema import load_config
    return load_config("configs/gaussian_vae.yaml", ["data.binarize=static", f"train.epochs={epochs}",
                                                     f"train.batch_size={BATCH}", f"train.lr={LR}",
                                                     *VARIANTS[variant]])


def export(out: Path) -> None:
    """The static binarized train/valid/test draw vaelab trains on, as uint8, for the Pythae side."""
    from vaelab.runs.device_data import prepare_data
    data = prepare_data(vaelab_config(1).data, torch.device("cpu"))
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "data.npz", **{k: getattr(data, k).numpy().astype(np.uint8)
                                  for k in ("x_train", "x_valid", "x_test")})


def run_vaelab(out: Path, rnd: int, epochs: int, nll_images: int, variant: str) -> None:
    """train() for `epochs` (loop seconds per epoch from metrics, wall time in all); for fp32, then iw_loglik on
    test images (evaluation is fp32 whatever the training precision) and the weights for Pythae's get_nll."""
    from vaelab.evaluation.bounds import iw_loglik
    from vaelab.runs.checkpoint import load_weights, read_checkpoint
    from vaelab.runs.device_data import prepare_data
    from vaelab.runs.loaded_run import build
    from vaelab.runtime.hardware import autocast_twin
    from vaelab.training.trainer import train
    run_dir, tag = out / f"vaelab-{variant}_run{rnd}", f"vaelab-{variant}{rnd}"
    if run_dir.exists():
        import shutil
        shutil.rmtree(run_dir)
    t = time.perf_counter()
    history = train(vaelab_config(epochs, variant), run_dir, quiet=True)
    wall = time.perf_counter() - t
    result = {"variant": variant, "epoch_loop_seconds": [r["seconds"] for r in history], "pipeline_seconds": wall,
              "epochs": epochs, "train_elbo": [r["train_elbo"] for r in history],
              "valid_elbo": [r["valid_elbo"] for r in history], "threads": torch.get_num_threads()}
    if variant != "fp32":
        write_json(out / f"{tag}.json", result)
        return
    cfg, tensors, _ = read_checkpoint(run_dir)
    data = prepare_data(cfg.data, torch.device("cpu"))
    model, estimator = build(cfg, data, torch.device("cpu"))
    load_weights(model, estimator, tensors)
    model.eval()
    weights = {f"{part}.{k}": v.numpy() for part in ("encoder", "decoder")
               for k, v in getattr(model, part).state_dict().items()}
    np.savez(out / f"weights{rnd}.npz", **weights)
    x, timed = data.x_test[:nll_images], {}
    for name, m in (("fp32", model), ("bf16", autocast_twin(model, "bf16", encoder=False))):   # evaluate --autocast
        with torch.no_grad():
            iw_loglik(m, x[:8], k=K)                       # warm-up
            torch.manual_seed(rnd)                         # the same draws for both: a paired comparison
            t = time.perf_counter()
            timed[name] = (iw_loglik(m, x, k=K).tolist(), time.perf_counter() - t)
    write_json(out / f"{tag}.json", result | {"nll_images": nll_images, "nll_seconds": timed["fp32"][1],
                                              "loglik": timed["fp32"][0], "nll_seconds_bf16": timed["bf16"][1],
                                              "loglik_bf16": timed["bf16"][0]})


# ----------------------------------------------------------------------------------------------- Pythae side
def run_pythae(out: Path, rnd: int, epochs: int, nll_images: int) -> None:
    """Pythae's TrainingPipeline on the same data and model; its train_step timed per epoch; then get_nll."""
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    class Encoder(BaseEncoder):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp(SIZES_ENC)

        def forward(self, x):
            mu, log_var = self.net(x.reshape(len(x), -1)).chunk(2, -1)
            return ModelOutput(embedding=mu, log_covariance=log_var)

    class Decoder(BaseDecoder):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp(SIZES_DEC)

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)))

    data = np.load(out / "data.npz")
    x_train, x_valid = (data[k].astype(np.float32) for k in ("x_train", "x_valid"))
    loop: list[float] = []
    original = BaseTrainer.train_step

    def timed_train_step(self, epoch):               # the training loop alone, as vaelab's "seconds"
        t = time.perf_counter()
        loss = original(self, epoch)
        loop.append(time.perf_counter() - t)
        return loss

    BaseTrainer.train_step = timed_train_step
    torch.manual_seed(rnd)
    model = VAE(VAEConfig(input_dim=(784,), latent_dim=20, reconstruction_loss="bce"),
                encoder=Encoder(), decoder=Decoder())
    config = BaseTrainerConfig(output_dir=str(out / f"pythae_run{rnd}"), num_epochs=epochs, learning_rate=LR,
                               per_device_train_batch_size=BATCH, per_device_eval_batch_size=BATCH, no_cuda=True,
                               seed=rnd)
    t = time.perf_counter()
    TrainingPipeline(training_config=config, model=model)(train_data=x_train, eval_data=x_valid)
    wall = time.perf_counter() - t

    weights = np.load(out / f"weights{rnd}.npz")       # vaelab's trained weights: the same model to evaluate
    for part, module in (("encoder", model.encoder.net), ("decoder", model.decoder.net)):
        module.load_state_dict({k.split(".", 1)[1]: torch.from_numpy(v) for k, v in weights.items()
                                if k.startswith(part + ".")})
    model.eval()
    x = torch.from_numpy(data["x_test"][:nll_images].astype(np.float32))
    torch.manual_seed(rnd)
    with torch.no_grad():
        model.get_nll(x[:2], n_samples=K, batch_size=100)   # warm-up
        t = time.perf_counter()                             # one image a call: per-image values, same work
        ll = [model.get_nll(x[i:i + 1], n_samples=K, batch_size=100) for i in range(len(x))]
        nll_s = time.perf_counter() - t
    write_json(out / f"pythae{rnd}.json", {
        "epoch_loop_seconds": loop, "pipeline_seconds": wall, "epochs": epochs, "nll_images": nll_images,
        "nll_seconds": nll_s, "loglik": [float(v) for v in ll], "threads": torch.get_num_threads()})


# ----------------------------------------------------------------------------------------------------- report
def report(out: Path) -> None:
    """Medians over rounds (each round's first epoch dropped: warm-up, compilation) and the paired log-likelihoods."""
    runs = {tag: [json.loads(p.read_text()) for p in sorted(out.glob(f"{tag}[0-9]*.json"))]
            for tag in ["pythae", *(f"vaelab-{v}" for v in VARIANTS)]}
    runs = {tag: rs for tag, rs in runs.items() if rs}
    if "pythae" not in runs or "vaelab-fp32" not in runs:
        sys.exit(f"no results under {out}: run the vaelab and pythae sides first")
    res: dict = {"rounds": {tag: len(rs) for tag, rs in runs.items()}, "timings": {}}
    for tag, rs in runs.items():
        res["timings"][tag] = {
            "epoch_loop_seconds": statistics.median(s for r in rs for s in r["epoch_loop_seconds"][1:]),
            "epoch_loop_seconds_min": min(s for r in rs for s in r["epoch_loop_seconds"][1:]),
            "pipeline_seconds_per_epoch": statistics.median(r["pipeline_seconds"] / r["epochs"] for r in rs),
            "final_valid_elbo": statistics.median(r["valid_elbo"][-1] for r in rs) if "valid_elbo" in rs[0] else None}
    nll = {tag: statistics.median(1e3 * r[key] / r["nll_images"] for r in runs[src])
           for tag, src, key in (("vaelab-fp32", "vaelab-fp32", "nll_seconds"), ("pythae", "pythae", "nll_seconds"),
                                 ("vaelab-bf16-decoder", "vaelab-fp32", "nll_seconds_bf16"))}
    res["nll_ms_per_image"] = nll
    bf = [np.asarray(r["loglik_bf16"]) - np.asarray(r["loglik"]) for r in runs["vaelab-fp32"]]
    res["bf16_decoder_minus_fp32"] = [{"mean": float(d.mean()), "stderr": float(d.std(ddof=1) / np.sqrt(len(d))),
                                       "max_abs": float(np.abs(d).max())} for d in bf]
    res["loglik"] = []                                     # paired over the same images and weights
    for v, p in zip(runs["vaelab-fp32"], runs["pythae"], strict=False):
        d = np.asarray(v["loglik"]) - np.asarray(p["loglik"])
        res["loglik"].append({"vaelab": float(np.mean(v["loglik"])), "pythae": float(np.mean(p["loglik"])),
                              "difference": float(d.mean()),
                              "difference_stderr": float(d.std(ddof=1) / np.sqrt(len(d)))})
    res["torch"], res["threads"] = torch.__version__, runs["vaelab-fp32"][0]["threads"]
    Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
    write_json(Path("benchmarks/results/pythae.json"), res)
    pythae = res["timings"]["pythae"]
    print("| trainer | training loop, s per 50k epoch: median (min) | Pythae / this: medians (mins) "
          "| whole pipeline, s per epoch | valid ELBO after the run |\n|---|---|---|---|---|")
    for tag, t in res["timings"].items():
        elbo = f"{t['final_valid_elbo']:.2f}" if t["final_valid_elbo"] is not None else "–"
        ratio, ratio_min = (pythae[k] / t[k] for k in ("epoch_loop_seconds", "epoch_loop_seconds_min"))
        print(f"| {tag} | {t['epoch_loop_seconds']:.2f} ({t['epoch_loop_seconds_min']:.2f}) | {ratio:.2f} "
              f"({ratio_min:.2f}) | {t['pipeline_seconds_per_epoch']:.2f} | {elbo} |")
    print(f"\n| IW log-likelihood, K={K} | ms per test image | Pythae / this |\n|---|---|---|")
    for tag, ms in nll.items():
        print(f"| {tag} | {ms:.1f} | {nll['pythae'] / ms:.2f} |")
    for d in res["bf16_decoder_minus_fp32"]:
        print(f"bf16 decoder - fp32, same draws: {d['mean']:.4f} +- {d['stderr']:.4f} nats "
              f"(max |.| {d['max_abs']:.3f})")
    for d in res["loglik"]:
        print(f"same weights, {len(runs['vaelab-fp32'][0]['loglik'])} test images: vaelab {d['vaelab']:.3f}, "
              f"Pythae {d['pythae']:.3f}, paired difference {d['difference']:.3f} +- {d['difference_stderr']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("side", choices=["export", "vaelab", "pythae", "report"])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--round", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--nll-images", type=int, default=100)
    ap.add_argument("--variant", choices=list(VARIANTS), default="fp32", help="vaelab side: training precision")
    a = ap.parse_args()
    if a.side == "export":
        export(a.dir)
    elif a.side == "report":
        report(a.dir)
    else:
        run_vaelab(a.dir, a.round, a.epochs, a.nll_images, a.variant) if a.side == "vaelab" else \
            run_pythae(a.dir, a.round, a.epochs, a.nll_images)


if __name__ == "__main__":
    main()
