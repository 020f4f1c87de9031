"""The numeric limits vaelab accepts and the checks of counts against them: the seed range (SEED_MAX, the one seed
check `check_seed`, shared by the config keys, the command-line flags and the Python API) and the importance
samples K (IW_SAMPLES_MAX), with `check_count`, the check of a command-line count. Imports nothing but
core/errors.py, so the CLI checks its flags without loading the config checks."""

from __future__ import annotations

from typing import Any

from vaelab.core.errors import VaelabError, check_number

SEED_MAX = 2**63 - 1            # torch and numpy seeds: 0 .. 2^63-1
IW_SAMPLES_MAX = 1_000_000      # K of the IW estimate (streamed in chunks: memory is bounded, time is not)


def check_count(flag: str, value: int | None, lo: int, hi: int, why: str = "") -> None:
    """A command-line count in [lo, hi] (None: the option was not given)."""
    if value is None:
        return
    if value < lo or value > hi:
        limit = f" (the limit{why})" if value > hi else ""
        raise VaelabError(f"{flag} {value}: give a number from {lo} to {hi:,}{limit}")


def check_seed(where: str, value: Any, *, count: bool = False) -> None:
    """The one seed check: torch's and numpy's seeds, 0..2^63-1 (SEED_MAX). A config key is worded as every config
    number ("train.seed = -1 must be an integer in 0..9223372036854775807: give a seed in 0..2^63-1"); `count`: a
    command-line flag or a Python API argument, worded as the other counts ("--seed -1: give a number from 0 to
    9,223,372,036,854,775,807", `check_count`), None meaning not given."""
    if count:
        check_count(where, value, 0, SEED_MAX)
    else:
        check_number(where, value, 0, SEED_MAX, integer=True, fix="give a seed in 0..2^63-1")
