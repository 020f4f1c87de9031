"""Summaries across seeds for `vaelab compare`: mean ± standard error, and paired differences with a t interval.

The unit of replication is the training seed: each run contributes one number (its test-set mean), and the
standard error is that of the mean of those numbers, s / sqrt(n) with the n - 1 sample standard deviation.
A paired difference uses only the seeds both settings share; its 95% interval is mean ± t(0.975, n - 1) · s.e.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

SE_LABEL = "± s.e. across seeds"


@dataclass(frozen=True)
class Summary:
    """Mean of `n` per-seed values and its standard error (None when n < 2: one seed says nothing of spread)."""

    mean: float | None
    se: float | None
    n: int

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


@dataclass(frozen=True)
class Paired:
    """Mean difference b - a over `seeds` (shared by both settings), its standard error and `level` t interval."""

    mean: float | None
    se: float | None
    n: int
    lo: float | None
    hi: float | None
    level: float
    seeds: tuple

    def to_dict(self) -> dict:
        return asdict(self) | {"seeds": list(self.seeds)}


def _finite(values: Sequence[float | None]) -> np.ndarray:
    arr = np.array([v for v in values if v is not None], dtype=float)
    return arr[np.isfinite(arr)]


def mean_se(values: Sequence[float | None]) -> Summary:
    """Mean and standard error of the finite, non-None `values`."""
    arr = _finite(values)
    if len(arr) == 0:
        return Summary(None, None, 0)
    se = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else None
    return Summary(float(arr.mean()), se, len(arr))


def t_interval(mean: float, se: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Two-sided `level` interval mean ± t_{(1+level)/2, n-1} · se."""
    from scipy import stats

    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
    return mean - half, mean + half


def paired_difference(a: Mapping, b: Mapping, level: float = 0.95) -> Paired:
    """b[s] - a[s] over the seeds s where both have a finite value: mean, s.e. and t interval (n >= 2)."""
    seeds = tuple(sorted(s for s in a.keys() & b.keys() if _usable(a[s]) and _usable(b[s])))
    diffs = np.array([b[s] - a[s] for s in seeds], dtype=float)
    if len(diffs) == 0:
        return Paired(None, None, 0, None, None, level, seeds)
    mean = float(diffs.mean())
    if len(diffs) < 2:
        return Paired(mean, None, 1, None, None, level, seeds)
    se = float(diffs.std(ddof=1) / math.sqrt(len(diffs)))
    lo, hi = t_interval(mean, se, len(diffs), level)
    return Paired(mean, se, len(diffs), lo, hi, level, seeds)


def _usable(value) -> bool:
    return value is not None and math.isfinite(value)


def combined_mc_se(mc_errors: Sequence[float | None]) -> float | None:
    """Monte Carlo standard error of the mean of n independent estimates with errors e_i: sqrt(sum e_i^2) / n.
    None unless every run reports its error."""
    if not mc_errors or any(e is None for e in mc_errors):
        return None
    return math.sqrt(sum(e * e for e in mc_errors)) / len(mc_errors)
