import pytest

from vaelab.config.schema import Config, config_from_yaml_text, load_config
from vaelab.core.errors import VaelabError


def test_preset_loads_and_round_trips():
    cfg = load_config("configs/gaussian_vae.yaml")
    assert cfg.model.hidden == [512, 256] and cfg.model.latent_dim == 20 and cfg.train.batch_size == 128
    assert config_from_yaml_text(cfg.to_yaml()) == cfg


def test_overrides_parse_yaml_values():
    cfg = load_config(None, ["train.lr=1e-3", "model.hidden=[8, 4]", "train.grad_clip=5", "estimator.name=iwae",
                             "estimator.kwargs={num_samples: 3}"])
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.lr, float)
    assert cfg.model.hidden == [8, 4] and cfg.train.grad_clip == 5.0 and cfg.estimator.kwargs == {"num_samples": 3}
    assert load_config(None) == Config()


@pytest.mark.parametrize("override, fragment", [
    ("train.lrr=1", "did you mean train.lr"),
    ("train.epochs=abc", "train.epochs"),
    ("train.epochs=true", "train.epochs"),
    ("model=3", "must be a mapping"),
    ("novel.key=1", "unknown config key 'novel'"),
])
def test_bad_keys_and_values_are_named(override, fragment):
    with pytest.raises(VaelabError, match=fragment.replace(".", r"\.").replace("'", "'")):
        load_config(None, [override])


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(VaelabError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(VaelabError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(VaelabError, match="key=value"):
        load_config(None, ["train.lr"])


@pytest.mark.parametrize("path", sorted(__import__("pathlib").Path("configs").rglob("*.yaml")), ids=str)
def test_every_shipped_preset_is_valid(path):
    """Each preset loads strictly and names a registered latent family, estimator and network."""
    from vaelab.estimators.pathwise import ESTIMATORS
    from vaelab.models.latents import LATENTS
    from vaelab.models.nets import NETS

    cfg = load_config(path)
    assert cfg.model.latent in LATENTS and cfg.estimator.name in ESTIMATORS and cfg.model.nets in NETS
    if "literature" in path.parts:
        assert cfg.literature, "a literature preset carries its published figure and setting"
