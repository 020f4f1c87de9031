"""Progress of long work on stderr, one rule for every command: a tqdm bar only when stderr is a terminal, and
otherwise one short line per stage, so a log file never holds bar fragments (carriage returns, half-drawn bars).

`bar(items, desc, enabled)` wraps a loop: on a terminal it is a tqdm bar (left on screen only while it runs); off a
terminal it prints one line, "desc: N unit", when the loop starts and then yields the items unchanged.
`stage(msg, enabled)` prints one line for a stage that has no loop to count (on a terminal through tqdm.write, so
a running bar is not torn). `enabled=False` (`--quiet`) silences both. Library functions pass `progress=False` by
default: only the command line and `vaelab reproduce` turn it on.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def on_terminal() -> bool:
    """True when stderr is an interactive terminal (where a redrawn bar is readable)."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def stage(msg: str, enabled: bool = True) -> None:
    """One line on stderr naming a stage of long work; nothing when not `enabled`."""
    if enabled:
        tqdm.write(msg, file=sys.stderr)
        sys.stderr.flush()


def bar(items: Iterable[T], desc: str, enabled: bool = True, total: int | None = None,
        unit: str = "batches") -> Iterable[T]:
    """`items`, with a tqdm bar on a terminal or one "desc: N unit" line elsewhere (nothing when not `enabled`).
    Off a terminal the line is printed when the loop starts, so a check that fails before it prints nothing."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    if enabled and on_terminal():
        return tqdm(items, desc=desc, total=total, unit=f" {unit}", leave=False, file=sys.stderr)
    return _announced(items, (desc if total is None else f"{desc}: {total} {unit}") if enabled else None)


def _announced(items: Iterable[T], line: str | None) -> Iterator[T]:
    if line is not None:
        stage(line)
    yield from items
