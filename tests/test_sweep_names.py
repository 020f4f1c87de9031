"""Sweep runs are named and described like `vaelab train`'s variants (issue 28): each run's config `name` is its
run's name and its `description` lists what differs from the base preset, not the preset's own text."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from vaelab.cli.main import main
from vaelab.config.schema import load_config
from vaelab.experiments.sweep import Spec, plan
from vaelab.experiments.sweep_run import train_step

PRESET_TEXT = load_config("bernoulli_vae").description        # "... seed's SFE with running average"
FIXED = {"data.source": "digits", "model.hidden": [8], "model.latent_dim": 3, "train.epochs": 1,
         "train.steps_per_epoch": 2, "train.device": "cpu"}


def listing(*parts: str) -> str:
    """"Preset bernoulli_vae with A, B and C.", the changes in the config's order."""
    return f"Preset bernoulli_vae with {', '.join(parts[:-1])} and {parts[-1]}."


def write_spec(path: Path, **extra) -> Path:
    spec = {"base": "bernoulli_vae", "set": FIXED, "grid": {"estimator.name": ["disarm", "sfe-avg"]},
            "seeds": [0, 3], "evaluate": {"iw_samples": 5}, **extra}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def planned(spec: Path, out: Path) -> dict[str, dict]:
    jobs, _ = plan(Spec(spec), out, 1)
    return {job.name: yaml.safe_load(Path(job.config_path).read_text()) for job in jobs}


def test_each_run_is_named_after_itself_and_described_by_its_changes(tmp_path):
    configs = planned(write_spec(tmp_path / "s.yaml"), tmp_path / "out")
    assert list(configs) == ["estimator.name=disarm,seed=0", "estimator.name=disarm,seed=3",
                             "estimator.name=sfe-avg,seed=0", "estimator.name=sfe-avg,seed=3"]
    for name, cfg in configs.items():
        assert cfg["name"] == name
    assert configs["estimator.name=disarm,seed=3"]["description"] == listing(
        "data.source digits in place of its mnist", "model.latent_dim 3 in place of its 20",
        "model.hidden [8] in place of its [512, 256]", "estimator.name disarm in place of its sfe-avg",
        "train.epochs 1 in place of its 10", "train.seed 3 in place of its 0", "train.device cpu in place of its auto",
        "train.steps_per_epoch 2 in place of its null")
    assert configs["estimator.name=sfe-avg,seed=0"]["description"] == listing(
        "data.source digits in place of its mnist", "model.latent_dim 3 in place of its 20",
        "model.hidden [8] in place of its [512, 256]", "train.epochs 1 in place of its 10",
        "train.device cpu in place of its auto", "train.steps_per_epoch 2 in place of its null")
    assert not any(PRESET_TEXT in cfg["description"] for cfg in configs.values())


def test_a_name_or_description_the_spec_sets_is_kept(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", set={**FIXED, "name": "mine", "description": "my words"})
    configs = planned(spec, tmp_path / "out")
    assert {(c["name"], c["description"]) for c in configs.values()} == {("mine", "my words")}


def test_under_stack_the_seeds_of_a_setting_share_name_and_description(tmp_path):
    configs = planned(write_spec(tmp_path / "s.yaml", stack=True), tmp_path / "out")
    labels = {name: (c["name"], c["description"]) for name, c in configs.items()}
    assert labels["estimator.name=disarm,seed=0"] == labels["estimator.name=disarm,seed=3"]
    assert labels["estimator.name=disarm,seed=3"][0] == "estimator.name=disarm"
    assert "train.seed" not in labels["estimator.name=disarm,seed=3"][1]
    assert labels["estimator.name=sfe-avg,seed=0"][0] == "estimator.name=sfe-avg"


def test_a_run_trained_before_runs_were_named_still_resumes(tmp_path):
    """A checkpoint that holds the preset's name and description (an older sweep) keeps them, so the sweep
    finds its own run instead of refusing it as one with other settings; other settings are still refused."""
    spec, out = write_spec(tmp_path / "s.yaml", grid={"estimator.name": ["disarm"]}, seeds=[0]), tmp_path / "out"
    jobs, _ = plan(Spec(spec), out, 1)
    old = load_config(jobs[0].config_path)
    old.name, old.description = "bernoulli_vae", PRESET_TEXT
    (tmp_path / "old.yaml").write_text(old.to_yaml())
    assert main(["train", str(tmp_path / "old.yaml"), "--out", jobs[0].run_dir, "--quiet"]) == 0
    jobs, _ = plan(Spec(spec), out, 1)
    kept = load_config(jobs[0].config_path)
    assert (kept.name, kept.description) == ("bernoulli_vae", PRESET_TEXT)
    assert train_step(jobs[0]) == ("already trained", [])
    other = write_spec(tmp_path / "t.yaml", grid={"estimator.name": ["disarm"]}, seeds=[0],
                       set={**FIXED, "train.lr": 0.01})
    jobs, _ = plan(Spec(other), out, 1)
    assert load_config(jobs[0].config_path).name == "estimator.name=disarm,seed=0"


def test_a_swept_run_records_its_name_in_config_and_eval(tmp_path, cli):
    spec = write_spec(tmp_path / "s.yaml", grid={"estimator.name": ["disarm"]}, seeds=[3])
    code, _, err = cli("sweep", spec, "--out", tmp_path / "out", "--threads", "1", "--workers", "1")
    assert code == 0, err
    run = tmp_path / "out" / "estimator.name=disarm,seed=3"
    assert yaml.safe_load((run / "config.yaml").read_text())["name"] == run.name
    assert json.loads((run / "eval.json").read_text())["config_name"] == run.name
    assert "estimator.name disarm in place of its sfe-avg" in load_config(run / "config.yaml").description
