"""Range checks of a whole Config, run before anything is built or written, and of command-line counts and paths.

Each failure is a VaelabError naming the key, the value, what it must be and how to fix it. Checking a config
needs every registry (data binarizations, latent families, networks, estimators) and the hardware options, so this
module sits above them; config/schema.py calls `check_config` and `check_type`, and nothing below imports either.
"""

from __future__ import annotations

import inspect
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any

import torch

from vaelab.core.errors import VaelabError, check_number, did_you_mean
from vaelab.core.plugins import entry_point_plugins, load_plugins, recorded
from vaelab.data.binarize import BINARIZATIONS
from vaelab.estimators.pathwise import ESTIMATORS
from vaelab.models.latents import LATENTS
from vaelab.models.nets import ACTIVATIONS, NETS
from vaelab.optim.optimizers import check_param_groups
from vaelab.optim.schedules import kl_schedule, lr_schedule
from vaelab.runtime.hardware import check_device_name, check_options

SEED_MAX = 2**63 - 1            # torch and numpy seeds: 0 .. 2^63-1
SIZE_MAX = 65536                # the largest layer width, channel count or latent dimension accepted
DECODER_BIASES = ("zero", "data_mean")
DECODER_INPUTS = ("code", "centered")
INITS = ("torch", "glorot_uniform")


def check_int(where: str, value: Any, lo: int, hi: int | None = None, fix: str = "") -> None:
    """`value` must be an int in [lo, hi] (errors.check_number, the one number validator)."""
    check_number(where, value, lo, hi, integer=True, fix=fix)


def check_positive(where: str, value: Any, fix: str = "") -> None:
    """`value` must be a finite number > 0 (errors.check_number)."""
    check_number(where, value, 0, open_lo=True, fix=fix)


def check_seed(where: str, value: Any) -> None:
    check_int(where, value, 0, SEED_MAX, "give a seed in 0..2^63-1")


def check_choice(where: str, value: Any, choices: typing.Iterable[str]) -> None:
    choices = list(choices)
    if value not in choices:
        raise VaelabError(f"{where} = {value!r} is not known: {did_you_mean(value, choices)}choose one "
                          f"of {', '.join(choices)}")


def check_type(value: Any, tp: Any, where: str) -> Any:
    """Return `value` if it fits the annotation `tp` (ints pass as floats), else raise a VaelabError (used
    for config keys by config.from_dict and for registered classes' keyword arguments by `check_kwargs`)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return check_type(value, arm, where)
            except VaelabError:
                pass
    elif tp is type(None):
        if value is None:
            return None
    elif tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    elif tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            pass
    elif origin is list and isinstance(value, list | tuple):
        (arm,) = typing.get_args(tp)
        return [check_type(v, arm, where) for v in value]
    elif origin is dict and isinstance(value, dict):
        return dict(value)
    elif isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise VaelabError(f"config key {where} = {value!r} is not a {getattr(tp, '__name__', tp)}: fix the value")


def _init_parameters(cls: type) -> tuple[Any, dict[str, inspect.Parameter]] | None:
    """The __init__ that builds `cls` (the first one below torch's nn.Module) and its keyword parameters (those
    with defaults, which a config may set); None when it takes **kwargs (nothing can be checked)."""
    for klass in cls.__mro__:
        if klass in (torch.nn.Module, object):
            return None, {}
        if "__init__" in vars(klass):
            params = inspect.signature(klass.__init__).parameters
            if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
                return None
            return klass.__init__, {n: p for n, p in params.items() if p.default is not inspect.Parameter.empty}
    return None, {}


def check_kwargs(cls: type, kwargs: dict[str, Any], where: str) -> None:
    """Refuse keyword arguments `cls` does not take ("did you mean") and values of the wrong type: an int
    parameter (a size or count) must be a positive integer, a float one a finite number."""
    found = _init_parameters(cls)
    if found is None:
        return
    init, params = found
    hints = typing.get_type_hints(init) if init is not None else {}
    for key, value in kwargs.items():
        if key not in params:
            hint = did_you_mean(key, params, f"{where}.", quote=False)
            raise VaelabError(f"unknown key {where}.{key}: {hint}valid keys for {cls.__name__}: "
                              f"{', '.join(params) or 'none'}")
        tp = hints.get(key, typing.Any)
        if tp is not typing.Any:
            check_type(value, tp, f"{where}.{key}")
        if isinstance(value, int) and not isinstance(value, bool) and int in typing.get_args(tp) + (tp,):
            check_int(f"{where}.{key}", value, 1, SIZE_MAX)
        if isinstance(value, float):
            check_number(f"{where}.{key}", value)


def _check_data(cfg: Any) -> None:
    if not isinstance(cfg.source, str) or not cfg.source.strip():
        raise VaelabError("data.source is empty: give mnist, digits or a path to a .npz file or IDX folder")
    check_choice("data.binarize", cfg.binarize, BINARIZATIONS)
    check_seed("data.eval_seed", cfg.eval_seed)
    if cfg.valid_size is not None:
        check_int("data.valid_size", cfg.valid_size, 1, SIZE_MAX, "e.g. 400 (the IWAE code's split)")


def _check_model(cfg: Any) -> None:
    latent = LATENTS.get(cfg.latent)
    NETS.get(cfg.nets)
    check_int("model.latent_dim", cfg.latent_dim, 1, SIZE_MAX)
    for i, size in enumerate(cfg.hidden):
        check_int(f"model.hidden[{i}]", size, 1, SIZE_MAX, "list positive layer sizes, e.g. [512, 256]")
    check_choice("model.activation", cfg.activation, ACTIVATIONS)
    check_choice("model.decoder_bias", cfg.decoder_bias, DECODER_BIASES)
    check_choice("model.decoder_input", cfg.decoder_input, DECODER_INPUTS)
    check_choice("model.init", cfg.init, INITS)
    if cfg.decoder_input == "centered" and not latent.discrete:
        raise VaelabError(f"model.decoder_input=centered maps binary codes to 2z - 1; latent {cfg.latent} is not "
                          "binary: set model.decoder_input=code")
    check_kwargs(latent, cfg.latent_kwargs, "model.latent_kwargs")


def _check_train(cfg: Any) -> None:
    check_int("train.epochs", cfg.epochs, 1)
    check_int("train.batch_size", cfg.batch_size, 1)
    check_positive("train.lr", cfg.lr, "e.g. train.lr=1e-3")
    check_positive("train.adam_eps", cfg.adam_eps, "e.g. train.adam_eps=1e-8")
    check_seed("train.seed", cfg.seed)
    check_device_name("train.device", cfg.device)
    if cfg.grad_clip is not None:
        check_positive("train.grad_clip", cfg.grad_clip, "give a positive norm, or null for no clipping")
    if cfg.grad_stats_every is not None:
        check_int("train.grad_stats_every", cfg.grad_stats_every, 1, fix="give a number of steps, or null for off")
    check_int("train.grad_stats_draws", cfg.grad_stats_draws, 2, 10_000, fix="e.g. train.grad_stats_draws=8")
    check_int("train.log_every", cfg.log_every, 1, fix="give a number of steps, e.g. train.log_every=10")
    if cfg.steps_per_epoch is not None:
        check_int("train.steps_per_epoch", cfg.steps_per_epoch, 1, fix="give a positive cap, or null")
    if cfg.keep_best not in (None, "valid_elbo"):
        raise VaelabError(f"train.keep_best = {cfg.keep_best!r} is not a criterion: use valid_elbo, or null for off")
    if cfg.early_stop_patience is not None:
        check_int("train.early_stop_patience", cfg.early_stop_patience, 1, fix="give a number of epochs, or null")
    check_param_groups(cfg.param_groups)
    lr_schedule(cfg.lr_schedule)
    kl_schedule(cfg.kl_weight, 1)
    check_options(cfg.compile, cfg.autocast, torch.device("cpu"), cfg.compile_mode)


def _check_plugins(cfg: Any) -> None:
    """Import the config's plugin modules (core/plugins.py), then the entry-point plugins if a name is still unknown."""
    load_plugins(cfg.plugins)
    used = ((LATENTS, cfg.model.latent), (NETS, cfg.model.nets), (ESTIMATORS, cfg.estimator.name))
    if any(name not in registry for registry, name in used):
        entry_point_plugins()
    for registry, name in used:
        if name not in registry:
            try:
                registry.get(name)
            except VaelabError as err:
                raise VaelabError(f"{err}, or name the plugin module that registers it (plugins: [MODULE] in the "
                                  "config, or vaelab --import MODULE)") from err


def check_config(cfg: Any) -> None:
    """Every field of a Config in range; raises a VaelabError naming the first one that is not. Plugin modules
    are imported first, and `cfg.plugins` gains any module outside vaelab that registered what the config uses."""
    if not isinstance(cfg.name, str) or not cfg.name or cfg.name in (".", "..") or "/" in cfg.name \
            or os.sep in cfg.name:
        raise VaelabError(f"name = {cfg.name!r} must be a plain name (it names runs/<name>): e.g. name: my_vae")
    _check_plugins(cfg)
    _check_data(cfg.data)
    _check_model(cfg.model)
    check_kwargs(ESTIMATORS.get(cfg.estimator.name), cfg.estimator.kwargs, "estimator.kwargs")
    cfg.plugins = recorded(cfg.plugins, (LATENTS.get(cfg.model.latent), NETS.get(cfg.model.nets),
                                         ESTIMATORS.get(cfg.estimator.name)))
    _check_train(cfg.train)
    check_int("eval.iw_samples", cfg.eval.iw_samples, 0, IW_SAMPLES_MAX, "0 skips the IW estimate")
    check_int("eval.batch_size", cfg.eval.batch_size, 1)


# ---------------------------------------------------------------------------------------------------------------
# Command-line counts and output paths
# ---------------------------------------------------------------------------------------------------------------

IW_SAMPLES_MAX = 1_000_000      # K of the IW estimate (streamed in chunks: memory is bounded, time is not)


def check_count(flag: str, value: int | None, lo: int, hi: int, why: str = "") -> None:
    """A command-line count in [lo, hi] (None: the option was not given)."""
    if value is None:
        return
    if value < lo or value > hi:
        limit = f" (the limit{why})" if value > hi else ""
        raise VaelabError(f"{flag} {value}: give a number from {lo} to {hi:,}{limit}")


def _nearest_existing(path: Path) -> Path:
    """`path` or the closest ancestor of it that exists."""
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_writable_dir(path: str | Path, what: str) -> None:
    """`path` must be (or can become) a directory this process can write: not a file, not under a file, and
    the directory itself (or its closest existing ancestor) accepts a new file (a probe file, removed at once)."""
    path = Path(path)
    existing = _nearest_existing(path)
    if not existing.is_dir():
        where = "is a file" if existing == Path(os.path.abspath(path)) else f"is under {existing}, which is a file"
        raise VaelabError(f"{what} {path} {where}: choose a directory path")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".vaelab-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise VaelabError(f"cannot write to {existing} ({err.strerror}): make it writable or choose another "
                          f"{what}") from err


def check_output_file(path: str | Path, what: str, extensions: tuple[str, ...]) -> None:
    """An output file path: a known extension, not a directory, in a writable directory."""
    path = Path(path)
    if path.is_dir():
        raise VaelabError(f"{what} {path} is a directory: give a file path such as {path / 'samples.png'}")
    if path.suffix.lower() not in extensions:
        raise VaelabError(f"{what} {path}: unknown image extension {path.suffix or '(none)'!r}: "
                          f"use one of {', '.join(extensions)}")
    existing = _nearest_existing(path.parent)
    if not existing.is_dir():
        raise VaelabError(f"{what} {path} is under {existing}, which is a file: choose another path")
    check_writable_dir(path.parent, f"folder for {what}")
