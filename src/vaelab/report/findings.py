"""The report's findings paragraph, written from the study's own numbers: which model has the best test bound and
by how much, where the AE + GMM stands, how the Bernoulli VAE trained with DisARM compares with the study's sfe-avg
(its bound, and the two estimators' gradient variance at the sfe-avg model), and the lowest sample Frechet
distance. Every sentence states the numbers it rests on, formatted as the tables show them; a sentence whose
numbers are missing is left out, so nothing is claimed that the run did not measure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vaelab.report.inputs import read_gradvar
from vaelab.report.tables import SHORT, autoencoders, fmt, significant, stage_eval

BOUND = "iw_loglik"


def study_numbers(out: Path, stages) -> tuple[dict[str, dict], set[str], dict[str, dict]]:
    """({model's short name: eval.json}, the autoencoders' short names, {short name: gradvar.json}) of the runs
    in `out` that have them."""
    short = {s.name: SHORT.get(s.name, s.name) for s in stages}
    evals = {short[s.name]: m for s in stages if (m := stage_eval(out, s.name)) is not None}
    ae = {short[n] for n in autoencoders(out, list(short))}
    gradvar = {short[s.name]: g for s in stages
               if (g := read_gradvar(out / s.name / "gradvar" / "gradvar.json")) is not None}
    return evals, ae, gradvar


def bound(m: dict[str, Any]) -> str:
    """A model's test bound as the table shows it, in nats."""
    return f"{fmt(m, BOUND)} nats"


def within(a: dict[str, Any], b: dict[str, Any]) -> str:
    """"; less than their standard errors" when two bounds differ by less than the larger s.e., else ""."""
    err = max(a.get(f"{BOUND}_stderr") or 0.0, b.get(f"{BOUND}_stderr") or 0.0)
    return "; the gap is smaller than their standard errors" if abs(a[BOUND] - b[BOUND]) < err else ""


def ranked(evals: dict[str, dict]) -> list[tuple[str, dict]]:
    """The models with a test bound, best (highest) first."""
    return sorted(((t, m) for t, m in evals.items() if m.get(BOUND) is not None), key=lambda tm: -tm[1][BOUND])


def best_sentence(evals: dict[str, dict]) -> str | None:
    """The best test bound and its margin over the runner-up (None with fewer than two bounds)."""
    order = ranked(evals)
    if len(order) < 2:
        return None
    (best, m), (second, m2) = order[:2]
    counts = f"K = {m['iw_samples']:,}, {m['n_examples']:,} test images" if m.get("n_examples") else ""
    return (f"{best} has the best test bound, an IW log-likelihood of {bound(m)}"
            f"{f' ({counts})' if counts else ''}, {m[BOUND] - m2[BOUND]:.2f} nats above the next best, "
            f"{second} ({bound(m2)}){within(m, m2)}.")


def autoencoder_sentence(evals: dict[str, dict], ae: set[str]) -> str | None:
    """Where the autoencoder with its fitted mixture stands among the bounds."""
    order = ranked(evals)
    place = next((i for i, (t, _) in enumerate(order) if t in ae), None)
    if place is None or len(order) < 2:
        return None
    title, m = order[place]
    gmm = f" under its fitted {m['gmm_components']}-component GMM" if m.get("gmm_components") else ""
    if place == 0:
        return (f"The {title}'s bound{gmm}, {bound(m)}, ranks first of {len(order)}, "
                f"{m[BOUND] - order[1][1][BOUND]:.2f} nats above {order[1][0]}.")
    return (f"The {title}'s bound{gmm}, {bound(m)}, ranks {place + 1} of {len(order)}, "
            f"{order[0][1][BOUND] - m[BOUND]:.2f} nats below {order[0][0]}.")


def estimator_run(evals: dict[str, dict], estimator: str) -> tuple[str, dict] | None:
    """The first Bernoulli-latent model trained with `estimator`, from its eval.json."""
    return next(((t, m) for t, m in evals.items() if m.get("latent") == "bernoulli"
                 and m.get("estimator") == estimator), None)


def estimator_sentence(evals: dict[str, dict]) -> str | None:
    """The Bernoulli VAE's test bound with DisARM against the study's sfe-avg."""
    sfe, disarm = estimator_run(evals, "sfe-avg"), estimator_run(evals, "disarm")
    if sfe is None or disarm is None or sfe[1].get(BOUND) is None or disarm[1].get(BOUND) is None:
        return None
    gap = disarm[1][BOUND] - sfe[1][BOUND]
    return (f"Trained with DisARM instead of the study's sfe-avg, the Bernoulli VAE's test bound is "
            f"{abs(gap):.2f} nats {'higher' if gap >= 0 else 'lower'} ({bound(disarm[1])} against {bound(sfe[1])})"
            f"{within(disarm[1], sfe[1])}.")


def variance_sentence(evals: dict[str, dict], gradvar: dict[str, dict]) -> str | None:
    """How much less (or more) one DisARM encoder gradient varies than one sfe-avg gradient at the sfe-avg model."""
    sfe = estimator_run(evals, "sfe-avg")
    result = gradvar.get(sfe[0]) if sfe else None
    rows = {r["estimator"]: r["variance"] for r in (result or {}).get("rows", [])}
    if not rows.get("sfe-avg") or not rows.get("disarm"):
        return None
    ratio = rows["sfe-avg"] / rows["disarm"]
    how = (f"{significant(ratio)} times less than" if ratio >= 1 else f"{significant(1 / ratio)} times more than")
    return (f"At the Bernoulli VAE trained with sfe-avg, one DisARM encoder gradient varies {how} one sfe-avg "
            f"gradient (trace of the covariance {significant(rows['disarm'])} against {significant(rows['sfe-avg'])}, "
            f"{result['draws']:,} draws each).")


def quality_sentence(evals: dict[str, dict]) -> str | None:
    """The lowest Frechet distance of samples on classifier features (None when no samples were scored)."""
    rows = [(t, q) for t, m in evals.items() for k, q in sorted(m.items())
            if k.startswith("quality_") and isinstance(q, dict) and q.get("fid_classifier_features") is not None]
    if not rows:
        return None
    title, q = min(rows, key=lambda tq: tq[1]["fid_classifier_features"])
    others = f" (of {len(rows)} scored sample sets)" if len(rows) > 1 else ""
    return (f"The lowest Frechet distance of samples on classifier features is {title}'s "
            f"({q['mode']} samples, z from {q['prior']}): {fmt(q, 'fid_classifier_features')}{others}.")


def findings(evals: dict[str, dict], ae: set[str], gradvar: dict[str, dict]) -> list[str]:
    """The findings' sentences in order, each left out when its numbers are missing."""
    sentences = [best_sentence(evals), autoencoder_sentence(evals, ae), estimator_sentence(evals),
                 variance_sentence(evals, gradvar), quality_sentence(evals)]
    return [s for s in sentences if s]


def findings_text(out: Path, stages) -> str:
    """The findings paragraph of the study in `out` ("" when no model has been evaluated)."""
    return " ".join(findings(*study_numbers(out, stages)))
