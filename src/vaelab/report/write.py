"""The study's report from saved artefacts only (never trains): report.md and a self-contained report.html.

The page (laid out by page.render_page) puts each figure beside its twin, marks the best value of each ranked
column, folds configs and provenance, and says in one line why anything expected is missing. What it shows beyond
each run's eval.json and figures comes from RUN/metrics.jsonl (curves), and from what report/inputs.py left in
the run (gradient variance, codes in 2-D, the interactive latent map). Numbered figures are the study's; lettered
ones are vaelab's additions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vaelab.core.atomic import atomic_write_text
from vaelab.report.inputs import read_gradvar
from vaelab.report.tables import RERUN, SHORT, autoencoders, histories, stage_eval


def write_study_figures(out: Path, stages) -> dict[str, str]:
    """The study-level figures (curves, gradient variance, codes in 2-D) in `out`; returns {file: why} for those
    that could not be drawn."""
    from vaelab.viz.latent_figures import plot_embeddings
    from vaelab.viz.plots import plot_curves, plot_gradvar_runs, run_colors

    short = {s.name: SHORT.get(s.name, s.name) for s in stages}
    colors = run_colors(list(short.values()))
    hist = {short[n]: rows for n, rows in histories(out, [s.name for s in stages]).items()}
    evals = {short[s.name]: stage_eval(out, s.name) or {} for s in stages}
    ae = {short[n] for n in autoencoders(out, list(short))}
    vaes = {k: v for k, v in hist.items() if k not in ae}
    finals = {k: (len(hist.get(k, [])), m["iw_loglik"]) for k, m in evals.items() if m.get("iw_loglik") is not None}
    plot_curves(vaes, {"valid_elbo": "valid", "train_elbo": "train"}, "ELBO (nats)", out / "elbo_curves.png",
                "ELBO per epoch; stars: IW bound on the test set, end of training", colors, finals,
                "IW bound on log p(x), test set (computed once, at the end)")
    plot_curves(vaes, {"valid_kl": "valid", "train_kl": "train"}, "KL (nats)", out / "kl_curves.png",
                "Figure 10: KL divergence per epoch", colors)
    plot_curves(hist, {"valid_rec": "valid", "train_rec": "train"}, "E_q[log p(x|z)] (nats)", out / "rec_curves.png",
                "Figure 11: reconstruction term per epoch", colors)
    missing = {}
    gradvar = {short[s.name]: g for s in stages
               if (g := read_gradvar(out / s.name / "gradvar" / "gradvar.json")) is not None}
    if gradvar:
        plot_gradvar_runs(gradvar, out / "gradvar.png", colors)
    else:
        missing["gradvar.png"] = f"no Bernoulli VAE has a gradient-variance measurement: {RERUN}"
    codes = {short[s.name]: dict(np.load(p)) for s in stages if (p := out / s.name / "fig" / "codes_2d.npz").is_file()}
    if codes:
        plot_embeddings(codes, out / "codes_2d.png")
    else:
        missing["codes_2d.png"] = f"no model with codes of more than two dimensions has them saved: {RERUN}"
    return missing


def write_report(settings, stages, timings: dict[str, float]) -> tuple[Path, Path]:
    """report.md (figures linked) and report.html (figures embedded, one file) in settings.out."""
    from vaelab.core.provenance import versions
    from vaelab.report.layout import render_html, render_md, sections

    out = settings.out
    missing = write_study_figures(out, stages)
    mode = ("QUICK mode: short training and small K; honest numbers for these settings, not the study's"
            if settings.quick else "full mode: the presets' epochs and K")
    configs = {s.name: (out / s.name / "config.yaml").read_text() for s in stages if (out / s.name).is_dir()}
    facts = versions() | {"wall time": f"{sum(timings.values()):.0f} s"} | {
        f"  {k}": f"{v:.0f} s" for k, v in timings.items()}
    parts = sections(out, stages, missing)
    atomic_write_text(out / "report.md", render_md(out, mode, parts, configs, facts))
    atomic_write_text(out / "report.html", render_html(out, mode, parts, configs, facts))
    return out / "report.html", out / "report.md"
