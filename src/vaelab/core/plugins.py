"""Plugins: Python modules that register networks, latent families or estimators in vaelab's registries.

A plugin is any importable module whose import runs `@NETS.register("name")`, `@LATENTS.register(...)` or
`@ESTIMATORS.register(...)`. It is named in one of three ways:

- `plugins: [my_module]` in a config (a top-level key), imported before the config is checked against the
  registries; a run's config.yaml and checkpoint keep the list, so every command that opens the run (evaluate,
  sample, train --resume, compare, sweep) imports the same modules first;
- `vaelab --import my_module train ...`, which imports it and adds it to the run's `plugins`;
- an installed distribution's entry point in the group `vaelab.plugins` (`[project.entry-points."vaelab.plugins"]
  mine = "my_module"`), imported only when a config names something no registry holds.

`recorded` adds to `plugins` the module of every registered object a config uses that does not come from vaelab
itself, so a run trained through an entry point also names the module it needs.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from collections.abc import Iterable

from vaelab.core.errors import VaelabError

GROUP = "vaelab.plugins"
FIX = "install it, put its folder on PYTHONPATH, or fix the name"

_entry_points_loaded = False


class PluginMissing(VaelabError):
    """A plugin module that cannot be imported (absent, or failing on import); the message names it."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:120]}" if text else type(err).__name__


def import_plugin(name: str, what: str = "plugin module") -> None:
    """Import module `name` (nothing when it already is); a failure is one PluginMissing line naming it."""
    if not isinstance(name, str) or not name.strip() or any(not part.isidentifier() for part in name.split(".")):
        raise PluginMissing(f"{what} {name!r} is not a module name: give a dotted Python module name such as "
                            "my_plugins or mypackage.vae_plugins")
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and (name == err.name or name.startswith(f"{err.name}.")):
            raise PluginMissing(f"{what} {name} is not importable ({_first_line(err)}): {FIX}") from err
        raise PluginMissing(f"{what} {name} failed on import ({_first_line(err)}): install what it "
                            "imports") from err
    except VaelabError:
        raise
    except Exception as err:   # noqa: BLE001 - any fault inside a third-party module is reported by its name
        raise PluginMissing(f"{what} {name} failed on import ({_first_line(err)}): fix the module") from err


def load_plugins(names: Iterable[str]) -> None:
    """Import each of `names` in order (`import_plugin`): what a config's `plugins:` and `--import` name."""
    for name in names:
        import_plugin(name)


def entry_point_plugins() -> list[str]:
    """Import every module advertised in the entry-point group `vaelab.plugins`, once per process; returns their
    module names (an empty list on later calls and when none is installed)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return []
    _entry_points_loaded = True
    loaded = []
    for ep in importlib.metadata.entry_points(group=GROUP):
        dist = getattr(ep.dist, "name", None) or "an installed package"
        import_plugin(ep.module, f"plugin {ep.name!r} (entry point of {dist}), module")
        loaded.append(ep.module)
    return loaded


def recorded(plugins: list[str], used: Iterable[object]) -> list[str]:
    """`plugins` plus the module of each registered object in `used` that is not vaelab's own and not a script's
    `__main__` (which no later process can import): the modules a run needs to be opened again."""
    out = list(plugins)
    for obj in used:
        module = getattr(obj, "__module__", None) or ""
        if module and module.split(".")[0] != "vaelab" and module != "__main__" and module not in out:
            out.append(module)
    return out
