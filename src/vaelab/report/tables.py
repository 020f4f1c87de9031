"""The parts the study's report is built from: the models' short names, the notes beside the tables, the `Fig`
record of a figure, and the two tables of eval.json values (test log-likelihoods, sample quality) with their best
cells. report/layout.py arranges them into sections; report/write.py draws the study figures and writes the pages.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaelab.config.schema import Config, load_config
from vaelab.core.errors import VaelabError
from vaelab.runs.run_dir import RunDir
from vaelab.viz import html_page as page

SHORT = {"gaussian_vae": "Gaussian VAE", "bernoulli_vae": "Bernoulli VAE (sfe-avg)",
         "bernoulli_vae_disarm": "Bernoulli VAE (DisARM)", "ae_gmm": "AE + GMM"}
NOTE_LIKELIHOOD = ("IW log-lik. = log (1/K) sum_k p(x, z_k)/q(z_k|x): a stochastic lower bound on log p(x) that "
                   "tightens with K (for the AE: under its fitted GMM prior, with a fitted proposal). The AE has no "
                   "ELBO; its rec. is log p(x|z(x)) at its deterministic code.")
NOTE_BEST = ("Bold: the best mean of each bound (higher is better); KL and rec. are the ELBO's two terms, which "
             "trade off, so they are not ranked.")
NOTE_QUALITY = ("Scores of samples against the binarized test set, on the penultimate features of vaelab's shipped "
                "MNIST classifier, or of the one `vaelab quality --classifier` was given for other data (a Frechet "
                "distance on those features, not Inception FID); precision/recall as "
                "Kynkaanniemi et al. 2019 (k=3). Bold: best per column (lowest distance, highest otherwise).")
RERUN = "rerun `vaelab reproduce` with the same --out to draw it"

# (key in eval.json, column header, "max"/"min"/None: how the column is ranked)
COLUMNS = [("elbo", "test ELBO", "max"), ("kl", "KL", None), ("rec", "rec.", None), ("iw_loglik", "IW log-lik.", "max")]
QUALITY = [("fid_classifier_features", "FID on MNIST-CNN features", "min"), ("precision", "precision", "max"),
           ("recall", "recall", "max"), ("digit_entropy_fraction", "digit entropy / log 10", "max"),
           ("mean_confidence", "classifier confidence", "max")]
SIGNIFICANT = {"fid_classifier_features"}    # shown to 3 significant digits (a distance's scale varies by data)


@dataclass
class Fig:
    """A figure of the report: `path` relative to the study folder; `why` says in one line why it may be absent."""

    label: str
    path: Path
    caption: str
    why: str = f"not drawn: {RERUN}"
    pixel: bool = False
    wide: bool = False


def histories(out: Path, names: list[str]) -> dict[str, list[dict]]:
    """metrics.jsonl rows of each run that has them (`RunDir.metrics`: damage is one line naming the file)."""
    runs = {name: RunDir(out / name) for name in names}
    return {name: run.metrics(f"delete {run.path} and {RERUN}") for name, run in runs.items()
            if run.metrics_path.is_file()}


def autoencoders(out: Path, names: list[str]) -> list[str]:
    """The runs among `names` whose model is an autoencoder: latents.is_autoencoder of the model.latent in each
    run's config.yaml (a run without one, not trained yet, is not counted)."""
    from vaelab.models.latents import is_autoencoder

    return [n for n in names if (run := RunDir(out / n)).config_path.is_file()
            and is_autoencoder(run.config().model.latent)]


def run_config(path: Path) -> Config:
    """A run's config.yaml, read through vaelab's one YAML reader and validated: a damaged one is one line naming
    it, never a traceback (`RunDir.config` reads a run's own)."""
    return load_config(path)


def significant(value: float, digits: int = 3) -> str:
    """`value` to `digits` significant digits, without an exponent (0.0123, 1.23, 12.3, 123, 1230)."""
    if value == 0 or not math.isfinite(value):
        return f"{value:.{digits - 1}f}"
    places = digits - 1 - math.floor(math.log10(abs(value)))
    value = round(value, places)
    places = digits - 1 - math.floor(math.log10(abs(value))) if value else places    # 9.996 -> 10.0, not 10.00
    return f"{value:.{max(0, places)}f}"


def fmt(metrics: dict[str, Any], key: str) -> str:
    """A value with its standard error when there is one ("–" when there is no value), as the tables show it:
    bounds in nats to 2 decimals, Frechet distances (SIGNIFICANT) to 3 significant digits, fractions to 3
    decimals."""
    value = metrics.get(key)
    if value is None:
        return "–"
    err = metrics.get(f"{key}_stderr")
    if err is not None:
        return f"{value:.2f} ± {err:.2f}"
    return significant(value) if key in SIGNIFICANT else f"{value:.3f}"


def shown(metrics: dict[str, Any], key: str) -> float | None:
    """The value as `fmt` rounds it (so ties on the page are ties when ranking)."""
    text = fmt(metrics, key)
    return None if text == "–" else float(text.split(" ± ")[0])


def stage_eval(out: Path, name: str) -> dict[str, Any] | None:
    """A stage's eval.json, or None before it was evaluated (or when it is unreadable: the stage is evaluated
    again by the next `vaelab reproduce`); numbers that are not numbers are one line naming the field
    (`RunDir.eval`, strict), and so is a sample-quality entry the tables cannot show (`check_quality`)."""
    run = RunDir(out / name)
    values = run.eval(strict=True)
    for key in (k for k in values if k.startswith("quality_")):
        check_quality(values[key], f"{run.eval_path} {key}", run.path)
    return values or None


QUALITY_TEXT = ("mode", "prior")
QUALITY_COUNTS = ("n_samples", "n_reference", "k")


def check_quality(q: Any, where: str, run: Path) -> None:
    """A sample-quality entry of eval.json as the tables read it: mode and prior as text, the counts as integers
    and the scores (QUALITY) as numbers or null; anything else is one VaelabError naming the field."""
    fix = f"delete it and rerun `vaelab reproduce` with the same --out (or `vaelab quality {run}`)"
    if not isinstance(q, dict):
        raise VaelabError(f"{where} is {json.dumps(q)[:40]}, not a mapping of scores: {fix}")
    bad = [k for k in QUALITY_TEXT if not isinstance(q.get(k), str)]
    bad += [k for k in QUALITY_COUNTS if k in q and (isinstance(q[k], bool) or not isinstance(q[k], int))]
    bad += [k for k, _, _ in QUALITY if isinstance(q.get(k), bool) or not isinstance(q.get(k), int | float | None)]
    bad += [f"{k}_stderr" for k, _, _ in QUALITY if isinstance(q.get(f"{k}_stderr"), bool)
            or not isinstance(q.get(f"{k}_stderr"), int | float | None)]
    if bad:
        raise VaelabError(f"{where} has {bad[0]} = {json.dumps(q.get(bad[0]))[:40]}, not what vaelab writes: {fix}")


def read_timings(path: Path) -> dict[str, float]:
    """The study's timings.json, {stage name: seconds} ({} when there is none yet); damage (unreadable, not UTF-8
    JSON, not an object of numbers) is one VaelabError naming the file and the fix."""
    try:
        values = json.loads(path.read_bytes()) if path.is_file() else {}
    except (OSError, ValueError):
        values = None
    if not isinstance(values, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
            for v in values.values()):
        raise VaelabError(f"{path} is damaged: delete it (it only holds wall times) and rerun")
    return {k: float(v) for k, v in values.items()}


def metrics_table(out: Path, stages) -> tuple[list[list[str]], set[tuple[int, int]]]:
    """One row per model (estimator, epochs trained, ELBO terms, IW log-likelihood) and the best cells."""
    rows, values = [["model", "estimator", "epochs", *[c for _, c, _ in COLUMNS]]], [[]]
    for stage in stages:
        m = stage_eval(out, stage.name)
        if m is not None:
            cfg = RunDir(out / stage.name).config()
            epochs = len(histories(out, [stage.name]).get(stage.name, []))
            rows.append([stage.title, cfg.estimator.name, str(epochs), *[fmt(m, k) for k, _, _ in COLUMNS]])
            values.append([None] * 3 + [shown(m, k) for k, _, _ in COLUMNS])
    return rows, page.best_cells(values, {3 + i: d for i, (_, _, d) in enumerate(COLUMNS) if d})


def quality_table(out: Path, stages) -> tuple[list[list[str]], set[tuple[int, int]]]:
    """One row per model and sampling mode with sample-quality scores (just the header when none were scored)."""
    rows, values = [["model", "samples", *[c for _, c, _ in QUALITY]]], [[]]
    for stage in stages:
        m = stage_eval(out, stage.name) or {}
        for key in sorted(k for k in m if k.startswith("quality_")):
            q = m[key]
            prior = {"normal": "the model's p(z)", "gmm": "the fitted GMM"}.get(q["prior"], q["prior"])
            rows.append([stage.title, f"{q['mode']}, z ~ {prior}", *[fmt(q, k) for k, _, _ in QUALITY]])
            values.append([None] * 2 + [shown(q, k) for k, _, _ in QUALITY])
    return rows, page.best_cells(values, {2 + i: d for i, (_, _, d) in enumerate(QUALITY)})


def per_model(counts: dict[str, str], every: str = "every model") -> str:
    """"X for every model" when all agree, else each model's own (counts maps a model's title to its phrase)."""
    if len(set(counts.values())) == 1:
        return f"{next(iter(counts.values()))} for {every}"
    return "; ".join(f"{title}: {what}" for title, what in counts.items())


def likelihood_counts(out: Path, stages) -> str:
    """What the likelihood table's numbers were computed on, from each eval.json: the number of test images and K,
    the importance samples per image of the IW bound ("" when no model was evaluated)."""
    counts = {}
    for stage in stages:
        m = stage_eval(out, stage.name)
        if m is not None and m.get("n_examples") is not None:
            k = m.get("iw_samples") or 0
            counts[stage.title] = (f"{m['n_examples']:,} test images, K = {k:,} importance samples per image"
                                   if k > 0 and m.get("iw_loglik") is not None else
                                   f"{m['n_examples']:,} test images, no IW bound (K = 0)")
    return f"Scored on: {per_model(counts)}." if counts else ""


def quality_counts(out: Path, stages) -> str:
    """What the sample-quality rows were computed on: samples scored, reference test images and the k of
    precision/recall, from each eval.json ("" when none was scored)."""
    counts = {}
    for stage in stages:
        m = stage_eval(out, stage.name) or {}
        for key in sorted(k for k in m if k.startswith("quality_")):
            q = m[key]
            if q.get("n_samples") is not None:
                counts[f"{stage.title} ({q['mode']}, {q['prior']})"] = (
                    f"{q['n_samples']:,} samples scored against {q['n_reference']:,} test images, "
                    f"precision/recall with k = {q['k']}")
    return f"Scored on: {per_model(counts, 'every row')}." if counts else ""


def md_table(table: list[list[str]], best: set[tuple[int, int]] = frozenset()) -> list[str]:
    """A Markdown table (first row the header), cells in `best` in bold."""
    cell = lambda r, c, t: f"**{t}**" if (r, c) in best else t   # noqa: E731
    return ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])] + [
        "| " + " | ".join(cell(r, c, t) for c, t in enumerate(row)) + " |" for r, row in enumerate(table) if r]


def html_table(table: list[list[str]], best: set[tuple[int, int]] = frozenset()) -> str:
    """An HTML table (first row the header); see page.table."""
    return page.table(table, best)
