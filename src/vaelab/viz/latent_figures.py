"""Latent-space figures of the study's section 4: the codes coloured by digit (Figure 6); the codes (Figure 7) and
as many samples of the fitted mixture (Figure 8) under the mixture's log-density contours and component ellipses,
on the same axes; the codes next to the samples as scatter and 2-D histogram. Codes of more than two dimensions
are shown on their first two principal components (the mixture samples on the same projection, without contours).
Also the 2-D views (PCA, t-SNE) of higher-dimensional codes coloured by digit used by the report. Data without
labels (every label NO_LABEL = -1) is drawn in one colour, without a legend."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm, to_rgba  # noqa: E402
from matplotlib.contour import ContourSet  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Ellipse  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from vaelab.core.errors import VaelabError  # noqa: E402
from vaelab.data.splits import NO_LABEL, known_labels  # noqa: E402
from vaelab.models.density import GMMDensity  # noqa: E402
from vaelab.viz.plots import save_figure  # noqa: E402

FIGURE_POINTS = 20_000   # codes and mixture samples per panel of Figures 7 and 8, as in the seed
ELLIPSE_MASS = 0.95      # each component's ellipse holds this much of its Gaussian's mass
CODE_MASS = (0.99, 0.95, 0.75, 0.5, 0.25)   # contour levels: the regions {log p > level} hold these shares of codes
UNLABELED_COLOR = "C0"   # every point of a data set without labels
NO_LABEL_COLOR = "0.6"   # a point without a label in a labelled set


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


def scatter_digits(ax: plt.Axes, xy: np.ndarray, labels: np.ndarray | None, legend: bool = True,
                   size: float | None = None, alpha: float = 0.6) -> None:
    """Points [N, 2] coloured by digit label in random drawing order (no digit hides the rest), with a legend of
    the digits to the right of the axes. Without labels (None, or all NO_LABEL: unlabeled data) every point has
    one colour and there is no legend; single images without a label (NO_LABEL) are grey."""
    labels = known_labels(labels)
    if labels is not None and labels.shape != (len(xy),):
        raise VaelabError(f"{len(labels)} labels for {len(xy)} codes: give one digit label per code")
    cmap = plt.get_cmap("tab10")
    order = np.random.default_rng(0).permutation(len(xy))
    size = size if size is not None else float(np.clip(4000 / len(xy), 0.5, 12))
    if labels is None:
        colors = UNLABELED_COLOR
    else:
        colors = cmap(labels[order] % 10)
        colors[labels[order] == NO_LABEL] = to_rgba(NO_LABEL_COLOR)
    ax.scatter(xy[order, 0], xy[order, 1], s=size, c=colors, alpha=alpha, linewidths=0, rasterized=True)
    if legend and labels is not None:
        handles = [Line2D([], [], marker="o", linestyle="", color=cmap(int(d) % 10) if d != NO_LABEL else
                          NO_LABEL_COLOR, label=str(d) if d != NO_LABEL else "none") for d in np.unique(labels)]
        ax.legend(handles=handles, title="digit", loc="center left", bbox_to_anchor=(1, 0.5), fontsize=8)


def coloured_by(labels: np.ndarray | None) -> str:
    """How scatter_digits colours these points, for a title: "coloured by digit" or "no labels: one colour"."""
    return "coloured by digit" if known_labels(labels) is not None else "no labels: one colour"


def plot_codes(codes: np.ndarray, labels: np.ndarray | None, path: str | Path, title: str | None = None) -> Path:
    """Scatter of the codes coloured by digit, with a legend of the ten digits (seed Figure 6); one colour
    without labels."""
    (xy,), axis_labels, note = project_2d(codes)
    fig, ax = plt.subplots(figsize=(6.5, 5.5), dpi=110)
    scatter_digits(ax, xy, labels)
    _label_axes(ax, axis_labels)
    ax.set_title(title or f"Codes of {len(xy):,} training images, {coloured_by(labels)}{note}", fontsize=10)
    return save_figure(fig, path)


def log_density_grid(log_density, lims: list[tuple[float, float]], n: int = 200
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`log_density` ([M, 2] -> [M]) on an n x n grid over `lims`: (xs [n], ys [n], Z [n, n] with
    Z[i, j] = log p(xs[j], ys[i]))."""
    xs, ys = np.linspace(*lims[0], n), np.linspace(*lims[1], n)
    mesh = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    return xs, ys, np.asarray(log_density(mesh), np.float64).reshape(n, n)


def code_levels(density: GMMDensity, codes: np.ndarray) -> np.ndarray:
    """Contour levels of log p: the region {log p > level} holds CODE_MASS of the codes (increasing order)."""
    return np.quantile(density.score_samples(codes), 1 - np.asarray(CODE_MASS))


def draw_gmm(ax: plt.Axes, density: GMMDensity, lims: list[tuple[float, float]], levels: np.ndarray,
             n: int = 200, ellipses: bool = True) -> ContourSet:
    """The mixture's log-density (sklearn's score_samples on an n x n grid) as labelled contour lines at `levels`,
    and (`ellipses`) each component's ELLIPSE_MASS ellipse (line weight by mixture weight), its mean a cross."""
    xs, ys, z = log_density_grid(density.score_samples, lims, n)
    contours = ax.contour(xs, ys, z, levels=np.sort(levels), cmap="viridis", linewidths=1.1)
    ax.clabel(contours, fmt="%.1f", fontsize=7)
    if not ellipses:
        return contours
    radius = np.sqrt(-2 * np.log(1 - ELLIPSE_MASS))           # chi-square(2) quantile: Mahalanobis radius
    top = density.weights_.max()
    for weight, mean, cov in zip(density.weights_, density.means_, density.full_covariances(), strict=True):
        evals, evecs = np.linalg.eigh(cov)
        angle = np.degrees(np.arctan2(evecs[1, 1], evecs[0, 1]))    # direction of the largest axis
        ax.add_patch(Ellipse(tuple(mean), 2 * radius * np.sqrt(evals[1]), 2 * radius * np.sqrt(evals[0]),
                             angle=angle, fill=False, color="crimson", linewidth=0.4 + 1.2 * weight / top,
                             alpha=0.25 + 0.55 * weight / top))
    ax.plot(density.means_[:, 0], density.means_[:, 1], "+", color="crimson", markersize=6)
    return contours


def plot_gmm_panel(points: np.ndarray, density: GMMDensity, lims: list[tuple[float, float]], levels: np.ndarray,
                   path: str | Path, title: str, color: str = "0.25") -> Path:
    """Points (codes or mixture samples, 2-D) under the mixture's log-density contours and component ellipses
    (the study's Figures 7 and 8, one panel each, same axes and levels)."""
    fig, ax = plt.subplots(figsize=(6.2, 5.4), dpi=110)
    size = float(np.clip(8000 / len(points), 0.3, 8))
    ax.scatter(points[:, 0], points[:, 1], s=size, alpha=0.4, linewidths=0, color=color, rasterized=True)
    draw_gmm(ax, density, lims, levels)
    ax.set_xlim(lims[0])
    ax.set_ylim(lims[1])
    _label_axes(ax, ("$z_1$", "$z_2$"))
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def axis_limits(*arrays: np.ndarray) -> list[tuple[float, float]]:
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
    lims = axis_limits(xy, gm)
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


def write_latent_figures(run_dir: str | Path, codes: np.ndarray, labels: np.ndarray | None, density: GMMDensity,
                         seed: int = 0, n_points: int = FIGURE_POINTS) -> list[Path]:
    """RUN/fig/latent_codes.png (every code, Figure 6), latent_codes_vs_gmm.png (n_points codes and as many
    mixture samples, scatter and histogram) and, for 2-D codes, latent_gmm_codes.png and latent_gmm_samples.png
    (the same points under the mixture's log-density contours and component ellipses: Figures 7 and 8)."""
    n = min(n_points, len(codes))
    pick = np.random.default_rng(seed).choice(len(codes), n, replace=False)
    samples = density.sample(n, seed)
    fig_dir = Path(run_dir) / "fig"
    name = f"fitted Gaussian mixture (K={density.n_components}, {density.covariance_type})"
    paths = [plot_codes(codes, labels, fig_dir / "latent_codes.png"),
             plot_codes_vs_gmm(codes[pick], samples, fig_dir / "latent_codes_vs_gmm.png", density_name=name)]
    if density.dim == 2:
        lims, levels = axis_limits(codes[pick], samples), code_levels(density, codes[pick])
        paths += [plot_gmm_panel(codes[pick], density, lims, levels, fig_dir / "latent_gmm_codes.png",
                                 f"Figure 7: {n:,} training codes under the {name}"),
                  plot_gmm_panel(samples, density, lims, levels, fig_dir / "latent_gmm_samples.png",
                                 f"Figure 8: {n:,} samples of the mixture, same axes and contours", "C0")]
    return paths


def plot_embeddings(panels: dict[str, dict[str, np.ndarray]], path: str | Path) -> Path:
    """Codes of several models in 2-D, one column per model: PCA (top) and t-SNE (bottom), coloured by digit (one
    colour for unlabeled data: labels all NO_LABEL). `panels` maps a model title to {"pca": [N, 2], "pca_labels":
    [N], "pca_var": [2], "tsne": [M, 2], "tsne_labels": [M], "dim": D}."""
    cols = len(panels)
    fig, axes = plt.subplots(2, cols, figsize=(4.3 * cols + 0.8, 8.2), dpi=100, squeeze=False, layout="constrained")
    for col, (title, p) in enumerate(panels.items()):
        var = float(np.sum(p["pca_var"]))
        scatter_digits(axes[0, col], p["pca"], p["pca_labels"], legend=col == cols - 1,
                       size=float(np.clip(20000 / len(p["pca"]), 1, 12)))
        axes[0, col].set_title(f"{title}\nPCA of {len(p['pca']):,} {int(p['dim'])}-D codes ({var:.0%} of variance)",
                               fontsize=9)
        scatter_digits(axes[1, col], p["tsne"], p["tsne_labels"], legend=False, size=4)
        axes[1, col].set_title(f"t-SNE of {len(p['tsne']):,} of them", fontsize=9)
        axes[1, col].set_xticks([])
        axes[1, col].set_yticks([])
    return save_figure(fig, path)
