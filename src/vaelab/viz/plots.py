"""Figures from saved artifacts: image grids and per-epoch curves, at twice their nominal dpi (image grids upscaled
by whole factors, nearest neighbour). Files are written atomically."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from torch import Tensor  # noqa: E402

from vaelab.core.atomic import atomic_path  # noqa: E402

DPI_SCALE = 2            # figures are saved at twice their nominal dpi
GRID_TARGET_PX = 1200    # an image grid's longer side, at least (about twice the width a report column shows)
GRID_DPI = 200           # an image grid's title is drawn at this dpi, its pixels placed one to one
GRID_TITLE_PT = 10


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


def save_figure(fig: plt.Figure, path: str | Path, scale: float = DPI_SCALE, tight: bool = True) -> Path:
    """Save a matplotlib figure through a temp file and a rename, then close it: at `scale` times the figure's dpi
    (2x: sharp on high-density screens, and when a page shows it at its own width), cropped to its artists when
    `tight`."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=fig.dpi * scale, bbox_inches="tight" if tight else None,
                        format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path


def upscale(grid: np.ndarray, target: int = GRID_TARGET_PX) -> np.ndarray:
    """[H, W] -> [H*s, W*s] by nearest neighbour (each pixel an s x s block), the smallest whole s >= 1 that makes
    the longer side at least `target` pixels: the digits' pixels stay square and equal, with no resampling."""
    s = max(1, math.ceil(target / max(grid.shape)))
    return np.repeat(np.repeat(grid, s, axis=0), s, axis=1)


def save_grid(images: Tensor | np.ndarray, image_shape: tuple[int, int], path: str | Path,
              title: str | None = None, ncol: int | None = None) -> Path:
    """Save images [N, P] in [0, 1] as a grid (white digits on black, grey lines between them), upscaled by a whole
    factor (`upscale`) and placed pixel for pixel (figimage, no interpolation); the title is text drawn at the
    image's resolution above it."""
    grid = upscale(tile(images, image_shape, ncol))                       # [H, W], every pixel an s x s block
    h, w = grid.shape
    band = round(GRID_TITLE_PT / 72 * GRID_DPI * 2.2) if title else 0   # pixels above the grid for the title
    fig = plt.figure(figsize=(w / GRID_DPI, (h + band) / GRID_DPI), dpi=GRID_DPI, facecolor="white")
    fig.figimage(grid, xo=0, yo=0, cmap="gray", vmin=0, vmax=1, origin="upper", resize=False)
    if title:
        fig.text(0.5, 1 - band / 2 / (h + band), title, ha="center", va="center", fontsize=GRID_TITLE_PT)
    return save_figure(fig, path, scale=1, tight=False)


def run_colors(labels: list[str]) -> dict[str, tuple]:
    """One tab10 colour per run label, in order: pass the same list to every figure so a run keeps its colour."""
    return dict(zip(labels, plt.cm.tab10.colors * (len(labels) // 10 + 1), strict=False))


def draw_curves(ax: plt.Axes, histories: dict[str, list[dict]], keys: dict[str, str],
                colors: dict[str, tuple]) -> None:
    """Per-epoch lines from metrics.jsonl rows: a colour per run, a line style per key (first solid, then dashed,
    dotted); a run without the key draws nothing."""
    for label, rows in histories.items():
        for style, key in zip(("-", "--", ":"), keys, strict=False):
            points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), style, color=colors[label], marker="o", markersize=3,
                        label=f"{label} ({keys[key]})")


def plot_curves(histories: dict[str, list[dict]], keys: dict[str, str], ylabel: str, path: str | Path,
                title: str, colors: dict[str, tuple] | None = None,
                finals: dict[str, tuple[float, float]] | None = None, final_label: str = "") -> Path:
    """Per-epoch curves from metrics.jsonl rows, every run on shared axes: `keys` maps a row key to a line style
    label, e.g. {"valid_kl": "valid", "train_kl": "train"}. `finals` maps a run label to one (epoch, value) point
    drawn as a star (a value computed once, at the end), described in the legend by `final_label`. The legend
    names each run once by its colour and each line style once."""
    fig, ax = plt.subplots(figsize=(6.4, 4.3), dpi=100)
    labels = list(dict.fromkeys([*histories, *(finals or {})]))
    colors = colors or run_colors(labels)
    draw_curves(ax, histories, keys, colors)
    for label, (epoch, value) in (finals or {}).items():
        ax.plot([epoch], [value], "*", color=colors[label], markersize=13, markeredgecolor="k", markeredgewidth=0.6)
    handles = [Line2D([], [], color=colors[k], linewidth=3, label=k) for k in labels]
    handles += [Line2D([], [], color="0.3", linestyle=style, label=what)
                for style, what in zip(("-", "--", ":"), keys.values(), strict=False)]
    if finals:
        handles.append(Line2D([], [], marker="*", linestyle="", color="0.3", markersize=10, label=final_label))
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=7)
    return save_figure(fig, path)


def plot_gradvar_runs(results: dict[str, dict], path: str | Path, colors: dict[str, tuple] | None = None) -> Path:
    """Gradient variance (trace of the covariance of one draw of the encoder gradient, `vaelab gradvar`'s
    "variance") per estimator, one bar per trained model, log scale; a dashed line per model at the squared norm
    of its reference gradient, above which one draw's noise outweighs the gradient itself."""
    colors = colors or run_colors(list(results))
    names = list(dict.fromkeys(r["estimator"] for res in results.values() for r in res["rows"]))
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(6.4, 4.3), dpi=100)
    for i, (label, res) in enumerate(results.items()):
        variance = {r["estimator"]: r["variance"] for r in res["rows"]}
        xs = np.arange(len(names)) + (i - (len(results) - 1) / 2) * width
        ax.bar(xs, [variance.get(n, np.nan) for n in names], width, color=colors[label], label=f"at {label}")
        ax.axhline(res["target_norm"] ** 2, color=colors[label], linestyle="--", linewidth=1)
    ax.plot([], [], "--", color="0.3", label="|reference gradient|²")
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("gradient variance, one draw (trace)")
    first = next(iter(results.values()))
    ax.set_title(f"Encoder-gradient variance: batch of {first['batch']}, {first['draws']} draws per estimator",
                 fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    return save_figure(fig, path)
