"""Pythae's own trainer in its 784-400-40 reproduction setting, beside vaelab's runs of the static-MNIST row.

    .venv-pythae/bin/python benchmarks/pythae_static.py train OUT_DIR --epochs 500 --seed 0
    python benchmarks/pythae_static.py table OUT_DIR [OUT_DIR ...]

`train` runs in Pythae's venv (`python3 -m venv .venv-pythae`, `pip install torch==2.13.0`, `pip install
pythae==0.1.2`; the same as `bash benchmarks/run_all.sh pythae` makes). The setting is the one Pythae's repository
holds for its reproducibility table's VAE row (examples/scripts/reproducibility/vae.py and, at commit a1a96c2,
configs/binary_mnist/vae/base_training_config.json; benchmarks/RESULTS.md, "Pythae's settings"): Larochelle's three
.amat files (read from ~/.cache/vaelab/mnist-static/, where `--data mnist-static` keeps them), an encoder 784-400
ReLU with a mean and a log-variance head of 40, a decoder 40-400 ReLU-784 sigmoid, Pythae's `VAE` with `bce`, its
`BaseTrainer` with batch 100, Adam at 1e-4 and MultiStepLR(200, 350, 500, 750, 1000; gamma 10^(-1/5)). It writes
OUT_DIR/metrics.jsonl (per epoch, Pythae's train and validation losses: minus the one-sample ELBO with the analytic
KL, as vaelab's train_elbo and valid_elbo) and OUT_DIR/result.json (Pythae's `get_nll` with 200 importance samples on
the first `--test-images` test images, for the best-validation model, which Pythae saves as its final model).

`table` (any venv) sets those runs beside vaelab's committed seeds of the preset
(benchmarks/results/published/seeds/vae_784_400_40_static-s?/: metrics.jsonl, eval-k200.json): the validation
-ELBO at a few epochs and the test NLL at K = 200, as a Markdown table; writes benchmarks/results/pythae_static.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

try:                                                    # `train` needs Pythae's venv; `table` runs anywhere
    import torch
    from pythae.data.preprocessors import DataProcessor
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.trainers import BaseTrainer, BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback
    from torch import nn
except ImportError:
    BaseEncoder = BaseDecoder = TrainingCallback = object

AMAT = Path.home() / ".cache" / "vaelab" / "mnist-static"
SEEDS = Path(__file__).resolve().parent / "results" / "published" / "seeds"
TABLE = Path(__file__).resolve().parent / "results" / "pythae_static.json"
EPOCHS = (1, 10, 50, 100, 200, 350, 500)               # the table's epochs (the rate drops after 200 and 350)


class Encoder(BaseEncoder):
    """784 -> 400 ReLU, then two linear heads of 40: the mean ("embedding") and the log-variance."""

    def __init__(self, latent_dim: int = 40) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(784, 400), nn.ReLU())
        self.embedding, self.log_var = nn.Linear(400, latent_dim), nn.Linear(400, latent_dim)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        h = self.hidden(x.reshape(-1, 784))                                 # [B, 400]
        return ModelOutput(embedding=self.embedding(h), log_covariance=self.log_var(h))


class Decoder(BaseDecoder):
    """40 -> 400 ReLU -> 784 sigmoid (Pythae's `bce` reads probabilities)."""

    def __init__(self, latent_dim: int = 40) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, 400), nn.ReLU(), nn.Linear(400, 784), nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> ModelOutput:
        return ModelOutput(reconstruction=self.net(z).reshape(-1, 1, 28, 28))   # [B, 1, 28, 28]


class EpochLog(TrainingCallback):
    """Appends each epoch's losses to metrics.jsonl."""

    def __init__(self, path: Path) -> None:
        self.path, self.start = path, time.time()

    def on_log(self, training_config, logs, **kwargs) -> None:  # noqa: ANN001 (Pythae's signature)
        row = {"epoch": kwargs.get("global_step"), "train_loss": float(logs["train_epoch_loss"]),
               "valid_loss": float(logs["eval_epoch_loss"]), "seconds": time.time() - self.start}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def amat(name: str) -> np.ndarray:
    return np.loadtxt(AMAT / f"binarized_mnist_{name}.amat", dtype=np.float32)    # [N, 784] of 0 and 1


def train(args: argparse.Namespace) -> None:
    """Pythae's BaseTrainer in its vae.py setting for `args.epochs` epochs, then its get_nll at K = 200."""
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.jsonl").unlink(missing_ok=True)
    processor = DataProcessor()
    train_set, valid_set = (processor.to_dataset(processor.process_data(amat(n)).reshape(-1, 1, 28, 28))
                            for n in ("train", "valid"))
    torch.manual_seed(args.seed)                                             # the networks' initialisation
    model = VAE(VAEConfig(input_dim=(1, 28, 28), latent_dim=40, reconstruction_loss="bce"),
                encoder=Encoder(), decoder=Decoder())
    config = BaseTrainerConfig(
        output_dir=str(args.out / "pythae"), per_device_train_batch_size=100, per_device_eval_batch_size=100,
        num_epochs=args.epochs, learning_rate=1e-4, steps_saving=None, steps_predict=None, no_cuda=True,
        seed=args.seed, scheduler_cls="MultiStepLR",
        scheduler_params={"milestones": [200, 350, 500, 750, 1000], "gamma": 10 ** (-1 / 5)})
    trainer = BaseTrainer(model=model, train_dataset=train_set, eval_dataset=valid_set, training_config=config,
                          callbacks=[EpochLog(args.out / "metrics.jsonl")])
    trainer.train()
    best = trainer._best_model.eval()                                        # what Pythae saves as final_model
    test = torch.from_numpy(amat("test")[: args.test_images])                # [N, 784]
    torch.manual_seed(args.seed)
    start = time.time()
    with torch.no_grad():
        nll = -best.get_nll(test, n_samples=200)
    result = {"epochs": args.epochs, "seed": args.seed, "test_images": len(test), "test_nll_k200": nll,
              "nll_seconds": time.time() - start, "pythae": "0.1.2", "torch": torch.__version__}
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


def curve(path: Path, key: str, sign: float) -> dict[int, float]:
    """{epoch: sign * row[key]} of a metrics.jsonl."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["epoch"]: sign * r[key] for r in rows if key in r}


def mean_se(values: list[float]) -> str:
    """"mean ± s.e." across runs (the value alone for one run, "–" for none)."""
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "–"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values) / len(values) ** 0.5:.2f}"


def table(runs: list[Path], out: Path = TABLE) -> None:
    """Pythae's runs beside vaelab's committed seeds: validation -ELBO at EPOCHS and the test NLL at K = 200."""
    ours = sorted(SEEDS.glob("vae_784_400_40_static-s?"))
    vaelab = [curve(d / "metrics.jsonl", "valid_elbo", -1.0) for d in ours]
    pythae = [curve(r / "metrics.jsonl", "valid_loss", 1.0) for r in runs]
    nll_v = [-json.loads((d / "eval-k200.json").read_text())["iw_loglik"] for d in ours]
    results = [json.loads((r / "result.json").read_text()) for r in runs if (r / "result.json").is_file()]
    nll_p = [r["test_nll_k200"] for r in results if r["test_images"] == 10_000]
    print("| trainer | " + " | ".join(f"epoch {e}" for e in EPOCHS) + " | test NLL, K = 200 |")
    print("|---" * (len(EPOCHS) + 2) + "|")
    for name, curves, nll in (("vaelab", vaelab, nll_v), ("Pythae 0.1.2", pythae, nll_p)):
        cells = [mean_se([c[e] for c in curves if e in c]) for e in EPOCHS]
        print(f"| {name}, {len(curves)} seed(s) | " + " | ".join(cells) + f" | {mean_se(nll)} |")
    print("(validation -ELBO: one sample, analytic KL; mean ± s.e. across seeds)")
    record = {"epochs": list(EPOCHS), "vaelab_seeds": [d.name for d in ours], "pythae_runs": [r.name for r in runs],
              "vaelab_valid_nelbo": [[c.get(e) for e in EPOCHS] for c in vaelab],
              "pythae_valid_nelbo": [[c.get(e) for e in EPOCHS] for c in pythae],
              "vaelab_test_nll_k200": nll_v, "pythae_test_nll_k200": nll_p}
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="Pythae's trainer in its vae.py setting (in Pythae's venv)")
    t.add_argument("out", type=Path)
    t.add_argument("--epochs", type=int, default=500)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--test-images", type=int, default=10_000)
    tab = sub.add_parser("table", help="Pythae's runs beside vaelab's seeds")
    tab.add_argument("runs", type=Path, nargs="+")
    tab.add_argument("--out", type=Path, default=TABLE, help="the JSON record to write")
    args = ap.parse_args()
    if args.command == "train" and BaseEncoder is object:
        print("pythae_static: pythae is not installed here: run `train` with .venv-pythae/bin/python", file=sys.stderr)
        sys.exit(2)
    train(args) if args.command == "train" else table(args.runs, args.out)


if __name__ == "__main__":
    main()
