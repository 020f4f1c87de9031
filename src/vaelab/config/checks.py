"""Range checks of a whole Config, run before anything is built or written (the seed and K limits it shares with
the command line: config/limits.py).

Each failure is a VaelabError naming the key, the value, what it must be and how to fix it. Nothing here imports
torch: the names a config uses (latent family, network, estimator, binarization, activation, device, optimizer,
compile mode) and the keyword arguments of vaelab's own classes are checked against config/names.py's static
tables, the schedules by optim/schedules.py (which needs no torch). Only a name those tables do not hold, a
plugin's, is looked up in the live registries, which then import torch. config/schema.py calls `check_config` and
`check_type`.
"""

from __future__ import annotations

import os
import types
import typing
import unicodedata
from typing import Any

from vaelab.config import names
from vaelab.config.limits import IW_SAMPLES_MAX, check_seed
from vaelab.core.errors import VaelabError, check_choice, check_number, did_you_mean
from vaelab.core.plugins import entry_point_plugins, load_plugins, recorded
from vaelab.optim.param_groups import check_param_groups
from vaelab.optim.schedules import kl_schedule, lr_schedule

SIZE_MAX = 65536                # the largest layer width, channel count or latent dimension accepted
DECODER_BIASES = ("zero", "data_mean")
DECODER_INPUTS = ("code", "centered")
INITS = ("torch", "glorot_uniform")
CONTROL_CATEGORIES = ("Cc", "Zl", "Zp")   # NUL, ESC, DEL, C1 controls; U+2028, U+2029: refused in a config name


def check_int(where: str, value: Any, lo: int, hi: int | None = None, fix: str = "") -> None:
    """`value` must be an int in [lo, hi] (errors.check_number, the one number validator)."""
    check_number(where, value, lo, hi, integer=True, fix=fix)


def check_positive(where: str, value: Any, fix: str = "") -> None:
    """`value` must be a finite number > 0 (errors.check_number)."""
    check_number(where, value, 0, open_lo=True, fix=fix)


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


def _registry(kind: str) -> Any:
    """The live registry of `kind` ("latent", "net", "estimator"): imports the registering modules, and torch."""
    if kind == "latent":
        from vaelab.models.latents import LATENTS as registry
    elif kind == "net":
        from vaelab.models.nets import NETS as registry
    else:
        from vaelab.estimators.pathwise import ESTIMATORS as registry
    return registry


def _signature(kind: str, name: str) -> names.Signature:
    """The keyword arguments registered class `name` takes: the static table's, else the live class's."""
    table = names.LATENT_KWARGS if kind == "latent" else names.ESTIMATOR_KWARGS
    return table[name] if name in table else names.signature_of(_registry(kind).get(name))


def _discrete(latent: str) -> bool:
    """Whether latent family `latent` draws binary codes: the static table's answer, else the live class's."""
    if latent in names.static_names("latent"):
        return latent in names.DISCRETE_LATENTS
    return bool(_registry("latent").get(latent).discrete)


def is_autoencoder(latent: str) -> bool:
    """Whether latent family `latent` has a deterministic code (models.latents.is_autoencoder, answered from the
    static table without torch; a name only a plugin registers asks the live class)."""
    if latent in names.static_names("latent"):
        return latent in names.AUTOENCODER_LATENTS
    return bool(_registry("latent").get(latent).autoencoder)


def check_kwargs(signature: names.Signature, kwargs: dict[str, Any], where: str) -> None:
    """Refuse keyword arguments a class does not take ("did you mean") and values of the wrong type: an int
    parameter (a size or count) must be a positive integer, a float one a finite number. `signature`: the class's
    (class name, {keyword: annotation}) from config/names.py; None (it takes **kwargs): nothing is checked."""
    if signature is None:
        return
    cls_name, params = signature
    for key, value in kwargs.items():
        if key not in params:
            hint = did_you_mean(key, params, f"{where}.", quote=False)
            raise VaelabError(f"unknown key {where}.{key}: {hint}valid keys for {cls_name}: "
                              f"{', '.join(params) or 'none'}")
        tp = params[key]
        if tp is not typing.Any:
            check_type(value, tp, f"{where}.{key}")
        if isinstance(value, int) and not isinstance(value, bool) and int in typing.get_args(tp) + (tp,):
            check_int(f"{where}.{key}", value, 1, SIZE_MAX)
        if isinstance(value, float):
            check_number(f"{where}.{key}", value)


def _check_data(cfg: Any) -> None:
    if not isinstance(cfg.source, str) or not cfg.source.strip():
        raise VaelabError("data.source is empty: give mnist, digits or a path to a .npz file or IDX folder")
    check_choice("data.binarize", cfg.binarize, names.BINARIZATIONS)
    check_seed("data.eval_seed", cfg.eval_seed)
    if cfg.valid_size is not None:
        check_int("data.valid_size", cfg.valid_size, 1, SIZE_MAX, "e.g. 400 (the IWAE code's split)")


def _check_model(cfg: Any) -> None:
    check_int("model.latent_dim", cfg.latent_dim, 1, SIZE_MAX)
    for i, size in enumerate(cfg.hidden):
        check_int(f"model.hidden[{i}]", size, 1, SIZE_MAX, "list positive layer sizes, e.g. [512, 256]")
    check_choice("model.activation", cfg.activation, names.ACTIVATIONS)
    check_choice("model.decoder_bias", cfg.decoder_bias, DECODER_BIASES)
    check_choice("model.decoder_input", cfg.decoder_input, DECODER_INPUTS)
    check_choice("model.init", cfg.init, INITS)
    if cfg.decoder_input == "centered" and not _discrete(cfg.latent):
        raise VaelabError(f"model.decoder_input=centered maps binary codes to 2z - 1; latent {cfg.latent} is not "
                          "binary: set model.decoder_input=code")
    check_kwargs(_signature("latent", cfg.latent), cfg.latent_kwargs, "model.latent_kwargs")


def _check_hardware(cfg: Any) -> None:
    """train.device, train.compile_mode and train.autocast by name (runtime/hardware.py's wording); what the machine
    itself supports (bf16 on this GPU) is checked where the run is built (hardware.check_options)."""
    if not isinstance(cfg.device, str) or not names.DEVICE_PATTERN.fullmatch(cfg.device):
        raise VaelabError(f"train.device = {cfg.device!r} is not a device vaelab runs on: use auto, cpu, cuda or "
                          "cuda:N")
    if cfg.compile_mode not in names.COMPILE_MODES:
        raise VaelabError(f"train.compile_mode = {cfg.compile_mode!r} is not a torch.compile mode: use one of "
                          + ", ".join(names.COMPILE_MODES))
    if cfg.autocast is not None and cfg.autocast not in names.AUTOCASTS:
        raise VaelabError(f"train.autocast = {cfg.autocast!r} is not supported: use bf16, or null for fp32")
    if cfg.backward not in names.BACKWARDS:
        raise VaelabError(f"train.backward = {cfg.backward!r} is not a way to differentiate: use one of "
                          + ", ".join(names.BACKWARDS))


def _check_train(cfg: Any) -> None:
    check_int("train.epochs", cfg.epochs, 1)
    check_int("train.batch_size", cfg.batch_size, 1)
    check_positive("train.lr", cfg.lr, "e.g. train.lr=1e-3")
    check_positive("train.adam_eps", cfg.adam_eps, "e.g. train.adam_eps=1e-8")
    check_seed("train.seed", cfg.seed)
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
    _check_hardware(cfg)


def _check_plugins(cfg: Any) -> None:
    """Import the config's plugin modules (core/plugins.py). When the latent family, network and estimator are
    vaelab's own (config/names.py), that is all. Otherwise look them up in the live registries, importing the
    entry-point plugins if one is still unknown, and add to `cfg.plugins` any module outside vaelab that
    registered one (plugins.recorded)."""
    load_plugins(cfg.plugins)
    used = (("latent", cfg.model.latent), ("net", cfg.model.nets), ("estimator", cfg.estimator.name))
    if all(name in names.static_names(kind) for kind, name in used):
        return
    registries = {kind: _registry(kind) for kind, _ in used}
    if any(name not in registries[kind] for kind, name in used):
        entry_point_plugins()
    for kind, name in used:
        if name not in registries[kind]:
            try:
                registries[kind].get(name)
            except VaelabError as err:
                raise VaelabError(f"{err}, or name the plugin module that registers it (plugins: [MODULE] in the "
                                  "config, or vaelab --import MODULE)") from err
    cfg.plugins = recorded(cfg.plugins, (registries[kind].get(name) for kind, name in used))


def check_config(cfg: Any) -> None:
    """Every field of a Config in range; raises a VaelabError naming the first one that is not. Plugin modules
    are imported first, and `cfg.plugins` gains any module outside vaelab that registered what the config uses."""
    if not isinstance(cfg.name, str) or not cfg.name or cfg.name in (".", "..") or "/" in cfg.name \
            or os.sep in cfg.name:
        raise VaelabError(f"name = {cfg.name!r} must be a plain name (it names runs/<name>): e.g. name: my_vae")
    if any(unicodedata.category(c) in CONTROL_CATEGORIES for c in cfg.name):
        raise VaelabError(f"name = {cfg.name!r} holds a control character or line break (it names runs/<name> and "
                          "is printed in logs): use letters, digits, '-' and '_', e.g. name: my_vae")
    _check_plugins(cfg)
    _check_data(cfg.data)
    _check_model(cfg.model)
    check_kwargs(_signature("estimator", cfg.estimator.name), cfg.estimator.kwargs, "estimator.kwargs")
    _check_train(cfg.train)
    check_int("eval.iw_samples", cfg.eval.iw_samples, 0, IW_SAMPLES_MAX, "0 skips the IW estimate")
    check_int("eval.batch_size", cfg.eval.batch_size, 1)

