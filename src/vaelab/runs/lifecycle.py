"""The life of a run directory around training: checking it, starting from it, and stopping on a signal.

What a run directory holds (its kind, its checkpoint) and its lock (`RunLock`, RUN/train.lock) are `RunDir`'s
(runs/run_dir.py); this module asks it.
- `check_run_dir`: refuse an output path `train` cannot use; returns `RunDir.kind` ("empty", "stranded", "run").
- `starting_point` / `open_for_writing`: what `train` starts from (a checkpoint, a stranded run's config.yaml or
  the given config), and rank 0 creating the directory, taking the lock and writing config.yaml.
- `StopSignals`: SIGINT, SIGTERM and SIGHUP during training ask for a stop; training checkpoints at the next safe
  point (after the current optimisation step in one process, at the end of the epoch under torchrun) and exits
  resumably (`errors.Stopped`). A second SIGINT interrupts at once.
"""

from __future__ import annotations

import shutil
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from vaelab.config.schema import Config, validate
from vaelab.core import faults
from vaelab.core.atomic import atomic_write_text
from vaelab.core.errors import VaelabError
from vaelab.core.paths import check_writable_dir
from vaelab.runs.checkpoint import read_checkpoint
from vaelab.runs.metrics_log import read_grad_stats
from vaelab.runs.run_dir import RunDir, RunLock
from vaelab.runtime import distributed

__all__ = ["StopSignals", "check_run_dir", "has_checkpoint", "open_for_writing",
           "starting_point", "stranded_config"]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def has_checkpoint(run_dir: Path) -> bool:
    """`RunDir.has_checkpoint` (kept for training/*)."""
    return RunDir(run_dir).has_checkpoint


def check_run_dir(run_dir: Path, resume: bool) -> str:
    """Refuse an output path that is a file, under a file or not writable; refuse to overwrite a run (one with a
    checkpoint) or to resume what is not there. Returns the directory's kind (`RunDir.kind`)."""
    check_writable_dir(run_dir, "--resume" if resume else "--out")
    kind = RunDir(run_dir).kind
    if resume and kind == "empty":
        raise VaelabError(f"--resume {run_dir}: no run there to resume; drop --resume to start a new one")
    if not resume and kind == "run":
        raise VaelabError(f"{run_dir} already holds a run: use --resume {run_dir} to continue it, "
                          "or --out a new directory")
    return kind


def stranded_config(run_dir: Path) -> Config:
    """The config of a run stopped before its first checkpoint (its config.yaml), to start it from step 0."""
    run = RunDir(run_dir)
    if not run.config_path.is_file():
        raise VaelabError(f"{run_dir} holds no checkpoint and no config.yaml: start it again with "
                          f"`vaelab train CONFIG --out {run_dir}`")
    return run.config()


def starting_point(cfg: Config | None, run_dir: Path, resume: bool, kind: str,
                   epochs: int | None) -> tuple[Config, dict | None, dict[str, Any]]:
    """The config, checkpoint tensors (None for a fresh start) and training state (state.pt's dict) to start from.
    `epochs` extends a resumed run; `kind` is `RunDir.kind`'s answer, taken under the run's lock."""
    state: dict[str, Any] = {"epoch": 0, "history": []}
    if resume and kind == "run":
        cfg, tensors, state = read_checkpoint(run_dir)
        if cfg.train.grad_stats_every:
            read_grad_stats(run_dir)          # its damage refused before config.yaml or the log is rewritten
        if epochs is not None:
            if epochs < state["epoch"]:     # nothing to train; only config.yaml would change, to a false count
                raise VaelabError(f"{run_dir} has trained {state['epoch']} epochs; --epochs {epochs} would train "
                                  f"none and record fewer than it holds: give --epochs >= {state['epoch']} or "
                                  "omit it")
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


class StopSignals:
    """While entered (in the main thread), SIGINT, SIGTERM and SIGHUP set `signum` instead of killing the process;
    the trainer polls `requested` at its safe points. A second SIGINT raises KeyboardInterrupt at once. The handlers
    it replaces are put back on exit; one with a `hand_over()` method (the CLI's start-up guard, cli/main.StopGuard,
    which turns a stop before training into one line) is told that training began."""

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
                getattr(self._previous[sig], "hand_over", lambda: None)()   # the CLI's StopGuard: training began
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
