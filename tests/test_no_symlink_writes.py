"""No file is written through a symbolic link planted where vaelab writes (issue 27, item 1).

Table-driven: each case plants a link to a file outside the run (or a dangling link to a path outside it), runs one
command in-process and checks the outside file is byte-identical (the dangling target still absent) and that the
command either refused in one line (exit 2, "is a symbolic link") or replaced the link with its own file (the
temp-file-then-rename writes of vaelab.core.atomic): never followed it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hostile_helpers import CONFIG, SMALL

from vaelab.cli.main import main
from vaelab.core.atomic import atomic_write_text, open_append
from vaelab.core.errors import VaelabError
from vaelab.runs.run_dir import RunLock

PRECIOUS = b"precious: not vaelab's to write\n"


@dataclass
class Link:
    id: str
    where: str                                     # the link, relative to the workspace (RUN/...: the run copy)
    argv: Callable[[Path], list]                   # workspace -> argv (RUN replaced by the run copy)
    outcome: str                                   # "refused" (exit 2) or "replaced" (exit 0, link gone)
    prepare: Callable[[Path], None] = lambda ws: None


def train_into(name: str, *extra: str) -> Callable[[Path], list]:
    return lambda ws: ["train", CONFIG, "--data", "digits", "--out", ws / name, *SMALL, *extra]


def stopped_run(ws: Path) -> None:
    """ws/stopped: a run stopped before its first checkpoint (its config.yaml only)."""
    (ws / "stopped").mkdir(exist_ok=True)
    shutil.copy(ws / "run" / "config.yaml", ws / "stopped" / "config.yaml")


def sweep_spec(ws: Path) -> None:
    (ws / "spec.yaml").write_text(yaml.safe_dump({
        "base": "gaussian_vae", "seeds": [0], "evaluate": {"iw_samples": 5},
        "set": {"data.source": "digits", "model.hidden": [16], "model.latent_dim": 2, "train.epochs": 1,
                "train.device": "cpu"}}))


SWEEP = ("sweep", "WS/spec.yaml", "--out", "WS/sw", "--threads", "1")

CASES = [
    Link("train-new-lock", "new/train.lock", train_into("new"), "refused"),
    Link("train-restart-lock", "stopped/train.lock", train_into("stopped"), "refused", stopped_run),
    Link("resume-lock", "RUN/train.lock", lambda ws: ["train", "--resume", ws / "run", "--epochs", "2", "--quiet"],
         "refused"),
    Link("restart-config-yaml", "stopped/config.yaml", train_into("stopped"), "replaced",
         lambda ws: (ws / "stopped").mkdir()),
    Link("restart-metrics-jsonl", "stopped/metrics.jsonl", train_into("stopped"), "replaced", stopped_run),
    Link("evaluate-eval-json", "RUN/eval.json", lambda ws: ["evaluate", ws / "run", "--iw-samples", "2", "--quiet",
                                                            "--device", "cpu"], "replaced"),
    Link("sample-out-png", "grid.png", lambda ws: ["sample", ws / "run", "--n", "4", "--device", "cpu", "--out",
                                                   ws / "grid.png"], "replaced"),
    Link("sweep-run-log", "sw/logs/seed=0.log", lambda ws: [ws / a[3:] if a.startswith("WS/") else a for a in SWEEP],
         "refused", sweep_spec),
    Link("sweep-lock", "sw/.sweep.lock", lambda ws: [ws / a[3:] if a.startswith("WS/") else a for a in SWEEP],
         "refused", sweep_spec),
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("links") / "run"
    assert main(["train", CONFIG, "--data", "digits", "--out", str(out), *SMALL]) == 0
    return out


@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_planted_symlink_is_never_written_through(case, dangling, trained_run, tmp_path, capsys):
    ws, outside = tmp_path / "ws", tmp_path / "outside"
    ws.mkdir()
    outside.mkdir()
    shutil.copytree(trained_run, ws / "run")
    case.prepare(ws)
    target = outside / "victim"
    if not dangling:
        target.write_bytes(PRECIOUS)
    link = ws / case.where.replace("RUN/", "run/")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    capsys.readouterr()
    code = main([str(a) for a in case.argv(ws)])
    err = capsys.readouterr().err
    if dangling:
        assert not target.exists() and not target.is_symlink(), "a file was created through a dangling link"
    else:
        assert target.read_bytes() == PRECIOUS, "the file outside was written through the link"
    assert sorted(p.name for p in outside.iterdir()) == ([] if dangling else ["victim"])
    if case.outcome == "refused":
        errors = [line for line in err.splitlines() if line.startswith("vaelab: error: ")]
        assert code == 2 and len(errors) == 1 and "is a symbolic link" in errors[0] and "Traceback" not in err, err
        assert case.id.startswith("sweep") or err.strip() == errors[0], err    # a sweep also prints its progress
        assert link.is_symlink()
    else:
        assert code == 0, err
        assert link.is_file() and not link.is_symlink()


def test_atomic_writes_replace_a_link_rather_than_follow_it(tmp_path):
    target, link = tmp_path / "victim", tmp_path / "f.txt"
    target.write_bytes(PRECIOUS)
    link.symlink_to(target)
    atomic_write_text(link, "mine\n")
    assert target.read_bytes() == PRECIOUS and not link.is_symlink() and link.read_text() == "mine\n"


def test_open_append_refuses_a_link_and_appends_to_a_file(tmp_path):
    target, link, log = tmp_path / "victim", tmp_path / "l.log", tmp_path / "ok.log"
    target.write_bytes(PRECIOUS)
    link.symlink_to(target)
    with pytest.raises(VaelabError, match="l.log is a symbolic link .*delete the link"):
        open_append(link)
    assert target.read_bytes() == PRECIOUS
    for text in ("a\n", "b\n"):
        with open_append(log) as f:
            f.write(text)
    assert log.read_text() == "a\nb\n"


def test_the_run_lock_refuses_a_link_to_its_own_kind_of_file(tmp_path):
    """Even a link to another run's lock file is refused: the lock names exactly the file in this run."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with RunLock(tmp_path / "a"):
        os.symlink(tmp_path / "a" / "train.lock", tmp_path / "b" / "train.lock")
        with pytest.raises(VaelabError, match="train.lock is a symbolic link"):
            RunLock(tmp_path / "b").acquire()
    assert not (tmp_path / "a" / "train.lock").exists() and (tmp_path / "b" / "train.lock").is_symlink()
