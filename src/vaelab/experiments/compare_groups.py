"""Grouping and statistics for `vaelab compare`: runs into settings by `--by` keys, or by every config key that
differs between runs (other than the seed, name, description and device; `grouping_keys`, `group`); within a
setting each run (seed) contributes one number, and ± is the standard error of their mean; settings that share
seeds are also compared seed by seed (paired differences, with a 95% t interval). `summarize` is compare.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml

from vaelab.core.errors import VaelabError
from vaelab.core.stats import SE_LABEL, combined_mc_se, mean_se, paired_difference
from vaelab.experiments.compare_fixed import fixed_facts
from vaelab.experiments.compare_html import CURVES, GRAD_CURVE, epoch_band, step_band
from vaelab.experiments.compare_runs import METRICS, Run, lookup

# keys with no effect on the numbers: logging, and the gradient probe, which restores the RNG it draws from
IGNORED = ("name", "description", "train.seed", "train.device", "train.log_every", "train.grad_stats_every",
           "train.grad_stats_draws", "plugins")
# keys with no effect given another key's value: runs differing only there are one setting
INERT_WHEN = {"train.compile_mode": lambda c: not c.get("train.compile")}


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def show(value: Any) -> str:
    """A config value as a short label: scalars as they are, lists and mappings in YAML flow style."""
    if isinstance(value, dict | list):
        return yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return "–" if value is None else str(value)


def grouping_keys(runs: list[Run], by: list[str]) -> list[str]:
    """`by`, checked; or every flattened config key whose value differs between runs where it has an effect, except
    IGNORED."""
    if by:
        for key in by:
            if all(lookup(r.raw, key) is None for r in runs):
                raise VaelabError(f"--by {key}: no run has this config key: give a dotted key such as "
                                  "estimator.name or train.lr")
        return list(by)
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.config if k not in keys]
    return [k for k in keys if k not in IGNORED and len(_values(runs, k)) > 1]


def _inert(run: Run, key: str) -> bool:
    """Whether `key` has no effect in this run, given its other keys (INERT_WHEN)."""
    return key in INERT_WHEN and INERT_WHEN[key](run.config)


def _values(runs: list[Run], key: str) -> set[str]:
    """The distinct values of `key` over the runs where it has an effect."""
    return {_canon(r.config.get(key)) for r in runs if not _inert(r, key)}


@dataclass
class Setting:
    """Runs that share the grouping keys' values, one per seed."""

    label: str
    values: dict[str, Any]
    runs: list[Run]

    def by_seed(self, metric: str) -> dict[Any, float]:
        return {r.seed: r.values.get(metric) for r in self.runs if r.values.get(metric) is not None}


def group(runs: list[Run], keys: list[str]) -> list[Setting]:
    """Settings in order of first appearance; two runs of one setting with the same seed are refused."""
    settings: dict[str, Setting] = {}
    for run in runs:
        values = {k: None if _inert(run, k) else lookup(run.raw, k) for k in keys}
        label = ", ".join(f"{k}={show(v)}" for k, v in values.items()) or "all runs"
        setting = settings.setdefault(_canon(values), Setting(label, values, []))
        twin = next((r for r in setting.runs if r.seed == run.seed), None)
        if twin is not None:
            raise VaelabError(f"{twin.path} and {run.path} are both seed {run.seed} of setting [{label}]: pass only "
                              "one of them, or --by a config key that tells them apart")
        setting.runs.append(run)
    return list(settings.values())


def metric_names(runs: list[Run]) -> list[tuple[str, str]]:
    """(key, title) of the test-set metrics and any sample-quality scores the runs have."""
    quality = sorted({k for r in runs for k in r.values if k.startswith("quality_")})
    return [*METRICS, *[(k, k.removeprefix("quality_").replace(".", " ")) for k in quality]]


def _curves(setting: Setting) -> dict[str, dict[str, list]]:
    """compare.json's curves of one setting: each train/valid metric per epoch, the gradient probe's per step;
    only those some run has."""
    bands = {f"{split}_{metric}": epoch_band(setting, f"{split}_{metric}")
             for split in ("train", "valid") for metric, _ in CURVES}
    bands[GRAD_CURVE[0]] = step_band(setting, GRAD_CURVE[0])
    return {key: band for key, band in bands.items() if band["mean"]}


def summarize(settings: list[Setting], runs: list[Run], keys: list[str]) -> dict[str, Any]:
    """compare.json: per setting mean/s.e./n of each metric; paired differences of settings sharing seeds."""
    names = [k for k, _ in metric_names(runs)] + ["train_elbo", "train_seconds"]
    out: dict[str, Any] = {"grouped_by": keys, "uncertainty": f"{SE_LABEL} (standard error of the mean of the "
                           "per-seed values; paired: 95% t interval over the shared seeds)", "settings": [],
                           "paired": [], "notes": [n for r in runs for n in r.notes], **fixed_facts(runs)}
    for s in settings:
        metrics = {m: mean_se([r.values.get(m) for r in s.runs]).to_dict() for m in names}
        metrics["iw_loglik"]["mc_se"] = combined_mc_se([r.values.get("iw_loglik_mc_stderr") for r in s.runs
                                                        if r.values.get("iw_loglik") is not None])
        out["settings"].append({
            "label": s.label, "values": s.values, "seeds": [r.seed for r in s.runs],
            "runs": [str(r.path) for r in s.runs], "epochs": sorted({r.provenance["epochs"] for r in s.runs}),
            "metrics": metrics,
            "curves": _curves(s),
            "provenance": sorted({f"{r.provenance['vaelab_version']} {r.provenance['git_commit']}" for r in s.runs
                                  if r.provenance.get("git_commit")})})
    for i, a in enumerate(settings):
        for b in settings[i + 1:]:
            diffs = {m: paired_difference(a.by_seed(m), b.by_seed(m)) for m, _ in METRICS}
            if any(d.n for d in diffs.values()):
                out["paired"].append({"a": a.label, "b": b.label, "difference": "b - a",
                                      "metrics": {m: d.to_dict() for m, d in diffs.items()}})
    return out

