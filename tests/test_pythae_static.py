"""benchmarks/pythae_static.py's `table`: Pythae's runs beside vaelab's committed seeds of the 784-400-40 preset
(its `train` needs Pythae's own venv and is not run here)."""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pythae_static.py"
SEEDS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "published" / "seeds"


def fake_pythae_run(path: Path, seed: int, nll: float) -> None:
    path.mkdir()
    rows = [{"epoch": e, "train_loss": 300.0 - e / 10 + seed, "valid_loss": 200.0 - e / 10 + seed, "seconds": 1.0}
            for e in range(1, 501)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "result.json").write_text(json.dumps({"test_images": 10_000, "test_nll_k200": nll}))


def test_the_table_sets_pythae_runs_beside_the_committed_seeds(tmp_path):
    fake_pythae_run(tmp_path / "p0", 0, 90.0)
    fake_pythae_run(tmp_path / "p1", 1, 91.0)
    out = tmp_path / "table.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "table", str(tmp_path / "p0"), str(tmp_path / "p1"),
                           "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    record = json.loads(out.read_text())
    ours = sorted(SEEDS.glob("vae_784_400_40_static-s?"))
    at_500 = [-[json.loads(r) for r in (d / "metrics.jsonl").read_text().splitlines()][499]["valid_elbo"]
              for d in ours]
    assert [row[-1] for row in record["vaelab_valid_nelbo"]] == at_500          # epoch 500, straight from the files
    assert record["pythae_valid_nelbo"][1][0] == 200.0 - 0.1 + 1                 # epoch 1 of the second run
    assert record["pythae_test_nll_k200"] == [90.0, 91.0]
    vaelab_row = next(line for line in done.stdout.splitlines() if line.startswith("| vaelab"))
    mean, se = statistics.fmean(at_500), statistics.stdev(at_500) / len(at_500) ** 0.5
    assert f"{mean:.2f} ± {se:.2f}" in vaelab_row
    assert "| 90.50 ± 0.50 |" in next(line for line in done.stdout.splitlines() if line.startswith("| Pythae"))


@pytest.mark.skipif(importlib.util.find_spec("pythae") is not None, reason="pythae is installed in this venv")
def test_train_outside_pythaes_venv_is_one_line_exit_2(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "train", str(tmp_path / "x")], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "pythae_static: pythae is not installed here: run `train` with .venv-pythae/bin/python"]
