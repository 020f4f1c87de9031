"""benchmarks/step_floor.py still runs against the package (it broke once, unnoticed, when the optimizers moved):
a three-step round of every variant on the IWAE and the linear DisARM presets, in a subprocess; it prints the
table with each preset's hand-written step named. Times are printed, never asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_step_floor_benchmark_runs_and_names_the_hand_written_steps(tmp_path):
    out = tmp_path / "floor.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "step_floor.py"), "--steps", "3", "--repeats", "1", "--out", out,
         "--presets", "literature/iwae_vae_1layer", "literature/disarm_linear"],
        capture_output=True, text=True, cwd=ROOT, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| literature/")]
    assert [r.split(" |")[0] for r in rows] == ["| literature/iwae_vae_1layer (hand-written)",
                                                "| literature/disarm_linear (hand-written)"]
    assert all(len(r.strip("|").split("|")) == 10 for r in rows)
    assert not out.exists()                                   # a quick check (< 100 steps) writes no results file
