"""Progress on long work (issue 15): a tqdm bar only when stderr is a terminal, otherwise one short line per stage,
never bar fragments (carriage returns) in a log file; --quiet silences both."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from vaelab.core.progress import bar, stage
from vaelab.models import density

TINY_RUN = ["--data", "digits", "--epochs", "1", "--quiet", "--set", "train.steps_per_epoch=2",
            "--set", "model.hidden=[16]", "--set", "model.latent_dim=4", "--device", "cpu"]
TINY_BERNOULLI = """name: tiny_bernoulli
data: {source: digits}
model: {latent: bernoulli, latent_dim: 3, hidden: [8]}
estimator: {name: sfe-avg}
train: {batch_size: 8}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from vaelab.cli.main import main

    out = tmp_path_factory.mktemp("progress") / "run"
    assert main(["train", "gaussian_vae", "--out", str(out), *TINY_RUN]) == 0
    return out


def test_off_a_terminal_a_bar_is_one_line_printed_when_the_loop_starts(capsys):
    items = bar(range(3), "work", unit="steps")
    assert capsys.readouterr().err == ""                      # nothing before the loop runs (a check may fail)
    assert list(items) == [0, 1, 2]
    assert capsys.readouterr().err == "work: 3 steps\n"
    assert list(bar(iter("ab"), "no length")) == ["a", "b"]
    stage("a stage")
    assert capsys.readouterr().err == "no length\na stage\n"
    assert list(bar(range(3), "quiet", enabled=False)) == [0, 1, 2]
    stage("quiet", enabled=False)
    assert capsys.readouterr().err == ""


def test_on_a_terminal_a_bar_is_drawn(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert list(bar(range(3), "work", unit="steps")) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "\r" in err and "work" in err and "work: 3 steps\n" not in err
    assert list(bar(range(3), "quiet", enabled=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_evaluate_into_a_log_file_writes_stage_lines_and_no_bar_fragments(run, tmp_path):
    log = tmp_path / "evaluate.log"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log, "w") as err:
        done = subprocess.run([sys.executable, "-m", "vaelab", "evaluate", str(run), "--iw-samples", "20",
                               "--device", "cpu"], stdout=subprocess.PIPE, stderr=err, env=env, cwd=tmp_path)
    text = log.read_text()
    assert done.returncode == 0, text
    assert "\r" not in text and "\x1b" not in text
    assert "IW log-likelihood, K=20, 250 images: 1 batches" in text.splitlines()


def test_quiet_silences_the_stage_lines(run, cli):
    code, _, err = cli("evaluate", run, "--iw-samples", 20, "--device", "cpu", "--quiet")
    assert code == 0 and err == ""
    code, _, err = cli("evaluate", run, "--iw-samples", 20, "--device", "cpu")
    assert code == 0 and err == "IW log-likelihood, K=20, 250 images: 1 batches\n"


def test_fit_density_auto_reports_the_bic_search(run, cli, monkeypatch):
    monkeypatch.setattr(density, "AUTO_COMPONENTS", (1, 2))
    code, _, err = cli("fit-density", run, "--components", "auto", "--no-figures", "--device", "cpu")
    assert code == 0, err
    best = json.loads((run / "bic.json").read_text())["best_k"]
    assert err.splitlines() == ["fit-density: BIC of mixtures with K = 1..2: 2 fits",
                                f"fit-density: EM for {best} full-covariance components on 1297 codes"]
    code, _, err = cli("fit-density", run, "--components", "auto", "--no-figures", "--device", "cpu", "--quiet")
    assert code == 0 and err == ""


def test_gradvar_reports_each_estimator(cli, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_BERNOULLI)
    args = ["gradvar", config, "--estimators", "sfe,disarm", "--draws", 3, "--warmup", 1, "--out", tmp_path / "gv"]
    code, _, err = cli(*args)
    assert code == 0, err
    assert err.splitlines() == ["gradvar: exact gradient, enumerating 2^3 codes for 8 images",
                                "gradvar: sfe: 3 draws", "gradvar: disarm: 3 draws"]
    code, _, err = cli(*args, "--quiet")
    assert code == 0 and err == ""


def test_quality_scores_report_their_stages(capsys, tmp_path):
    from vaelab.evaluation.classifier import DigitCNN, load_classifier, save_classifier
    from vaelab.evaluation.quality import quality_scores

    save_classifier(DigitCNN((8, 8)), tmp_path / "c.safetensors", {"data": "digits"})
    net = load_classifier(tmp_path / "c.safetensors")
    x = torch.rand(20, 64, generator=torch.Generator().manual_seed(0)).round()
    quality_scores(x, x.flip(0), net, k=3, batch_size=10, progress=True)
    assert capsys.readouterr().err.splitlines() == [
        "quality: features of 20 samples: 2 batches", "quality: features of 20 reference images: 2 batches",
        "quality: precision and recall, k=3 nearest neighbours", "quality: Frechet distance of the features"]
    quality_scores(x, x.flip(0), net, k=3, batch_size=10)
    assert capsys.readouterr().err == ""

