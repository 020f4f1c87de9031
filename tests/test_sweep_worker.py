"""A sweep run's steps in one process (issue 25): `python -m vaelab.cli.sweep_worker STEPS` runs `vaelab STEP` after
its log header, stops at the first failure with its exit code, and sweep_run names the step that failed from the
headers. The whole sweep (train and evaluate in one process, SIGTERM, resume) is tests/test_sweep.py's."""

from __future__ import annotations

import json
import subprocess
import sys

from vaelab.cli.sweep_worker import run_steps, worker_main
from vaelab.experiments.sweep_run import STEP_HEADER, _error_line


def test_steps_run_in_order_and_the_first_failure_ends_them(capsys):
    assert run_steps([["list"], ["train", "--epochs", "x"], ["list"]]) == 2
    out, err = capsys.readouterr()
    headers = [line for line in out.splitlines() if STEP_HEADER.match(line)]
    assert [STEP_HEADER.match(h)[1] for h in headers] == ["list", "train"]   # the third step never started
    assert out.count("latent families (model.latent):") == 1
    assert err.strip().splitlines() == ["vaelab: error: argument --epochs: invalid int value: 'x': see "
                                        "`vaelab train --help`"]


def test_bad_steps_are_one_line_errors(capsys):
    for argv in ([], ["not json"], ["[]"], ['[["list"], "x"]'], ["a", "b"]):
        assert worker_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("vaelab: error: sweep_worker"), err


def test_the_worker_process_exits_with_the_failed_steps_code():
    steps = json.dumps([["list"], ["sample"]])          # `sample` without RUN: argparse refuses it, code 2
    proc = subprocess.run([sys.executable, "-m", "vaelab.cli.sweep_worker", steps], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 2 and "presets (vaelab train NAME)" in proc.stdout
    assert proc.stderr.startswith("vaelab: error: the following arguments are required: run")


def test_the_error_names_the_step_whose_header_came_last(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("old output\nvaelab: error: an earlier run's error\n")
    start = log.stat().st_size
    with open(log, "a") as f:
        f.write("# 2026-01-02 03:04:05 vaelab train CONFIG --out RUN --quiet\nrun written to RUN\n"
                "# 2026-01-02 03:04:09 vaelab evaluate RUN --iw-samples 5 --quiet\nvaelab: error: disk full: free it\n")
    assert _error_line(log, start, 2, ["train", "evaluate"]) == (1, "evaluate: disk full: free it")
    with open(log, "a") as f:
        f.write("# 2026-01-02 03:05:00 vaelab train --resume RUN --epochs 3 --quiet\n")
    start_killed = log.stat().st_size - len("# 2026-01-02 03:05:00 vaelab train --resume RUN --epochs 3 --quiet\n")
    index, message = _error_line(log, start_killed, -9, ["train", "evaluate"])
    assert index == 0 and message.startswith("train: killed by SIGKILL")
    assert _error_line(log, log.stat().st_size, 1, ["train"]) == (0, f"train: exit code 1 (no output); see {log}")
