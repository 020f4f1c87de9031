"""benchmarks/same_curve.py: a run's curve against a committed one (a one-run compare.json, a run directory or a
bundle), bit for bit."""

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


TINY = ["gaussian_vae", "--data", "digits", "--quiet", "--device", "cpu", "--set", "model.hidden=[16]",
        "--set", "model.latent_dim=4", "--set", "train.batch_size=32", "--set", "train.steps_per_epoch=4"]


def test_a_short_rerun_equals_a_longer_runs_first_epochs_in_its_directory_and_its_bundle(tmp_path, cli):
    """The reader's check of a long run still going: a 2-epoch rerun against the 3-epoch run's directory and its
    `vaelab bundle` (the epochs both hold); another seed differs (exit 1); a damaged bundle is one line, exit 2."""
    for name, epochs, seed in (("long", 3, 0), ("short", 2, 0), ("other", 2, 1)):
        code, _, err = cli("train", *TINY, "--epochs", epochs, "--seed", seed, "--out", tmp_path / name)
        assert code == 0, err
    assert cli("bundle", tmp_path / "long", "--out", tmp_path / "long.safetensors")[0] == 0
    for reference in (tmp_path / "long", tmp_path / "long.safetensors"):
        ok = same_curve(tmp_path / "short", reference)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "train_elbo   2/2 epochs equal, max |diff| 0" in ok.stdout and "seconds" not in ok.stdout
        off = same_curve(tmp_path / "other", reference)
        assert off.returncode == 1 and "train_elbo   0/2 epochs equal" in off.stdout, off.stdout
    data = bytearray((tmp_path / "long.safetensors").read_bytes())
    data[-5] ^= 0xFF                                        # a flipped byte in the last tensor
    (tmp_path / "bad.safetensors").write_bytes(bytes(data))
    bad = same_curve(tmp_path / "short", tmp_path / "bad.safetensors")
    assert bad.returncode == 2 and "bad.safetensors" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
