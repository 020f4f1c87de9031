"""`vaelab reproduce` on digits: every figure and both reports, valid PNGs, the best values marked, the latent
map's sprite is the trained decoder, the report's extra inputs are real measurements; reruns skip, a killed run
resumes."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
import torch
from helpers import ARGS, assert_sprite_is_the_decoder, build_study
from PIL import Image

from vaelab.experiments.reproduce import STUDY, Settings, reproduce
from vaelab.report.inputs import GRADVAR, GRADVAR_ESTIMATORS
from vaelab.report.tables import SHORT
from vaelab.runs.checkpoint import read_checkpoint
from vaelab.runs.loaded_run import open_run

pytestmark = pytest.mark.slow
LABELS = ["Figure 1", "Figure 2", "Figure 4", "Figure 5", "Figure 4b", "Figure 5b", "Figure 7", "Figure 8",
          "Figure 9", "Figure 9b", "Figure 10", "Figure 11", "Figure A", "Figure B", "Figure D",
          *[f"Figure E{i}" for i in range(1, len(STUDY) + 1)]]


def assert_real_png(data: bytes) -> None:
    img = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=float)
    assert min(img.shape) > 40 and img.std() > 5, "blank or tiny image"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return build_study(tmp_path_factory)


def test_every_figure_and_both_reports(study):
    md = (study / "report.md").read_text()
    page = (study / "report.html").read_text()
    for label in LABELS:
        assert f"**{label}.**" in md and f"<b>{label}.</b>" in page, label
    assert "**Figures 6 and C.**" in md and "<b>Figures 6 and C: the latent map.</b>" in page
    assert "not drawn" not in md + page                      # a fresh study has every figure
    linked = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md)
    assert len(linked) == len(LABELS) + 2                     # + the latent map's plane and sprite
    for rel in linked:
        assert_real_png((study / rel).read_bytes())
    sources = re.findall(r'(?:src|href)=["\']([^"\']+)', page)
    assert all(s.startswith(("data:", "#")) for s in sources)   # self-contained: nothing to fetch
    embedded = re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == len(linked)
    for b64 in embedded:
        assert_real_png(base64.b64decode(b64))
    assert "QUICK mode" in md and "torch" in md and "reparam" in page and "disarm" in page
    assert "<details><summary>Config: gaussian_vae</summary><pre>" in page
    assert "Sample quality not scored: vaelab's classifier reads 28x28 MNIST digits" in md and "on digits" in page
    for stage in STUDY:
        metrics = json.loads((study / stage.name / "eval.json").read_text())
        assert metrics["iw_samples"] == 20 and np.isfinite(metrics["iw_loglik"])


def test_best_values_are_marked(study):
    page = (study / "report.html").read_text()
    table = re.search(r"<table>(.*?)</table>", page)[1]
    rows = [re.findall(r'<t[dh]( class="best")?>([^<]*)</t[dh]>', r) for r in re.findall(r"<tr>(.*?)</tr>", table)]
    header = [text for _, text in rows[0]]
    evals = {s.title: json.loads((study / s.name / "eval.json").read_text()) for s in STUDY}
    for key, column in (("elbo", "test ELBO"), ("iw_loglik", "IW log-lik.")):
        col = header.index(column)
        best = max(round(m[key], 2) for m in evals.values() if m[key] is not None)
        marked = {row[0][1] for row in rows[1:] if row[col][0]}
        assert marked == {t for t, m in evals.items() if m[key] is not None and round(m[key], 2) == best}
    assert not any(row[header.index("KL")][0] for row in rows[1:])          # the ELBO's terms are not ranked
    assert re.search(r"\| \*\*-?[0-9.]+ ± [0-9.]+\*\* \|", (study / "report.md").read_text())   # bold in the .md


def test_latent_map_sprite_is_the_trained_decoder(study):
    run = open_run(study / "ae_gmm", "cpu")
    assert_sprite_is_the_decoder(run.model, (study / "report.html").read_text())
    assert json.loads((study / "ae_gmm" / "fig" / "latent_map.json").read_text())["contours"]


def test_report_inputs_are_the_runs_measurements(study):
    from sklearn.decomposition import PCA

    for name in ("bernoulli_vae", "bernoulli_vae_disarm"):
        result = json.loads((study / name / "gradvar" / "gradvar.json").read_text())
        assert [r["estimator"] for r in result["rows"]] == list(GRADVAR_ESTIMATORS)
        assert result["draws"] == GRADVAR[True]["draws"] and result["source"] == str(study / name)
        own = "sfe-avg" if name == "bernoulli_vae" else "disarm"
        assert result["trained_state_from_run"] == [own]
        assert all(r["variance"] > 0 for r in result["rows"])
    run = open_run(study / "gaussian_vae", "cpu")
    with torch.no_grad():
        means = run.model.posterior(run.data.x_test).mean.double().numpy()
    saved = np.load(study / "gaussian_vae" / "fig" / "codes_2d.npz")
    np.testing.assert_allclose(np.abs(saved["pca"]), np.abs(PCA(2).fit_transform(means)), atol=1e-6)
    np.testing.assert_array_equal(saved["pca_labels"], run.data.y_test.numpy())
    assert saved["tsne"].shape == (len(means), 2) and int(saved["dim"]) == 20     # digits: 250 < the subsample
    assert set(SHORT) == {s.name for s in STUDY}


def test_rerun_skips_finished_runs(study, capsys):
    before = {s.name: (study / s.name / "checkpoint" / "model.safetensors").stat().st_mtime_ns for s in STUDY}
    reproduce(Settings(study, **ARGS))
    err = capsys.readouterr().err
    assert err.count("skipping") == 2 * len(STUDY)
    assert "t-SNE" not in err and "gradient variance" not in err and "latent map" not in err   # made once
    assert before == {s.name: (study / s.name / "checkpoint" / "model.safetensors").stat().st_mtime_ns
                      for s in STUDY}


def test_interrupted_study_resumes_the_unfinished_run(tmp_path, monkeypatch, capsys):
    """Stop the study inside the third model's second epoch, then rerun: it resumes that run at epoch 2."""
    import vaelab.training.trainer as train_mod

    real_epoch = train_mod.EpochLoop.run
    calls = {"n": 0}

    def dying_epoch(self, epoch, *args, **kwargs):
        calls["n"] += 1
        if self.cfg.name == STUDY[2].name and epoch == 1:  # epoch index 1 of the third model
            raise KeyboardInterrupt
        return real_epoch(self, epoch, *args, **kwargs)

    monkeypatch.setattr(train_mod.EpochLoop, "run", dying_epoch)
    with pytest.raises(KeyboardInterrupt):
        reproduce(Settings(tmp_path, **ARGS))
    _, _, state = read_checkpoint(tmp_path / STUDY[2].name)
    assert state["epoch"] == 1 and not (tmp_path / STUDY[3].name).exists()
    monkeypatch.setattr(train_mod.EpochLoop, "run", real_epoch)
    capsys.readouterr()
    reproduce(Settings(tmp_path, **ARGS))
    err = capsys.readouterr().err
    assert f"{STUDY[2].name}: resuming at epoch 2/2" in err
    assert f"{STUDY[0].name}: trained (2 epochs), skipping" in err
    assert (tmp_path / "report.html").is_file()


def test_other_settings_on_an_existing_study_are_refused(study):
    from vaelab.core.errors import VaelabError

    with pytest.raises(VaelabError, match="other settings.*--force"):
        reproduce(Settings(study, **(ARGS | {"epochs": 3})))
