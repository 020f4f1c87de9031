"""eval.json: says what it describes, carries the Monte Carlo error, and a re-evaluation leaves nothing stale."""

from __future__ import annotations

import json

from conftest import tiny_config

from vaelab.training.trainer import train


def test_eval_json_describes_the_run_and_replaces_stale_estimates(cli, tmp_path):
    run = tmp_path / "run"
    train(tiny_config("train.seed=3", "train.epochs=2"), run, quiet=True)
    (run / "eval.json").write_text('{"quality_bernoulli_normal": {"fid": 1.5}, "iw_loglik": 0.0, "stale": 1')
    assert cli("evaluate", run, "--iw-samples", 50, "--quiet")[0] == 0       # a damaged eval.json is replaced
    first = json.loads((run / "eval.json").read_text())
    assert first["seed"] == 3 and first["epochs_trained"] == 2 and first["estimator"] == "reparam"
    assert first["steps_trained"] == 2 * 21 and first["data"] == "digits" and first["binarize"] == "dynamic"
    assert first["config_name"] == "gaussian_vae" and first["git_commit"]
    assert 0 < first["iw_loglik_mc_stderr"] < first["iw_loglik_stderr"]   # MC error of the mean << test spread
    (run / "eval.json").write_text(json.dumps(first | {"quality_bernoulli_normal": {"fid": 1.5}}))
    assert cli("evaluate", run, "--iw-samples", 0, "--quiet")[0] == 0
    second = json.loads((run / "eval.json").read_text())
    assert "iw_loglik" not in second and "iw_loglik_mc_stderr" not in second and second["iw_samples"] == 0
    assert second["quality_bernoulli_normal"] == {"fid": 1.5}               # other steps' results are kept
