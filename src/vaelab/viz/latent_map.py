"""The interactive latent map of a model with a 2-D continuous code (the study's autoencoder): in the report, moving
the pointer over the code plane shows the decoded image at that point.

Precomputed, so the page needs no server: the decoder's omega on an n x n grid of codes over the plane, tiled into
one greyscale sprite (RUN/fig/latent_map_sprite.png, tile (row r, column c) is the decode of
z = (x0 + c (x1 - x0) / (n - 1), y1 - r (y1 - y0) / (n - 1)), grey level round(255 omega)), and the plane itself
(RUN/fig/latent_map_plane.png: the codes coloured by digit under the fitted mixture's log-density contours, its
axes at a recorded place in the image). RUN/fig/latent_map.json holds n, the limits and that place. A few lines of
plain JavaScript map the pointer to the nearest grid point and show its tile; without JavaScript the page shows
the plane and the whole sprite (the decoded manifold) as static figures.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vaelab.core.atomic import atomic_path, atomic_write_text
from vaelab.models.density import GMMDensity
from vaelab.models.vae import VAE
from vaelab.viz.html_page import data_url
from vaelab.viz.latent_figures import axis_limits, code_levels, coloured_by, draw_gmm, scatter_digits
from vaelab.viz.plots import plt

GRID = 32             # decodes per side of the sprite
MAP_POINTS = 5000     # codes drawn on the plane
PLANE, SPRITE, META = "latent_map_plane.png", "latent_map_sprite.png", "latent_map.json"

CSS = """
.lm-body{display:grid;grid-template-columns:minmax(0,2fr) minmax(0,1fr);gap:1.2em;align-items:start}
@media (max-width:820px){.lm-body{grid-template-columns:minmax(0,1fr)}}
.lm-plane{position:relative;cursor:crosshair;touch-action:none}
.lm-mark{position:absolute;width:14px;height:14px;margin:-7px 0 0 -7px;border:2px solid #111;border-radius:50%;
 pointer-events:none;box-shadow:0 0 0 2px #fff}
.lm-view{width:70%;image-rendering:pixelated;background-repeat:no-repeat;border:1px solid #999;background-color:#000}
.lm-z{font:13px ui-monospace,monospace;margin:.3em 0 .8em}
.lm-sprite{width:100%;image-rendering:pixelated}
"""

JS = """
document.querySelectorAll('.latent-map').forEach(function (map) {
  var d = map.dataset, n = +d.n, x = d.x.split(',').map(Number), y = d.y.split(',').map(Number),
      box = d.box.split(',').map(Number), plane = map.querySelector('.lm-plane'), mark = map.querySelector('.lm-mark'),
      view = map.querySelector('.lm-view'), label = map.querySelector('.lm-z');
  view.style.backgroundImage = 'url(' + map.querySelector('.lm-sprite').src + ')';
  view.style.backgroundSize = n * 100 + '% ' + n * 100 + '%';
  view.hidden = mark.hidden = label.hidden = false;
  function show(col, row) {
    view.style.backgroundPosition = 100 * col / (n - 1) + '% ' + 100 * row / (n - 1) + '%';
    view.dataset.cell = row + ',' + col;
    label.textContent = 'z = (' + (x[0] + col * (x[1] - x[0]) / (n - 1)).toFixed(2) + ', ' +
                        (y[1] - row * (y[1] - y[0]) / (n - 1)).toFixed(2) + ')';
    mark.style.left = 100 * (box[0] + box[2] * col / (n - 1)) + '%';
    mark.style.top = 100 * (box[1] + box[3] * row / (n - 1)) + '%';
  }
  plane.addEventListener('pointermove', function (e) {
    var r = plane.getBoundingClientRect(), fx = ((e.clientX - r.left) / r.width - box[0]) / box[2],
        fy = ((e.clientY - r.top) / r.height - box[1]) / box[3];
    if (fx >= 0 && fx <= 1 && fy >= 0 && fy <= 1) show(Math.round(fx * (n - 1)), Math.round(fy * (n - 1)));
  });
  show(n >> 1, n >> 1);
});
"""


def grid_codes(lims: list[tuple[float, float]], n: int) -> np.ndarray:
    """The n x n grid of codes [n * n, 2] in sprite order: row r (top to bottom) has z2 = y1 - r (y1 - y0)/(n - 1),
    column c has z1 = x0 + c (x1 - x0)/(n - 1)."""
    xs, ys = np.linspace(*lims[0], n), np.linspace(*lims[1], n)[::-1]
    return np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)


@torch.no_grad()
def decode_sprite(model: VAE, lims: list[tuple[float, float]], n: int = GRID) -> np.ndarray:
    """omega of every grid code as grey levels, tiled: uint8 [n * H, n * W]."""
    h, w = model.image_shape
    device = next(model.parameters()).device
    z = torch.as_tensor(grid_codes(lims, n), dtype=torch.float32, device=device)
    probs = torch.cat([model.decode_probs(zb) for zb in z.split(1024)]).cpu().numpy()      # [n * n, H * W]
    tiles = probs.reshape(n, n, h, w).transpose(0, 2, 1, 3).reshape(n * h, n * w)
    return np.round(tiles * 255).astype(np.uint8)


def plot_plane(codes: np.ndarray, labels: np.ndarray | None, lims: list[tuple[float, float]],
               density: GMMDensity | None, path: Path) -> list[float]:
    """The code plane (codes by digit, one colour without labels; the mixture's contours and ellipses when given)
    with its axes at a fixed place; returns that place as fractions of the image [left, top, width, height]."""
    fig = plt.figure(figsize=(7.4, 6.0), dpi=100)
    ax = fig.add_axes((0.1, 0.09, 0.75, 0.84))
    scatter_digits(ax, codes, labels, size=float(np.clip(8000 / len(codes), 0.5, 8)), alpha=0.5)
    if density is not None:
        draw_gmm(ax, density, lims, code_levels(density, codes), ellipses=False)
    ax.set_xlim(lims[0])
    ax.set_ylim(lims[1])
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_title(f"{len(codes):,} training codes, {coloured_by(labels)}" + (
        "; contours: the mixture's log-density" if density is not None else ""), fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=fig.dpi, format="png")   # no tight bounding box: the axes stay where they were put
    plt.close(fig)
    pos = ax.get_position()
    return [pos.x0, 1 - pos.y1, pos.width, pos.height]


def write_latent_map(model: VAE, codes: np.ndarray, labels: np.ndarray | None, density: GMMDensity | None,
                     fig_dir: Path, n: int = GRID, seed: int = 0) -> Path:
    """RUN/fig/latent_map_{plane,sprite}.png and latent_map.json for a model with 2-D codes [N, 2] (labels None or
    all NO_LABEL: the codes in one colour)."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    pick = np.random.default_rng(seed).permutation(len(codes))[:MAP_POINTS]
    codes = np.asarray(codes, np.float64)[pick]
    labels = None if labels is None else np.asarray(labels)[pick]
    lims = [tuple(map(float, lim)) for lim in axis_limits(codes)]
    box = plot_plane(codes, labels, lims, density, fig_dir / PLANE)
    with atomic_path(fig_dir / SPRITE) as tmp:
        Image.fromarray(decode_sprite(model, lims, n), mode="L").save(tmp, format="PNG", optimize=True)
    meta = {"n": n, "x": lims[0], "y": lims[1], "box": box, "image_shape": list(model.image_shape),
            "contours": density is not None}
    atomic_write_text(fig_dir / META, json.dumps(meta, indent=2) + "\n")
    return fig_dir / META


def latent_map_html(fig_dir: Path, meta: dict, label: str, caption: str) -> str:
    """The map in `fig_dir` as one figure block for `page.render_page` (pass CSS and JS to it). `meta`: its
    latent_map.json as report/inputs.py's `read_latent_map` read and checked it (the one reader of that file)."""
    h, w = meta["image_shape"]
    join = lambda v: ",".join(f"{float(a):.6g}" for a in v)   # noqa: E731
    return (f'<figure class="latent-map wide" data-n="{meta["n"]}" data-x="{join(meta["x"])}" '
            f'data-y="{join(meta["y"])}" data-box="{join(meta["box"])}"><div class="lm-body">'
            f'<div class="lm-plane"><img class="lm-bg" alt="code plane" src="{data_url(fig_dir / PLANE)}">'
            '<div class="lm-mark" hidden></div></div><div class="lm-side">'
            f'<div class="lm-view" style="aspect-ratio:{w}/{h}" hidden></div><p class="lm-z" hidden></p>'
            f'<img class="lm-sprite" alt="decodes on the {meta["n"]} x {meta["n"]} grid" '
            f'src="{data_url(fig_dir / SPRITE)}"></div></div>'
            f"<figcaption><b>{html.escape(label)}.</b> {html.escape(caption)}</figcaption></figure>")
