"""The study's report from saved artifacts only (never trains): report.md and a self-contained report.html."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import yaml

from .plots import plot_curves
from .run import atomic_write_text

# (figure number in the seed, run, file under RUN/fig, caption)
FIGURES = [
    ("1", "gaussian_vae", "samples_bernoulli.png", "Gaussian VAE: z ~ N(0, I), images drawn as x ~ Bernoulli(omega)."),
    ("2", "gaussian_vae", "samples_threshold.png", "Gaussian VAE: the same decoder, images thresholded omega > 0.5."),
    ("4", "bernoulli_vae", "samples_bernoulli.png", "Bernoulli VAE (sfe-avg): z ~ Bern(1/2)^n, x ~ Bern(omega)."),
    ("5", "bernoulli_vae", "samples_threshold.png", "Bernoulli VAE (seed's sfe-avg): thresholded omega > 0.5."),
    ("4b", "bernoulli_vae_disarm", "samples_bernoulli.png", "Bernoulli VAE trained with DisARM: x ~ Bern(omega)."),
    ("5b", "bernoulli_vae_disarm", "samples_threshold.png", "Bernoulli VAE trained with DisARM: omega > 0.5."),
    ("6", "ae_gmm", "latent_codes.png", "The autoencoder's 2-D codes of every training image, coloured by digit."),
    ("7-8", "ae_gmm", "latent_codes_vs_gmm.png",
     "Codes of the training set (left) and as many samples of the 20-component GMM (right), same axes."),
    ("9", "ae_gmm", "samples_gmm_probs.png", "Decoded GMM samples: omega shown as grey levels."),
    ("9b", "ae_gmm", "samples_gmm_threshold.png", "Decoded GMM samples, thresholded omega > 0.5."),
    ("10", ".", "kl_curves.png", "KL[q(z|x) || p(z)] per epoch (validation set), both VAEs on shared axes."),
    ("11", ".", "rec_curves.png", "Reconstruction term E_q[log p(x|z)] (= -BCE) per epoch, both VAEs."),
]
RECON = "recon_probs.png"
NOTE_LIKELIHOOD = ("IW log-lik. = log (1/K) sum_k p(x, z_k)/q(z_k|x): a stochastic lower bound on log p(x) that "
                   "tightens with K (for the AE: under its fitted GMM prior, with a fitted proposal). The AE has no "
                   "ELBO; its rec. is log p(x|z(x)) at its deterministic code.")
NOTE_QUALITY = ("Scores of samples against the binarized test set, on the penultimate features of vaelab's shipped "
                "MNIST classifier (a Frechet distance on those features, not Inception FID); precision/recall as "
                "Kynkaanniemi et al. 2019 (k=3).")

COLUMNS = [("elbo", "test ELBO"), ("kl", "KL"), ("rec", "rec."), ("iw_loglik", "IW log-lik.")]
QUALITY = [("fid_classifier_features", "FID on MNIST-CNN features"), ("precision", "precision"),
           ("recall", "recall"), ("digit_entropy_fraction", "digit entropy / log 10"),
           ("mean_confidence", "classifier confidence")]


def histories(out: Path, names: list[str]) -> dict[str, list[dict]]:
    rows = {}
    for name in names:
        path = out / name / "metrics.jsonl"
        if path.is_file():
            rows[name] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def fmt(metrics: dict[str, Any], key: str) -> str:
    value = metrics.get(key)
    if value is None:
        return "–"
    err = metrics.get(f"{key}_stderr")
    return f"{value:.2f} ± {err:.2f}" if err is not None else f"{value:.3f}"


def stage_eval(out: Path, name: str) -> dict[str, Any] | None:
    """A stage's eval.json, or None before it was evaluated."""
    path = out / name / "eval.json"
    return json.loads(path.read_text()) if path.is_file() else None


def metrics_table(out: Path, stages) -> list[list[str]]:
    """One row per model: estimator, epochs trained, ELBO terms and IW log-likelihood."""
    rows = [["model", "estimator", "epochs", *[c for _, c in COLUMNS]]]
    for stage in stages:
        m = stage_eval(out, stage.name)
        if m is not None:
            cfg = yaml.safe_load((out / stage.name / "config.yaml").read_text())
            epochs = len(histories(out, [stage.name]).get(stage.name, []))
            rows.append([stage.title, cfg["estimator"]["name"], str(epochs), *[fmt(m, k) for k, _ in COLUMNS]])
    return rows


def quality_table(out: Path, stages) -> list[list[str]]:
    """One row per model and sampling mode with sample-quality scores; just the header when none were scored."""
    rows = [["model", "samples", *[c for _, c in QUALITY]]]
    for stage in stages:
        m = stage_eval(out, stage.name) or {}
        for key in sorted(k for k in m if k.startswith("quality_")):
            q = m[key]
            prior = {"normal": "the model's p(z)", "gmm": "the fitted GMM"}.get(q["prior"], q["prior"])
            rows.append([stage.title, f"{q['mode']}, z ~ {prior}", *[fmt(q, k) for k, _ in QUALITY]])
    return rows


def write_curves(out: Path, stages) -> None:
    vaes = [s.name for s in stages if not s.name.startswith("ae")]
    h = histories(out, vaes)
    plot_curves(h, {"valid_kl": "valid", "train_kl": "train"}, "KL (nats)", out / "kl_curves.png",
                "Figure 10: KL divergence per epoch")
    plot_curves(h, {"valid_rec": "valid", "train_rec": "train"}, "E_q[log p(x|z)] (nats)", out / "rec_curves.png",
                "Figure 11: reconstruction term per epoch")


def write_report(settings, stages, timings: dict[str, float]) -> tuple[Path, Path]:
    """report.md (figures linked) and report.html (figures embedded) in settings.out."""
    from .provenance import versions

    out = settings.out
    write_curves(out, stages)
    table, quality = metrics_table(out, stages), quality_table(out, stages)
    mode = ("QUICK mode: short training and small K; honest numbers for these settings, not the study's"
            if settings.quick else "full mode: the presets' epochs and K")
    figures = [(n, Path(run) / "fig" / f if run != "." else Path(f), c) for n, run, f, c in FIGURES]
    figures += [(f"recon {s.name}", Path(s.name) / "fig" / RECON, f"{s.title}: test digits beside their "
                 "reconstructions (omega of the posterior mean code)") for s in stages]
    figures = [(n, p, c) for n, p, c in figures if (out / p).is_file()]
    configs = {s.name: (out / s.name / "config.yaml").read_text() for s in stages if (out / s.name).is_dir()}
    facts = versions() | {"wall time": f"{sum(timings.values()):.0f} s"} | {
        f"  {k}": f"{v:.0f} s" for k, v in timings.items()}
    md = render_md(mode, table, quality, figures, configs, facts)
    page = render_html(out, mode, table, quality, figures, configs, facts)
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", page)
    return out / "report.html", out / "report.md"


def md_table(table: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])] + [
        "| " + " | ".join(r) + " |" for r in table[1:]]


def render_md(mode, table, quality, figures, configs, facts) -> str:
    lines = ["# vaelab: the study reproduced", "", f"*{mode}.*", "", "## Test log-likelihoods (nats, mean ± s.e.)", ""]
    lines += md_table(table) + ["", NOTE_LIKELIHOOD, ""]
    if len(quality) > 1:
        lines += ["## Sample quality", ""] + md_table(quality) + ["", NOTE_QUALITY, ""]
    lines += ["## Figures", ""]
    for n, p, c in figures:
        lines += [f"**Figure {n}.** {c}", "", f"![Figure {n}]({p.as_posix()})", ""]
    lines += ["## Provenance", ""] + [f"- {k}: {v}" for k, v in facts.items()] + ["", "## Configs", ""]
    for name, text in configs.items():
        lines += [f"### {name}", "", "```yaml", text.rstrip(), "```", ""]
    return "\n".join(lines)


def html_table(table: list[list[str]]) -> str:
    cell = [("th" if i == 0 else "td") for i in range(len(table))]
    return "<table>" + "".join("<tr>" + "".join(f"<{cell[i]}>{html.escape(c)}</{cell[i]}>" for c in r) + "</tr>"
                               for i, r in enumerate(table)) + "</table>"


def render_html(out: Path, mode, table, quality, figures, configs, facts) -> str:
    esc = html.escape
    quality_html = (f"<h2>Sample quality</h2>{html_table(quality)}<p>{esc(NOTE_QUALITY)}</p>"
                    if len(quality) > 1 else "")
    figs = "".join(
        f'<figure><img alt="Figure {esc(n)}" src="data:image/png;base64,'
        f'{base64.b64encode((out / p).read_bytes()).decode()}"><figcaption><b>Figure {esc(n)}.</b> {esc(c)}'
        f"</figcaption></figure>" for n, p, c in figures)
    cfgs = "".join(f"<h3>{esc(k)}</h3><pre>{esc(v)}</pre>" for k, v in configs.items())
    fact_rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in facts.items())
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
             "figure{display:inline-block;vertical-align:top;max-width:520px;margin:1em}"
             "img{max-width:100%}pre{background:#f5f5f5;padding:.5em;font-size:12px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>vaelab report</title><style>{style}</style>"
            f"</head><body><h1>vaelab: the study reproduced</h1><p><i>{esc(mode)}.</i></p>"
            f"<h2>Test log-likelihoods (nats, mean ± s.e.)</h2>{html_table(table)}<p>{esc(NOTE_LIKELIHOOD)}</p>"
            f"{quality_html}<h2>Figures</h2>{figs}<h2>Provenance</h2><table>{fact_rows}</table>"
            f"<h2>Configs</h2>{cfgs}</body></html>")
