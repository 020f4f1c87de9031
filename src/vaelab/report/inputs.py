"""What the report shows of a trained model beyond its evaluation, computed once after `vaelab reproduce` has
evaluated the run and kept in the run directory (RUN/report_inputs.json records the settings it was made with, so a
rerun with the same settings does nothing):

- codes of more than two dimensions in 2-D: RUN/fig/codes_2d.npz, the posterior means of the test images on
  their first two principal components, and t-SNE (scikit-learn) of a subsample;
- the interactive latent map of a model with a 2-D continuous code (viz/latent_map.py), with the fitted mixture's
  contours when the run has one (RUN/density.npz);
- for a factorised Bernoulli latent, the gradient variance of several estimators at the trained parameters:
  RUN/gradvar/gradvar.json and .png, `vaelab gradvar RUN` with GRADVAR's draws and batch (few in quick mode).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaelab.core.atomic import atomic_write
from vaelab.runs.run_files import LoadedRun, open_run, write_json
from vaelab.viz.latent_map import GRID, write_latent_map

VERSION = 1
INPUTS_FILE = "report_inputs.json"
CODES_FILE = "codes_2d.npz"
TSNE_POINTS = {True: 1000, False: 2500}                       # quick / full
GRADVAR = {True: {"draws": 100, "batch": 64}, False: {"draws": 1000, "batch": None}}   # batch None: the config's
GRADVAR_ESTIMATORS = ("sfe", "sfe-avg", "rloo", "disarm")


def prepare_report_inputs(run_dir: Path, quick: bool, device: str = "auto", log: Callable[[str], None] = print,
                          progress: bool = False) -> dict[str, Any]:
    """Compute what is missing for this run (see the module docstring); returns RUN/report_inputs.json's content.
    `log` says what is being made; `progress`: gradvar's bars or stage lines (core/progress.py)."""
    signature = {"version": VERSION, "quick": quick}
    path = run_dir / INPUTS_FILE
    if path.is_file():
        done = json.loads(path.read_text())
        if done.get("signature") == signature:
            return done
    run = open_run(run_dir, device)
    latent, made = run.model.latent, {}
    if latent.dim == 2 and not latent.discrete:
        log(f"{run_dir.name}: decoding a {GRID} x {GRID} grid of codes for the latent map")
        made["latent_map"] = str(map_inputs(run, run_dir).relative_to(run_dir))
    elif latent.dim > 2:
        log(f"{run_dir.name}: PCA and t-SNE of the {latent.dim}-D test codes")
        made["codes_2d"] = str(embed_codes(run, run_dir / "fig" / CODES_FILE, TSNE_POINTS[quick]).relative_to(run_dir))
    if run.cfg.model.latent == "bernoulli":
        opts = GRADVAR[quick]
        log(f"{run_dir.name}: gradient variance of {', '.join(GRADVAR_ESTIMATORS)} ({opts['draws']} draws)")
        made["gradvar"] = str(measure_gradvar(run_dir, device, **opts, progress=progress).relative_to(run_dir))
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
    from vaelab.evaluation.gradvar import gradvar, plot_gradvar

    result, _ = gradvar(str(run_dir), list(GRADVAR_ESTIMATORS), draws, batch, device=device, progress=progress)
    out = run_dir / "gradvar"
    out.mkdir(exist_ok=True)
    write_json(out / "gradvar.json", result)
    plot_gradvar(result, out / "gradvar.png")
    return out / "gradvar.json"
