"""Plugins (plugins.py): a module named by `--import`, by `plugins:` in a config or by a `vaelab.plugins` entry
point registers a net or estimator; the run records it, every later command imports it first, and a missing one is
one line naming it. Every command runs in a fresh interpreter, so the pytest process's registries stay untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from vaelab.cli import main as cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = ["--data", "digits", "--epochs", "1", "--quiet", "--set", "model.hidden=[16]", "--set", "model.latent_dim=3",
        "--set", "train.batch_size=64"]


def vaelab(*args: object, path: list[Path] = (), cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m vaelab ARGS` in a new interpreter with `path` (and nothing else) on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    if path:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in path)
    return subprocess.run([sys.executable, "-m", "vaelab", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300, check=False)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vaelab: error:"), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory) -> Path:
    """A run trained with `--import tiny_plugin`, its net (tiny_mlp) and estimator (reparam_mc) from the plugin."""
    out = tmp_path_factory.mktemp("plugin") / "run"
    proc = vaelab("--import", "tiny_plugin", "train", "gaussian_vae", "--out", out, "--set", "model.nets=tiny_mlp",
                  "--set", "estimator.name=reparam_mc", *TINY, "--set", "model.hidden=[16,8]", path=[EXAMPLES])
    assert proc.returncode == 0, proc.stderr
    return out


def test_the_run_records_the_plugin_and_holds_the_plugins_network(plugin_run):
    cfg = yaml.safe_load((plugin_run / "config.yaml").read_text())
    assert cfg["plugins"] == ["tiny_plugin"]
    assert (cfg["model"]["nets"], cfg["estimator"]["name"]) == ("tiny_mlp", "reparam_mc")
    with safe_open(plugin_run / "checkpoint" / "model.safetensors", framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith("model.encoder")}
    # tiny_mlp takes hidden[0] only: Linear(64, 16), Tanh, Linear(16, 2 * 3 latents); "mlp" would have 64-16-8-6
    assert shapes == {"model.encoder.0.weight": (16, 64), "model.encoder.0.bias": (16,),
                      "model.encoder.2.weight": (6, 16), "model.encoder.2.bias": (6,)}


def test_every_command_opens_a_plugin_run_in_a_fresh_process(plugin_run, tmp_path):
    proc = vaelab("evaluate", plugin_run, "--iw-samples", 5, "--quiet", path=[EXAMPLES])
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((plugin_run / "eval.json").read_text())
    assert metrics["iw_samples"] == 5 and metrics["n_examples"] > 0
    assert abs(metrics["elbo"] - (metrics["rec"] - metrics["kl"])) < 1e-3
    proc = vaelab("sample", plugin_run, "--n", 4, "--out", tmp_path / "s.png", path=[EXAMPLES])
    assert proc.returncode == 0 and (tmp_path / "s.png").is_file(), proc.stderr
    proc = vaelab("train", "--resume", plugin_run, "--epochs", 2, "--quiet", path=[EXAMPLES])
    assert proc.returncode == 0, proc.stderr
    assert len((plugin_run / "metrics.jsonl").read_text().splitlines()) >= 2


def test_a_run_whose_plugin_is_missing_says_which_module(plugin_run):
    for args in (("evaluate", plugin_run, "--iw-samples", 5), ("sample", plugin_run, "--n", 4)):
        line = one_line_error(vaelab(*args))                     # examples/ is not on the path
        assert "needs a plugin" in line and "tiny_plugin is not importable" in line and "PYTHONPATH" in line


def test_import_of_an_unknown_module_is_one_line():
    line = one_line_error(vaelab("--import", "no_such_plugin_xyz", "list"))
    assert "plugin module no_such_plugin_xyz is not importable" in line


def test_an_unknown_name_in_a_config_whose_plugin_is_missing_names_the_plugin(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("plugins: [no_such_plugin_xyz]\nmodel: {nets: tiny_mlp}\n")
    line = one_line_error(vaelab("train", config, "--out", tmp_path / "run", *TINY))
    assert "no_such_plugin_xyz" in line and not (tmp_path / "run").exists()


def test_a_config_naming_the_plugin_trains_without_import(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("plugins: [tiny_plugin]\nmodel: {nets: tiny_mlp}\n")
    proc = vaelab("train", config, "--out", tmp_path / "run", *TINY, path=[EXAMPLES])
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["plugins"] == ["tiny_plugin"]


def test_an_entry_point_plugin_loads_on_a_miss_and_the_run_records_it(tmp_path):
    """A fake installed distribution (a .dist-info folder with entry_points.txt) advertises `ep_nets`."""
    site = tmp_path / "site"
    (site / "ep_demo-1.0.dist-info").mkdir(parents=True)
    (site / "ep_demo-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-demo\nVersion: 1.0\n")
    (site / "ep_demo-1.0.dist-info" / "entry_points.txt").write_text("[vaelab.plugins]\ndemo = ep_nets\n")
    (site / "ep_nets.py").write_text("import vaelab\nfrom vaelab.models.nets import mlp_pair\n"
                                     "vaelab.NETS.register('ep_mlp')(lambda *a: mlp_pair(*a))\n")
    proc = vaelab("train", "gaussian_vae", "--out", tmp_path / "run", "--set", "model.nets=ep_mlp", *TINY,
                  path=[site])
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["plugins"] == ["ep_nets"]
    assert vaelab("evaluate", tmp_path / "run", "--iw-samples", 5, "--quiet", path=[site]).returncode == 0
    line = one_line_error(vaelab("evaluate", tmp_path / "run", "--iw-samples", 5))
    assert "ep_nets is not importable" in line


def test_the_example_estimator_is_the_reparameterization_elbo_in_expectation():
    """reparam_mc's Monte Carlo KL averages to the Gaussian's analytic KL (an independent closed form)."""
    code = ("import torch, tiny_plugin\n"
            "from vaelab.models.vae import build_model\nfrom vaelab.config.schema import ModelConfig\n"
            "from vaelab.estimators.pathwise import build_estimator\n"
            "torch.manual_seed(0)\n"
            "m = build_model(ModelConfig(nets='tiny_mlp', hidden=[8], latent_dim=3), 64, (8, 8), torch.rand(64))\n"
            "est = build_estimator('reparam_mc', {}, m)\n"
            "x = torch.bernoulli(torch.rand(5, 64))\n"
            "kl = torch.stack([est(m, x).kl for _ in range(20000)]).mean(0)\n"
            "print(float((kl - m.kl(m.posterior(x))).abs().max()), float(m.kl(m.posterior(x)).min()))\n")
    env = os.environ | {"PYTHONPATH": str(EXAMPLES), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    gap, kl_min = map(float, proc.stdout.split())
    assert kl_min > 0.01 and gap < 0.05 * max(kl_min, 0.2)


def test_command_of_skips_the_value_of_import():
    assert cli.command_of(["--import", "train", "evaluate", "run"]) == "evaluate"
    assert cli.command_of(["--import", "a", "--import", "b", "sweep", "x"]) == "sweep"


def test_compare_does_not_split_runs_written_before_plugins_existed(tmp_path):
    from vaelab.config.schema import Config
    from vaelab.experiments.compare_groups import grouping_keys
    from vaelab.experiments.compare_runs import load_run

    new, old = Config().to_dict(), Config().to_dict()
    del old["plugins"]                                           # a config.yaml from before the key
    for name, values in (("new", new), ("old", old)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(values))
    assert grouping_keys([load_run(tmp_path / "new"), load_run(tmp_path / "old")], []) == []


def test_a_sweep_over_plugin_names_trains_evaluates_and_compares_them(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({
        "base": "gaussian_vae", "set": {"plugins": ["tiny_plugin"], "data.source": "digits", "model.hidden": [16],
                                        "model.latent_dim": 3, "train.epochs": 1, "train.batch_size": 64},
        "grid": {"model.nets": ["tiny_mlp"], "estimator.name": ["reparam", "reparam_mc"]}, "seeds": [0],
        "evaluate": {"iw_samples": 5}}))
    proc = vaelab("sweep", spec, "--out", tmp_path / "out", "--threads", "1", path=[EXAMPLES])
    assert proc.returncode == 0, proc.stderr
    evals = sorted((tmp_path / "out").rglob("eval.json"))
    assert len(evals) == 2 and all(yaml.safe_load((e.parent / "config.yaml").read_text())["plugins"] == ["tiny_plugin"]
                                   for e in evals)
    proc = vaelab("compare", tmp_path / "out", path=[EXAMPLES])
    assert proc.returncode == 0 and "reparam_mc" in proc.stdout, proc.stderr


def test_list_with_import_shows_what_the_plugin_registered():
    proc = vaelab("--import", "tiny_plugin", "list", path=[EXAMPLES])
    assert proc.returncode == 0, proc.stderr
    assert "from plugins, network type (model.nets): tiny_mlp" in proc.stdout
    assert "from plugins, estimator (estimator.name): reparam_mc" in proc.stdout
