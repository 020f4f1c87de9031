"""One run of a sweep, as a worker executes it: train (or resume, or skip), then evaluate (or skip).

`execute_run(job)` is what a local worker thread and a Ray task both call, so both backends do the same thing:
the run's steps (`vaelab train` or `train --resume`, `fit-density`, `evaluate`) run in one `python -m
vaelab.cli.sweep_worker` process with `job.threads` threads (one process per run: a crash ends that run alone, and
torch loads once, not once per step), its output appended to the run's log under one header line per step.
The run directory is the truth about a run's state, so a sweep started again (anywhere that sees the same files)
skips finished runs, resumes interrupted ones from their checkpoint and evaluates what is not evaluated with the
sweep's settings. A failure comes back as a result with the error, never as an exception.

Stopping: `forwarding_stops()` (entered by the sweep's main thread) passes a SIGTERM or SIGHUP sent to the sweep
on to every running `vaelab` child, which checkpoints at its next safe point and exits 128 + signum (a Ctrl-C
reaches the children itself, through the terminal's process group); no new step starts, and those runs are
recorded as `stopped`, resumed by running the sweep again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaelab.config.schema import Config, load_config
from vaelab.core.atomic import open_append
from vaelab.core.errors import VaelabError
from vaelab.runs.run_dir import RunDir


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to run one setting and seed; paths are absolute."""

    name: str
    run_dir: str
    config_path: str
    log_path: str
    epochs: int
    iw_samples: int | None          # None: no evaluation
    autoencoder: bool               # needs `vaelab fit-density` before `vaelab evaluate`
    device: str
    threads: int
    cwd: str
    env: dict[str, str] = field(default_factory=dict)


class RunFailed(Exception):
    """A step of a run failed; the message is what sweep.yaml records, `step` the index of the step that failed
    among those `_vaelab` ran (0 when none ran)."""

    def __init__(self, message: str, step: int = 0) -> None:
        super().__init__(message)
        self.step = step


class RunStopped(RunFailed):
    """A step stopped (or was not started) because the sweep was asked to stop."""


class _Children:
    """The running `vaelab` child processes, and the signal that asked the sweep to stop (None: none did)."""

    def __init__(self) -> None:
        self.live: set[subprocess.Popen] = set()
        self.lock = threading.RLock()          # re-entrant: the handler runs in the main thread, which may hold it
        self.signum: int | None = None

    def check_not_stopped(self) -> None:
        """RunStopped if a stop was asked: the caller starts nothing more (the one "not started" check)."""
        with self.lock:
            if self.signum is not None:
                raise RunStopped(f"not started: the sweep was stopped by {signal.Signals(self.signum).name}")

    def run(self, cmd: list[str], **kwargs: Any) -> int:
        """subprocess.run(cmd).returncode, the process registered while it runs; RunStopped once stopping."""
        with self.lock:
            self.check_not_stopped()
            proc = subprocess.Popen(cmd, **kwargs)
            self.live.add(proc)
        try:
            return proc.wait()
        finally:
            with self.lock:
                self.live.discard(proc)

    def stop(self, signum: int, _frame: Any = None) -> None:
        """The signal handler: remember the signal and send it on to every running child."""
        with self.lock:
            self.signum = signum
            for proc in self.live:
                proc.send_signal(signum)


CHILDREN = _Children()


@contextmanager
def forwarding_stops():
    """While entered (main thread): SIGTERM and SIGHUP stop the sweep's children resumably instead of killing the
    sweep and leaving them running. Yields CHILDREN; its `signum` says afterwards whether a stop was asked."""
    CHILDREN.signum = None
    previous = {sig: signal.signal(sig, CHILDREN.stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield CHILDREN
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def checkpoint_state(run_dir: Path) -> tuple[Config, int] | None:
    """`RunDir.checkpoint_header` as (config, epoch) or None, an unreadable header as RunFailed (for sweep_names)."""
    try:
        header = RunDir(run_dir).checkpoint_header()
    except VaelabError as err:
        raise RunFailed(str(err)) from err
    return None if header is None else (header.config, header.epoch)


STEP_HEADER = re.compile(r"^# \d{4}-\d\d-\d\d \d\d:\d\d:\d\d vaelab (\S+)")   # sweep_worker.HEADER


def _vaelab(job: Job, steps: list[list[str]]) -> None:
    """Run `vaelab STEP` for each of `steps` (with --quiet for train and evaluate), in order, in one `python -m
    vaelab.cli.sweep_worker` process for `job`, its output appended to the run's log; RunFailed (its `step` the index
    of the step that failed) on a non-zero exit."""
    if not steps:
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(job.threads), MKL_NUM_THREADS=str(job.threads)) | job.env
    steps = [[*s, "--quiet"] if s[0] in ("train", "evaluate") else s for s in steps]
    log_path = Path(job.log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open_append(log_path) as log:                  # never through a planted symlink
        start = log.seek(0, os.SEEK_END)
        cwd = job.cwd if Path(job.cwd).is_dir() else None
        code = CHILDREN.run([sys.executable, "-m", "vaelab.cli.sweep_worker", json.dumps(steps)], stdout=log,
                            stderr=log, env=env, cwd=cwd, stdin=subprocess.DEVNULL)
    if code != 0:
        index, message = _error_line(log_path, start, code, [s[0] for s in steps])
        raise (RunStopped if CHILDREN.signum is not None else RunFailed)(message, index)


def _error_line(log_path: Path, start: int, code: int, names: list[str]) -> tuple[int, str]:
    """(index of the step that failed, its `vaelab: error:` line, else its last output line, else how it ended):
    the failed step is the last whose header line the worker wrote after `start`."""
    with open(log_path, errors="replace") as f:
        f.seek(start)
        lines = [line.strip() for line in f.read().splitlines() if line.strip()]
    headers = [i for i, line in enumerate(lines) if STEP_HEADER.match(line)]
    index = min(max(len(headers) - 1, 0), len(names) - 1)
    step = names[index]
    lines = lines[headers[-1] + 1:] if headers else lines
    errors = [line.removeprefix("vaelab: error: ") for line in lines if line.startswith("vaelab: error:")]
    if errors:
        return index, f"{step}: {errors[-1]}"
    if code < 0:
        return index, (f"{step}: killed by {signal.Signals(-code).name}; rerun the sweep to resume it from its "
                       "checkpoint")
    tail = lines[-1][:200] if lines else "no output"
    return index, f"{step}: exit code {code} ({tail}); see {log_path}"


def train_step(job: Job) -> tuple[str, list[list[str]]]:
    """Train, resume or skip (`RunDir.plan`): (what is done, the `vaelab` step that does it, if any). A run that
    died before its first checkpoint is cleared under its lock first (`RunDir.clear_stranded`)."""
    run = RunDir(job.run_dir)
    plan = run.plan(job.epochs)
    if plan.action == "train":
        run.clear_stranded()
        return "trained", [["train", job.config_path, "--out", job.run_dir]]
    differences = plan.differences(load_config(job.config_path), ignore=("train.device", "train.epochs"))
    if differences:
        raise RunFailed(f"{run.path} holds a run with other settings ({', '.join(differences)}): "
                        "move it away, or sweep into another --out")
    if plan.epoch > job.epochs:
        raise RunFailed(f"{run.path} is trained for {plan.epoch} epochs, more than the spec's {job.epochs}: raise "
                        "train.epochs in the spec, or sweep into another --out")
    if plan.action == "skip":
        return "already trained", []
    for stale in (run.eval_path, run.density_path):   # they described an earlier state of the model
        stale.unlink(missing_ok=True)
    return f"resumed at epoch {plan.epoch + 1}", [["train", "--resume", job.run_dir, "--epochs", str(job.epochs)]]


def evaluated(job: Job) -> bool:
    """True when eval.json was written with the sweep's K after the last epoch (a damaged one: not evaluated)."""
    ev = RunDir(job.run_dir).eval()
    return bool(ev) and ev.get("iw_samples") == job.iw_samples and \
        ev.get("epochs_trained", job.epochs) == job.epochs


def evaluate_step(job: Job, trained_now: bool) -> tuple[str, list[list[str]]]:
    """`vaelab evaluate` (after `vaelab fit-density` for an autoencoder whose density is missing or about to be
    stale) unless done already: (what is done, the `vaelab` steps that do it)."""
    if job.iw_samples is None:
        return "not evaluated (evaluate: false)", []
    if not trained_now and evaluated(job):
        return "already evaluated", []
    steps = [["evaluate", job.run_dir, "--iw-samples", str(job.iw_samples), "--device", job.device]]
    if job.autoencoder and (trained_now or not RunDir(job.run_dir).density_path.is_file()):
        steps.insert(0, ["fit-density", job.run_dir, "--no-figures", "--device", job.device])
    return f"evaluated (K={job.iw_samples})", steps


def describe(job: Job) -> str:
    """The run's state as its directory shows it: new, E/N-epochs, trained (not evaluated), done, unreadable."""
    try:
        header = RunDir(job.run_dir).checkpoint_header()
    except VaelabError:
        return "unreadable"
    if header is None:
        return "new"
    if header.epoch != job.epochs:
        return f"{header.epoch}/{job.epochs}-epochs"
    return "done" if job.iw_samples is None or evaluated(job) else "trained"


def execute_run(job: Job) -> dict[str, Any]:
    """Train and evaluate `job`; returns {name, state: done|failed|stopped, error, action, seconds}."""
    t0 = time.perf_counter()
    actions: list[str] = []
    state, error = "done", None
    try:
        trained, train_steps = train_step(job)
        actions.append(trained)
        evaluation, eval_steps = evaluate_step(job, trained_now=bool(train_steps))
        try:
            _vaelab(job, train_steps + eval_steps)       # one process for the run's steps
        except RunFailed as err:
            if err.step < len(train_steps):              # training did not finish
                actions.clear()
            raise
        actions.append(evaluation)
    except (RunFailed, VaelabError) as err:
        state, error = ("stopped" if isinstance(err, RunStopped) else "failed"), str(err)
    except Exception as err:   # noqa: BLE001 - one broken run must not stop the others
        state, error = "failed", f"{type(err).__name__}: {err}"
    return {"name": job.name, "state": state, "error": error, "action": ", ".join(actions) or None,
            "seconds": round(time.perf_counter() - t0, 1)}
