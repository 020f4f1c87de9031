"""`vaelab sweep`: spec expansion, a small digits sweep (local and Ray backends), skip, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from vaelab.core.errors import VaelabError
from vaelab.experiments.sweep import Spec, run_name, sizing
from vaelab.experiments.sweep_backends import Progress

TINY = {"data.source": "digits", "model.hidden": [32], "model.latent_dim": 4, "train.epochs": 2,
        "train.batch_size": 64, "train.device": "cpu"}     # 21 steps an epoch (1297 digits / 64)
EVAL_KEYS = ("elbo", "kl", "rec", "iw_loglik", "iw_loglik_mc_stderr", "iw_samples")


def write_spec(path, grid, seeds, **extra):
    path.write_text(yaml.safe_dump({"base": "gaussian_vae", "set": TINY, "grid": grid, "seeds": seeds,
                                    "evaluate": {"iw_samples": 20}, **extra}, sort_keys=False))
    return path


def sweep(spec, out, *args, env=None):
    """`vaelab sweep` in its own process (as a user runs it); returns the process and sweep.yaml's runs."""
    proc = subprocess.run([sys.executable, "-m", "vaelab", "sweep", str(spec), "--out", str(out), "--threads", "1",
                           *args], capture_output=True, text=True, env=env or dict(os.environ), timeout=900)
    book = yaml.safe_load((out / "sweep.yaml").read_text()) if (out / "sweep.yaml").is_file() else {}
    return proc, (book or {}).get("runs", {})


def same_weights(a, b):
    wa, wb = load_file(a / "checkpoint" / "model.safetensors"), load_file(b / "checkpoint" / "model.safetensors")
    return wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


def same_eval(a, b):
    ea, eb = (json.loads((d / "eval.json").read_text()) for d in (a, b))
    return {k: ea.get(k) for k in EVAL_KEYS} == {k: eb.get(k) for k in EVAL_KEYS}


def test_spec_expands_grid_union_and_seeds(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", [{"estimator.name": ["reparam"], "train.lr": [1e-3, "3e-4"]},
                                            {"estimator.name": ["iwae"], "estimator.kwargs": [{"num_samples": 5}]}],
                      [3, 7])
    s = Spec(spec)
    assert s.settings == [{"estimator.name": "reparam", "train.lr": 1e-3}, {"estimator.name": "reparam",
                          "train.lr": "3e-4"}, {"estimator.name": "iwae", "estimator.kwargs": {"num_samples": 5}}]
    assert s.seeds == [3, 7] and s.iw_samples == 20
    cfg = s.config(s.settings[2], 7)
    assert (cfg.estimator.name, cfg.estimator.kwargs, cfg.train.seed, cfg.model.hidden) == (
        "iwae", {"num_samples": 5}, 7, [32])
    assert s.config(s.settings[1], 3).train.lr == 3e-4
    assert run_name(s.settings[2], 7) == "estimator.name=iwae,estimator.kwargs=num_samples:5,seed=7"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"base": "gaussian_vae", "seeds": 2}))
    assert Spec(tmp_path / "c.yaml").seeds == [0, 1] and Spec(tmp_path / "c.yaml").settings == [{}]


@pytest.mark.parametrize(("spec", "message"), [
    ({"base": "gaussian_vae", "grids": {}}, "unknown key 'grids'"),
    ({"base": "no_such_preset"}, "no such config file or preset"),
    ({"base": "gaussian_vae", "grid": {"train.seed": [1, 2]}}, "seeds go in `seeds:`"),
    ({"base": "gaussian_vae", "grid": {"train.lr": 1e-3}}, "give a non-empty list of values"),
    ({"base": "gaussian_vae", "grid": {"train.lrr": [1e-3]}}, "did you mean train.lr?"),
    ({"base": "gaussian_vae", "seeds": 0}, "give a count"),
    ({"base": "gaussian_vae", "evaluate": {"k": 3}}, "evaluate: {iw_samples: K}"),
])
def test_bad_specs_are_refused_before_training(tmp_path, cli, spec, message):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    code, out, err = cli("sweep", tmp_path / "s.yaml", "--out", tmp_path / "out", "--list")
    assert code == 2 and err.startswith("vaelab: error: ") and message in err and err.count("\n") == 1


def test_list_and_only(tmp_path, cli):
    spec = write_spec(tmp_path / "s.yaml", {"train.lr": [1e-3, 3e-3]}, 2)
    code, out, _ = cli("sweep", spec, "--out", tmp_path / "out", "--list")
    assert code == 0
    assert [line.split()[-1] for line in out.splitlines()] == [
        "train.lr=0.001,seed=0", "train.lr=0.001,seed=1", "train.lr=0.003,seed=0", "train.lr=0.003,seed=1"]
    assert (tmp_path / "out" / "configs" / "train.lr=0.003,seed=1.yaml").is_file()
    code, _, err = cli("sweep", spec, "--out", tmp_path / "out", "--only", "4")
    assert code == 2 and "--only 4: the sweep has 4 runs (0..3)" in err


def test_sizing_keeps_threads_times_workers_within_cores():
    assert sizing(None, None, 10, 2) == (2, 1)
    assert sizing(1, None, 10, 2) == (1, 2)
    assert sizing(None, None, 1, 16) == (1, 16)         # one run: all cores to it
    assert sizing(None, 2, 10, 8) == (4, 2)
    with pytest.raises(VaelabError, match="exceeds the 2 cores"):
        sizing(2, 2, 10, 2)


def test_ray_backend_without_ray_is_a_clear_error(monkeypatch, tmp_path):
    from vaelab.experiments.sweep_backends import run_ray

    monkeypatch.setitem(sys.modules, "ray", None)        # `import ray` raises ImportError
    with pytest.raises(VaelabError, match=r"pip install 'vaelab\[ray\]'"):
        run_ray([], 1, None, None, None, 0.0)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """reparam x seeds {0, 1} trains; disarm on a Gaussian latent is refused by `vaelab train` (a failed run)."""
    root = tmp_path_factory.mktemp("local")
    spec = write_spec(root / "spec.yaml", {"estimator.name": ["reparam", "disarm"]}, [0, 1])
    proc, runs = sweep(spec, root / "out")
    return root / "out", spec, proc, runs


@pytest.mark.slow
def test_local_sweep_trains_evaluates_and_records_failures(local_sweep):
    out, _, proc, runs = local_sweep
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("vaelab: error: 2 run(s) failed")
    assert "4/4 finished (2 done, 2 failed)" in proc.stderr
    for seed in (0, 1):
        ok, bad = runs[f"estimator.name=reparam,seed={seed}"], runs[f"estimator.name=disarm,seed={seed}"]
        assert ok["state"] == "done" and ok["action"] == "trained, evaluated (K=20)"
        assert bad["state"] == "failed" and bad["error"].startswith("train: ") and "disarm" in bad["error"]
        ev = json.loads((out / f"estimator.name=reparam,seed={seed}" / "eval.json").read_text())
        assert ev["iw_samples"] == 20 and ev["seed"] == seed and ev["epochs_trained"] == 2
    a, b = (out / f"estimator.name=reparam,seed={s}" for s in (0, 1))
    assert not same_weights(a, b)                        # the seed reached the run


@pytest.mark.slow
def test_rerun_skips_finished_runs(local_sweep):
    out, spec, _, _ = local_sweep
    run = out / "estimator.name=reparam,seed=0"
    before = (run / "checkpoint" / "model.safetensors").read_bytes(), (run / "eval.json").read_text()
    proc, runs = sweep(spec, out)
    assert proc.returncode == 2                          # the disarm runs still fail, with the same error
    assert runs["estimator.name=reparam,seed=0"]["action"] == "already trained, already evaluated"
    assert runs["estimator.name=reparam,seed=1"]["state"] == "done"
    assert before == ((run / "checkpoint" / "model.safetensors").read_bytes(), (run / "eval.json").read_text())


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(local_sweep, tmp_path):
    """VAELAB_FAULT=step:30 SIGKILLs each training process at its 30th step (epoch 2 of 2): a deterministic point."""
    straight = local_sweep[0] / "estimator.name=reparam,seed=0"
    spec = write_spec(tmp_path / "spec.yaml", {"estimator.name": ["reparam"]}, [0])
    proc, runs = sweep(spec, tmp_path / "out", env=dict(os.environ, VAELAB_FAULT="step:30"))
    entry = runs["estimator.name=reparam,seed=0"]
    assert proc.returncode == 2 and entry["state"] == "failed" and "killed by SIGKILL" in entry["error"]
    proc, runs = sweep(spec, tmp_path / "out", "--only", "0")          # as a Slurm array task would
    assert proc.returncode == 0, proc.stderr
    assert runs["estimator.name=reparam,seed=0"]["action"] == "resumed at epoch 2, evaluated (K=20)"
    resumed = tmp_path / "out" / "estimator.name=reparam,seed=0"
    assert same_weights(straight, resumed) and same_eval(straight, resumed)


def frozen_child(proc: subprocess.Popen, pending: int | None = None) -> int:
    """The pid of `proc`'s child once it has frozen itself (SIGSTOP at its fault point) and, with `pending`, once
    that signal is pending for it: states read from /proc, so the verdict waits on events, not on time."""
    while proc.poll() is None:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
                status = (stat.parent / "status").read_text()
            except (OSError, ValueError):
                continue
            masks = [int(line.split()[1], 16) for line in status.splitlines() if line[:6] in ("SigPnd", "ShdPnd")]
            if state == "T" and int(ppid) == proc.pid and (pending is None or any(m >> (pending - 1) & 1
                                                                                   for m in masks)):
                return int(stat.parent.name)
        time.sleep(0.02)
    pytest.fail(f"the sweep ended (exit {proc.returncode}) before its child froze")


@pytest.mark.slow
def test_sigterm_to_the_sweep_stops_its_runs_resumably(local_sweep, tmp_path):
    """SIGTERM sent to the sweep alone (as a scheduler does) reaches its training child: the child, frozen at step
    30 (epoch 2 of 2), gets the SIGTERM pending from the sweep, is let go, checkpoints and exits 143; the sweep
    records the run as stopped and exits 143 with one line. Running the sweep again resumes it to the result of the
    uninterrupted run."""
    straight = local_sweep[0] / "estimator.name=reparam,seed=0"
    spec, out = write_spec(tmp_path / "spec.yaml", {"estimator.name": ["reparam"]}, [0]), tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "vaelab", "sweep", str(spec), "--out", str(out), "--threads",
                             "1"], stderr=subprocess.PIPE, text=True, env=dict(os.environ, VAELAB_FAULT="step:30:STOP"))
    child = frozen_child(proc)
    proc.send_signal(signal.SIGTERM)
    assert frozen_child(proc, pending=signal.SIGTERM) == child       # the sweep passed it on
    os.kill(child, signal.SIGCONT)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1].startswith("vaelab: sweep stopped by SIGTERM: 1 run(s) stopped"), err
    entry = yaml.safe_load((out / "sweep.yaml").read_text())["runs"]["estimator.name=reparam,seed=0"]
    assert entry["state"] == "stopped" and "stopped by SIGTERM in epoch 2" in entry["error"], entry
    proc, runs = sweep(spec, out)
    assert proc.returncode == 0, proc.stderr
    assert runs["estimator.name=reparam,seed=0"]["action"] == "resumed at epoch 2, evaluated (K=20)"
    assert same_weights(straight, out / "estimator.name=reparam,seed=0")
    assert same_eval(straight, out / "estimator.name=reparam,seed=0")


@pytest.mark.slow
def test_ray_backend_gives_the_local_results(local_sweep, tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'vaelab[ray]') and is not installed")
    spec = write_spec(tmp_path / "spec.yaml", {"estimator.name": ["reparam", "disarm"]}, [0, 1])
    proc, runs = sweep(spec, tmp_path / "out", "--backend", "ray", "--workers", "2",
                       env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert proc.returncode == 2, proc.stderr
    for seed in (0, 1):
        name = f"estimator.name=reparam,seed={seed}"
        assert runs[name]["state"] == "done"
        assert same_weights(local_sweep[0] / name, tmp_path / "out" / name)
        assert same_eval(local_sweep[0] / name, tmp_path / "out" / name)
        assert runs[f"estimator.name=disarm,seed={seed}"]["error"] == local_sweep[3][
            f"estimator.name=disarm,seed={seed}"]["error"].replace(str(local_sweep[0]), str(tmp_path / "out"))


def test_progress_line_counts_each_ended_state(capsys):
    """Stopped runs count as finished and are named; the count line adds up every ended run."""
    progress = Progress(total=4)
    for name, state in [("a", "done"), ("b", "failed"), ("c", "stopped")]:
        progress.started(name)
        progress.finished({"name": name, "state": state, "action": "trained", "error": "boom", "seconds": 1.0})
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "3/4 finished (1 done, 1 failed, 1 stopped), 0 running | c: STOPPED: boom" in last
