"""Does a run's training curve equal a committed `vaelab compare` curve, epoch by epoch, bit for bit?

    python benchmarks/same_curve.py RUN benchmarks/results/published/NAME/compare.json

For a one-run compare.json (one seed, so each curve's "mean" is that run's own value): prints, for each curve the
run's metrics.jsonl shares, the largest |difference| over the run's epochs and how many are exactly equal. Exit 1
if any differs, 2 (one line) on bad input. It is how RESULTS.md checks that a fresh run reproduces a run whose
directory was lost.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def curve_differences(run: Path, compare_json: Path) -> dict[str, tuple[float, int, int]]:
    """{curve: (max |run - committed|, epochs exactly equal, epochs compared)} over the run's epochs."""
    settings = json.loads(compare_json.read_text())["settings"]
    if len(settings) != 1:
        raise ValueError(f"{compare_json}: {len(settings)} settings; give a one-run compare.json")
    setting = settings[0]
    if len(setting["seeds"]) != 1:
        raise ValueError(f"{compare_json}: {len(setting['seeds'])} seeds; give a one-run compare.json")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    out = {}
    for key, curve in setting["curves"].items():
        committed = dict(zip(curve["epoch"], curve["mean"], strict=True))
        diffs = [abs(r[key] - committed[r["epoch"]]) for r in rows if key in r and r["epoch"] in committed]
        if diffs:
            out[key] = (max(diffs), sum(d == 0 for d in diffs), len(diffs))
    return out


def fail(message: str) -> None:
    """One line on stderr, exit 2 (the project's convention for bad input)."""
    print(f"same_curve: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    if len(sys.argv) != 3:
        fail("usage: python benchmarks/same_curve.py RUN COMPARE_JSON")
    try:
        diffs = curve_differences(Path(sys.argv[1]), Path(sys.argv[2]))
    except ValueError as e:                           # bad JSON, or not a one-run comparison
        fail(str(e))
    except (OSError, KeyError) as e:                  # a missing file, or a compare.json without settings/curves
        fail(f"cannot read {e}; give a run directory and a one-run compare.json")
    for key, (worst, equal, n) in diffs.items():
        print(f"{key:12s} {equal}/{n} epochs equal, max |diff| {worst:.3g}")
    sys.exit(0 if diffs and all(equal == n for _, equal, n in diffs.values()) else 1)


if __name__ == "__main__":
    main()
