"""Default run names and descriptions say what differs from the preset (issue 15): `vaelab train bernoulli_vae
--estimator disarm` writes runs/bernoulli_vae-disarm, and a DisARM run is not described as the study's SFE."""

from __future__ import annotations

import pytest
import yaml

import vaelab
from vaelab.config.schema import load_config

PRESET_DESCRIPTION = load_config("bernoulli_vae").description
TINY = ["--epochs", "1", "--quiet", "--set", "train.steps_per_epoch=1", "--set", "model.hidden=[8]",
        "--set", "model.latent_dim=4"]


@pytest.mark.parametrize(("overrides", "name"), [
    ([], "bernoulli_vae"),
    (["estimator.name=disarm"], "bernoulli_vae-disarm"),
    (["estimator.name=disarm", "data.source=digits"], "bernoulli_vae-disarm-digits"),
    (["train.seed=3"], "bernoulli_vae-seed3"),
    (["estimator.name=disarm", "data.source=digits", "train.seed=3"], "bernoulli_vae-disarm-digits-seed3"),
    (["estimator.name=sfe-avg", "data.source=mnist", "train.seed=0"], "bernoulli_vae"),   # the preset's own values
    (["train.epochs=2", "train.lr=1e-4"], "bernoulli_vae"),          # other settings do not rename the run
    (["name=mine", "estimator.name=disarm"], "mine"),               # a name the user gives is kept
])
def test_the_name_gains_what_differs_from_the_preset(overrides, name):
    assert load_config("bernoulli_vae", overrides, named=True).name == name
    assert load_config("bernoulli_vae", overrides).name == ("mine" if "name=mine" in overrides else "bernoulli_vae")


def test_a_changed_latent_family_is_named_and_described():
    cfg = load_config("gaussian_vae", ["model.latent=bernoulli", "estimator.name=disarm"], named=True)
    assert cfg.name == "gaussian_vae-bernoulli-disarm"
    assert cfg.description == ("Preset gaussian_vae with latent bernoulli in place of its gaussian and estimator "
                               "disarm in place of its reparam.")


def test_a_data_file_is_named_by_its_stem(tmp_path):
    data = tmp_path / "my images.npz"
    cfg = load_config("gaussian_vae", [f"data.source={data}"], named=True)
    assert cfg.name == "gaussian_vae-my_images"
    assert str(data) in cfg.description


def test_the_description_states_the_estimator_and_data_used():
    assert "seed's SFE" in PRESET_DESCRIPTION                       # what the preset says of itself
    assert load_config("bernoulli_vae", ["train.seed=3"], named=True).description == PRESET_DESCRIPTION
    cfg = load_config("bernoulli_vae", ["estimator.name=disarm", "data.source=digits"], named=True)
    assert "SFE" not in cfg.description
    assert cfg.description == ("Preset bernoulli_vae with estimator disarm in place of its sfe-avg and data digits "
                               "in place of its mnist.")
    own = load_config("bernoulli_vae", ["estimator.name=disarm", "description=my words"], named=True)
    assert own.description == "my words"


def test_train_without_out_writes_the_named_run(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("train", "bernoulli_vae", "--estimator", "disarm", "--data", "digits", *TINY)
    assert code == 0, err
    run = tmp_path / "runs" / "bernoulli_vae-disarm-digits"
    assert out.strip() == "run written to runs/bernoulli_vae-disarm-digits"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["name"] == "bernoulli_vae-disarm-digits" and saved["estimator"]["name"] == "disarm"
    assert "SFE" not in saved["description"] and "estimator disarm" in saved["description"]
    code, _, err = cli("train", "bernoulli_vae", "--seed", "3", "--data", "digits", *TINY)
    assert code == 0, err
    assert (tmp_path / "runs" / "bernoulli_vae-digits-seed3" / "checkpoint").is_dir()


def test_fit_names_and_describes_the_run_as_the_cli_does(tmp_path):
    small = {"data": "digits", "epochs": 1, "train": {"steps_per_epoch": 1}, "model": {"hidden": [8], "latent_dim": 4}}
    run = vaelab.fit("bernoulli_vae", out=tmp_path / "run", estimator="disarm", **small)
    assert run.cfg.name == "bernoulli_vae-disarm-digits" and "SFE" not in run.cfg.description
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["description"] == run.cfg.description
    from_dict = vaelab.fit(load_config("bernoulli_vae").to_dict(), estimator="rloo", **small)
    try:
        assert from_dict.cfg.name == "bernoulli_vae-rloo-digits" and "estimator rloo" in from_dict.cfg.description
    finally:
        from_dict.close()
