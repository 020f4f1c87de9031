"""A sweep run's `name` and `description` (issue 28): named after its run directory and described by what differs
from the base preset, as `vaelab train` names and describes its variants (config.name_variant), so that a run's
config.yaml, eval.json (`config_name`) and TensorBoard hparams say what it is rather than repeating the preset's
text ("... seed's SFE ...") for a DisARM run with other networks.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from vaelab.config.schema import Config

LABELS = ("name", "description")


def show(value: Any) -> str:
    """A config value as one short piece of text: strings as they are, lists and mappings in YAML flow style."""
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip()
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return str(value)


def changes(preset: Config, cfg: Config, skip: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """(dotted key, preset's value, run's value) for every config key the run changes, in the config's order;
    the labels (name, description) and the keys in `skip` left out."""
    from vaelab.experiments.compare_runs import flatten

    old, new = flatten(preset.to_dict()), flatten(cfg.to_dict())
    return [(key, old.get(key), value) for key, value in new.items()
            if key not in (*LABELS, *skip) and old.get(key) != value]


def describe_changes(preset: Config, cfg: Config, skip: tuple[str, ...] = ()) -> str:
    """"Preset P with KEY NEW in place of its OLD, ... and ..."; the preset's description when nothing differs."""
    changed = changes(preset, cfg, skip)
    if not changed:
        return preset.description
    parts = [f"{key} {show(new)} in place of its {show(old)}" for key, old, new in changed]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"Preset {preset.name} with {listed}."


def keep_saved_labels(cfg: Config, run_dir: Path) -> Config:
    """`cfg` with the name and description of the checkpoint in `run_dir` when that run has the same settings
    otherwise (device and epochs may differ, as a sweep resumes it): a sweep started before its runs were named
    resumes instead of refusing its own runs. An unreadable checkpoint is left to the run's own step to report."""
    from vaelab.experiments.sweep_run import RunFailed, checkpoint_state

    try:
        state = checkpoint_state(run_dir)
    except RunFailed:
        return cfg
    if state is None:
        return cfg
    saved = copy.deepcopy(state[0])
    saved.train.device, saved.train.epochs = cfg.train.device, cfg.train.epochs
    if (saved.name, saved.description) != (cfg.name, cfg.description):
        relabelled = copy.deepcopy(cfg)
        relabelled.name, relabelled.description = saved.name, saved.description
        if relabelled == saved:
            cfg.name, cfg.description = saved.name, saved.description
    return cfg
