"""benchmarks/same_curve.py: a run's curve against a committed one-run compare.json, bit for bit."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
from helpers import write_run

from vaelab.experiments.compare import compare

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "same_curve.py"


def same_curve(run, compare_json):
    return subprocess.run([sys.executable, str(SCRIPT), str(run), str(compare_json)], capture_output=True, text=True)


def test_a_run_equals_its_own_compare_curve_and_one_ulp_off_is_caught(tmp_path):
    """compare.json keeps each float exactly, so the run matches itself; moving one value by one ulp fails."""
    run = tmp_path / "run"
    write_run(run, "reparam", 0, (-100.0, -95.0, 0.02, 20.0, -80.0), epochs=5)
    rng = np.random.default_rng(0)
    rows = [json.loads(line) | {"train_elbo": float(-120 + rng.standard_normal())}     # no short decimal form
            for line in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    compare([run], out=tmp_path / "cmp")
    compare_json = tmp_path / "cmp" / "compare.json"
    ok = same_curve(run, compare_json)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "5/5 epochs equal" in ok.stdout and "train_elbo" in ok.stdout

    rows[2]["train_elbo"] = math.nextafter(rows[2]["train_elbo"], 0.0)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    off = same_curve(run, compare_json)
    assert off.returncode == 1
    assert "train_elbo   4/5 epochs equal" in off.stdout


def test_a_several_seed_compare_is_refused(tmp_path):
    """Each curve's mean is one run's values only when the comparison holds one seed; bad input is one line, exit 2."""
    for seed in (0, 1):
        write_run(tmp_path / f"s{seed}", "reparam", seed, (-100.0, -95.0, 0.02, 20.0, -80.0))
    compare([tmp_path / "s0", tmp_path / "s1"], out=tmp_path / "cmp")
    refused = same_curve(tmp_path / "s0", tmp_path / "cmp" / "compare.json")
    assert refused.returncode == 2 and "2 seeds; give a one-run compare.json" in refused.stderr
    missing = same_curve(tmp_path / "s0", tmp_path / "nowhere.json")
    assert missing.returncode == 2 and "nowhere.json" in missing.stderr and "Traceback" not in missing.stderr
