"""compare.md, compare.html and compare.json state what was held fixed across the compared runs (issue 28): the
preset, data, model, training length and evaluation (K, test images) every run shares, and the evaluation facts
that differ between runs without defining a setting."""

from __future__ import annotations

import html
import json

import yaml

from vaelab.config.schema import Config
from vaelab.experiments.compare import compare

SECTIONS = ("data", "model", "estimator", "train", "eval")


def write_run(path, estimator: str, seed: int, k: int = 100, device: str = "auto", name: str | None = None):
    """A run as a renamed sweep variant of bernoulli_vae leaves it: config.yaml, metrics.jsonl and eval.json."""
    path.mkdir(parents=True)
    cfg = Config()
    cfg.model.latent, cfg.model.latent_dim, cfg.model.hidden = "bernoulli", 8, [64]
    cfg.estimator.name, cfg.train.seed, cfg.train.epochs, cfg.data.source = estimator, seed, 3, "digits"
    cfg.train.device = device
    cfg.name = name or f"estimator.name={estimator},seed={seed}"
    cfg.description = f"Preset bernoulli_vae with estimator.name {estimator} in place of its sfe-avg."
    (path / "config.yaml").write_text(cfg.to_yaml())
    rows = [{"epoch": e, "train_elbo": -120.0 + e, "valid_elbo": -118.0 + e, "seconds": 2.0} for e in (1, 2, 3)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "eval.json").write_text(json.dumps({
        "elbo": -100.0 - seed, "iw_loglik": -95.0 - seed, "kl": 20.0, "rec": -80.0 - seed, "iw_samples": k,
        "n_examples": 250, "epochs_trained": 3, "steps_trained": 63, "iw_loglik_mc_stderr": 0.02}))
    return cfg


def test_what_every_run_shares_is_stated_in_md_html_and_json(tmp_path):
    cfgs = [write_run(tmp_path / "sw" / f"{est}-{seed}", est, seed, device="cpu" if seed else "auto")
            for est in ("disarm", "rloo") for seed in (0, 1)]
    compare([tmp_path / "sw"], out=tmp_path / "out")
    md = (tmp_path / "out" / "compare.md").read_text()
    flat = {f"{s}.{k}": v for s in SECTIONS for k, v in cfgs[0].to_dict()[s].items()}
    differing = {"estimator.name", "train.seed", "train.device"}
    shown = ("data.source", "data.binarize", "model.latent", "model.latent_dim", "model.nets", "model.hidden",
             "train.epochs", "train.batch_size", "train.lr")
    more = len(flat) - len(differing) - len(shown) + len(["plugins", "literature"])   # top-level keys, the same
    sentence = ("Settings differ in: estimator.name. Held fixed in all 4 runs: preset = bernoulli_vae, "
                "data.source = digits, data.binarize = dynamic, model.latent = bernoulli, model.latent_dim = 8, "
                "model.nets = mlp, model.hidden = [64], train.epochs = 3, "
                f"train.batch_size = {flat['train.batch_size']}, train.lr = {flat['train.lr']}, "
                "K (importance samples) = 100, test images = 250, steps trained = 63; "
                f"and {more} more config keys (compare.json: held_fixed).")
    assert sentence in md
    assert html.escape(sentence, quote=False) in (tmp_path / "out" / "compare.html").read_text()
    result = json.loads((tmp_path / "out" / "compare.json").read_text())
    fixed = result["held_fixed"]
    assert not differing & set(fixed) and "name" not in fixed and "description" not in fixed
    assert {k: fixed[k] for k in flat if k not in differing} == {k: v for k, v in flat.items() if k not in differing}
    assert (fixed["preset"], fixed["K (importance samples)"], fixed["test images"]) == ("bernoulli_vae", 100, 250)
    assert result["not_held_fixed"] == {}


def test_an_evaluation_that_differs_without_defining_a_setting_is_said(tmp_path):
    write_run(tmp_path / "a", "disarm", 0, k=100)
    write_run(tmp_path / "b", "disarm", 1, k=5000)
    md = compare([tmp_path])
    assert "Settings differ in: nothing (every run differs only in its seed)." in md
    assert "Not held fixed, though no setting is defined by it: K (importance samples) = 100, 5000." in md
    assert "K (importance samples) =" not in md.split("Not held fixed")[0]


def test_a_plain_preset_run_names_its_preset_and_a_single_run_says_so(tmp_path):
    cfg = write_run(tmp_path / "r", "disarm", 0, name="bernoulli_vae")
    raw = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    raw["description"] = "the preset's own words"
    (tmp_path / "r" / "config.yaml").write_text(yaml.safe_dump(raw))
    md = compare([tmp_path / "r"])
    assert f"Held fixed in the one run: preset = bernoulli_vae, data.source = {cfg.data.source}," in md
    assert "estimator.name = disarm" in md
