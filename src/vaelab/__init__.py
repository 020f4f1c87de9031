"""vaelab: train, evaluate and compare latent-variable generative models on binary images.

    run = vaelab.fit("bernoulli_vae", data="digits", estimator="disarm", epochs=5)   # api.py
    run.evaluate(iw_samples=100)["iw_loglik"]

The public names load on first use (PEP 562): `import vaelab` (and so `vaelab --help`, `vaelab list`) does not
import torch; `vaelab.fit` or `from vaelab import fit` imports what that name needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vaelab.core.provenance import __version__ as __version__  # one definition, below every module that reports it

if TYPE_CHECKING:   # the same names, for type checkers and editors
    from vaelab.api import ArgumentError, ArgumentTypeError, Run, fit, load
    from vaelab.config.schema import Config, load_config
    from vaelab.core.errors import VaelabError
    from vaelab.estimators.base import ESTIMATORS, Estimate, Estimator
    from vaelab.evaluation.bounds import elbo_terms, evaluate_model, iw_loglik
    from vaelab.models.latents import LATENTS, LatentFamily
    from vaelab.models.nets import NETS
    from vaelab.models.vae import VAE, build_model

# public name -> the module that defines it
_HOME = {"fit": "api", "load": "api", "Run": "api", "ArgumentError": "api", "ArgumentTypeError": "api",
         "Config": "config.schema", "load_config": "config.schema", "VaelabError": "core.errors",
         "ESTIMATORS": "estimators.base", "Estimate": "estimators.base", "Estimator": "estimators.base",
         "elbo_terms": "evaluation.bounds", "evaluate_model": "evaluation.bounds", "iw_loglik": "evaluation.bounds",
         "LATENTS": "models.latents", "LatentFamily": "models.latents", "VAE": "models.vae",
         "build_model": "models.vae", "NETS": "models.nets"}

__all__ = ["fit", "load", "Run", "ArgumentError", "ArgumentTypeError",
           "Config", "load_config", "VaelabError", "ESTIMATORS", "Estimate", "Estimator",
           "elbo_terms", "evaluate_model", "iw_loglik", "LATENTS", "LatentFamily", "VAE", "build_model", "NETS"]


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use and kept; AttributeError for any other name (so
    `from vaelab import models` still finds the subpackage)."""
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
