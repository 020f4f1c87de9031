"""A small digit CNN whose penultimate layer is the feature space of the sample-quality scores (evaluation/quality.py).

Inception features are the wrong features for 28x28 binary digits (and their weights would have to be
downloaded), so vaelab ships its own MNIST classifier, `weights/mnist_cnn.safetensors` (98k parameters, 400 KB),
so that every user's scores are comparable. It is reproduced by

    OMP_NUM_THREADS=1 vaelab classifier train --data mnist --epochs 6 --seed 0 \
        --out src/vaelab/weights/mnist_cnn.safetensors

6 epochs of Adam (batch 128, lr 1e-3 on a per-step cosine schedule) on the 50,000 training images: 110 s of CPU,
3.8 min wall clock on a shared 2-core machine. Each training image is shown as grayscale, as a fresh Bernoulli
draw, or thresholded at 0.5 (one of the three at random): the three ways a decoder's probabilities become an
image (sampling.DECODE_MODES), so that the features are fair to every sampling mode. Test accuracy: 98.83%
on grayscale, 98.49% on the runs' fixed binarized draw (both stored in the file's metadata, with the command).
Retraining gives the same weights on the same machine and thread count; elsewhere, floating-point summation
order may change the last digits of the weights (and of the scores) but not the accuracy beyond ~0.1%.
"""

from __future__ import annotations

import json
import sys
import time
from importlib.resources import files
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from vaelab.config.schema import DataConfig
from vaelab.core.atomic import atomic_path
from vaelab.core.errors import VaelabError
from vaelab.data.sources import load_dataset
from vaelab.data.splits import Splits
from vaelab.runs.device_data import prepare_data

FORMAT = "vaelab-classifier-1"
SHIPPED = "mnist_cnn.safetensors"
SHIPPED_DATA = "mnist"   # what the shipped classifier was trained on (its info["data"])
MNIST_FAMILY = ("mnist", "mnist-static")   # the same digits: one classifier serves both


def data_identity(source: str) -> str:
    """What a data source is, for matching a classifier to a run: "mnist" for the MNIST digits however binarized
    (mnist, mnist-static), a named source's name, else the resolved path of the file or folder."""
    from vaelab.data.catalog import SOURCES as DATA_SOURCES
    from vaelab.data.sources import SOURCES as BENCHMARKS

    if source in MNIST_FAMILY:
        return SHIPPED_DATA
    if source in DATA_SOURCES or source in BENCHMARKS:
        return source
    return str(Path(source).expanduser().resolve())


class DigitCNN(nn.Module):
    """Three conv(3x3)-ReLU-maxpool(2) blocks, fc(hidden)-ReLU, fc(classes), on flattened [B, P] images.

    `features` is the fc(hidden) layer. For 28x28, 10 classes and the default widths: 241k parameters, 1 MB in
    float32. `classes`: 10 digits for MNIST, 50 alphabets for Omniglot, 101 for the Caltech silhouettes.
    """

    def __init__(self, image_shape: tuple[int, int], channels: tuple[int, ...] = (32, 64, 128), hidden: int = 128,
                 classes: int = 10):
        super().__init__()
        h, w = image_shape
        if h < 8 or w < 8:
            raise VaelabError(f"the classifier needs images of at least 8x8 pixels, got {h}x{w}: use larger images")
        self.image_shape, self.channels, self.num_features = (h, w), tuple(channels), hidden
        self.info: dict = {}   # training record (data, accuracies, command), filled by load_classifier
        blocks = [nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
                  for c_in, c_out in zip((1, *channels), channels, strict=False)]
        side = 2 ** len(channels)   # each pool halves (floors) the image sides
        self.body = nn.Sequential(*blocks, nn.Flatten(),
                                  nn.Linear(channels[-1] * (h // side) * (w // side), hidden), nn.ReLU())
        self.head = nn.Linear(hidden, classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features [B, hidden] of images x [B, P] in [0, 1]."""
        return self.body(x.reshape(-1, 1, *self.image_shape))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits [B, classes]."""
        return self.head(self.features(x))


def augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Show each image [B, P] as grayscale (probability 1/2), a Bernoulli draw (1/4) or thresholded (1/4)."""
    choice = torch.randint(0, 4, (len(x), 1), generator=generator, device=x.device)   # [B, 1]
    drawn = torch.bernoulli(x, generator=generator)
    return torch.where(choice <= 1, x, torch.where(choice == 2, drawn, (x > 0.5).to(x.dtype)))


@torch.no_grad()
def accuracy(model: DigitCNN, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Fraction of images x [N, P] whose arg-max class is the label y [N]."""
    model.eval()
    pairs = zip(x.split(batch_size), y.split(batch_size), strict=True)
    return sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in pairs) / len(x)


def _epoch(model: DigitCNN, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler, x: Tensor,
           y: Tensor, batch_size: int, gen: torch.Generator) -> float:
    """One pass over the shuffled, augmented training images; returns the mean cross-entropy."""
    model.train()
    order = torch.randperm(len(x), generator=gen, device=x.device)
    total = 0.0
    for idx in order.split(batch_size):
        loss = nn.functional.cross_entropy(model(augment(x[idx], gen)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        total += loss.item() * len(idx)
    return total / len(x)


def _classes(splits: Splits, source: str) -> int:
    """The number of classes of a labelled data set (its largest label + 1); data without labels is refused."""
    ys = (splits.y_train, splits.y_valid, splits.y_test)
    if any(y.size and y.min() < 0 for y in ys):
        hint = ("; the shipped MNIST classifier already fits mnist-static runs (`vaelab quality RUN`, no "
                "--classifier)" if source in MNIST_FAMILY else "")
        raise VaelabError(f"{source} has images without labels: the classifier learns its features from labels, so "
                          f"train it on labelled images of the same kind{hint}")
    return max(2, int(max(y.max() for y in ys if y.size)) + 1)


def train_classifier(source: str = "mnist", epochs: int = 6, seed: int = 0, batch_size: int = 128,
                     lr: float = 1e-3, device: str = "cpu", quiet: bool = False) -> tuple[DigitCNN, dict]:
    """Train a DigitCNN on `source`'s train split with augmentation; return it and its accuracies."""
    if epochs < 1:
        raise VaelabError(f"--epochs must be at least 1, got {epochs}")
    dev = torch.device(device)
    splits = load_dataset(source)
    classes = _classes(splits, source)
    data = prepare_data(DataConfig(source=source, binarize="dynamic"), dev, splits)   # test: the runs' fixed draw
    gray_test = torch.from_numpy(splits.x_test).to(dev)
    torch.manual_seed(seed)
    gen = torch.Generator(dev).manual_seed(seed)
    model = DigitCNN(data.image_shape, classes=classes).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(data.x_train) // batch_size)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)   # lr -> 0 along a half cosine, per step
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        loss = _epoch(model, opt, cosine, data.x_train, data.y_train, batch_size, gen)
        if not quiet:
            valid = accuracy(model, data.x_valid, data.y_valid)
            print(f"epoch {epoch}/{epochs}: train loss {loss:.4f}, valid accuracy (binarized) {valid:.4f}",
                  file=sys.stderr)
    info = {"data": data_identity(source), "classes": classes, "epochs": epochs, "seed": seed,
            "batch_size": batch_size, "lr": lr,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "train_seconds": round(time.perf_counter() - start, 1),
            "valid_accuracy_binarized": accuracy(model, data.x_valid, data.y_valid),
            "test_accuracy_binarized": accuracy(model, data.x_test, data.y_test),
            "test_accuracy_gray": accuracy(model, gray_test, data.y_test)}
    return model.eval(), info


def save_classifier(model: DigitCNN, path: str | Path, info: dict) -> None:
    """Write weights as safetensors with the architecture and `info` (accuracy, command, seed) in the metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "image_shape": json.dumps(model.image_shape), "channels": json.dumps(model.channels),
            "hidden": str(model.num_features), "classes": str(model.head.out_features), "info": json.dumps(info)}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=meta)


def shipped_path() -> Path:
    """Where the shipped MNIST classifier lives inside the installed package."""
    return Path(str(files("vaelab") / "weights" / SHIPPED))


def load_classifier(path: str | Path | None = None, device: str | torch.device = "cpu") -> DigitCNN:
    """Load a saved classifier (the shipped MNIST one by default) in eval mode; a bad file is a VaelabError."""
    path = Path(path) if path is not None else shipped_path()
    if not path.is_file():
        raise VaelabError(f"classifier weights {path} not found: give a file written by `vaelab classifier train`"
                          " (reinstall vaelab if the shipped one is missing)")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(path)
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
        model = DigitCNN(tuple(json.loads(meta["image_shape"])), tuple(json.loads(meta["channels"])),
                         int(meta["hidden"]), int(meta.get("classes", 10)))   # files before "classes": 10 digits
        model.load_state_dict(tensors)
        model.info = json.loads(meta["info"])
    except (SafetensorError, OSError, RuntimeError, ValueError, KeyError, TypeError) as err:
        raise VaelabError(f"classifier weights {path} are damaged or foreign ({str(err).splitlines()[0][:80]}): "
                          "retrain with `vaelab classifier train` (or reinstall vaelab for the shipped file)") from err
    return model.to(device).eval()
