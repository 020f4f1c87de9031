"""Formatting for `vaelab compare`: compare.json's result as tables of strings (`tables`: the main, sample-quality
and paired-difference tables), the sentences that say what their ± mean (`notes_text`), and compare.md
(`render_md`).
"""

from __future__ import annotations

import math
from typing import Any

from vaelab.core.stats import SE_LABEL
from vaelab.experiments.compare_fixed import fixed_sentence
from vaelab.experiments.compare_groups import metric_names
from vaelab.experiments.compare_runs import METRICS, Run


def _decimals(se: float | None) -> int:
    if not se or not math.isfinite(se):
        return 2
    return max(2, min(5, 1 - math.floor(math.log10(se))))


def pm(summary: dict[str, Any], n_rows: int) -> str:
    """'mean ± se' (a one-seed cell: the mean alone; fewer values than the row's seeds: '(n=k)' appended)."""
    if summary["mean"] is None:
        return "–"
    d = _decimals(summary["se"])
    text = f"{summary['mean']:.{d}f}" + (f" ± {summary['se']:.{d}f}" if summary["se"] is not None else "")
    return text + (f" (n={summary['n']})" if summary["n"] != n_rows else "")


def interval(d: dict[str, Any]) -> str:
    """'+0.52 [0.10, 0.94]' (one shared seed: the difference alone)."""
    if d["mean"] is None:
        return "–"
    dec = _decimals(d["se"])
    if d["lo"] is None:
        return f"{d['mean']:+.{dec}f} (1 seed)"
    return f"{d['mean']:+.{dec}f} [{d['lo']:.{dec}f}, {d['hi']:.{dec}f}]"


def tables(result: dict[str, Any], runs: list[Run]) -> dict[str, list[list[str]]]:
    """The main, sample-quality and paired-difference tables as rows of strings (header first)."""
    names = metric_names(runs)
    main = [["setting", "seeds", "epochs", "train ELBO", "test ELBO", "IW log-lik.", "IW MC s.e.", "KL", "rec.",
             "train time (s)"]]
    quality = [["setting", "seeds", *[t for _, t in names[len(METRICS):]]]]
    for s in result["settings"]:
        n, m = len(s["seeds"]), s["metrics"]
        mc = m["iw_loglik"]["mc_se"]
        epochs = "–".join(str(e) for e in (s["epochs"][0], s["epochs"][-1])) if len(s["epochs"]) > 1 else \
            str(s["epochs"][0])
        main.append([s["label"], str(n), epochs, pm(m["train_elbo"], n), pm(m["elbo"], n), pm(m["iw_loglik"], n),
                     "–" if mc is None else f"{mc:.{_decimals(mc)}f}", pm(m["kl"], n), pm(m["rec"], n),
                     pm(m["train_seconds"], n)])
        quality.append([s["label"], str(n), *[pm(m[k], n) for k, _ in names[len(METRICS):]]])
    paired = [["difference (b − a)", "shared seeds", *[f"Δ {t}" for _, t in METRICS]]]
    for p in result["paired"]:
        seeds = max((d["seeds"] for d in p["metrics"].values()), key=len)
        paired.append([f"{p['b']}  −  {p['a']}", ", ".join(map(str, seeds)),
                       *[interval(p["metrics"][k]) for k, _ in METRICS]])
    return {"main": main, "quality": quality if len(quality[0]) > 2 else [], "paired": paired}


def notes_text(result: dict[str, Any]) -> dict[str, str]:
    """The sentences that say what each table's numbers and ± mean."""
    by = ", ".join(result["grouped_by"]) or "nothing (every run differs only in its seed)"
    return {
        "grouping": f"Settings differ in: {by}. {fixed_sentence(result)}",
        "main": ("Train ELBO: the last epoch's mean training ELBO (one sample per image, averaged over the epoch "
                 "while the parameters moved). The other columns are test-set means in nats. Each cell is the mean "
                 f"{SE_LABEL}: the standard error of the mean of the "
                 "N per-seed values of its row (N = the seeds column; '(n=k)' where only k runs have the value; no "
                 "± with one seed). IW MC s.e.: the Monte Carlo standard error of the row's mean IW log-likelihood, "
                 "sqrt(Σ e_i²)/N from the runs' eval.json iw_loglik_mc_stderr (– where a run lacks it). Train time: "
                 "wall-clock seconds of the training epochs (metrics.jsonl), evaluation not included."),
        "paired": ("Mean over the seeds both settings share of (b − a), with its 95% interval from the t "
                   "distribution with n − 1 degrees of freedom (n = shared seeds)."),
    }


def md_table(table: list[list[str]]) -> list[str]:
    """A markdown table ('|' inside a cell escaped)."""
    rows = [[c.replace("|", "\\|") for c in r] for r in table]
    return ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])] + ["| " + " | ".join(r) + " |"
                                                                           for r in rows[1:]]


def title(result: dict[str, Any]) -> str:
    """'7 runs, 2 settings'."""
    n_runs, n_settings = sum(len(s["runs"]) for s in result["settings"]), len(result["settings"])
    return f"{n_runs} run{'s' * (n_runs != 1)}, {n_settings} setting{'s' * (n_settings != 1)}"


def render_md(result: dict[str, Any], tabs: dict[str, list[list[str]]]) -> str:
    """Markdown: the tables with the sentences that label their ±."""
    text = notes_text(result)
    lines = [f"# vaelab compare: {title(result)}", "", text["grouping"], "",
             f"## Test set (nats): mean {SE_LABEL} (N seeds per row)", "", *md_table(tabs["main"]), "",
             text["main"], ""]
    if tabs["quality"]:
        lines += [f"## Sample quality: mean {SE_LABEL}", "", *md_table(tabs["quality"]), ""]
    if len(tabs["paired"]) > 1:
        lines += ["## Paired differences over shared seeds: mean [95% t interval]", "", *md_table(tabs["paired"]),
                  "", text["paired"], ""]
    if result["notes"]:
        lines += ["## Notes", "", *[f"- {n}" for n in result["notes"]], ""]
    return "\n".join(lines)

