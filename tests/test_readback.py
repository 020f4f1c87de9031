"""Files vaelab reads back, damaged: what a rerun can make again it makes again (the study's report inputs and
eval.json on `vaelab reproduce`, a grad_stats.jsonl row torn by a crash on `train --resume`); the refusals (one
line, nothing changed) are hostile_cases_files.py's table."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import tiny_config
from helpers import ARGS, build_study

from vaelab.core.errors import VaelabError
from vaelab.experiments.reproduce import Settings, reproduce
from vaelab.report.inputs import INPUTS_FILE, read_codes, read_gradvar, read_latent_map
from vaelab.report.tables import stage_eval
from vaelab.runs.metrics_log import read_grad_stats
from vaelab.training.trainer import train


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return build_study(tmp_path_factory)


@pytest.mark.slow
def test_damaged_report_inputs_and_eval_are_made_again_by_a_rerun(study, tmp_path, capsys):
    out = tmp_path / "study"
    shutil.copytree(study, out)
    before = {
        "codes": read_codes(out / "bernoulli_vae_disarm" / "fig" / "codes_2d.npz"),
        "gradvar": read_gradvar(out / "bernoulli_vae" / "gradvar" / "gradvar.json"),
        "map": read_latent_map(out / "ae_gmm" / "fig"),
        "record": json.loads((out / "gaussian_vae" / INPUTS_FILE).read_text()),
        "eval": json.loads((out / "gaussian_vae" / "eval.json").read_text()),
    }
    assert all(v is not None for v in before.values())
    codes = out / "bernoulli_vae_disarm" / "fig" / "codes_2d.npz"
    codes.write_bytes(codes.read_bytes()[:300])                                      # truncated
    gradvar = out / "bernoulli_vae" / "gradvar" / "gradvar.json"
    gradvar.write_text(json.dumps(before["gradvar"] | {"rows": "x"}))                 # wrong type
    (out / "ae_gmm" / "fig" / "latent_map.json").write_text("[1, 2, 3]")              # a list, not an object
    (out / "gaussian_vae" / INPUTS_FILE).write_bytes(b"\xff\xfe garbage")             # not UTF-8
    (out / "gaussian_vae" / "eval.json").write_text('{"elbo": ')                      # truncated
    capsys.readouterr()
    reproduce(Settings(out, **ARGS))
    err = capsys.readouterr().err
    # each damaged input made again, and only those: the intact ones are kept
    assert "bernoulli_vae_disarm: PCA and t-SNE" in err and "bernoulli_vae_disarm: gradient variance" not in err
    assert "bernoulli_vae: gradient variance" in err and "bernoulli_vae: PCA" not in err
    assert "ae_gmm: decoding" in err and "gaussian_vae: PCA and t-SNE" in err
    assert "gaussian_vae: evaluating" in err and "bernoulli_vae: evaluating" not in err
    after = read_codes(codes)
    for key, array in before["codes"].items():                                       # the same seeded computation
        np.testing.assert_allclose(after[key], array, rtol=1e-5, atol=1e-6, err_msg=key)
    remade = read_gradvar(gradvar)
    assert [r["estimator"] for r in remade["rows"]] == [r["estimator"] for r in before["gradvar"]["rows"]]
    assert (remade["draws"], remade["batch"]) == (before["gradvar"]["draws"], before["gradvar"]["batch"])
    assert read_latent_map(out / "ae_gmm" / "fig") == before["map"]
    assert json.loads((out / "gaussian_vae" / INPUTS_FILE).read_text()) == before["record"]
    evaluated = json.loads((out / "gaussian_vae" / "eval.json").read_text())
    assert evaluated["iw_loglik"] == pytest.approx(before["eval"]["iw_loglik"], rel=1e-6)
    assert "Figure B" in (out / "report.md").read_text()


def test_a_quality_entry_the_tables_cannot_show_is_one_line(tmp_path):
    run = tmp_path / "m"
    run.mkdir()
    good = {"mode": "bernoulli", "prior": "normal", "n_samples": 10, "n_reference": 5, "k": 3, "precision": 0.5}
    (run / "eval.json").write_text(json.dumps({"elbo": -90.0, "quality_bernoulli_normal": good}))
    assert stage_eval(tmp_path, "m")["quality_bernoulli_normal"] == good
    for bad, match in [(3, "is 3, not a mapping"), (good | {"prior": 1}, "prior = 1"),
                       (good | {"precision": "high"}, 'precision = "high"'), (good | {"k": 2.5}, "k = 2.5")]:
        (run / "eval.json").write_text(json.dumps({"elbo": -90.0, "quality_bernoulli_normal": bad}))
        with pytest.raises(VaelabError, match=f"eval.json quality_bernoulli_normal .*{match}.*vaelab reproduce"):
            stage_eval(tmp_path, "m")


PROBE = ("model.latent=bernoulli", "estimator.name=disarm", "model.latent_dim=6", "train.grad_stats_every=7",
         "train.grad_stats_draws=3")


@pytest.mark.slow
def test_a_torn_grad_stats_row_is_dropped_and_the_resume_goes_on(tmp_path):
    train(tiny_config(*PROBE), tmp_path / "straight", quiet=True)
    run = tmp_path / "torn"
    train(tiny_config(*PROBE, "train.epochs=1"), run, quiet=True)
    with open(run / "grad_stats.jsonl", "a") as f:          # a crash in the middle of appending step 28's row
        f.write('{"step": 28, "grad_va')
    assert [r["step"] for r in read_grad_stats(run)] == [7, 14, 21]
    train(None, run, resume=True, quiet=True, epochs=2)
    text = (run / "grad_stats.jsonl").read_text()
    assert text.endswith("\n") and "grad_va\"" not in text.replace('"grad_var"', "")
    steps = [json.loads(line)["step"] for line in text.splitlines()]            # every line whole again
    assert steps == [r["step"] for r in read_grad_stats(tmp_path / "straight")] == [7, 14, 21, 28, 35, 42]
