"""The report's parts without a study: the page renderer, best-value marks, the GMM contour figure, the curves and
the latent map's sprite (on an untrained 2-D autoencoder)."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
import torch
from helpers import assert_sprite_is_the_decoder
from PIL import Image

from vaelab.models.density import GMMDensity
from vaelab.report.inputs import read_latent_map
from vaelab.viz import html_page as page
from vaelab.viz import plots
from vaelab.viz.latent_figures import ELLIPSE_MASS, axis_limits, code_levels, draw_gmm, log_density_grid
from vaelab.viz.latent_map import JS, latent_map_html, write_latent_map
from vaelab.viz.plots import plt


def two_blobs(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal([0, 0], [1, 0.5], (400, 2)), rng.normal([4, 2], [0.5, 1], (400, 2))])


def png_bytes(width: int = 40, height: int = 30) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_best_cells_marks_each_ranked_column():
    values = [[], [None, -90.0, 3.0, 0.5], [None, -85.0, 1.0, 0.5], [None, None, 2.0, 0.4]]
    best = page.best_cells(values, {1: "max", 2: "min", 3: "max"})
    assert best == {(2, 1), (2, 2), (1, 3), (2, 3)}               # ties are all marked; None is skipped
    assert page.best_cells([[], [None, 1.0]], {1: "max"}) == set()   # one number: nothing to compare
    html = page.table([["model", "a"], ["x", "1"], ["y", "2"]], {(2, 1)})
    assert html.count('class="best"') == 1 and '<td class="best">2</td>' in html


def test_render_page_is_one_self_contained_file(tmp_path):
    (tmp_path / "f.png").write_bytes(png_bytes())
    html = page.render_page("T <1>", [
        ("Figures", [page.grid(page.figure(tmp_path / "f.png", "a & b", "Figure 1"),
                               page.figure(png_bytes(), "twin", "Figure 2", pixel=True))]),
        ("Folded", [page.details("config", page.pre("a: 1\n<b>")), page.notes(["one line"])]),
    ], intro="intro", scripts=["var x = 1;"], styles=[".x{}"])
    assert html.startswith("<!doctype html>") and "<title>T &lt;1&gt;</title>" in html
    srcs = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"(?:src|href)='([^']+)'", html)
    assert srcs and all(s.startswith("data:") for s in srcs)      # nothing to fetch: no file, no network
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert [base64.b64decode(e) for e in embedded] == [png_bytes(), png_bytes()]
    assert "<details><summary>config</summary><pre>a: 1\n&lt;b&gt;</pre></details>" in html
    assert 'class="grid"' in html and 'class="pixel"' in html and "<script>var x = 1;</script>" in html


def test_gmm_contours_are_level_sets_of_the_fitted_density():
    codes = two_blobs()
    density = GMMDensity(2, "full").fit(codes)
    lims, levels = axis_limits(codes), code_levels(density, codes)
    xs, ys, z = log_density_grid(density.score_samples, lims, 50)
    mesh = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    np.testing.assert_array_equal(z.ravel(), density.score_samples(mesh))
    shares = [(density.score_samples(codes) > level).mean() for level in levels]
    np.testing.assert_allclose(shares, [0.99, 0.95, 0.75, 0.5, 0.25], atol=2 / len(codes))
    fig, ax = plt.subplots()
    contours = draw_gmm(ax, density, lims, levels)
    np.testing.assert_allclose(contours.levels, np.sort(levels))
    for level, path in zip(contours.levels, contours.get_paths(), strict=True):
        vertices = path.vertices[path.codes != path.CLOSEPOLY]
        assert len(vertices) > 20
        np.testing.assert_allclose(density.score_samples(vertices), level, atol=0.02)   # on the drawn grid's level
    plt.close(fig)


def test_component_ellipses_hold_their_share_of_each_gaussian():
    density = GMMDensity(2, "full").fit(two_blobs(1))
    fig, ax = plt.subplots()
    draw_gmm(ax, density, axis_limits(two_blobs(1)), code_levels(density, two_blobs(1)))
    radius = np.sqrt(-2 * np.log(1 - ELLIPSE_MASS))
    assert len(ax.patches) == density.n_components
    for patch, mean, cov in zip(ax.patches, density.means_, density.full_covariances(), strict=True):
        t = np.linspace(0, 2 * np.pi, 24)
        boundary = patch.get_patch_transform().transform(np.c_[np.cos(t), np.sin(t)])   # unit circle -> data
        d = boundary - mean
        np.testing.assert_allclose(np.sqrt(np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d)), radius, rtol=1e-6)
    plt.close(fig)


def test_curves_plot_every_epoch_and_the_final_points(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.append(fig) or path)
    rows = [{"epoch": e, "valid_elbo": -100.0 + e, "train_elbo": -110.0 + 2 * e} for e in (1, 2, 3)]
    plots.plot_curves({"vae": rows}, {"valid_elbo": "valid", "train_elbo": "train"}, "ELBO", tmp_path / "c.png",
                      "t", finals={"vae": (3, -95.5), "ae": (3, -99.0)}, final_label="IW bound")
    lines = drawn[0].axes[0].lines
    data = {(line.get_linestyle(), line.get_marker()): (list(line.get_xdata()), list(line.get_ydata()))
            for line in lines}
    assert data[("-", "o")] == ([1, 2, 3], [-99.0, -98.0, -97.0])
    assert data[("--", "o")] == ([1, 2, 3], [-108.0, -106.0, -104.0])
    stars = sorted(line.get_ydata()[0] for line in lines if line.get_marker() == "*")
    assert stars == [-99.0, -95.5]
    legend = [t.get_text() for t in drawn[0].axes[0].get_legend().get_texts()]
    assert legend == ["vae", "ae", "valid", "train", "IW bound"]
    plt.close(drawn[0])


def tiny_autoencoder():
    from vaelab.config.schema import load_config
    from vaelab.runs.device_data import prepare_data
    from vaelab.runs.loaded_run import build

    cfg = load_config("configs/ae_gmm.yaml", ["data.source=digits", "model.hidden=[16]"])
    data = prepare_data(cfg.data, torch.device("cpu"))
    model, _ = build(cfg, data, torch.device("cpu"))
    return model.eval(), data


def test_latent_map_sprite_tiles_are_the_decodes_of_their_codes(tmp_path):
    model, data = tiny_autoencoder()
    with torch.no_grad():
        codes = model.posterior(data.x_train).mean.double().numpy()
    density = GMMDensity(3, "full").fit(codes)
    meta = json.loads(write_latent_map(model, codes, data.y_train.numpy(), density, tmp_path, n=12).read_text())
    html = latent_map_html(tmp_path, read_latent_map(tmp_path), "Figure C", "caption")
    assert_sprite_is_the_decoder(model, html)
    left, top, width, height = meta["box"]
    assert 0 < left < left + width < 1 and 0 < top < top + height < 1 and meta["contours"]
    assert "addEventListener('pointermove'" in JS and read_latent_map(tmp_path / "none") is None


@pytest.mark.parametrize("n", [2, 5])
def test_grid_codes_run_top_to_bottom_left_to_right(n):
    from vaelab.viz.latent_map import grid_codes

    z = grid_codes([(0.0, 1.0), (10.0, 20.0)], n).reshape(n, n, 2)
    np.testing.assert_allclose(z[0, :, 0], np.linspace(0, 1, n))
    np.testing.assert_allclose(z[:, 0, 1], np.linspace(20, 10, n))


def test_frechet_distances_show_three_significant_digits_and_rank_as_shown():
    from vaelab.report.tables import fmt, shown, significant

    assert [significant(v) for v in (0.012345, 1.2345, 12.345, 123.45, 1234.5, 9.996, 0.0)] == [
        "0.0123", "1.23", "12.3", "123", "1230", "10.0", "0.00"]
    q = {"fid_classifier_features": 12.3456, "precision": 0.81234}
    assert fmt(q, "fid_classifier_features") == "12.3" and shown(q, "fid_classifier_features") == 12.3
    assert fmt(q, "precision") == "0.812" and fmt({"elbo": -90.123, "elbo_stderr": 0.4}, "elbo") == "-90.12 ± 0.40"


def test_toc_anchors_are_unique_github_slugs_and_every_link_resolves():
    headings = ["Test log-likelihoods (nats, mean ± s.e.)", "Findings", "Findings", "AE + GMM"]
    assert page.anchors(headings) == ["test-log-likelihoods-nats-mean--se", "findings", "findings-1", "ae--gmm"]
    html = page.render_page("T", [(h, [page.note("x")]) for h in headings], contents=True)
    links = re.findall(r'<nav class="toc"[^>]*>.*?</nav>', html)[0]
    targets = re.findall(r'href="#([^"]+)"', links)
    ids = re.findall(r'<h2 id="([^"]+)">', html)
    assert targets == ids == page.anchors(headings)


def test_image_grids_are_whole_factor_upscales_with_the_title_above(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((9, 64))
    plots.save_grid(images, (8, 8), tmp_path / "g.png", title="nine samples")
    plots.save_grid(images, (8, 8), tmp_path / "plain.png")
    grid = plots.tile(images, (8, 8))                                   # [28, 28]: 3 x 3 tiles with lines
    s = int(np.ceil(plots.GRID_TARGET_PX / max(grid.shape)))
    plain = np.asarray(Image.open(tmp_path / "plain.png").convert("L"), dtype=np.float64)
    assert plain.shape == (grid.shape[0] * s, grid.shape[1] * s)
    blocks = plain.reshape(grid.shape[0], s, grid.shape[1], s)
    assert np.ptp(blocks, axis=(1, 3)).max() == 0                       # each pixel one flat s x s block
    np.testing.assert_allclose(blocks[:, 0, :, 0], grid * 255, atol=2.0)   # gray colormap: 256 levels
    titled = np.asarray(Image.open(tmp_path / "g.png").convert("L"), dtype=np.float64)
    band = titled.shape[0] - plain.shape[0]
    assert band > 20 and titled.shape[1] == plain.shape[1]
    np.testing.assert_allclose(titled[band:], plain, atol=1.0)          # the grid itself is unchanged
    assert titled[:band].min() < 100 and np.median(titled[:band]) > 250   # dark text on white above it
    fig, _ = plt.subplots(figsize=(2, 1), dpi=50)
    plots.save_figure(fig, tmp_path / "f.png", tight=False)
    with Image.open(tmp_path / "f.png") as image:
        assert image.size == (200, 100)                                 # 2x the nominal dpi


def eval_numbers(title: str, iw: float | None, **extra) -> dict:
    return {"iw_loglik": iw, "iw_loglik_stderr": 0.25, "iw_samples": 50, "n_examples": 250, **extra}


def test_findings_state_the_numbers_and_leave_out_what_is_missing():
    from vaelab.report.findings import findings

    evals = {"G": eval_numbers("G", -30.0), "B": eval_numbers("B", -35.5, latent="bernoulli", estimator="sfe-avg"),
             "D": eval_numbers("D", -33.25, latent="bernoulli", estimator="disarm"),
             "A": eval_numbers("A", -31.0, gmm_components=20)}
    evals["A"]["quality_bernoulli_gmm"] = {"fid_classifier_features": 4.5678, "mode": "bernoulli", "prior": "gmm"}
    evals["G"]["quality_bernoulli_normal"] = {"fid_classifier_features": 12.0, "mode": "bernoulli", "prior": "normal"}
    gradvar = {"B": {"draws": 100, "rows": [{"estimator": "sfe-avg", "variance": 500.0},
                                            {"estimator": "disarm", "variance": 4.0}]}}
    said = findings(evals, {"A"}, gradvar)
    assert said == [
        "G has the best test bound, an IW log-likelihood of -30.00 ± 0.25 nats (K = 50, 250 test images), 1.00 nats "
        "above the next best, A (-31.00 ± 0.25 nats).",
        "The A's bound under its fitted 20-component GMM, -31.00 ± 0.25 nats, ranks 2 of 4, 1.00 nats below G.",
        "Trained with DisARM instead of the study's sfe-avg, the Bernoulli VAE's test bound is 2.25 nats higher "
        "(-33.25 ± 0.25 nats against -35.50 ± 0.25 nats).",
        "At the Bernoulli VAE trained with sfe-avg, one DisARM encoder gradient varies 125 times less than one "
        "sfe-avg gradient (trace of the covariance 4.00 against 500, 100 draws each).",
        "The lowest Frechet distance of samples on classifier features is A's (bernoulli samples, z from gmm): "
        "4.57 (of 2 scored sample sets)."]
    evals["G"]["iw_loglik"] = -30.875                    # 0.125 nats above A: within the s.e. of 0.25
    assert findings(evals, {"A"}, gradvar)[0].endswith("(-31.00 ± 0.25 nats); the gap is smaller than their "
                                                         "standard errors.")
    evals["D"]["iw_loglik"] = None                       # DisARM not evaluated: no comparison, the rest stands
    fewer = findings(evals, {"A"}, {})
    assert len(fewer) == 3 and not any("DisARM" in s for s in fewer)
    assert findings({"G": eval_numbers("G", -30.0)}, set(), {}) == []   # one bound: nothing to rank


@pytest.mark.slow
def test_study_report_has_findings_from_its_numbers_a_toc_and_its_counts(tmp_path_factory):
    from helpers import build_study

    from vaelab.experiments.reproduce import STUDY
    from vaelab.report.tables import SHORT

    study = build_study(tmp_path_factory)
    html, md = (study / "report.html").read_text(), (study / "report.md").read_text()
    evals = {SHORT[s.name]: json.loads((study / s.name / "eval.json").read_text()) for s in STUDY}
    said = re.search(r'<p class="findings">([^<]*)</p>', html)[1].replace("&#x27;", "'")
    assert said in md and html.index('class="findings"') < html.index("<table>")    # at the top, in both pages
    order = sorted(evals, key=lambda t: evals[t]["iw_loglik"], reverse=True)
    (best, second), top = order[:2], evals[order[0]]
    assert (f"{best} has the best test bound, an IW log-likelihood of {top['iw_loglik']:.2f} ± "
            f"{top['iw_loglik_stderr']:.2f} nats (K = 20, 250 test images), "
            f"{top['iw_loglik'] - evals[second]['iw_loglik']:.2f} nats above the next best, {second}") in said
    ae = SHORT["ae_gmm"]
    place = order.index(ae) + 1
    assert f"ranks {'first' if place == 1 else place} of 4" in said and f"The {ae}'s bound under its fitted" in said
    gap = evals[SHORT["bernoulli_vae_disarm"]]["iw_loglik"] - evals[SHORT["bernoulli_vae"]]["iw_loglik"]
    assert f"test bound is {abs(gap):.2f} nats {'higher' if gap >= 0 else 'lower'}" in said
    rows = {r["estimator"]: r["variance"]
            for r in json.loads((study / "bernoulli_vae" / "gradvar" / "gradvar.json").read_text())["rows"]}
    ratio = rows["sfe-avg"] / rows["disarm"]
    stated, how = re.search(r"gradient varies ([0-9.]+) times (less|more) than", said).groups()
    assert how == ("less" if ratio >= 1 else "more")
    assert float(stated) == pytest.approx(max(ratio, 1 / ratio), rel=0.005)     # 3 significant digits
    assert "Scored on: 250 test images, K = 20 importance samples per image for every model." in html + md
    nav = re.search(r'<nav class="toc"[^>]*>(.*?)</nav>', html)[1]
    targets, ids = re.findall(r'href="#([^"]+)"', nav), re.findall(r'<h2 id="([^"]+)">', html)
    assert targets == ids and len(ids) == len(set(ids)) >= 8 and ids[0] == "findings"
    md_targets = re.findall(r"^\d+\. \[[^]]+\]\(#([^)]+)\)$", md, re.M)
    md_headings = re.findall(r"^## (.+)$", md, re.M)
    assert md_targets == page.anchors(md_headings) and md_targets[:len(ids) - 1] == ids[:-1]
