"""Figures from saved artifacts: image grids and per-epoch curves. Files are written atomically."""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from torch import Tensor  # noqa: E402


def tile(images: Tensor | np.ndarray, image_shape: tuple[int, int], ncol: int | None = None,
         pad: int = 1) -> np.ndarray:
    """[N, P] images -> one [rows*(H+pad)+pad, cols*(W+pad)+pad] array with grey grid lines between them."""
    imgs = np.asarray(images.detach().cpu() if isinstance(images, Tensor) else images, dtype=np.float32)
    h, w = image_shape
    n = len(imgs)
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad), 0.5, dtype=np.float32)
    for i, img in enumerate(imgs.reshape(n, h, w)):
        r, c = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = img
    return grid


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Save a matplotlib figure through a temp file and a rename, then close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=fig.dpi, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def save_grid(images: Tensor | np.ndarray, image_shape: tuple[int, int], path: str | Path,
              title: str | None = None, ncol: int | None = None) -> Path:
    """Save images [N, P] in [0, 1] as a PNG grid (white digits on black, grey lines between them)."""
    grid = tile(images, image_shape, ncol)
    scale = max(1.0, 240 / max(grid.shape))
    fig, ax = plt.subplots(figsize=(grid.shape[1] * scale / 40, grid.shape[0] * scale / 40 + (0.4 if title else 0)),
                           dpi=80)
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_curves(histories: dict[str, list[dict]], keys: dict[str, str], ylabel: str, path: str | Path,
                title: str) -> Path:
    """Per-epoch curves from metrics.jsonl rows, every run on shared axes: `keys` maps a row key to a line style
    label, e.g. {"valid_kl": "valid", "train_kl": "train"}."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    styles = ["-", "--", ":"]
    for color, (label, rows) in zip(plt.cm.tab10.colors, histories.items(), strict=False):
        for style, (key, what) in zip(styles, keys.items(), strict=False):
            points = [(r["epoch"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points, strict=True), style, color=color, marker="o", markersize=3,
                        label=f"{label} ({what})")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
