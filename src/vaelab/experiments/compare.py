"""`vaelab compare RUN_OR_SWEEP... [--by KEY] [--out DIR]`: one table of settings, mean ± s.e. across seeds.

Run directories are found recursively under the given paths. A run's numbers come from its eval.json; what it
was (config keys, seed, epochs) from eval.json's provenance fields where present, else from config.yaml and
metrics.jsonl. Runs are grouped into settings by `--by` keys, or by every config key that differs between runs
(other than the seed, name, description and device); a key that a run's config.yaml lacks, because an older
vaelab wrote it, counts as that key's default, so a key added later does not split old runs from new. Within a
setting, each run (seed) contributes one number, and ± is the standard error of their mean; settings that share
seeds are also compared seed by seed (paired differences, with a 95% t interval). Outputs: markdown on stdout, and
with --out compare.md, compare.json (also each setting's per-epoch curves: mean, s.e. and runs per epoch) and a
self-contained compare.html with those curves drawn (mean line and s.e. band across seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vaelab.config.schema import Config
from vaelab.core import yaml_io
from vaelab.core.atomic import atomic_write_text
from vaelab.core.errors import VaelabError
from vaelab.core.stats import SE_LABEL, combined_mc_se, mean_se, paired_difference
from vaelab.experiments.compare_fixed import fixed_facts, fixed_sentence
from vaelab.experiments.compare_html import CURVES, GRAD_CURVE, epoch_band, render_html, step_band
from vaelab.runs.metrics_log import GRAD_STATS, read_jsonl
from vaelab.runs.run_dir import RunDir

METRICS = [("elbo", "test ELBO"), ("iw_loglik", "IW log-lik."), ("kl", "KL"), ("rec", "rec.")]
QUALITY = [("fid_classifier_features", "FID (CNN features)"), ("precision", "precision"), ("recall", "recall"),
           ("digit_entropy_fraction", "digit entropy / log 10"), ("mean_confidence", "confidence")]
# keys with no effect on the numbers: logging, and the gradient probe, which restores the RNG it draws from
IGNORED = ("name", "description", "train.seed", "train.device", "train.log_every", "train.grad_stats_every",
           "train.grad_stats_draws", "plugins")
# keys with no effect given another key's value: runs differing only there are one setting
INERT_WHEN = {"train.compile_mode": lambda c: not c.get("train.compile")}
SECTIONS = ("data", "model", "estimator", "train", "eval")          # flattened to section.key, like --set
PROVENANCE = {"config_name": "name", "latent": "model.latent", "estimator": "estimator.name", "seed": "train.seed",
              "data": "data.source", "binarize": "data.binarize", "eval_seed": "data.eval_seed",
              "nets": "model.nets", "latent_dim": "model.latent_dim"}
SKIP_DIRS = {"tb", "fig", "checkpoint", "checkpoint.old", "checkpoint.tmp", "logs", "configs", "best"}


@dataclass
class Run:
    """One run directory: its flattened config, seed, test-set numbers and per-epoch history."""

    path: Path
    config: dict[str, Any]
    raw: dict[str, Any]
    seed: Any
    values: dict[str, float | None]
    history: list[dict[str, Any]]
    provenance: dict[str, Any]
    grad_stats: list[dict[str, Any]] = field(default_factory=list)   # grad_stats.jsonl rows, if it was measured
    notes: list[str] = field(default_factory=list)


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Every run directory (config.yaml or eval.json beside metrics.jsonl, eval.json or a checkpoint) under
    `paths`, sorted; a run's own subfolders are not searched."""
    found: list[Path] = []
    for root in map(Path, paths):
        if not root.is_dir():
            raise VaelabError(f"{root} is not a directory: give run directories, sweep directories or their parents")
        for here, dirs, files in os.walk(root):
            names = set(files) | set(dirs)
            if ({"config.yaml", "eval.json"} & names) and ({"metrics.jsonl", "eval.json", "checkpoint"} & names):
                found.append(Path(here))
                dirs[:] = []
            else:
                dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
    runs = sorted(set(found))
    if not runs:
        raise VaelabError(f"no run directories under {', '.join(map(str, paths))}: give directories written by "
                          "`vaelab train` or `vaelab sweep`")
    return runs


def flatten(cfg: dict[str, Any]) -> dict[str, Any]:
    """{section.key: value} for the config sections (the keys `--set` takes); other top-level keys as they are."""
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        if key in SECTIONS and isinstance(value, dict):
            flat |= {f"{key}.{k}": v for k, v in value.items()}
        else:
            flat[key] = value
    return flat


def lookup(raw: dict[str, Any], key: str) -> Any:
    """The value at a dotted key of a nested config (any depth), or None."""
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def with_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` with each section's missing keys set to today's defaults (keys added after the run was written)."""
    defaults = Config().to_dict()
    for section in SECTIONS:
        if isinstance(raw.get(section), dict):
            raw[section] = defaults[section] | raw[section]
    return raw


def _read_json_lines(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path, f"delete it, or leave {path.parent} out of the paths compared")


def load_run(path: Path) -> Run:
    """Read one run directory; eval.json's provenance fields win over config.yaml where both say something. An
    unreadable eval.json counts as none (the run is reported as not evaluated); one whose numbers are not numbers
    is one line naming the field (`RunDir.eval`, strict)."""
    run_dir = RunDir(path)
    ev = run_dir.eval(strict=True)
    config = path / "config.yaml"                    # read through the one bounded YAML reader: one line if damaged
    raw = with_defaults(yaml_io.read_mapping(config, "fix it, or delete it to compare the run without it")) \
        if config.is_file() else {}
    for field_name, key in PROVENANCE.items():       # provenance fills (or corrects) what config.yaml says
        if field_name in ev:
            section, _, leaf = key.rpartition(".")
            (raw.setdefault(section, {}) if section else raw)[leaf] = ev[field_name]
    history = run_dir.metrics(f"delete it, or leave {path} out of the paths compared")
    values: dict[str, float | None] = {k: ev.get(k) for k, _ in METRICS}
    values["iw_loglik_mc_stderr"] = ev.get("iw_loglik_mc_stderr")
    values["train_elbo"] = history[-1].get("train_elbo") if history else None   # the last epoch's running mean
    values["train_seconds"] = (sum(r.get("seconds", 0.0) for r in history) if history else ev.get("train_seconds"))
    for key, scores in ev.items():
        if key.startswith("quality_") and isinstance(scores, dict):
            values |= {f"{key}.{q}": scores.get(q) for q, _ in QUALITY}
    epochs = ev.get("epochs_trained", len(history))
    run = Run(path, flatten(raw), raw, lookup(raw, "train.seed"), values, history,
              {k: ev.get(k) for k in ("vaelab_version", "git_commit", "steps_trained")} | {"epochs": epochs},
              _read_json_lines(path / GRAD_STATS))
    planned = lookup(raw, "train.epochs")
    if isinstance(planned, int) and len(history) < planned:
        run.notes.append(f"{path}: unfinished, {len(history)} of its {planned} epochs trained")
    if not ev:
        run.notes.append(f"{path}: not evaluated (no eval.json); only its curves and train time are used")
    elif history and "epochs_trained" in ev and ev["epochs_trained"] != len(history):
        run.notes.append(f"{path}: eval.json is from epoch {ev['epochs_trained']} but metrics.jsonl has "
                         f"{len(history)} epochs; rerun `vaelab evaluate {path}`")
    return run


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


def compare(paths: list[str | Path], by: list[str] | None = None, out: str | Path | None = None) -> str:
    """Compare the runs under `paths`; returns the markdown; with `out` also writes compare.{md,json,html}."""
    runs = [load_run(p) for p in find_runs(paths)]
    keys = grouping_keys(runs, list(by or []))
    settings = group(runs, keys)
    result = summarize(settings, runs, keys)
    tabs = tables(result, runs)
    md = render_md(result, tabs)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "compare.json", json.dumps(result, indent=2, default=str) + "\n")
        atomic_write_text(out / "compare.md", md)
        atomic_write_text(out / "compare.html", render_html(result, tabs, settings, notes_text(result), out,
                                                           title(result)))
    return md


def cmd_compare(args: argparse.Namespace) -> None:
    print(compare(args.paths, args.by, args.out))
    if args.out:
        print(f"wrote {Path(args.out) / 'compare.html'}, compare.json and compare.md")


def add_parser(sub) -> None:
    """Register `vaelab compare` on the CLI's subparsers."""
    c = sub.add_parser("compare", help="one table of settings: mean ± s.e. across seeds, paired differences",
                       description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP", help="run directories, sweep directories or parents")
    c.add_argument("--by", action="append", default=[], metavar="KEY",
                   help="dotted config key that defines a setting (repeatable); default: every key that differs "
                        "between runs other than train.seed")
    c.add_argument("--out", help="folder for compare.md, compare.json and compare.html (default: markdown only)")
    c.set_defaults(func=cmd_compare)
