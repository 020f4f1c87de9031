"""What `vaelab compare` held fixed (issue 28): the preset, data, model, training length and evaluation (K and the
number of test images scored) that every compared run shares, stated beside the settings that differ, so a reader
of compare.md / compare.html knows what the differences are differences under.

`held_fixed` is compare.json's "held_fixed": every flattened config key with one value in all runs (the
labels name and description and the per-run seed left out) plus the evaluation facts from eval.json; a few of
them, and the evaluation facts that differ between runs without defining a setting, are said in one sentence
(`fixed_sentence`, the first paragraph of compare.md and compare.html).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Protocol

LEFT_OUT = ("name", "description", "train.seed")           # labels, and what differs run by run by design
SHOWN = ("preset", "data.source", "data.binarize", "model.latent", "model.latent_dim", "model.nets",
         "model.hidden", "estimator.name", "train.epochs", "train.batch_size", "train.lr", "K (importance samples)",
         "test images", "steps trained")
EVAL_FACTS = {"K (importance samples)": "iw_samples", "test images": "n_examples", "steps trained": "steps_trained"}


class _Run(Protocol):
    path: Path
    config: dict[str, Any]


def _eval_json(run_dir: Path) -> dict[str, Any]:
    """RUN/eval.json, or {} when missing or unreadable (compare_runs.load_run reports that run as not evaluated)."""
    try:
        values = json.loads((run_dir / "eval.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}


def preset_of(config: dict[str, Any]) -> Any:
    """The preset a run came from: the X of a "Preset X with ..." description (a renamed variant, from `train`
    or `sweep`), else its config name."""
    match = re.match(r"Preset (\S+) with ", str(config.get("description") or ""))
    return match.group(1) if match else config.get("name")


def facts(run: _Run) -> dict[str, Any]:
    """One run's comparable facts: its flattened config (less LEFT_OUT), preset and evaluation facts."""
    out = {k: v for k, v in run.config.items() if k not in LEFT_OUT}
    out["preset"] = preset_of(run.config)
    evaluated = _eval_json(run.path)
    out |= {name: evaluated.get(key) for name, key in EVAL_FACTS.items()}
    return out


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def held_fixed(all_facts: list[dict[str, Any]]) -> dict[str, Any]:
    """{key: value} of every fact (`facts` of each run) with the same value in every run; the preset and the
    evaluation facts only where known (a run without eval.json holds no K)."""
    first = all_facts[0] if all_facts else {}
    return {k: v for k, v in first.items() if (v is not None or k not in ("preset", *EVAL_FACTS))
            and all(k in f and _canon(f[k]) == _canon(v) for f in all_facts[1:])}


def varying_facts(all_facts: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """{fact: its distinct known values} for the evaluation facts (and preset) that differ between runs."""
    out: dict[str, list[Any]] = {}
    for name in ("preset", *EVAL_FACTS):
        values = {_canon(v): v for f in all_facts if (v := f[name]) is not None}
        if len(values) > 1:
            out[name] = list(values.values())
    return out


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)


def fixed_facts(runs: list[_Run]) -> dict[str, Any]:
    """compare.json's "held_fixed" (`held_fixed`) and "not_held_fixed" (`varying_facts`) of the runs."""
    all_facts = [facts(r) for r in runs]
    return {"held_fixed": held_fixed(all_facts), "not_held_fixed": varying_facts(all_facts)}


def fixed_sentence(result: dict[str, Any]) -> str:
    """"Held fixed in all N runs: preset = ..., data.source = ..., K (importance samples) = ..., ...; and M more
    config keys (compare.json: held_fixed)." plus the evaluation facts that differ without defining a setting,
    from compare.json's `result` (`fixed_facts`)."""
    fixed, varying = result["held_fixed"], result["not_held_fixed"]
    n_runs = sum(len(s["runs"]) for s in result["settings"])
    shown = [f"{k} = {_show(fixed[k])}" for k in SHOWN if k in fixed]
    more = len([k for k in fixed if k not in SHOWN])
    where = f"in all {n_runs} runs" if n_runs > 1 else "in the one run"
    text = f"Held fixed {where}: {', '.join(shown) or 'none of preset, data, model, training or evaluation'}"
    text += f"; and {more} more config key{'s' * (more != 1)} (compare.json: held_fixed)." if more else "."
    if varying:
        text += " Not held fixed, though no setting is defined by it: " + "; ".join(
            f"{k} = {', '.join(map(_show, v))}" for k, v in varying.items()) + "."
    return text
