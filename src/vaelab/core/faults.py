"""Deterministic fault injection for tests: `VAELAB_FAULT=POINT:N` kills this process with SIGKILL the N-th time
it passes the named point, so a crash test stops at the same place on a fast machine and a slow one.
`VAELAB_FAULT=POINT:N:SIG` (SIG one of TERM, HUP, INT, STOP) raises that signal in this thread instead, at the
same place: the trainer's stop-on-signal path (lifecycle.StopSignals), or a process frozen while it holds its run
lock (STOP; the test resumes or kills it).

Points: `step` (after each optimisation step), `checkpoint.written` (the new checkpoint is complete in
checkpoint.tmp/, nothing swapped yet), `checkpoint.moved-old` (the previous checkpoint is renamed to
checkpoint.old/, the new one not yet in place), `locked` (the run lock is taken, nothing written yet).
Unset (the normal case) every call is one comparison.
"""

from __future__ import annotations

import os
import signal

from vaelab.core.errors import VaelabError

ENV = "VAELAB_FAULT"
POINTS = ("step", "checkpoint.written", "checkpoint.moved-old", "locked")
SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "HUP": signal.SIGHUP, "INT": signal.SIGINT,
           "STOP": signal.SIGSTOP}


def _parse(spec: str) -> tuple[str, int, signal.Signals]:
    point, _, rest = spec.partition(":")
    count, _, sig = rest.partition(":")
    if point not in POINTS or not count.isdigit() or int(count) < 1 or (sig or "KILL") not in SIGNALS:
        raise VaelabError(f"{ENV}={spec!r}: write POINT:N or POINT:N:SIG with POINT one of {', '.join(POINTS)}, "
                          f"N >= 1 and SIG one of {', '.join(SIGNALS)}")
    return point, int(count), SIGNALS[sig or "KILL"]


_hits: dict[str, int] = {}


def reset() -> None:
    """Forget the points passed so far (in-process tests that train more than once)."""
    _hits.clear()


def point(name: str) -> None:
    """Pass the fault point `name`; SIGKILL this process (or raise the named signal) if VAELAB_FAULT names it and
    its count is reached."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, count, sig = _parse(spec)
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == count:
        if sig == signal.SIGKILL:
            os.kill(os.getpid(), signal.SIGKILL)
        signal.raise_signal(sig)
