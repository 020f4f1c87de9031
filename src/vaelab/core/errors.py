"""User-facing errors: one line that names the problem and the fix; the CLI exits 2 on them. Also the pieces every
check builds its line from: the one number validator (`check_number`), the one choice validator (`check_choice`)
and the "did you mean" hint."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from typing import Any


class VaelabError(Exception):
    """A bad input or setting; the message says what is wrong and how to fix it."""


class Stopped(Exception):
    """Training stopped on a signal after writing a checkpoint; the CLI prints the message and exits 128 + signum."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def did_you_mean(name: object, choices: Iterable[str], prefix: str = "", quote: bool = True) -> str:
    """"did you mean 'choice'? " for the choice closest to `name` (with `prefix` and unquoted: "did you mean
    train.lr? "), or "" when none is close: the hint every "unknown ..." error puts before its fix."""
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    if not close:
        return ""
    shown = prefix + close[0]
    return f"did you mean {shown!r}? " if quote else f"did you mean {shown}? "


def check_choice(where: str, value: Any, choices: Iterable[str] | Mapping[str, str]) -> Any:
    """The one choice validator: `value` must be one of `choices`, else a VaelabError "WHERE = VALUE is not known:
    did you mean 'x'? choose one of a, b". Given a mapping, each choice is listed with its words: "choose one of
    rec (log p(x|z) ...), elbo (...)". Returns `value`."""
    shown = [f"{c} ({choices[c]})" for c in choices] if isinstance(choices, Mapping) else list(choices)
    names = list(choices)
    if value not in names:
        raise VaelabError(f"{where} = {value!r} is not known: {did_you_mean(value, names)}choose one of "
                          f"{', '.join(shown)}")
    return value


def check_number(where: str, value: Any, lo: float | None = None, hi: float | None = None, *, integer: bool = False,
                 open_lo: bool = False, open_hi: bool = False, fix: str = "") -> None:
    """The one number validator: `value` must be a finite number (an int when `integer`; a bool is neither) from
    `lo` to `hi` (None: unbounded), an end excluded when `open_lo` / `open_hi`. Otherwise a VaelabError
    "WHERE = VALUE must be WHAT: FIX", e.g. "train.lr = 0.0 must be a finite number > 0: e.g. train.lr=1e-3"."""
    if isinstance(value, int if integer else int | float) and not isinstance(value, bool) \
            and (isinstance(value, int) or math.isfinite(value)) \
            and (lo is None or (value > lo if open_lo else value >= lo)) \
            and (hi is None or (value < hi if open_hi else value <= hi)):
        return
    raise VaelabError(f"{where} = {value!r} must be {_span(lo, hi, integer, open_lo, open_hi)}{_as_text(value)}: "
                      f"{fix or 'fix the value'}")


def _as_text(value: Any) -> str:
    """Why a number arrived as a string: YAML 1.1 reads 5e2 (no dot) as text; say how to write it."""
    try:
        number = float(value) if isinstance(value, str) else None
    except ValueError:
        return ""
    if number is None or not math.isfinite(number):
        return ""
    return f" (YAML reads {value} as text: write {number:.1e} or {number:g})"


def _span(lo: float | None, hi: float | None, integer: bool, open_lo: bool, open_hi: bool) -> str:
    """What `check_number` asks for, in words: "an integer in 1..65536", "a finite number > 0", ..."""
    kind = "an integer" if integer else "a finite number"
    if lo is not None and hi is not None:
        if integer and not (open_lo or open_hi):
            return f"{kind} in {lo}..{hi}"
        if open_lo and open_hi:
            return f"{kind} strictly between {lo} and {hi}"
        return f"{kind} in {'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}"
    if lo is not None:
        return f"{kind} {'>' if open_lo else '>='} {lo}"
    if hi is not None:
        return f"{kind} {'<' if open_hi else '<='} {hi}"
    return kind
