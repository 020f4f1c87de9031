"""Deterministic fault injection for tests: `VAELAB_FAULT=POINT:N` kills this process with SIGKILL the N-th time
it passes the named point, so a crash test stops at the same place on a fast machine and a slow one.

Points: `step` (after each optimisation step), `checkpoint.written` (the new checkpoint is complete in
checkpoint.tmp/, nothing swapped yet), `checkpoint.moved-old` (the previous checkpoint is renamed to
checkpoint.old/, the new one not yet in place). Unset (the normal case) every call is one comparison.
"""

from __future__ import annotations

import os
import signal

from .errors import VaelabError

ENV = "VAELAB_FAULT"
POINTS = ("step", "checkpoint.written", "checkpoint.moved-old")


def _parse(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    point, _, count = spec.rpartition(":")
    if point not in POINTS or not count.isdigit() or int(count) < 1:
        raise VaelabError(f"{ENV}={spec!r}: write POINT:N with POINT one of {', '.join(POINTS)} and N >= 1")
    return point, int(count)


_hits: dict[str, int] = {}


def point(name: str) -> None:
    """Pass the fault point `name`; SIGKILL this process if VAELAB_FAULT names it and its count is reached."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target = _parse(spec)
    if target[0] != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
