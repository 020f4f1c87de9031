"""Faults at deterministic points (vaelab.core.faults): stop signals, kills before the first checkpoint, a full disk in
the middle of a checkpoint, two writers on one run directory, stale locks. No test waits on the clock: a process
stops, kills or signals itself at a named point (VAELAB_FAULT=POINT:N[:SIG]), and the test reads what it left."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard_helpers import scalars as tb_scalars

from vaelab.core import faults
from vaelab.runs.checkpoint import read_checkpoint
from vaelab.runs.run_dir import LOCK_FILE

CONFIG = "configs/gaussian_vae.yaml"
ARGS = ["--data", "digits", "--quiet", "--device", "cpu", "--set", "train.epochs=2", "--set", "model.hidden=[16]",
        "--set", "model.latent_dim=2", "--set", "train.batch_size=64"]
STEPS = 21                                      # 1297 training digits in batches of 64
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def train_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vaelab", "train", CONFIG, "--out", str(out), *ARGS, *extra]


def resume_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vaelab", "train", "--resume", str(out), "--quiet", *extra]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoint" / "model.safetensors")


def rows(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock field."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert rows(a) == rows(b)
    assert tb_scalars(a) == tb_scalars(b)          # what an attempt logged past its checkpoint is purged on resume
    assert not (b / "checkpoint.tmp").exists() and not (b / "checkpoint.old").exists()


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must equal, bit for bit."""
    from vaelab.cli.main import main

    out = tmp_path_factory.mktemp("faults") / "straight"
    assert main(["train", CONFIG, "--out", str(out), *ARGS]) == 0
    return out


@pytest.fixture
def fault(monkeypatch):
    """Set VAELAB_FAULT for in-process runs (counts start afresh)."""
    def set_fault(spec: str | None) -> None:
        faults.reset()
        if spec is None:
            monkeypatch.delenv(faults.ENV, raising=False)
        else:
            monkeypatch.setenv(faults.ENV, spec)
    yield set_fault
    faults.reset()


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -------------------------------------------------------------------------------------------- stop on a signal


@pytest.mark.parametrize(("spec", "where"), [
    (f"step:{STEPS + 9}:TERM", "in epoch 2 after step 9"),     # inside an epoch: a partial checkpoint
    ("step:5:HUP", "in epoch 1 after step 5"),                # inside the first epoch: not stranded
    ("step:12:INT", "in epoch 1 after step 12"),              # Ctrl-C is the same path
    (f"step:{STEPS}:TERM", "after epoch 1"),                  # on the epoch's last step: the epoch's checkpoint
])
def test_stop_signal_checkpoints_and_resumes_bit_for_bit(spec, where, straight, tmp_path, cli, fault):
    run = tmp_path / "run"
    fault(spec)
    code, _, err = cli("train", CONFIG, "--out", run, *ARGS)
    sig = getattr(signal, "SIG" + spec.rsplit(":", 1)[1])
    assert code == 128 + sig
    line = one_line(err)
    assert line.startswith(f"vaelab: stopped by {sig.name} {where}") and "--resume" in line, line
    state = read_checkpoint(run)[2]
    assert ("partial" in state) == ("step" in where)
    fault(None)
    assert cli("train", "--resume", run, "--quiet")[0] == 0
    assert_same_run(straight, run)


def test_evaluating_a_run_stopped_inside_an_epoch_counts_its_steps(tmp_path, cli, fault):
    """Stopped after step 9 of epoch 2, the checkpoint's weights have taken 21 + 9 steps: eval.json says so
    (epochs_trained counts whole epochs)."""
    run = tmp_path / "run"
    fault(f"step:{STEPS + 9}:TERM")
    assert cli("train", CONFIG, "--out", run, *ARGS)[0] == 128 + signal.SIGTERM
    fault(None)
    assert cli("evaluate", run, "--iw-samples", "5", "--quiet")[0] == 0
    ev = json.loads((run / "eval.json").read_text())
    assert (ev["epochs_trained"], ev["steps_trained"]) == (1, STEPS + 9)


@pytest.mark.slow
def test_sigterm_from_outside_stops_a_cli_process_resumably(straight, tmp_path, cli):
    """A real SIGTERM from another process: the trainer freezes itself at step 7 (SIGSTOP), the test sends SIGTERM
    and SIGCONT; the trainer checkpoints at its next safe point and exits 143."""
    run = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(run), env=ENV | {faults.ENV: "step:7:STOP"}, stderr=subprocess.PIPE, text=True)
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status)
    os.kill(proc.pid, signal.SIGTERM)
    os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM
    assert one_line(err).startswith("vaelab: stopped by SIGTERM in epoch 1")
    assert cli("train", "--resume", run, "--quiet")[0] == 0
    assert_same_run(straight, run)


# ------------------------------------------------------------------------------------- kills and stranded runs


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "how"), [("step:5", "resume"), ("step:5", "restart"),
                                           ("checkpoint.written:1", "resume"), ("locked:1", "restart")])
def test_run_killed_before_its_first_checkpoint_is_not_stranded(spec, how, straight, tmp_path, cli):
    """SIGKILL inside epoch 1, with epoch 1's checkpoint complete in checkpoint.tmp but not swapped in, or right
    after the lock was taken: `train --resume` starts from step 0, `train CONFIG --out` restarts the run, and
    either ends equal to the uninterrupted run (the dead process's lock is taken over)."""
    run = tmp_path / "run"
    proc = subprocess.run(train_cmd(run), env=ENV | {faults.ENV: spec}, timeout=600)
    assert proc.returncode == -signal.SIGKILL
    assert (run / LOCK_FILE).is_file() and not (run / "checkpoint").exists()
    if how == "resume":
        code, _, err = cli("train", "--resume", run, "--quiet")
        assert code == 0 and "starting it from step 0" in err
    else:                                             # locked:1 dies before config.yaml: a plain new run
        code, _, err = cli("train", CONFIG, "--out", run, *ARGS)
        assert code == 0 and ("restarting it" in err) == (spec != "locked:1")
    assert_same_run(straight, run)


def test_divergence_in_the_first_epoch_promises_no_checkpoint_and_the_run_restarts(tmp_path, cli):
    run = tmp_path / "run"
    code, _, err = cli("train", CONFIG, "--out", run, *ARGS, "--set", "train.lr=1e30")
    line = one_line(err)
    assert code == 2 and "diverged in epoch 1" in line and "no checkpoint was written" in line
    assert f"--out {run}" in line and not (run / "checkpoint").exists()
    assert cli("train", CONFIG, "--out", run, *ARGS)[0] == 0     # the same command with a sane rate restarts it
    assert read_checkpoint(run)[2]["epoch"] == 2


# ------------------------------------------------------------------------------------------------ a full disk


@pytest.mark.slow
def test_disk_full_mid_checkpoint_keeps_the_previous_one(straight, tmp_path, cli):
    """Epoch 2's checkpoint hits a file-size limit (RLIMIT_FSIZE, set in the child only) while writing state.pt:
    one line, exit 2, epoch 1's checkpoint and metrics untouched, checkpoint.tmp removed; once space is back,
    --resume finishes the run as if nothing happened."""
    run = tmp_path / "run"
    assert cli("train", CONFIG, "--out", run, *ARGS, "--set", "train.epochs=1")[0] == 0
    sizes = {name: (run / "checkpoint" / name).stat().st_size for name in ("model.safetensors", "state.pt")}
    limit = (sizes["model.safetensors"] + sizes["state.pt"]) // 2
    assert sizes["model.safetensors"] < limit < sizes["state.pt"]
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and "tb" not in p.parts
              and p.name not in ("config.yaml", LOCK_FILE)}

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(resume_cmd(run, "--epochs", "2"), env=ENV, timeout=600, stderr=subprocess.PIPE, text=True,
                          preexec_fn=small_disk)
    line = one_line(proc.stderr)
    assert proc.returncode == 2 and "cannot write the checkpoint" in line and "File too large" in line
    assert "the previous checkpoint is intact" in line and "--resume" in line
    assert {p: p.read_bytes() for p in before} == before
    assert not (run / "checkpoint.tmp").exists()
    assert cli("train", "--resume", run, "--epochs", 2, "--quiet")[0] == 0
    assert_same_run(straight, run)


# --------------------------------------------------------------------------------------------- two writers


@pytest.mark.slow
def test_second_writer_is_refused_while_the_first_lives_and_takes_over_when_it_dies(straight, tmp_path, cli):
    """The first trainer freezes itself inside epoch 1 holding the lock (SIGSTOP at step 3); a second `train`
    and a `train --resume` on the same directory are refused, naming its pid. After SIGKILL its lock is stale
    and the same command restarts the run."""
    run = tmp_path / "run"
    first = subprocess.Popen(train_cmd(run), env=ENV | {faults.ENV: "step:3:STOP"})
    try:
        _, status = os.waitpid(first.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        for args in (("train", CONFIG, "--out", run, *ARGS), ("train", "--resume", run)):
            code, _, err = cli(*args)
            line = one_line(err)
            assert code == 2 and f"is being written by another vaelab process (pid {first.pid} on" in line
    finally:
        first.kill()
        first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    assert cli("train", CONFIG, "--out", run, *ARGS)[0] == 0
    assert_same_run(straight, run)


@pytest.mark.slow
def test_second_writer_waits_for_nothing_when_the_first_finishes(straight, tmp_path, cli):
    """The frozen first trainer is let go (SIGCONT) after the refusal: it finishes its run unharmed."""
    run = tmp_path / "run"
    first = subprocess.Popen(train_cmd(run), env=ENV | {faults.ENV: "step:30:STOP"})
    try:
        _, status = os.waitpid(first.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        assert "is being written by another" in one_line(cli("train", "--resume", run)[2])
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=600) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=60)
    assert_same_run(straight, run)
    assert "already holds a run" in one_line(cli("train", CONFIG, "--out", run, *ARGS)[2])


def test_a_lock_file_left_by_a_dead_process_is_taken_over(straight, tmp_path, cli):
    run = tmp_path / "run"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run.mkdir()
    (run / LOCK_FILE).write_text(f"pid {dead.stdout.strip()} on this host\n")    # no process holds its flock
    assert cli("train", CONFIG, "--out", run, *ARGS)[0] == 0
    assert_same_run(straight, run)
    assert not (run / LOCK_FILE).exists()                      # removed by the process that took it over


# ------------------------------------------------------------------------------------- a stop during start-up

# A child `vaelab` that raises SIGNAL on itself at a named point of its start-up, then runs main(ARGV): `torch`, the
# first import of torch (inside vaelab's own imports, after main began); `config`, just after the run's config.yaml
# is written (the run directory exists, nothing is trained yet); `finished`, after the last epoch (training over).
STARTUP_CHILD = """
import builtins, signal, sys
point, sig, argv = sys.argv[1], getattr(signal, sys.argv[2]), sys.argv[3:]
if point == "torch":
    real_import = builtins.__import__
    def hooked(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            builtins.__import__ = real_import
            signal.raise_signal(sig)
        return real_import(name, *args, **kwargs)
    builtins.__import__ = hooked
elif point == "finished":
    from vaelab.runs.metrics_log import MetricsSink
    finish = MetricsSink.finish
    def finished(self):
        finish(self)
        signal.raise_signal(sig)
    MetricsSink.finish = finished
else:
    from vaelab.runs import lifecycle
    write = lifecycle.atomic_write_text
    def written(path, *args, **kwargs):
        out = write(path, *args, **kwargs)
        if path.name == "config.yaml":
            signal.raise_signal(sig)
        return out
    lifecycle.atomic_write_text = written
from vaelab.cli.main import main
sys.exit(main(argv))
"""


def stopped_child(point: str, sig: str, *argv: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", STARTUP_CHILD, point, sig, *map(str, argv)], env=ENV, timeout=600,
                          capture_output=True, text=True)


@pytest.mark.parametrize(("point", "sig"), [("torch", "SIGTERM"), ("torch", "SIGHUP"), ("config", "SIGTERM")])
def test_a_stop_during_start_up_is_one_line_and_the_command_reruns(point, sig, straight, tmp_path, cli):
    """SIGTERM or SIGHUP while torch imports, or just after config.yaml appears: exit 128 + signum and one line
    (not death by the signal); nothing trained, and the same command then trains the run as if never stopped."""
    run = tmp_path / "run"
    proc = stopped_child(point, sig, "train", CONFIG, "--out", run, *ARGS)
    signum = getattr(signal, sig)
    assert proc.returncode == 128 + signum, proc.stderr
    assert one_line(proc.stderr) == f"vaelab: stopped by {sig} during start-up: nothing was trained; rerun the command"
    assert not (run / "checkpoint").exists()
    assert (run / "config.yaml").is_file() == (point == "config")
    code, _, err = cli("train", CONFIG, "--out", run, *ARGS)
    assert code == 0 and ("restarting it" in err) == (point == "config")
    assert_same_run(straight, run)


def test_a_stop_once_the_run_is_locked_is_one_line_in_process(tmp_path, cli, fault):
    """The in-process path (the pytest process's own handlers are put back after): SIGTERM right after the run's
    lock is taken, before anything is written."""
    before = signal.getsignal(signal.SIGTERM)
    fault("locked:1:TERM")
    code, _, err = cli("train", CONFIG, "--out", tmp_path / "run", *ARGS)
    assert code == 128 + signal.SIGTERM
    assert one_line(err) == "vaelab: stopped by SIGTERM during start-up: nothing was trained; rerun the command"
    assert not (tmp_path / "run" / "config.yaml").exists() and signal.getsignal(signal.SIGTERM) == before


def test_a_stop_while_another_command_starts_names_it(straight, tmp_path):
    proc = stopped_child("torch", "SIGTERM", "evaluate", straight, "--iw-samples", "5", "--quiet")
    assert proc.returncode == 128 + signal.SIGTERM
    assert one_line(proc.stderr) == "vaelab: stopped by SIGTERM before `vaelab evaluate` finished: rerun the command"
    assert not (straight / "eval.json").exists()


def test_a_stop_after_the_last_epoch_does_not_claim_nothing_was_trained(straight, tmp_path):
    """Once training began the start-up line no longer applies (StopSignals handed it over): a stop after the last
    epoch says the run is checkpointed, and the run is whole."""
    run = tmp_path / "run"
    proc = stopped_child("finished", "SIGTERM", "train", CONFIG, "--out", run, *ARGS)
    assert proc.returncode == 128 + signal.SIGTERM
    assert one_line(proc.stderr).startswith("vaelab: stopped by SIGTERM as training ended: every finished epoch is "
                                            "checkpointed")
    assert read_checkpoint(run)[2]["epoch"] == 2
    assert_same_run(straight, run)
