"""benchmarks/published_runs.py: each committed reproduction row's command builds the config that row trained with,
so a reader who reruns it (for a few epochs, `benchmarks/same_curve.py`) gets the committed curve back."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from vaelab.cli.main import parser, train_config
from vaelab.config.schema import config_from_yaml_text, load_run_config
from vaelab.runs.bundle import read_bundle

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("published_runs", ROOT / "benchmarks" / "published_runs.py")
published_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(published_runs)

TRAINED = [job for job in published_runs.JOBS if job[1] != "reproduce"]
COMMITTED = [job for job in TRAINED if (published_runs.SEEDS / job[0] / "config.yaml").is_file()]
CARRIED = [job for job in TRAINED if (published_runs.STATE / f"{job[0]}.safetensors").is_file()]


def job_config(job: tuple) -> dict:
    """The config `vaelab train` builds from the queue's command for `job`, as a dict."""
    return train_config(parser("train").parse_args(published_runs.train_argv(job, Path("unused")))).to_dict()


def test_the_queue_holds_the_committed_rows():
    """Every committed row is a job of the queue (guards the parametrised tests below from passing on nothing)."""
    rows = {p.name for p in published_runs.SEEDS.iterdir() if (p / "config.yaml").is_file()}
    assert rows and rows <= {job[0] for job in TRAINED}
    assert len(COMMITTED) == len(rows)


@pytest.mark.parametrize("job", COMMITTED, ids=[job[0] for job in COMMITTED])
def test_a_committed_rows_command_builds_the_config_it_trained_with(job):
    """The whole config, train.backward included: a row trained before the hand-written step has autograd."""
    committed = load_run_config(published_runs.SEEDS / job[0] / "config.yaml").to_dict()
    assert job_config(job) == committed


@pytest.mark.parametrize("job", CARRIED, ids=[job[0] for job in CARRIED])
def test_an_unfinished_runs_command_builds_the_config_its_bundle_carries(job):
    _, _, _, files = read_bundle(published_runs.STATE / f"{job[0]}.safetensors")
    assert job_config(job) == config_from_yaml_text(files["config.yaml"]).to_dict()


def test_a_row_trained_before_the_hand_written_step_is_told_apart():
    """The check can fail: the static row's command without the autograd override builds another config."""
    name, preset, epochs, seed, extra = next(job for job in COMMITTED if job[0] == "vae_784_400_40_static-s0")
    assert extra == published_runs.AUTOGRAD
    committed = load_run_config(published_runs.SEEDS / name / "config.yaml").to_dict()
    without = job_config((name, preset, epochs, seed, []))
    assert without != committed and without["train"]["backward"] == "auto"
    assert committed["train"]["backward"] == "autograd"


def test_where_a_job_without_a_run_directory_starts(tmp_path, monkeypatch):
    """Its own bundle first; a 1M-step run then its seed's finished 100k-step run, the directory (copied, without its
    eval.json and tb/) before the committed final bundle; else step 0 (None)."""
    out, state, seeds = (tmp_path / d for d in ("runs", "state", "seeds"))
    for attr, path in (("OUT", out), ("STATE", state), ("SEEDS", seeds)):
        monkeypatch.setattr(published_runs, attr, path)
    start = published_runs.carried_over
    assert start("a-s0", out / "a-s0") is None and start("a-s0-1M", out / "a-s0-1M") is None

    (seeds / "a-s0").mkdir(parents=True)
    (seeds / "a-s0" / "run.safetensors").write_bytes(b"final")
    assert start("a-s0-1M", out / "a-s0-1M") == seeds / "a-s0" / "run.safetensors"
    assert start("a-s0", out / "a-s0") is None                       # a 100k run never continues its own final state

    (out / "a-s0" / "tb").mkdir(parents=True)
    for f in ("metrics.jsonl", "eval.json"):
        (out / "a-s0" / f).write_text(f)
    assert start("a-s0-1M", out / "a-s0-1M") is None                  # copied instead
    assert sorted(p.name for p in (out / "a-s0-1M").iterdir()) == ["metrics.jsonl"]

    state.mkdir()
    (state / "b-s0-1M.safetensors").write_bytes(b"carried")
    (out / "b-s0" / "tb").mkdir(parents=True)
    (out / "b-s0" / "eval.json").write_text("{}")
    assert start("b-s0-1M", out / "b-s0-1M") == state / "b-s0-1M.safetensors"   # its own progress before the 100k
    assert not (out / "b-s0-1M").exists()
    assert start("a-s0-1M", out / "a-s0-1M") is None                  # a directory there: resumed as it is


def test_a_stopped_queue_touches_no_job_it_had_not_started(tmp_path, monkeypatch, capsys):
    """After SIGTERM reached the queue, a job whose turn comes (a worker freed by a stopped run) is reported not
    started: no log, no run directory, no bundle unpacked, no start line."""
    import signal

    from vaelab.experiments.sweep_run import CHILDREN

    monkeypatch.setattr(published_runs, "OUT", tmp_path)
    monkeypatch.setattr(CHILDREN, "signum", signal.SIGTERM)
    job = ("x-s0", "configs/literature/iwae_vae_1layer.yaml", 3, 0, [])
    assert published_runs.run_stoppable(job, {}, True) == "x-s0: not started: the sweep was stopped by SIGTERM"
    assert list(tmp_path.iterdir()) == [] and capsys.readouterr().out == ""
