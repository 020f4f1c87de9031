"""Latent-space figures of the seed's section 4: the codes coloured by digit (Figure 6), and the codes next to
samples of the fitted mixture as scatter and as 2-D histogram (Figures 7 and 8). Codes of more than two
dimensions are shown on their first two principal components (the mixture samples on the same projection)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from .density import GMMDensity  # noqa: E402
from .errors import VaelabError  # noqa: E402
from .plots import save_figure  # noqa: E402

FIGURE_POINTS = 20_000   # codes and mixture samples per panel of Figures 7 and 8, as in the seed


def project_2d(codes: np.ndarray, *others: np.ndarray) -> tuple[list[np.ndarray], tuple[str, str], str]:
    """2-D views of codes [N, D] and of `others` on the same axes: as they are for D = 2, else the first two
    principal components of the codes. Returns (arrays [N, 2], axis labels, note for the title)."""
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or codes.shape[1] < 2:
        raise VaelabError(f"codes of shape {codes.shape} cannot be plotted in 2-D: give [N, D] codes with D >= 2")
    if codes.shape[1] == 2:
        return [codes, *(np.asarray(o, dtype=np.float64) for o in others)], ("$z_1$", "$z_2$"), ""
    pca = PCA(n_components=2).fit(codes)
    note = f"\n(first two principal components of the {codes.shape[1]}-D codes)"
    return [pca.transform(np.asarray(a, np.float64)) for a in (codes, *others)], ("PC 1", "PC 2"), note


def _label_axes(ax: plt.Axes, labels: tuple[str, str]) -> None:
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])


def plot_codes(codes: np.ndarray, labels: np.ndarray, path: str | Path, title: str | None = None) -> Path:
    """Scatter of the codes coloured by digit, with a legend of the ten digits (seed Figure 6)."""
    (xy,), axis_labels, note = project_2d(codes)
    labels = np.asarray(labels)
    if labels.shape != (len(xy),):
        raise VaelabError(f"{len(labels)} labels for {len(xy)} codes: give one digit label per code")
    fig, ax = plt.subplots(figsize=(6.5, 5.5), dpi=110)
    size = float(np.clip(4000 / len(xy), 0.5, 12))
    cmap = plt.get_cmap("tab10")
    order = np.random.default_rng(0).permutation(len(xy))       # random drawing order: no digit hides the rest
    ax.scatter(xy[order, 0], xy[order, 1], s=size, c=cmap(labels[order].astype(int) % 10), alpha=0.6,
               linewidths=0, rasterized=True)
    handles = [Line2D([], [], marker="o", linestyle="", color=cmap(int(d) % 10), label=str(d))
               for d in np.unique(labels)]
    ax.legend(handles=handles, title="digit", loc="center left", bbox_to_anchor=(1, 0.5))
    _label_axes(ax, axis_labels)
    ax.set_title(title or f"Codes of {len(xy):,} training images, coloured by digit{note}", fontsize=10)
    return save_figure(fig, path)


def _limits(*arrays: np.ndarray) -> list[tuple[float, float]]:
    """Shared axis limits covering 99.8% of the points of all arrays, padded by 5%."""
    both = np.concatenate(arrays)
    lo, hi = np.percentile(both, 0.1, axis=0), np.percentile(both, 99.9, axis=0)
    pad = 0.05 * np.maximum(hi - lo, 1e-6)
    return [(lo[i] - pad[i], hi[i] + pad[i]) for i in range(2)]


def plot_codes_vs_gmm(codes: np.ndarray, gmm_samples: np.ndarray, path: str | Path, title: str | None = None,
                      bins: int | None = None, density_name: str = "fitted Gaussian mixture") -> Path:
    """Codes and mixture samples side by side on the same axes: scatter (top) and 2-D histogram with a shared
    logarithmic colour scale (bottom) (seed Figures 7 and 8)."""
    (xy, gm), axis_labels, note = project_2d(codes, gmm_samples)
    lims = _limits(xy, gm)
    bins = bins or int(np.clip(np.sqrt(min(len(xy), len(gm))), 20, 100))
    fig, axes = plt.subplots(2, 2, figsize=(10, 9), dpi=110, sharex=True, sharey=True, layout="constrained")
    names = (f"encoder codes ({len(xy):,})", f"mixture samples ({len(gm):,})")
    counts = [np.histogram2d(a[:, 0], a[:, 1], bins=bins, range=lims)[0] for a in (xy, gm)]
    norm = LogNorm(vmin=1, vmax=max(2.0, max(c.max() for c in counts)))
    size = float(np.clip(2000 / len(xy), 0.3, 6))
    for col, (pts, name) in enumerate(zip((xy, gm), names, strict=True)):
        axes[0, col].scatter(pts[:, 0], pts[:, 1], s=size, alpha=0.4, linewidths=0, color=f"C{col}", rasterized=True)
        axes[0, col].set_title(f"{name}: scatter", fontsize=10)
        image = axes[1, col].hist2d(pts[:, 0], pts[:, 1], bins=bins, range=lims, norm=norm, cmap="viridis")[3]
        axes[1, col].set_title(f"{name}: 2-D histogram", fontsize=10)
    for ax in axes.flat:
        ax.set_xlim(lims[0])
        ax.set_ylim(lims[1])
        _label_axes(ax, axis_labels)
        ax.label_outer()
    fig.colorbar(image, ax=axes, label="points per bin (log scale; empty bins white)", shrink=0.6)
    fig.suptitle(title or f"Latent codes vs samples of the {density_name}{note}", fontsize=11)
    return save_figure(fig, path)


def write_latent_figures(run_dir: str | Path, codes: np.ndarray, labels: np.ndarray, density: GMMDensity,
                         seed: int = 0, n_points: int = FIGURE_POINTS) -> list[Path]:
    """RUN/fig/latent_codes.png (every code, Figure 6) and RUN/fig/latent_codes_vs_gmm.png (n_points codes and
    as many mixture samples, Figures 7 and 8)."""
    n = min(n_points, len(codes))
    pick = np.random.default_rng(seed).choice(len(codes), n, replace=False)
    fig_dir = Path(run_dir) / "fig"
    name = f"fitted Gaussian mixture (K={density.n_components}, {density.covariance_type})"
    return [plot_codes(codes, labels, fig_dir / "latent_codes.png"),
            plot_codes_vs_gmm(codes[pick], density.sample(n, seed), fig_dir / "latent_codes_vs_gmm.png",
                              density_name=name)]
