"""Does a run's training curve equal a committed one, epoch by epoch, bit for bit?

    python benchmarks/same_curve.py RUN REFERENCE

REFERENCE is a one-run `vaelab compare` compare.json (one seed, so each curve's "mean" is that run's own value), a
run directory, or a `vaelab bundle` file (benchmarks/state/NAME.safetensors: an unfinished reproduction run, whose
metrics.jsonl it carries). Prints, for each curve both hold, the largest |difference| over the epochs both have
and how many are exactly equal (wall-clock seconds are not compared). Exit 1 if any differs, 2 (one line) on bad
input. It is how RESULTS.md checks that a fresh run reproduces a run whose directory was lost, and how a reader
checks the first epochs of a long run that is still going:

    vaelab train configs/literature/iwae_vae_1layer.yaml --seed 0 --epochs 2 --out /tmp/iwae-s0
    python benchmarks/same_curve.py /tmp/iwae-s0 benchmarks/state/iwae_vae_1layer-s0.safetensors
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

NOT_COMPARED = ("epoch", "seconds")                   # the epoch is the key; seconds are the machine's


def curve_differences(run: Path, reference: Path) -> dict[str, tuple[float, int, int]]:
    """{curve: (max |run - reference|, epochs exactly equal, epochs compared)} over the epochs both hold."""
    committed = reference_curves(reference)
    out = {}
    for key, curve in metrics_curves(read_rows(run / "metrics.jsonl")).items():
        diffs = [abs(value - committed[key][epoch]) for epoch, value in curve.items()
                 if epoch in committed.get(key, {})]
        if diffs:
            out[key] = (max(diffs), sum(d == 0 for d in diffs), len(diffs))
    return out


def reference_curves(reference: Path) -> dict[str, dict[int, float]]:
    """{curve: {epoch: value}} of a one-run compare.json, a run directory or a `vaelab bundle` file."""
    if reference.is_dir():
        return metrics_curves(read_rows(reference / "metrics.jsonl"))
    if reference.suffix == ".safetensors":
        from vaelab.runs.bundle import read_bundle  # checks the bundle's digest; a bad one is one VaelabError

        return metrics_curves(read_bundle(reference)[2]["history"])    # its metrics.jsonl, already parsed
    settings = json.loads(reference.read_text())["settings"]
    if len(settings) != 1:
        raise ValueError(f"{reference}: {len(settings)} settings; give a one-run compare.json")
    setting = settings[0]
    if len(setting["seeds"]) != 1:
        raise ValueError(f"{reference}: {len(setting['seeds'])} seeds; give a one-run compare.json")
    return {key: dict(zip(curve["epoch"], curve["mean"], strict=True)) for key, curve in setting["curves"].items()}


def read_rows(path: Path) -> list[dict]:
    """A metrics.jsonl's rows."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def metrics_curves(rows: list[dict]) -> dict[str, dict[int, float]]:
    """{curve: {epoch: value}} of metrics.jsonl rows' numeric fields."""
    keys = {k for r in rows for k, v in r.items() if isinstance(v, float | int) and k not in NOT_COMPARED}
    return {k: {r["epoch"]: r[k] for r in rows if k in r} for k in sorted(keys)}


def fail(message: str) -> None:
    """One line on stderr, exit 2 (the project's convention for bad input)."""
    print(f"same_curve: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    if len(sys.argv) != 3:
        fail("usage: python benchmarks/same_curve.py RUN REFERENCE (a one-run compare.json, run directory or bundle)")
    from vaelab.core.errors import VaelabError

    try:
        diffs = curve_differences(Path(sys.argv[1]), Path(sys.argv[2]))
    except (ValueError, VaelabError) as e:            # bad JSON, not a one-run comparison, a damaged bundle
        fail(str(e))
    except (OSError, KeyError) as e:                  # a missing file, or a compare.json without settings/curves
        fail(f"cannot read {e}; give a run directory and a one-run compare.json, run directory or bundle")
    for key, (worst, equal, n) in diffs.items():
        print(f"{key:12s} {equal}/{n} epochs equal, max |diff| {worst:.3g}")
    sys.exit(0 if diffs and all(equal == n for _, equal, n in diffs.values()) else 1)


if __name__ == "__main__":
    main()
