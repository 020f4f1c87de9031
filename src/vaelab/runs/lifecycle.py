"""The life of a run directory around training: what it holds, one writer at a time, and stopping on a signal.

- `run_dir_kind`: "empty" (nothing of a run), "stranded" (a run stopped before its first checkpoint: config.yaml
  but no checkpoint; `train --resume` starts it from step 0, `train CONFIG --out` restarts it) or "run".
- `RunLock`: RUN/train.lock, held with flock by the one process that trains into RUN. The kernel drops the lock
  when its holder dies (SIGKILL, power loss), so a lock left by a dead process is stale by construction and taken
  over; a live holder makes a second writer fail at once with exit code 2 (the file names its pid). The holder
  removes the file when it is done.
- `starting_point` / `open_for_writing`: what `train` starts from (a checkpoint, a stranded run's config.yaml or
  the given config), and rank 0 creating the directory, taking the lock and writing config.yaml.
- `StopSignals`: SIGINT, SIGTERM and SIGHUP during training ask for a stop; training checkpoints at the next safe
  point (after the current optimisation step in one process, at the end of the epoch under torchrun) and exits
  resumably (`errors.Stopped`). A second SIGINT interrupts at once.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from vaelab.runtime import distributed

from vaelab.core import faults
from vaelab.core.atomic import atomic_write_text, link_error
from vaelab.config.checks import check_writable_dir
from vaelab.config.schema import Config, load_config, validate
from vaelab.core.errors import VaelabError
from vaelab.runs.run_files import read_checkpoint

LOCK_FILE = "train.lock"
RUN_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoint", "checkpoint.old")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / name / "model.safetensors").is_file() for name in ("checkpoint", "checkpoint.old"))


def run_dir_kind(run_dir: Path) -> str:
    """"empty", "stranded" (run files but no checkpoint) or "run"."""
    if not run_dir.is_dir() or not any((run_dir / m).exists() for m in RUN_MARKERS):
        return "empty"
    return "run" if has_checkpoint(run_dir) else "stranded"


def check_run_dir(run_dir: Path, resume: bool) -> str:
    """Refuse an output path that is a file, under a file or not writable; refuse to overwrite a run (one with a
    checkpoint) or to resume what is not there. Returns the directory's kind (`run_dir_kind`)."""
    check_writable_dir(run_dir, "--resume" if resume else "--out")
    kind = run_dir_kind(run_dir)
    if resume and kind == "empty":
        raise VaelabError(f"--resume {run_dir}: no run there to resume; drop --resume to start a new one")
    if not resume and kind == "run":
        raise VaelabError(f"{run_dir} already holds a run: use --resume {run_dir} to continue it, "
                          "or --out a new directory")
    return kind


def stranded_config(run_dir: Path) -> Config:
    """The config of a run stopped before its first checkpoint (its config.yaml), to start it from step 0."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise VaelabError(f"{run_dir} holds no checkpoint and no config.yaml: start it again with "
                          f"`vaelab train CONFIG --out {run_dir}`")
    return load_config(path)


def starting_point(cfg: Config | None, run_dir: Path, resume: bool, kind: str,
                   epochs: int | None) -> tuple[Config, dict | None, dict[str, Any]]:
    """The config, checkpoint tensors (None for a fresh start) and training state (state.pt's dict) to start from.
    `epochs` extends a resumed run; `kind` is `run_dir_kind`'s answer, taken under the run's lock."""
    state: dict[str, Any] = {"epoch": 0, "history": []}
    if resume and kind == "run":
        cfg, tensors, state = read_checkpoint(run_dir)
        if epochs is not None:
            stopped_in = state["epoch"] + 1 if "partial" in state else 0
            if epochs < stopped_in:
                raise VaelabError(f"--epochs {epochs}: the run stopped inside epoch {stopped_in}; "
                                  f"give --epochs {stopped_in} or more")
            cfg.train.epochs = epochs
        return cfg, tensors, state
    if kind == "stranded" and distributed.is_main_process():    # said even with --quiet: it changes what runs
        what = "starting it from step 0 with its config.yaml" if resume else "restarting it"
        print(f"vaelab: {run_dir} holds a run stopped before its first checkpoint: {what}", file=sys.stderr)
    if resume:
        cfg = stranded_config(run_dir)
        cfg.train.epochs = epochs or cfg.train.epochs
    return validate(cfg), None, state


def open_for_writing(run_dir: Path, lock: RunLock, resume: bool, kind: str, write_config: bool,
                     cfg: Config) -> None:
    """Rank 0: create the run directory, take its lock (if not yet held), check again under the lock that no
    other process made it a run meanwhile, and write config.yaml."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VaelabError(f"cannot create {run_dir} ({err.strerror}): choose another --out") from err
    if not lock.held:
        lock.acquire()
        kind = check_run_dir(run_dir, resume)
    faults.point("locked")
    if kind == "stranded" and not resume:
        shutil.rmtree(run_dir / "tb", ignore_errors=True)    # the stopped attempt's (empty) TensorBoard files
    if write_config:
        atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())


class RunLock:
    """An exclusive flock on RUN/train.lock for as long as this process trains into RUN (see the module doc).

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


class StopSignals:
    """While entered (in the main thread), SIGINT, SIGTERM and SIGHUP set `signum` instead of killing the process;
    the trainer polls `requested` at its safe points. A second SIGINT raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
