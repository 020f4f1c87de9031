"""Experiment configuration: nested dataclasses, strict YAML loading and `--set a.b=c` overrides (nanoGPT style).

A leaf: loading and checking a config imports no torch (config/checks.py), so `compare`, `sweep` and `--help` read
configs at once; only a plugin's name, unknown to config/names.py, imports the live registries."""

from __future__ import annotations

import copy
import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vaelab.config.checks import check_config, check_type
from vaelab.config.names import PRESETS, presets
from vaelab.core import yaml_io
from vaelab.core.errors import VaelabError, did_you_mean


@dataclass
class DataConfig:
    source: str = "mnist"  # mnist | digits | mnist-static | fashion-mnist | omniglot | caltech-silhouettes | PATH
    binarize: str = "dynamic"      # dynamic (fresh draw each epoch) | static (one seeded draw) | threshold | none
    eval_seed: int = 1234          # seed of the fixed binarization of valid/test used for every evaluation
    valid_size: int | None = None  # N: train + valid in their original order, the last N images as valid (IWAE: 400)


@dataclass
class ModelConfig:
    latent: str = "gaussian"       # a name in LATENTS: gaussian | bernoulli | deterministic | ...
    latent_dim: int = 20
    nets: str = "mlp"              # a name in NETS
    hidden: list[int] = field(default_factory=lambda: [512, 256])  # encoder sizes; the decoder mirrors them
    activation: str = "relu"
    decoder_bias: str = "zero"     # zero | data_mean (output bias = logit of the mean training image)
    demean_input: bool = False     # encoder sees x - mean training image (the DisARM reference's --demean_input)
    decoder_input: str = "code"    # code (z as drawn) | centered (2z - 1 for binary codes, the DisARM reference's)
    init: str = "torch"            # torch (PyTorch's default) | glorot_uniform (Keras', the IWAE code's; zero biases)
    latent_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {prior_probs: 0.5, learn_prior: true}


@dataclass
class EstimatorConfig:
    name: str = "reparam"          # a name in ESTIMATORS
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: dict[str, Any] = field(default_factory=dict)  # lr(epoch) = lr * factor (optim.schedules); {} = const
    adam_eps: float = 1e-8         # Adam's epsilon (Burda et al. 2016 use 1e-4)
    param_groups: dict[str, Any] = field(default_factory=dict)  # per-group optimizers (optim.optimizers): prior: SGD
    seed: int = 0
    device: str = "auto"           # auto | cpu | cuda | cuda:N
    grad_clip: float | None = None
    steps_per_epoch: int | None = None   # cap the steps of each epoch (smoke tests); None = whole epoch
    kl_weight: dict[str, Any] = field(default_factory=dict)  # beta schedule (optim/schedules.py); {} = 1; eval uses 1
    compile: bool = False          # torch.compile the training step (runtime/hardware.py); first steps pay compile time
    compile_mode: str = "default"  # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune
    tf32: bool = False             # CUDA only: TF32 matmuls/convolutions (10-bit mantissa); False = IEEE fp32
    autocast: str | None = None    # "bf16": encoder/decoder of training steps in bf16, log-densities in fp32
    grad_stats_every: int | None = None   # log the encoder gradient's variance and SNR every N steps (grad_stats.jsonl)
    grad_stats_draws: int = 8      # extra estimator calls on the step's batch for each measurement
    log_every: int = 10            # TensorBoard: every N-th step's batch loss, ELBO, rec and KL (tb, batch/*)
    cuda_graph: bool = False       # CUDA only: replay each whole update (forward, backward, Adam) as one CUDA graph
    backward: str = "auto"         # auto | manual | autograd: manual = the hand-written step (training/by_hand.py)
    keep_best: str | None = None   # "valid_elbo": also keep RUN/best/, the epoch of the best validation ELBO
    early_stop_patience: int | None = None   # stop after N epochs without a better validation ELBO; None = off


@dataclass
class EvalConfig:
    iw_samples: int = 5000         # K of the importance-weighted log-likelihood
    batch_size: int = 500          # test images per evaluation batch


@dataclass
class Config:
    name: str = "run"
    description: str = ""
    plugins: list[str] = field(default_factory=list)  # modules imported first, registering nets/latents/estimators
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    literature: dict[str, Any] = field(default_factory=dict)  # published figure this preset is compared with

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def from_dict(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, refusing unknown keys with a "did you mean" hint."""
    if not isinstance(values, dict):
        raise VaelabError(f"config section {prefix or 'root'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise VaelabError(f"unknown config key {where!r}: {did_you_mean(key, names, prefix, quote=False)}valid "
                              f"keys here: {', '.join(names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, f"{where}.")
        else:
            kwargs[key] = check_type(value, tp, where)
    return cls(**kwargs)


def set_dotted(values: dict[str, Any], key: str, value: Any, what: str = "config key") -> None:
    """values[a][b]... = value for the dotted key 'a.b...', creating sections as needed (the value is copied, so
    configs built from one spec never share a mutable value)."""
    *parents, leaf = str(key).split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise VaelabError(f"{what}: {part} is not a config section")
    node[leaf] = copy.deepcopy(value)


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=c` strings to a nested dict; the value is parsed as YAML (so 1e-3, true, [1,2] work)."""
    for item in overrides:
        if "=" not in item:
            raise VaelabError(f"--set {item!r} is not key=value: write e.g. --set train.lr=1e-3")
        key, raw = item.split("=", 1)
        try:
            set_dotted(values, key.strip(), yaml_io.safe_load(raw), f"--set {key}")
        except yaml.YAMLError as err:
            raise VaelabError(f"--set {key}={raw!r}: the value is not valid YAML ({_yaml_problem(err)}): "
                              "quote it or fix it, e.g. --set train.lr=1e-3 or --set model.hidden=[512,256]") from err
    return values


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A one-line reason for a YAML error (PyYAML's own messages span several lines)."""
    problem = getattr(err, "problem", None) or err.__class__.__name__
    mark = getattr(err, "problem_mark", None)
    return " ".join(f"{problem}{f' at line {mark.line + 1}' if mark else ''}".split())


def parse_yaml_mapping(text: str, what: str, fix: str) -> dict[str, Any]:
    """Parse `text` with yaml_io (no tags that build Python objects; bounded, no duplicate keys) and require a
    mapping at the root."""
    values = yaml_io.load(text, what, fix)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise VaelabError(f"{what} must hold a mapping of sections (data:, model:, train:, ...), "
                          f"not a {type(values).__name__}: {fix}")
    return values


def resolve_preset(path: str | Path) -> Path:
    """A config file: `path` itself when it exists, else the shipped preset it names ("gaussian_vae",
    "literature/iwae_vae_1layer", or "configs/gaussian_vae.yaml" from any directory)."""
    given = Path(path)
    if given.is_file():
        return given
    name = str(path).removeprefix("configs/").removesuffix(".yaml")
    shipped = PRESETS / f"{name}.yaml"
    if ".." not in Path(name).parts and shipped.is_file():
        return shipped
    raise VaelabError(f"config file {path} not found: {did_you_mean(name, presets())}give a YAML file or a preset name "
                      f"({', '.join(presets()[:4])}, ...; `vaelab list` shows them all)")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), *,
                named: bool = False) -> Config:
    """Read a YAML file or shipped preset (`resolve_preset`; the defaults when `path` is None), apply overrides,
    validate strictly (keys, types and the ranges of `checks.check_config`), before anything is built or written.
    `named`: name and describe the result by what the overrides change (`name_variant`), as `vaelab train` does."""
    values: dict[str, Any] = {}
    if path is not None:
        path = resolve_preset(path)
        values = yaml_io.read_mapping(path, "fix it (UTF-8 YAML, readable)", f"config file {path}")
    return config_from_values(values, overrides, named=named)


def config_from_values(values: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), *,
                       named: bool = False) -> Config:
    """A validated Config from a nested dict (not changed) and `--set` overrides; `named`: see `name_variant`."""
    cfg = validate(from_dict(Config, apply_overrides(copy.deepcopy(values), list(overrides))))
    if not named:
        return cfg
    try:
        preset = from_dict(Config, copy.deepcopy(values))
    except VaelabError:        # a file that only its overrides make valid: nothing to name the changes after
        return cfg
    return name_variant(preset, cfg)


def name_variant(preset: Config, cfg: Config) -> Config:
    """`cfg` (the preset with overrides) named and described by what it changes: the name gains each of latent
    family, estimator, data and seed that differs from the preset's ("bernoulli_vae-disarm-digits-seed3", the
    default run directory runs/<name>), and a changed latent family, estimator or data replaces the preset's
    description, which described the preset's own choice ("... seed's SFE ..."), by one naming the choices made.
    A name or description that the overrides set themselves is kept. Returns `cfg`, changed in place."""
    changed = [(what, old, new) for what, old, new in (
        ("latent", preset.model.latent, cfg.model.latent), ("estimator", preset.estimator.name, cfg.estimator.name),
        ("data", preset.data.source, cfg.data.source)) if old != new]
    if cfg.name == preset.name:
        parts = [data_label(new) if what == "data" else new for what, _, new in changed]
        parts += [f"seed{cfg.train.seed}"] if cfg.train.seed != preset.train.seed else []
        cfg.name = "-".join([preset.name, *(re.sub(r"[^A-Za-z0-9._-]+", "_", p) for p in parts)])
    if changed and cfg.description == preset.description:
        cfg.description = (f"Preset {preset.name} with " + " and ".join(
            f"{what} {new} in place of its {old}" for what, old, new in changed) + ".")
    return cfg


def data_label(source: str) -> str:
    """A data source as a name part: "digits", or a file's or folder's name without .npz ("my_images")."""
    return Path(source.rstrip("/\\")).name.removesuffix(".npz") or source


def config_from_yaml_text(text: str, what: str = "config", fix: str = "fix it") -> Config:
    """Rebuild (and validate) a Config saved with `Config.to_yaml` (a checkpoint's), as the run trained
    (`as_trained`)."""
    return config_from_values(as_trained(parse_yaml_mapping(text, what, fix)))


def load_run_config(path: str | Path) -> Config:
    """A run directory's config.yaml (written by `train`), read as the run trained (`as_trained`), so that it
    compares equal to its checkpoint's config."""
    values = yaml_io.read_mapping(path, "fix it (UTF-8 YAML, readable)", f"config file {path}")
    return config_from_values(as_trained(values))


def as_trained(values: dict[str, Any]) -> dict[str, Any]:
    """A saved run's config values (changed in place) with what it trained under made explicit: a run saved before
    `train.backward` existed trained with autograd, and so resumes with it, bit for bit, as it would have."""
    if isinstance(values.get("train"), dict) and "backward" not in values["train"]:
        values["train"]["backward"] = "autograd"
    return values


def validate(cfg: Config) -> Config:
    """Range-check every field (see config/checks.py); returns `cfg`."""
    check_config(cfg)
    return cfg
