"""One run directory, and every question asked of it: where its files are, what it holds, who writes it, what to
do with it next. Other modules ask `RunDir` instead of looking at the files themselves.

Layout of RUN (checkpoint.py, metrics_log.py and run_eval.py write it):
    config.yaml  metrics.jsonl  grad_stats.jsonl  tb/  eval.json  density.npz  fig/  train.lock
    checkpoint/{model.safetensors, state.pt}     (checkpoint.old/ between the two renames of a swap,
                                                  checkpoint.tmp/ while one is written)

- `kind`: "empty" (nothing of a run), "stranded" (a run stopped before its first checkpoint: config.yaml but no
  checkpoint; `train --resume` starts it from step 0, `train CONFIG --out` restarts it) or "run".
- `lock()`: the `RunLock` on RUN/train.lock, held with flock by the one process that writes RUN. The kernel drops
  it when its holder dies (SIGKILL, power loss), so a lock left by a dead process is stale by construction and
  taken over; a live holder makes a second writer fail at once (exit code 2, the file names its pid).
- `plan(epochs)`: train, resume or skip, from the checkpoint's header alone; `clear_stranded()` removes what a run
  that died before its first checkpoint wrote, holding the lock.
- `eval()`, `metrics()`, `config()`: eval.json, metrics.jsonl and config.yaml read back and checked.
- Provenance (`PROVENANCE`): a checkpoint's header and its state.pt record the run's id, the sha256 of its config
  (`config_sha256`) and what it was trained on (`data_identity`: the data's path and sha256); `config_edit` names
  what was changed in config.yaml since the checkpoint was written. Checkpoints from before these fields have none.

Importing this module does not import torch (what reads a config does, on first use); a checkpoint's header is
read with safetensors' reader, never its tensors.
"""

from __future__ import annotations

import copy
import fcntl
import functools
import hashlib
import json
import os
import shutil
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vaelab.core.atomic import link_error
from vaelab.core.errors import VaelabError
from vaelab.runs.metrics_log import read_jsonl

if TYPE_CHECKING:
    from vaelab.config.schema import Config

LOCK_FILE = "train.lock"
CHECKPOINTS = ("checkpoint", "checkpoint.old")        # .old survives a crash between the two renames
RUN_MARKERS = ("config.yaml", "metrics.jsonl", *CHECKPOINTS)
STRANDED_FILES = ("config.yaml", "metrics.jsonl", "eval.json")     # what clear_stranded removes
STRANDED_DIRS = ("tb", "checkpoint.tmp")
# eval.json fields that must be numbers (or null) when present, in the order a damaged one is named
EVAL_NUMBERS = ("elbo", "iw_loglik", "kl", "rec", "iw_loglik_mc_stderr", "train_seconds", "epochs_trained",
                "steps_trained")
# what a checkpoint records of its run: in model.safetensors' metadata and as state.pt's "provenance" (text values)
PROVENANCE = ("run_id", "config_sha256", "data_source", "data_sha256")


def config_sha256(values: dict[str, Any]) -> str:
    """sha256 of a config (`Config.to_dict()`) as canonical JSON (keys sorted, no spaces): equal configs, one hash."""
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def _file_sha256(path: str, stamp: tuple[int, ...]) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()     # streamed in chunks


def file_sha256(path: Path) -> str:
    """sha256 of a file, streamed, computed once per process while the file stays as it is (device, inode, size,
    modification time): a replaced or rewritten file is hashed again."""
    st = path.stat()
    return _file_sha256(str(path.resolve()), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))


def data_identity(source: str) -> dict[str, str]:
    """{"data_source": source, "data_sha256": digest} of what a run trains on: the sha256 of an .npz file; of a
    folder of MNIST IDX files, the sha256 of its IDX files' names and sha256s; "" for a named source (mnist,
    digits, ...: its name identifies it, the catalog pinning its originals by sha256 and the cache being checked
    against its manifest on every read) and for a path that is not there (loading it reports that)."""
    from vaelab.data.catalog import IDX_FILES, SOURCES  # numpy, not torch

    path, digest = Path(source).expanduser(), ""
    if source not in SOURCES and path.is_dir():
        found = (next((n for n in (name, name.removesuffix(".gz")) if (path / n).is_file()), "") for name in IDX_FILES)
        names = [n for n in found if n]                     # the files data/user_files.load_idx_dir reads
        digest = hashlib.sha256("".join(f"{n} {file_sha256(path / n)}\n" for n in names).encode()).hexdigest()
    elif source not in SOURCES and path.is_file():
        digest = file_sha256(path)
    return {"data_source": source, "data_sha256": digest}


@dataclass(frozen=True)
class Header:
    """What a checkpoint's safetensors header says: the run's config, the epochs it finished and its provenance
    (the PROVENANCE fields it records; {} for a checkpoint written before them)."""

    config: Config
    epoch: int
    provenance: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """What to do with a run directory for a target number of epochs (`RunDir.plan`): "train" (no checkpoint: a new
    run, or a stranded one to restart), "resume" (a checkpoint short of the target) or "skip" (one at or past it)."""

    action: str
    header: Header | None = None

    @property
    def epoch(self) -> int:
        """The epochs the checkpoint holds (0 without one)."""
        return self.header.epoch if self.header is not None else 0

    def differences(self, wanted: Config, ignore: Iterable[str] = ("train.device",)) -> list[str]:
        """The dotted keys (section.key) whose values differ between the checkpoint's config and `wanted`, the keys
        in `ignore` (dotted, or top-level as "description") left out: [] when the run is `wanted`'s run."""
        if self.header is None:
            return []
        saved = copy.deepcopy(self.header.config)
        for key in ignore:
            section, _, leaf = key.rpartition(".")
            setattr(getattr(saved, section) if section else saved, leaf,
                    getattr(getattr(wanted, section) if section else wanted, leaf))
        a, b = _flatten(saved.to_dict()), _flatten(wanted.to_dict())
        return [k for k in {**a, **b} if a.get(k) != b.get(k)]


def _flatten(values: dict[str, Any]) -> dict[str, Any]:
    """{section.key: value} for the config's sections, other top-level keys as they are."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat |= {f"{key}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {key: value}
    return flat


@dataclass(frozen=True)
class RunDir:
    """A run directory (see the module doc). Cheap to make: nothing is read until a method asks."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # ------------------------------------------------------------------------------------------------ the files
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def eval_path(self) -> Path:
        return self.path / "eval.json"

    @property
    def density_path(self) -> Path:
        return self.path / "density.npz"

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def weights_path(self) -> Path:
        """checkpoint/model.safetensors (of checkpoint.old/ when only that one is whole); VaelabError without one."""
        return self.checkpoint_dir() / "model.safetensors"

    @property
    def state_path(self) -> Path:
        """checkpoint/state.pt, beside `weights_path`."""
        return self.checkpoint_dir() / "state.pt"

    # ------------------------------------------------------------------------------------------ what it holds
    @property
    def has_checkpoint(self) -> bool:
        """Whether a checkpoint's weights are in place (checkpoint/ or checkpoint.old/)."""
        return any((self.path / name / "model.safetensors").is_file() for name in CHECKPOINTS)

    @property
    def kind(self) -> str:
        """"empty" (no run files), "stranded" (run files but no checkpoint) or "run"."""
        if not self.path.is_dir() or not any((self.path / m).exists() for m in RUN_MARKERS):
            return "empty"
        return "run" if self.has_checkpoint else "stranded"

    def checkpoint_dir(self) -> Path:
        """checkpoint/, or checkpoint.old/ when a crash between the two renames left only that one whole."""
        if self.path.exists() and not self.path.is_dir():
            raise VaelabError(f"{self.path} is a file, not a run directory: give the directory `vaelab train --out` "
                              "made")
        for name in CHECKPOINTS:
            if (self.path / name / "model.safetensors").is_file():
                return self.path / name
        raise VaelabError(f"no checkpoint in {self.path}: train first with `vaelab train CONFIG --out {self.path}`")

    def checkpoint_header(self) -> Header | None:
        """The checkpoint's config and epoch, from its safetensors header alone (no tensor is read); None without a
        checkpoint; an unreadable header is one VaelabError."""
        if not self.has_checkpoint:
            return None
        from safetensors import safe_open

        from vaelab.config.schema import config_from_yaml_text  # imports torch (the config's registries)

        path = self.weights_path
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
            return Header(config_from_yaml_text(meta["config"]), int(meta.get("epoch", 0)),
                          {k: meta[k] for k in PROVENANCE if k in meta})
        except Exception as err:   # noqa: BLE001 - any unreadable header is reported the same way
            raise VaelabError(f"checkpoint {path} is unreadable ({type(err).__name__}): delete {self.path} to "
                              "retrain it") from err

    def plan(self, epochs: int) -> Plan:
        """Train, resume or skip for a run meant to reach `epochs` (see `Plan`); the caller checks the settings
        with `Plan.differences` and what a checkpoint past `epochs` means to it."""
        header = self.checkpoint_header()
        if header is None:
            return Plan("train")
        return Plan("skip" if header.epoch >= epochs else "resume", header)

    # ------------------------------------------------------------------------------------------ reading back
    def config(self) -> Config:
        """config.yaml through vaelab's one config loader (validated; a damaged file is one line naming it)."""
        if not self.config_path.is_file():
            raise VaelabError(f"no config.yaml in {self.path}: train it with `vaelab train CONFIG --out {self.path}`")
        from vaelab.config.schema import load_run_config  # imports torch (the config's registries)

        return load_run_config(self.config_path)

    def config_edit(self, saved: Config, ignore: Iterable[str] = ()) -> str | None:
        """What config.yaml changes against `saved` (the checkpoint's config), e.g. "train.lr 0.001 -> 0.01,
        model.hidden"; "it no longer reads as a config (...)" when it is damaged; None when it matches (the dotted
        keys in `ignore` left out) or is absent (RUN/best/ keeps none)."""
        if not self.config_path.is_file():
            return None
        try:
            now = _flatten(self.config().to_dict())
        except VaelabError as err:
            return f"it no longer reads as a config: {str(err)[:100]}"
        was = _flatten(saved.to_dict())
        keys = [k for k in {**was, **now} if was.get(k) != now.get(k) and k not in ignore]
        shown = [f"{k} {was.get(k)!r} -> {now.get(k)!r}" if len(repr(was.get(k)) + repr(now.get(k))) < 40 else k
                 for k in keys[:3]]
        return ", ".join(shown) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "") if keys else None

    def metrics(self, fix: str | None = None) -> list[dict[str, Any]]:
        """metrics.jsonl's rows ([] without one; a torn last line dropped); other damage is one VaelabError ending
        in `fix`."""
        return read_jsonl(self.metrics_path, fix or f"delete it, or retrain {self.path}")

    def eval(self, strict: bool = False) -> dict[str, Any]:
        """eval.json: {} when it is missing or unreadable (not UTF-8 JSON, not an object). A field of EVAL_NUMBERS
        that is not a number (or null) makes it damaged too: {} (what evaluates next replaces it), or with `strict`
        one VaelabError naming the field."""
        try:
            values = json.loads(self.eval_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            return {}
        if not isinstance(values, dict):
            return {}
        bad = [k for k in EVAL_NUMBERS if isinstance(values.get(k), bool) or
               not isinstance(values.get(k), int | float | None)]
        if bad and strict:
            raise VaelabError(f"{self.eval_path} has {bad[0]} = {values[bad[0]]!r}, not a number: rerun `vaelab "
                              f"evaluate {self.path}` to rewrite it")
        return {} if bad else values

    # ------------------------------------------------------------------------------------------ writing
    def lock(self) -> RunLock:
        """The run's lock (not taken yet: `with run.lock():` or `.acquire()`)."""
        return RunLock(self.path)

    def clear_stranded(self) -> bool:
        """Remove what a run that died before its first checkpoint wrote (STRANDED_FILES, STRANDED_DIRS) so that
        `vaelab train CONFIG --out` starts it afresh, holding the run's lock: a process training the run in its first
        epoch makes this one VaelabError and nothing is deleted. True when it cleared; False when the directory
        holds no stranded run (checked again under the lock)."""
        if self.kind != "stranded":
            return False
        with self.lock():
            if self.kind != "stranded":
                return False
            for name in STRANDED_FILES:
                (self.path / name).unlink(missing_ok=True)
            for name in STRANDED_DIRS:
                shutil.rmtree(self.path / name, ignore_errors=True)
        return True


class RunLock:
    """An exclusive flock on RUN/train.lock for as long as this process writes RUN (see the module doc).

    The holder removes the file before it lets go, so a finished run leaves none behind. A process that opened
    the old file just before it was removed finds, once it has the flock, that the path no longer names its file,
    and tries again: two writers can never both hold a lock on the file the path names."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.path, self.fd = run_dir, run_dir / LOCK_FILE, None

    def _open(self) -> int:
        """Open (or create) the lock file, never through a symbolic link: a link planted as RUN/train.lock would
        otherwise have the pid line written over whatever file it points to."""
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as err:
            if self.path.is_symlink():          # ELOOP from O_NOFOLLOW
                raise link_error(self.path) from err
            raise VaelabError(f"cannot write to {self.run_dir} ({err.strerror}): make it writable or choose "
                              "another --out") from err

    def acquire(self) -> None:
        for _ in range(100):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "pid unknown"
                os.close(fd)
                raise VaelabError(f"{self.run_dir} is being written by another vaelab process ({holder}): wait "
                                  "for it to finish or stop it (a lock left by a process that died is taken over)"
                                  ) from err
            try:
                same = os.path.samestat(os.fstat(fd), os.lstat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)                # the previous holder removed this file as we opened it: take the new one
        else:
            raise VaelabError(f"cannot take the lock {self.path}: it keeps being replaced; run again")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        except OSError:
            pass   # the flock is what counts; the pid is only for the message above
        self.fd = fd

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.path)   # still holding the flock: nobody else can hold this file meanwhile
            except OSError:
                pass
            os.close(self.fd)          # closing the descriptor drops the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
