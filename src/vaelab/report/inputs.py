"""What the report shows of a trained model beyond its evaluation, computed once after `vaelab reproduce` has
evaluated the run and kept in the run directory (RUN/report_inputs.json records the settings it was made with, so a
rerun with the same settings does nothing):

- codes of more than two dimensions in 2-D: RUN/fig/codes_2d.npz, the posterior means of the test images on
  their first two principal components, and t-SNE (scikit-learn) of a subsample;
- the interactive latent map of a model with a 2-D continuous code (viz/latent_map.py), with the fitted mixture's
  contours when the run has one (RUN/density.npz);
- for a factorised Bernoulli latent, the gradient variance of several estimators at the trained parameters:
  RUN/gradvar/gradvar.json and .png, `vaelab gradvar RUN` with GRADVAR's draws and batch (few in quick mode).

Each of these files is read back through one validating reader here (`read_json_object`, `read_gradvar`,
`read_codes`, `read_latent_map`): a record or an input that is damaged (truncated, not UTF-8 JSON or an npz of the
expected arrays, values of the wrong type) counts as not made, and the next `vaelab reproduce` makes it again.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaelab.core.atomic import atomic_write, write_json
from vaelab.runs.loaded_run import LoadedRun, open_run
from vaelab.viz.latent_map import GRID, META, PLANE, SPRITE, write_latent_map

VERSION = 1
INPUTS_FILE = "report_inputs.json"
CODES_FILE = "codes_2d.npz"
TSNE_POINTS = {True: 1000, False: 2500}                       # quick / full
GRADVAR = {True: {"draws": 100, "batch": 64}, False: {"draws": 1000, "batch": None}}   # batch None: the config's
GRADVAR_ESTIMATORS = ("sfe", "sfe-avg", "rloo", "disarm")


def prepare_report_inputs(run_dir: Path, quick: bool, device: str = "auto", log: Callable[[str], None] = print,
                          progress: bool = False) -> dict[str, Any]:
    """Compute what is missing for this run (see the module docstring); returns RUN/report_inputs.json's content.
    An input that the record lists but that is damaged is made again, the others kept. `log` says what is being
    made; `progress`: gradvar's bars or stage lines (core/progress.py)."""
    signature = {"version": VERSION, "quick": quick}
    path = run_dir / INPUTS_FILE
    done = read_json_object(path)
    done = done if done is not None and done.get("signature") == signature else {}
    kept = {key: done[key] for key in READERS if key in done and intact(run_dir, key, done[key])}
    if done and len(kept) == len([key for key in READERS if key in done]):
        return done
    run = open_run(run_dir, device)
    latent, made = run.model.latent, {}
    if latent.dim == 2 and not latent.discrete:
        if "latent_map" not in kept:
            log(f"{run_dir.name}: decoding a {GRID} x {GRID} grid of codes for the latent map")
        made["latent_map"] = kept.get("latent_map") or str(map_inputs(run, run_dir).relative_to(run_dir))
    elif latent.dim > 2:
        if "codes_2d" not in kept:
            log(f"{run_dir.name}: PCA and t-SNE of the {latent.dim}-D test codes")
        made["codes_2d"] = kept.get("codes_2d") or str(
            embed_codes(run, run_dir / "fig" / CODES_FILE, TSNE_POINTS[quick]).relative_to(run_dir))
    if run.cfg.model.latent == "bernoulli":
        opts = GRADVAR[quick]
        if "gradvar" not in kept:
            log(f"{run_dir.name}: gradient variance of {', '.join(GRADVAR_ESTIMATORS)} ({opts['draws']} draws)")
        made["gradvar"] = kept.get("gradvar") or str(
            measure_gradvar(run_dir, device, **opts, progress=progress).relative_to(run_dir))
    values = {"signature": signature, **made}
    write_json(path, values)
    return values


def map_inputs(run: LoadedRun, run_dir: Path, n: int = GRID) -> Path:
    """The latent map of a 2-D model: codes of the training images, and the fitted mixture when there is one."""
    from vaelab.models.density import DENSITY_FILE, GMMDensity, encode
    from vaelab.viz.latent_figures import write_latent_figures

    codes = encode(run.model, run.data.fixed_train_images(run.cfg.data.eval_seed))
    labels = run.data.y_train.cpu().numpy()
    density = GMMDensity.load(run_dir / DENSITY_FILE) if (run_dir / DENSITY_FILE).is_file() else None
    if density is not None and not (run_dir / "fig" / "latent_gmm_codes.png").is_file():   # a run analysed before
        write_latent_figures(run_dir, codes, labels, density)                                # Figures 7-8 existed
    return write_latent_map(run.model, codes, labels, density, run_dir / "fig", n)


@torch.no_grad()
def posterior_means(run: LoadedRun) -> np.ndarray:
    """Posterior means of the test images [N, D] (for Bernoulli codes: the bit probabilities)."""
    x = run.data.x_test
    return torch.cat([run.model.posterior(xb).mean for xb in x.split(1000)]).double().cpu().numpy()


def embed_codes(run: LoadedRun, path: Path, tsne_points: int, seed: int = 0) -> Path:
    """RUN/fig/codes_2d.npz: pca [N, 2] with pca_labels and pca_var (explained variance ratios), tsne [M, 2] of a
    random subsample with tsne_labels, and dim (the code's dimension)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    codes, labels = posterior_means(run), run.data.y_test.cpu().numpy()
    pca = PCA(n_components=2).fit(codes)
    pick = np.random.default_rng(seed).permutation(len(codes))[:tsne_points]
    perplexity = min(30.0, (len(pick) - 1) / 3)
    tsne = TSNE(2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    arrays = {"pca": pca.transform(codes), "pca_labels": labels, "pca_var": pca.explained_variance_ratio_,
              "tsne": tsne.fit_transform(codes[pick]), "tsne_labels": labels[pick], "dim": np.array(codes.shape[1])}
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def measure_gradvar(run_dir: Path, device: str, draws: int, batch: int | None, progress: bool = False) -> Path:
    """`vaelab gradvar RUN --estimators GRADVAR_ESTIMATORS --draws draws --batch batch` into RUN/gradvar/."""
    from vaelab.evaluation.gradvar_run import gradvar
    from vaelab.viz.gradvar_plot import plot_gradvar

    result, _ = gradvar(str(run_dir), list(GRADVAR_ESTIMATORS), draws, batch, device=device, progress=progress)
    out = run_dir / "gradvar"
    out.mkdir(exist_ok=True)
    write_json(out / "gradvar.json", result)
    plot_gradvar(result, out / "gradvar.png")
    return out / "gradvar.json"


# ----- reading the inputs back: one validating reader per file; None = damaged or absent, made again -------------


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None when it is absent or damaged (unreadable, not UTF-8 JSON, not an object)."""
    try:
        values = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return values if isinstance(values, dict) else None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_gradvar(path: Path) -> dict[str, Any] | None:
    """RUN/gradvar/gradvar.json as the report reads it (draws, batch, target_norm, rows of estimator and variance),
    or None when absent or damaged."""
    result = read_json_object(path)
    if result is None or not all(_number(result.get(k)) for k in ("draws", "batch", "target_norm")):
        return None
    rows = result.get("rows")
    if not isinstance(rows, list) or not rows or not all(
            isinstance(r, dict) and isinstance(r.get("estimator"), str) and _number(r.get("variance")) for r in rows):
        return None
    return result


CODES_ARRAYS = {"pca": 2, "pca_labels": 1, "pca_var": 1, "tsne": 2, "tsne_labels": 1, "dim": 0}   # name: ndim


def read_codes(path: Path) -> dict[str, np.ndarray] | None:
    """RUN/fig/codes_2d.npz (`embed_codes`) as {name: array}, or None when absent or damaged (not an npz of these
    numeric arrays with matching lengths; pickled objects are never loaded)."""
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
            arrays = {k: f[k] for k in CODES_ARRAYS}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None
    if any(a.ndim != CODES_ARRAYS[k] or a.dtype.kind not in "iuf" for k, a in arrays.items()):
        return None
    if arrays["pca"].shape[1:] != (2,) or arrays["tsne"].shape[1:] != (2,) or len(arrays["pca"]) == 0 \
            or len(arrays["pca_labels"]) != len(arrays["pca"]) or len(arrays["tsne_labels"]) != len(arrays["tsne"]):
        return None
    return arrays if all(np.isfinite(arrays[k]).all() for k in ("pca", "pca_var", "tsne")) else None


def read_latent_map(fig_dir: Path) -> dict[str, Any] | None:
    """RUN/fig/latent_map.json (`write_latent_map`) when it and both of its images are there and whole, else None."""
    meta = read_json_object(fig_dir / META)
    if meta is None or not isinstance(meta.get("n"), int) or isinstance(meta["n"], bool) or meta["n"] < 2:
        return None
    shape = meta.get("image_shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) and v > 0 for v in shape)):
        return None
    if not all(isinstance(meta.get(k), list) and len(meta[k]) == n and all(_number(v) for v in meta[k])
               for k, n in (("x", 2), ("y", 2), ("box", 4))):
        return None
    return meta if all(_whole_png(fig_dir / name) for name in (PLANE, SPRITE)) else None


def _whole_png(path: Path) -> bool:
    """Whether `path` is a PNG that decodes to its end."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False
    return img.format == "PNG"


READERS: dict[str, Callable[[Path], Any]] = {"gradvar": read_gradvar, "codes_2d": read_codes,
                                             "latent_map": lambda p: read_latent_map(p.parent)}


def intact(run_dir: Path, key: str, rel: Any) -> bool:
    """Whether the input `key` that RUN/report_inputs.json records at `rel` (a path inside the run) is there and
    reads back whole."""
    if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
        return False
    return READERS[key](run_dir / rel) is not None
