"""What the study's report shows, in which order and beside what (`sections`), and its two renderings:
report.html through page.render_page (figures embedded) and report.md (figures linked).

A section is (heading, blocks); a block is ("findings", text) (the paragraph at the top, report/findings.py),
("table", rows, best cells), ("note", text), ("figs", [Fig, ...]) (one
grid row: a figure beside its twin; missing ones replaced by a one-line note saying why) or ("map", stage name)
(the interactive latent map, the static Figure 6 when there is none).
"""

from __future__ import annotations

from pathlib import Path

from vaelab.report.findings import findings_text
from vaelab.report.inputs import read_gradvar, read_latent_map
from vaelab.report.tables import (
    NOTE_BEST,
    NOTE_LIKELIHOOD,
    NOTE_QUALITY,
    RERUN,
    SHORT,
    Fig,
    autoencoders,
    likelihood_counts,
    md_table,
    metrics_table,
    quality_counts,
    quality_table,
    run_config,
)
from vaelab.viz import html_page as page
from vaelab.viz.latent_map import CSS, JS, latent_map_html

TITLE = "vaelab: the study reproduced"
LEGEND = "Numbered figures are the study's; lettered ones are vaelab's additions."
MAP_CAPTION = ("The autoencoder's 2-D codes of training images coloured by digit (one colour for data without "
               "labels), under the fitted GMM's "
               "log-density contours (in nats; its components are drawn in Figures 7 and 8). Move the pointer over "
               "the plane: the panel on the right shows the decoder's omega at the "
               "nearest point of a {n} x {n} grid (circle) and its code z; below it, the decodes of the whole grid "
               "(without JavaScript, the plane and this grid are the static figure).")


def sample_figs(out: Path, name: str, model: str, twin: str) -> list[Fig]:
    """A model's prior samples drawn as x ~ Bernoulli(omega) beside the same decoder thresholded."""
    return [Fig(twin[0], Path(name, "fig", "samples_bernoulli.png"),
                f"{model}: z from the prior, images drawn as x ~ Bernoulli(omega).", pixel=True),
            Fig(twin[1], Path(name, "fig", "samples_threshold.png"),
                f"{model}: the same decoder, images thresholded omega > 0.5 (no sampling).", pixel=True)]


def quality_note(out: Path, stages) -> str:
    """Why no sample-quality table is shown."""
    from vaelab.evaluation.classifier import SHIPPED_DATA, data_identity

    sources = {run_config(p).data.source for s in stages
               if (p := out / s.name / "config.yaml").is_file()}
    if sources and not any(data_identity(str(source)) == SHIPPED_DATA for source in sources):
        return ("Sample quality not scored: vaelab's classifier reads 28x28 MNIST digits, and these models were "
                f"trained on {', '.join(sorted(map(str, sources)))}; score them with a classifier trained on that "
                "data: `vaelab classifier train --data SOURCE --out C.safetensors`, then `vaelab quality RUN "
                "--classifier C.safetensors`, and rerun `vaelab reproduce` to show the scores here.")
    return f"Sample quality not scored yet: {RERUN}."


def gmm_figs(out: Path, ae: str) -> list[list[Fig]]:
    """Figures 7-8 (codes and mixture samples under the mixture's contours) and 9 (decoded mixture samples)."""
    fig = Path(ae, "fig")
    why = f"drawn only for 2-D codes; {RERUN}"
    return [[Fig("Figure 7", fig / "latent_gmm_codes.png", "The autoencoder's codes of the training set (the "
                 "seed's 'distribution of the latent space') under the fitted GMM's log-density contours (nats; "
                 "the regions inside hold 99, 95, 75, 50 and 25% of the codes) and its components' 95% ellipses.", why),
             Fig("Figure 8", fig / "latent_gmm_samples.png", "As many samples of the GMM (the study's 'distribution "
                 "of the GMM'), same axes, contours and ellipses: where the two clouds differ, the mixture misses.",
                 why)],
            [Fig("Figure 9", fig / "samples_gmm_probs.png", "Decoded GMM samples: omega shown as grey levels.",
                 pixel=True),
             Fig("Figure 9b", fig / "samples_gmm_threshold.png", "The same GMM samples, thresholded omega > 0.5.",
                 pixel=True)]]


def gradvar_caption(out: Path, names: list[str]) -> str:
    """Figure B's caption, with the batch and number of draws of the measurement."""
    found = [g for n in names if (g := read_gradvar(out / n / "gradvar" / "gradvar.json")) is not None]
    how = (f"{found[0]['draws']} draws of each estimator on one fixed batch of {found[0]['batch']} training "
           "images" if found else "one fixed batch")
    return ("Variance of the encoder gradient at the trained Bernoulli VAEs: the study's score function without "
            f"(sfe) and with (sfe-avg) its running-average control variate, RLOO and DisARM; {how} (`vaelab "
            "gradvar RUN`); the estimator a model was trained with keeps its trained state, the others are warmed "
            "up on the batch.")


def sections(out: Path, stages, missing: dict[str, str]) -> list[tuple[str, list[tuple]]]:
    """The report's sections, in order (see the module docstring for the blocks)."""
    names = [s.name for s in stages]
    short = {s.name: SHORT.get(s.name, s.name) for s in stages}
    table, best = metrics_table(out, stages)
    quality, quality_best = quality_table(out, stages)
    ae_runs = autoencoders(out, names)
    vaes = ", ".join(short[n] for n in names if n not in ae_runs)
    training = [
        ("figs", [Fig("Figure A", Path("elbo_curves.png"), "ELBO per epoch (solid: validation, dashed: training) "
                      "of every VAE; the star is each model's importance-weighted bound on the test set, computed "
                      "once after training (the AE's only point: it has no ELBO)."),
                  Fig("Figure B", Path("gradvar.png"), gradvar_caption(out, names), missing.get("gradvar.png", ""))]),
        ("figs", [Fig("Figure 10", Path("kl_curves.png"), f"KL[q(z|x) || p(z)] per epoch: the three VAEs ({vaes}); "
                      "the AE has no KL."),
                  Fig("Figure 11", Path("rec_curves.png"), "Reconstruction term E_q[log p(x|z)] (= -BCE) per epoch, "
                      "all four models (the AE's at its deterministic code).")])]
    ae = next(iter(ae_runs), "ae_gmm")
    recon = [Fig(f"Figure E{i}", Path(n, "fig", "recon_probs.png"), f"{short[n]}: test digits (odd columns) beside "
                 "their reconstructions (omega of the posterior mean code).")
             for i, n in enumerate(names, 1)]
    found = findings_text(out, stages)
    parts = [
        ("Findings", [("findings", found)] if found else [("note", f"No model has been evaluated yet: {RERUN}.")]),
        ("Test log-likelihoods (nats, mean ± s.e.)", [("table", table, best),
                                                      ("note", likelihood_counts(out, stages)),
                                                      ("note", NOTE_LIKELIHOOD), ("note", NOTE_BEST)]),
        ("Sample quality", [("table", quality, quality_best), ("note", quality_counts(out, stages)),
                            ("note", NOTE_QUALITY)] if len(quality) > 1
         else [("note", quality_note(out, stages))]),
        ("Training and gradient estimators", training),
        ("Samples from the prior (seed sections 2 and 3)",
         [("figs", sample_figs(out, "gaussian_vae", short["gaussian_vae"], ("Figure 1", "Figure 2"))),
          ("figs", sample_figs(out, "bernoulli_vae", short["bernoulli_vae"], ("Figure 4", "Figure 5"))),
          ("figs", sample_figs(out, "bernoulli_vae_disarm", short["bernoulli_vae_disarm"],
                               ("Figure 4b", "Figure 5b")))]),
        ("Autoencoder + Gaussian mixture (seed section 4)",
         [("map", ae), *[("figs", row) for row in gmm_figs(out, ae)]]),
        ("The latent spaces of the VAEs", [("figs", [Fig(
            "Figure D", Path("codes_2d.png"), "Posterior means of the test images in 2-D, coloured by digit (one "
            "colour for data without labels): first "
            "two principal components (top) and t-SNE of a random subsample (bottom, scikit-learn).",
            missing.get("codes_2d.png", ""), wide=True)])]),
        ("Reconstructions", [("figs", recon[i:i + 2]) for i in range(0, len(recon), 2)]),
    ]
    return [(heading, [b for b in blocks if b != ("note", "")]) for heading, blocks in parts]   # no empty notes


def map_fig(out: Path, ae: str) -> tuple[Fig | None, str]:
    """The static Figure 6 and why there is no interactive map (None, "" when there is one)."""
    if read_latent_map(out / ae / "fig") is not None:     # the map and both its images, whole
        return None, ""
    static = Fig("Figure 6", Path(ae, "fig", "latent_codes.png"), "The autoencoder's 2-D codes of every training "
                 "image, coloured by digit (one colour for data without labels).")
    return static, f"Interactive latent map (Figure C): not made for this study; {RERUN}."


def block_html(out: Path, block: tuple) -> str:
    """One block as HTML (see the module docstring)."""
    kind = block[0]
    if kind == "findings":
        return page.paragraph(block[1])
    if kind == "table":
        return page.table(block[1], block[2])
    if kind == "note":
        return page.note(block[1])
    if kind == "map":
        fig, why = map_fig(out, block[1])
        if fig is None:
            meta = read_latent_map(out / block[1] / "fig")    # map_fig read it whole
            return latent_map_html(out / block[1] / "fig", meta, "Figures 6 and C: the latent map",
                                   MAP_CAPTION.format(n=meta["n"]))
        block = ("figs", [fig])
        return block_html(out, block) + page.note(why)
    present = [f for f in block[1] if (out / f.path).is_file()]
    absent = [f"{f.label}: {f.why or f'not drawn: {RERUN}'}" for f in block[1] if not (out / f.path).is_file()]
    cells = [page.figure(out / f.path, f.caption, f.label, wide=f.wide, pixel=f.pixel) for f in present]
    return (page.grid(*cells) if cells else "") + page.notes(absent)


def render_html(out: Path, mode: str, parts, configs: dict[str, str], facts: dict[str, str]) -> str:
    """report.html: one self-contained page."""
    body = [(heading, [block_html(out, b) for b in blocks]) for heading, blocks in parts]
    fold = [page.details("Provenance: versions, commit, machine, wall times",
                         page.table([["", ""], *[[k, str(v)] for k, v in facts.items()]]))]
    fold += [page.details(f"Config: {name}", page.pre(text)) for name, text in configs.items()]
    body.append(("Provenance and configs", fold))
    return page.render_page(TITLE, body, intro=f"{mode}. {LEGEND}", scripts=[JS], styles=[CSS], contents=True)


def block_md(out: Path, block: tuple) -> list[str]:
    """One block as Markdown lines (figures linked, relative to the report)."""
    kind = block[0]
    if kind == "findings":
        return [block[1], ""]
    if kind == "table":
        return [*md_table(block[1], block[2]), ""]
    if kind == "note":
        return [block[1], ""]
    if kind == "map":
        fig, why = map_fig(out, block[1])
        if fig is not None:
            return block_md(out, ("figs", [fig])) + [why, ""]
        rel = Path(block[1], "fig")
        return ["**Figures 6 and C.** The autoencoder's codes under the GMM's contours, and the decodes of a grid "
                "over the same plane (interactive in report.html).", "",
                f"![Figure 6]({(rel / 'latent_map_plane.png').as_posix()}) "
                f"![Figure C]({(rel / 'latent_map_sprite.png').as_posix()})", ""]
    lines = []
    for f in block[1]:
        if (out / f.path).is_file():
            lines += [f"**{f.label}.** {f.caption}", "", f"![{f.label}]({f.path.as_posix()})", ""]
        else:
            lines += [f"*{f.label}: {f.why or f'not drawn: {RERUN}'}*", ""]
    return lines


def render_md(out: Path, mode: str, parts, configs: dict[str, str], facts: dict[str, str]) -> str:
    """report.md: the same sections, figures linked."""
    headings = [heading for heading, _ in parts] + ["Provenance", "Configs"]
    lines = [f"# {TITLE}", "", f"*{mode}. {LEGEND}*", "", "**Contents**", ""]
    lines += [f"{i}. [{h}](#{a})" for i, (h, a) in enumerate(zip(headings, page.anchors(headings), strict=True), 1)]
    lines.append("")
    for heading, blocks in parts:
        lines += [f"## {heading}", ""]
        for block in blocks:
            lines += block_md(out, block)
    lines += ["## Provenance", ""] + [f"- {k}: {v}" for k, v in facts.items()] + ["", "## Configs", ""]
    for name, text in configs.items():
        lines += [f"### {name}", "", "```yaml", text.rstrip(), "```", ""]
    return "\n".join(lines)
