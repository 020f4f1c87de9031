"""The config layer is a leaf (issue 26): reading and checking any config imports no torch, because the names a
config uses are checked against config/names.py's static tables; those tables equal the live registries, and a
config gives the same one-line error whether it is checked against the tables or against the live registries (the
path a plugin's name takes). Whether torch was imported is read from a fresh interpreter's sys.modules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vaelab.config import limits, names
from vaelab.config.schema import load_config, presets
from vaelab.core.errors import VaelabError, check_choice

LEAF_PROBE = """
import json, sys
from vaelab.config.schema import config_from_yaml_text, load_config, presets
loaded = [load_config(p) for p in presets()]
same = all(config_from_yaml_text(cfg.to_yaml()) == cfg for cfg in loaded)
print(json.dumps({"presets": len(loaded), "same": same, "torch": "torch" in sys.modules,
                  "vaelab": sorted(m for m in sys.modules if m.startswith("vaelab."))}))
"""

# (overrides of the gaussian_vae preset, the whole line the checks gave before config became a leaf)
PLUGIN_HINT = (", or name the plugin module that registers it (plugins: [MODULE] in the config, or vaelab --import "
               "MODULE)")
BAD = [
    (["model.latent=gausian"], "unknown latent family (model.latent) 'gausian': did you mean 'gaussian'? choose one "
     "of bernoulli, bernoulli_ar, deterministic, gaussian, gaussian_iaf" + PLUGIN_HINT),
    (["model.nets=mlpp"], "unknown network type (model.nets) 'mlpp': did you mean 'mlp'? choose one of conv, mlp"
     + PLUGIN_HINT),
    (["estimator.name=reinforce"], "unknown estimator (estimator.name) 'reinforce': choose one of ae, arm, disarm, "
     "gumbel, iwae, nvil, relax, reparam, rloo, sfe, sfe-avg, st, vimco" + PLUGIN_HINT),
    (["model.latent=bernoulli", "estimator.name=disarm", "model.latent_kwargs={prior_prob: 0.3}"],
     "unknown key model.latent_kwargs.prior_prob: did you mean model.latent_kwargs.prior_probs? valid keys for "
     "BernoulliLatent: prior_probs, learn_prior"),
    (["model.latent=bernoulli", "estimator.name=disarm", "model.latent_kwargs={learn_prior: 3}"],
     "config key model.latent_kwargs.learn_prior = 3 is not a bool: fix the value"),
    (["model.latent_kwargs={steps: 2}"], "unknown key model.latent_kwargs.steps: valid keys for GaussianLatent: none"),
    (["estimator.name=iwae", "estimator.kwargs={num_sample: 3}"], "unknown key estimator.kwargs.num_sample: did you "
     "mean estimator.kwargs.num_samples? valid keys for IWAE: num_samples"),
    (["model.latent=bernoulli", "estimator.name=nvil", "estimator.kwargs={hidden: 0}"],
     "estimator.kwargs.hidden = 0 must be an integer in 1..65536: fix the value"),
    (["model.latent=bernoulli", "estimator.name=nvil", "estimator.kwargs={decay: .nan}"],
     "estimator.kwargs.decay = nan must be a finite number: fix the value"),
    (["model.latent=gaussian_iaf", "model.latent_kwargs={hidden_units: 1.5}"],
     "config key model.latent_kwargs.hidden_units = 1.5 is not a int | None: fix the value"),
    (["model.decoder_input=centered"], "model.decoder_input=centered maps binary codes to 2z - 1; latent gaussian is "
     "not binary: set model.decoder_input=code"),
    (["train.device=cuda:x"], "train.device = 'cuda:x' is not a device vaelab runs on: use auto, cpu, cuda or cuda:N"),
    (["train.compile_mode=fast"], "train.compile_mode = 'fast' is not a torch.compile mode: use one of default, "
     "reduce-overhead, max-autotune, max-autotune-no-cudagraphs"),
    (["train.autocast=fp16"], "train.autocast = 'fp16' is not supported: use bf16, or null for fp32"),
    (["data.binarize=dynamc"], "data.binarize = 'dynamc' is not known: did you mean 'dynamic'? choose one of "
     "dynamic, static, threshold, none"),
    (["model.activation=relu6"], "model.activation = 'relu6' is not known: did you mean 'relu'? choose one of relu, "
     "tanh, leaky_relu, elu, softplus"),
    (["train.param_groups={decodr: {lr: 1}}"], "train.param_groups.decodr: unknown group; choose from prior, "
     "encoder, decoder, latent, control"),
    (["train.param_groups={decoder: {optimizer: rmsprop}}"],
     "train.param_groups.decoder.optimizer='rmsprop': choose adam, sgd, burda_adam"),
    (["train.param_groups={decoder: {optimizer: sgd, betas: [0.9, 0.9]}}"],
     "train.param_groups.decoder: unknown key(s) betas for sgd; valid: optimizer, lr, momentum"),
    (["train.param_groups={decoder: {betas: [0.9, 1.0]}}"], "train.param_groups.decoder.betas[1] = 1.0 must be a "
     "finite number in [0, 1): e.g. betas: [0.9, 0.999]"),
    (["train.seed=-1"], "train.seed = -1 must be an integer in 0..9223372036854775807: give a seed in 0..2^63-1"),
    (["train.kl_weight={kind: lineer}"], "unknown train.kl_weight.kind 'lineer': choose one of constant, linear, "
     "cyclical"),
]


def error_line(overrides: list[str]) -> str:
    with pytest.raises(VaelabError) as err:
        load_config("gaussian_vae", overrides)
    return str(err.value)


@pytest.fixture
def live_only(monkeypatch):
    """Empty the static registry tables: every name is then looked up in the live registries, as a plugin's is."""
    for table in ("LATENT_ROWS", "ESTIMATOR_ROWS", "NET_NAMES", "DISCRETE_LATENTS", "AUTOENCODER_LATENTS"):
        monkeypatch.setattr(names, table, ())
    for table in ("LATENT_KWARGS", "ESTIMATOR_KWARGS"):
        monkeypatch.setattr(names, table, {})


def test_loading_every_preset_imports_no_torch():
    proc = subprocess.run([sys.executable, "-c", LEAF_PROBE], capture_output=True, text=True, timeout=120,
                          check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["presets"] == len(presets()) > 10 and result["same"]
    assert result["torch"] is False, f"loading the presets imported torch (vaelab modules: {result['vaelab']})"
    assert not {"vaelab.models.latents", "vaelab.estimators.pathwise", "vaelab.runtime.hardware"} & set(
        result["vaelab"])


def test_the_static_tables_equal_the_live_registries_and_modules():
    from vaelab.data.binarize import BINARIZATIONS
    from vaelab.models.nets import ACTIVATIONS
    from vaelab.runtime.hardware import AUTOCAST_DTYPES, COMPILE_MODES, DEVICE_PATTERN
    from vaelab.training.by_hand import BACKWARDS

    assert names.tables_source(names.live_tables()) in Path(names.__file__).read_text(), (
        "the registries changed: paste the output of `python -m vaelab.config.names` over the tables in "
        "src/vaelab/config/names.py")
    assert names.BINARIZATIONS == BINARIZATIONS and names.ACTIVATIONS == tuple(ACTIVATIONS)
    assert names.DEVICE_PATTERN.pattern == DEVICE_PATTERN.pattern and names.COMPILE_MODES == COMPILE_MODES
    assert names.AUTOCASTS == tuple(AUTOCAST_DTYPES) and names.BACKWARDS == BACKWARDS


@pytest.mark.parametrize("overrides, line", BAD, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_a_bad_config_gives_the_same_line_as_before(overrides, line):
    assert error_line(overrides) == line


@pytest.mark.parametrize("overrides, line", BAD, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_the_live_registries_give_the_same_line(overrides, line, live_only):
    assert error_line(overrides) == line


def test_every_preset_checks_the_same_against_the_live_registries(request):
    static = [load_config(p) for p in presets()]
    request.getfixturevalue("live_only")
    assert [load_config(p) for p in presets()] == static
    assert all(cfg.plugins == [] for cfg in static)


def test_a_name_only_the_live_registry_holds_is_checked_from_its_class(monkeypatch):
    """A plugin's estimator: found in the live registry, its keyword arguments checked against its own __init__,
    and its module recorded in `plugins` (this test module stands for the plugin)."""
    from vaelab.estimators.base import Estimator
    from vaelab.estimators.pathwise import ESTIMATORS

    class Probe(Estimator):
        def __init__(self, draws: int = 2, scale: float = 1.0) -> None:
            super().__init__()

    monkeypatch.setitem(ESTIMATORS._items, "probe_est", Probe)
    cfg = load_config("gaussian_vae", ["estimator.name=probe_est", "estimator.kwargs={draws: 3}"])
    assert cfg.estimator.kwargs == {"draws": 3} and cfg.plugins == [__name__]
    assert error_line(["estimator.name=probe_est", "estimator.kwargs={draws: 0}"]) == (
        "estimator.kwargs.draws = 0 must be an integer in 1..65536: fix the value")
    assert error_line(["estimator.name=probe_est", "estimator.kwargs={drawz: 3}"]) == (
        "unknown key estimator.kwargs.drawz: did you mean estimator.kwargs.draws? valid keys for Probe: draws, scale")


def test_check_choice_names_the_choices_and_their_meaning():
    assert check_choice("model.init", "torch", ("torch", "glorot_uniform")) == "torch"
    with pytest.raises(VaelabError) as err:
        check_choice("model.init", "glorot", ("torch", "glorot_uniform"))
    assert str(err.value) == ("model.init = 'glorot' is not known: did you mean 'glorot_uniform'? choose one of "
                              "torch, glorot_uniform")
    with pytest.raises(VaelabError) as err:
        check_choice("x", [1], {"a": "first", "b": "second"})
    assert str(err.value) == "x = [1] is not known: choose one of a (first), b (second)"


def test_check_signal_is_the_shared_choice_check():
    from vaelab.estimators.base import check_signal

    assert check_signal("elbo") == "elbo"
    with pytest.raises(VaelabError) as err:
        check_signal("elb")
    assert str(err.value) == ("estimator.kwargs.signal = 'elb' is not known: did you mean 'elbo'? choose one of rec "
                              "(log p(x|z) with the KL analytic), elbo (log p(x|z) + log p(z) - log q(z|x), the "
                              "DisARM reference's)")


def test_one_seed_check_worded_for_a_key_and_for_a_flag():
    from vaelab.cli.args import check_seed

    limits.check_seed("train.seed", 2**63 - 1)
    check_seed("--seed", None)                                       # not given
    with pytest.raises(VaelabError, match=r"^--seed -1: give a number from 0 to 9,223,372,036,854,775,807$"):
        check_seed("--seed", -1)
    with pytest.raises(VaelabError, match=r"^seed 9223372036854775808: give a number from 0 to 9,223"):
        limits.check_seed("seed", 2**63, count=True)
    with pytest.raises(VaelabError, match=r"^data.eval_seed = True must be an integer in 0\.\.9223372036854775807"):
        limits.check_seed("data.eval_seed", True)


def test_the_data_sources_table_is_the_catalog():
    """`--data`'s help and the static table name exactly the catalog's sources, in its order."""
    from vaelab.data.catalog import SOURCES

    assert names.DATA_SOURCES == tuple(SOURCES)
    assert all(name in names.DATA_HELP for name in SOURCES)
