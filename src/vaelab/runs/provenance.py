"""Provenance (run_dir.PROVENANCE): every checkpoint records, in model.safetensors' metadata and as state.pt's
"provenance", the run's id, the sha256 of its config and what it was trained on (`run_dir.data_identity`: the data
file's absolute path and sha256; a named source by name). `start_provenance` makes the record when training starts
and refuses to resume on a data file that changed; `check_same_run` (for `checkpoint.read_checkpoint`) refuses a
state.pt whose record is not the weights' (a foreign optimizer state); opening a run (`loaded_run.open_run`) says in
one line that config.yaml was edited after training (`say_edited`: the checkpoint's config is used) and
`check_data` refuses a data file that changed unless the data is given explicitly (`data_source`: then one line
says the numbers do not compare). Checkpoints from before these fields are not checked.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

from vaelab.config.schema import Config
from vaelab.core.errors import VaelabError
from vaelab.data.sources import SOURCES
from vaelab.runs.run_dir import PROVENANCE, RunDir, config_sha256, data_identity
from vaelab.runtime.distributed import is_main_process


def provenance_record(cfg: Config, started: dict[str, str] | None) -> dict[str, str]:
    """A checkpoint's provenance: `started` (`start_provenance`'s record) with the hash of `cfg`; without one (a run
    not started by `train`, e.g. a stacked seed) the data as it is now and no run id."""
    started = started or {"run_id": "", **data_identity(cfg.data.source)}
    return {**{k: str(started.get(k, "")) for k in PROVENANCE}, "config_sha256": config_sha256(cfg.to_dict())}


def _short(digest: str) -> str:
    return f"{digest[:12]}…" if digest else "none"


def start_provenance(cfg: Config, run_dir: Path, saved: dict[str, str] | None) -> dict[str, str]:
    """The provenance a run records from now on (state.pt's "provenance", `TrainState.provenance`): its run id
    (`saved`'s when resuming, else a new one), its config's hash and its data's identity, hashed once per process.
    Resuming (`saved`: the checkpoint's record, None for a fresh start or a checkpoint without one) refuses data that
    changed since (one line naming the file and both digests) and says in one line what config.yaml changes
    against the checkpoint's config (the checkpoint's is used)."""
    data = data_identity(cfg.data.source)
    if saved:
        was, now = saved.get("data_sha256", ""), data["data_sha256"]
        if was and now and was != now:
            raise VaelabError(f"{run_dir} was trained on {saved.get('data_source')} with sha256 {_short(was)}, "
                              f"the {_kind(data)} now has {_short(now)}: put the original back, or start a new run")
        say_edited(run_dir, cfg, "resuming", ("train.epochs",))   # --epochs extends a run: not an edit
    run_id = (saved or {}).get("run_id") or uuid.uuid4().hex
    return {"run_id": run_id, "config_sha256": config_sha256(cfg.to_dict()), **data}


def _kind(data: dict[str, str]) -> str:
    return "folder" if Path(data["data_source"]).expanduser().is_dir() else "file"


def say_edited(run_dir: str | Path, cfg: Config, doing: str, ignore: tuple[str, ...] = ()) -> None:
    """One line on stderr (rank 0) when RUN/config.yaml no longer says what the checkpoint's config `cfg` says."""
    edit = RunDir(Path(run_dir)).config_edit(cfg, ignore)
    if edit is not None and is_main_process():
        print(f"vaelab: {Path(run_dir) / 'config.yaml'} was edited after training ({edit}): {doing} under the "
              "checkpoint's config, the one it was trained with", file=sys.stderr)


def check_same_run(meta: dict[str, str], state: dict[str, Any], ckpt: Path) -> None:
    """Refuse a state.pt whose provenance is not the weights' (a foreign optimizer and RNG state: the optimizer
    moments and random streams of another run); nothing to check where neither records one (an older run)."""
    saved = state.get("provenance")
    if saved is None and not any(k in meta for k in PROVENANCE):
        return
    if not isinstance(saved, dict) or not all(isinstance(v, str) for v in saved.values()):
        saved = {}
    for key in ("run_id", "config_sha256"):
        if saved.get(key) != meta.get(key):
            ours, theirs = _short(meta.get(key) or ""), _short(saved.get(key) or "")
            raise VaelabError(f"{ckpt}/state.pt is a foreign optimizer state (its {key} is {theirs}, the weights "
                              f"beside it have {ours}): put the run's own state.pt back, or resume from a backup copy")


def check_data(run_dir: str | Path, saved: dict[str, str], source: str, explicit: bool) -> None:
    """Refuse to open a run on a data file that changed since it was trained (its test numbers would not compare
    with the run's own); data given explicitly (`explicit`) is used, with one line when it is not what the run was
    trained on. Nothing to check for a run that records no data identity."""
    was = saved.get("data_sha256", "")
    if not saved.get("data_source"):
        return
    data = data_identity(source)
    now = data["data_sha256"]
    if was and now:                             # files (or folders): compared by content, wherever they are
        if was == now:
            return
    elif not explicit or source == saved["data_source"] or was and source not in SOURCES:
        return                                  # a named source by name; a file that is gone: loading says so
    if explicit:
        if is_main_process():
            print(f"vaelab: {run_dir} is opened on {source} (sha256 {_short(now)}), not on the data it was trained "
                  f"on ({saved['data_source']}, sha256 {_short(was)}): its numbers do not compare with the run's own",
                  file=sys.stderr)
        return
    raise VaelabError(f"{run_dir} was trained on {saved['data_source']} with sha256 {_short(was)}, the {_kind(data)} "
                      f"now has {_short(now)}: its test numbers would not compare; put the original back, or train a "
                      "new run on it")
