"""Discovery and loading for `vaelab compare`: the run directories under some paths (`find_runs`) and what each
one is (`load_run`): its numbers from eval.json; what it was (config keys, seed, epochs) from eval.json's provenance
fields where present, else from config.yaml and metrics.jsonl. A key that a run's config.yaml lacks, because an
older vaelab wrote it, counts as that key's default (`with_defaults`), so a key added later does not split old runs
from new.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaelab.config.schema import Config
from vaelab.core import yaml_io
from vaelab.core.errors import VaelabError
from vaelab.runs.metrics_log import GRAD_STATS, read_jsonl
from vaelab.runs.run_dir import RunDir

METRICS = [("elbo", "test ELBO"), ("iw_loglik", "IW log-lik."), ("kl", "KL"), ("rec", "rec.")]
QUALITY = [("fid_classifier_features", "FID (CNN features)"), ("precision", "precision"), ("recall", "recall"),
           ("digit_entropy_fraction", "digit entropy / log 10"), ("mean_confidence", "confidence")]
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

