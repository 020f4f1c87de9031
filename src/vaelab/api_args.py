"""The Python API's argument checks: what `vaelab.fit`, `vaelab.load` and a `Run`'s methods take, checked as the CLI
checks the same options, with its limits (cli/args.py, config/limits.py) and its wording.

Natural types are taken: numpy scalars, 0-d numpy arrays and 0-d torch tensors become the Python value (a float32
or float16 the shortest decimal that reads back as it, so `lr=np.float32(1e-3)` is `lr=0.001`), paths become
strings. Any other object is refused naming the argument. A value of the wrong type (a float or a bool where an int
is wanted, an int where a path is) raises an `ArgumentTypeError` (a TypeError), a value out of range or not known
an `ArgumentError` (a ValueError); both are VaelabErrors of one line naming the problem and the fix.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaelab.config.limits import SEED_MAX, check_count, check_seed
from vaelab.core.errors import VaelabError, did_you_mean
from vaelab.core.paths import check_output_file, check_writable_dir

SHORTCUTS = {"data": "data.source", "estimator": "estimator.name", "latent": "model.latent", "epochs": "train.epochs",
             "seed": "train.seed", "device": "train.device", "lr": "train.lr"}   # `fit`'s keywords -> config keys
SHORTCUT_TYPES = {"epochs": "int", "seed": "int", "lr": "number", "data": "str", "estimator": "str",
                  "latent": "str", "device": "str"}
PLAIN_TYPES = (type(None), bool, int, float, str)
# the config's own type errors (config/schema.py, config/checks.check_type): a wrong type given to `fit`
CONFIG_TYPE_ERROR = re.compile(r"config key \S+ = .* is not a \S+: fix the value$|config section \S+ must be a mapping")


class ArgumentError(VaelabError, ValueError):
    """A bad argument value given to the Python API (one line: the problem and the fix)."""


class ArgumentTypeError(VaelabError, TypeError):
    """An argument of the wrong type given to the Python API (one line: what was given and what is wanted)."""


@contextlib.contextmanager
def as_argument_error(replace: tuple[str, str] | None = None) -> Iterator[None]:
    """Re-raise a VaelabError of a shared check as an ArgumentError, or an ArgumentTypeError when the config's type
    check refused it (the same line; `replace` rewrites a path in it)."""
    try:
        yield
    except (ArgumentError, ArgumentTypeError):
        raise
    except VaelabError as err:
        message = str(err).replace(*replace) if replace else str(err)
        kind = ArgumentTypeError if CONFIG_TYPE_ERROR.match(message) else ArgumentError
        raise kind(message) from None


def shown(value: Any) -> str:
    """`value`'s repr on one short line (an object's repr may span lines or pages)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _wrong_type(name: str, value: Any, want: str) -> ArgumentTypeError:
    return ArgumentTypeError(f"{name} = {shown(value)} is a {type(value).__name__}: give {want}")


def scalar(value: Any) -> Any:
    """A numpy scalar, 0-d numpy array or 0-d tensor as its Python value (anything else unchanged)."""
    if isinstance(value, np.ndarray | torch.Tensor) and value.ndim == 0:
        value = value.item() if isinstance(value, torch.Tensor) else value[()]
    if isinstance(value, np.floating) and value.itemsize < 8:
        return float(str(value))                    # float32(1e-3) -> 0.001, not 0.0010000000474974513
    if isinstance(value, np.generic):
        item = value.item()     # a longdouble's item is itself: as a float (a complex one is refused by `plain`)
        return float(item) if isinstance(item, np.floating) else item
    return value


def plain(value: Any, name: str) -> Any:
    """`value` as what YAML and the config checks take: None, bool, int, float, str, lists and dicts of them, with
    numpy scalars, 0-d arrays and tensors and paths converted; anything else is an ArgumentTypeError naming `name`."""
    value = scalar(value)
    if isinstance(value, os.PathLike):
        return path_arg(name, value)
    if isinstance(value, Mapping):
        out = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise ArgumentTypeError(f"{name} has key {shown(key)}, a {type(key).__name__}: config keys are str")
            out[key] = plain(v, f"{name}[{key!r}]")
        return out
    if isinstance(value, list | tuple):
        return [plain(v, f"{name}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, PLAIN_TYPES):
        return value
    raise _wrong_type(name, value, "a number, str, bool, list or dict (numpy scalars and paths are taken too)")


def shortcut(name: str, value: Any) -> Any:
    """A `fit` keyword argument as a plain value, a shortcut (`epochs`, `seed`, `lr`, ...) of its type."""
    value = plain(value, name)
    want = SHORTCUT_TYPES.get(name)
    if want == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise _wrong_type(name, value, f"an int ({SHORTCUTS[name]})")
    if want == "number" and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise _wrong_type(name, value, f"a number ({SHORTCUTS[name]})")
    if want == "str" and not isinstance(value, str):
        raise _wrong_type(name, value, f"a str ({SHORTCUTS[name]})")
    return value


def _int(name: str, value: Any, want: str) -> int:
    value = scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _wrong_type(name, value, want)
    return int(value)


def int_arg(name: str, value: Any, lo: int, hi: int, why: str = "") -> int:
    """`value` as an int in [lo, hi] (numpy integers pass; floats and bools do not), as the CLI checks its counts."""
    value = _int(name, value, f"an int from {lo} to {hi:,}")
    with as_argument_error():
        check_count(name, value, lo, hi, why)
    return value


def seed_arg(name: str, value: Any) -> int:
    """A seed: an int in 0..2^63-1 (config.limits.check_seed, the one seed check, worded as for `--seed`)."""
    value = _int(name, value, f"an int from 0 to {SEED_MAX:,}")
    with as_argument_error():
        check_seed(name, value, count=True)
    return value


def bool_arg(name: str, value: Any) -> bool:
    """True or False (a numpy bool passes; 0 and 1 do not)."""
    value = scalar(value)
    if not isinstance(value, bool):
        raise _wrong_type(name, value, "True or False")
    return value


def choice_arg(name: str, value: Any, choices: tuple[str | None, ...]) -> Any:
    """One of `choices` (None only where it is one of them)."""
    value = scalar(value)
    listed = [c for c in choices if c is not None]
    if not isinstance(value, str) and not (value is None and None in choices):
        raise _wrong_type(name, value, f"one of {', '.join(listed)}")
    if value not in choices:
        raise ArgumentError(f"{name} = {value!r} is not known: {did_you_mean(value, listed)}choose one of "
                            f"{', '.join(listed)}")
    return value


def path_arg(name: str, value: Any) -> str:
    """A path: a str or an os.PathLike (pathlib.Path), not empty."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise _wrong_type(name, value, "a path (a str or a pathlib.Path)")
    if not value:
        raise ArgumentError(f"{name} is an empty string: give a path")
    return value


def device_arg(name: str, value: Any) -> str:
    """auto, cpu, cuda or cuda:N (runtime.hardware.check_device_name)."""
    from vaelab.runtime.hardware import check_device_name

    if not isinstance(value, str):
        raise _wrong_type(name, value, "a device name: auto, cpu, cuda or cuda:N")
    with as_argument_error():
        check_device_name(name, value)
    return value


def components_arg(value: Any, n_codes: int) -> int | str:
    """`fit_density`'s components: "auto" or an int from 1 to the number of training codes (as `--components`)."""
    value = scalar(value)
    if isinstance(value, str) and value == "auto":
        return value
    if not isinstance(value, str):
        value = _int("components", value, "a positive int or 'auto'")
    if isinstance(value, str) or value < 1:
        raise ArgumentError(f"components {value!r} is neither a positive integer nor auto: e.g. components=20")
    if value > n_codes:
        raise ArgumentError(f"components {value}: more components than the {n_codes} training codes they are "
                            "fitted to: give fewer, or auto")
    return value


def config_arg(value: Any) -> dict | str | None:
    """`fit`'s config: a Config or a mapping as a plain dict, a preset name or YAML path as a str, or None."""
    from vaelab.config.schema import Config

    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, Mapping):
        return plain(value, "config")
    return None if value is None else path_arg("config", value)


def image_path(value: Any, what: str, extensions: tuple[str, ...]) -> Path:
    """An image file to write: a path with a known extension in a writable folder (core.paths.check_output_file)."""
    path = path_arg(what, value)
    with as_argument_error():
        check_output_file(path, what, extensions)
    return Path(path)


def save_path(value: Any, run_dir: Path) -> Path:
    """Where `Run.save` may copy a run: a new path, outside the run's own directory, in a writable folder."""
    path = Path(path_arg("path", value))
    if os.path.lexists(path):
        raise ArgumentError(f"{path} exists: save to a new path")
    run = run_dir.resolve()
    if path.resolve() == run or run in path.resolve().parents:
        raise ArgumentError(f"path {path} is inside the run directory {run_dir}: save to a path outside it")
    with as_argument_error():
        check_writable_dir(path.parent, "folder of path")
    return path
