"""`vaelab reproduce` on digits: every figure and both reports, valid PNGs, reruns skip, a killed run resumes."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from vaelab.reproduce import STUDY, Settings, reproduce
from vaelab.run import read_checkpoint

pytestmark = pytest.mark.slow
ARGS = dict(quick=True, data="digits", epochs=2, device="cpu", iw_samples=20)


def assert_real_png(data: bytes) -> None:
    img = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=float)
    assert min(img.shape) > 40 and img.std() > 5, "blank or tiny image"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    reproduce(Settings(out, **ARGS))
    return out


def test_every_figure_and_both_reports(study):
    md = (study / "report.md").read_text()
    page = (study / "report.html").read_text()
    for number in ("1", "2", "4", "5", "6", "7-8", "9", "10", "11"):
        assert f"**Figure {number}.**" in md and f"Figure {number}." in page
    linked = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md)
    assert len(linked) >= 11 + len(STUDY) - 2
    for rel in linked:
        assert_real_png((study / rel).read_bytes())
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == len(linked)          # the HTML is self-contained: every figure embedded
    for b64 in embedded:
        assert_real_png(base64.b64decode(b64))
    assert "QUICK mode" in md and "torch" in md and "reparam" in md and "disarm" in md
    for stage in STUDY:
        metrics = json.loads((study / stage.name / "eval.json").read_text())
        assert metrics["iw_samples"] == 20 and np.isfinite(metrics["iw_loglik"])


def test_rerun_skips_finished_runs(study, capsys):
    before = {s.name: (study / s.name / "checkpoint" / "model.safetensors").stat().st_mtime_ns for s in STUDY}
    reproduce(Settings(study, **ARGS))
    err = capsys.readouterr().err
    assert err.count("skipping") == 2 * len(STUDY)
    assert before == {s.name: (study / s.name / "checkpoint" / "model.safetensors").stat().st_mtime_ns
                      for s in STUDY}


def test_interrupted_study_resumes_the_unfinished_run(tmp_path, monkeypatch, capsys):
    """Stop the study inside the third model's second epoch, then rerun: it resumes that run at epoch 2."""
    import vaelab.train as train_mod

    real_epoch = train_mod.train_epoch
    calls = {"n": 0}

    def dying_epoch(cfg, *args, **kwargs):
        calls["n"] += 1
        if cfg.name == STUDY[2].name and args[5] == 1:     # epoch index 1 of the third model
            raise KeyboardInterrupt
        return real_epoch(cfg, *args, **kwargs)

    monkeypatch.setattr(train_mod, "train_epoch", dying_epoch)
    with pytest.raises(KeyboardInterrupt):
        reproduce(Settings(tmp_path, **ARGS))
    _, _, state = read_checkpoint(tmp_path / STUDY[2].name)
    assert state["epoch"] == 1 and not (tmp_path / STUDY[3].name).exists()
    monkeypatch.setattr(train_mod, "train_epoch", real_epoch)
    capsys.readouterr()
    reproduce(Settings(tmp_path, **ARGS))
    err = capsys.readouterr().err
    assert f"{STUDY[2].name}: resuming at epoch 2/2" in err
    assert f"{STUDY[0].name}: trained (2 epochs), skipping" in err
    assert (tmp_path / "report.html").is_file()


def test_other_settings_on_an_existing_study_are_refused(study):
    from vaelab.errors import VaelabError

    with pytest.raises(VaelabError, match="other settings.*--force"):
        reproduce(Settings(study, **(ARGS | {"epochs": 3})))
