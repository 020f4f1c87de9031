"""What every `vaelab` command module shares: argparse with vaelab's error format, the seed check, and the
documented limits of the command-line counts (README, "Bad input"): above them a command would run for days or
hold more than a large machine's memory, so it is refused at once.

The command modules import nothing that imports torch at their top (checks, config, the registries load inside
the `cmd_<command>` functions), so `vaelab --help`, `--version`, `list` and argument errors answer at once."""

from __future__ import annotations

import argparse
import sys

SAMPLE_N_MAX = 10_000          # images in one sample grid
QUALITY_N_MAX = 100_000        # samples scored by `quality` (held in memory with their classifier features)
DRAWS_MAX = 10_000             # gradvar draws (streamed, GradMoments: bounds time, not memory)
BATCH_MAX = 65_536             # gradvar's fixed batch
WARMUP_MAX = 1_000_000         # gradvar warm-up steps
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".pdf", ".svg")


class Parser(argparse.ArgumentParser):
    """argparse with vaelab's error format: one line on stderr (no usage block), exit code 2."""

    def error(self, message: str) -> None:
        print(f"vaelab: error: {message}: see `{self.prog} --help`", file=sys.stderr)
        raise SystemExit(2)


def given(what: str):
    """An argparse `type` for a string option whose value must not be empty or blank (`--out ''` would write into
    the current directory, `--data ''` fall back to the config's source): refused as "argument --out: an empty
    value: give WHAT"."""
    def check(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"an empty value: give {what}")
        return text
    check.__name__ = "non-empty"
    return check


def check_seed(flag: str, value: int | None) -> None:
    """A `--seed` in 0..2^63-1 (None: not given): config.limits.check_seed, the one seed check, worded as a count."""
    from vaelab.config.limits import check_seed as check

    check(flag, value, count=True)


def add_quiet(p: argparse.ArgumentParser) -> None:
    """`--quiet`: no progress on stderr (neither bars on a terminal nor stage lines in a log)."""
    p.add_argument("--quiet", action="store_true", help="no progress bars or stage lines on stderr")
