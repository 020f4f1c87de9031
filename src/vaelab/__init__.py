"""vaelab: train, evaluate and compare latent-variable generative models on binary images.

    run = vaelab.fit("bernoulli_vae", data="digits", estimator="disarm", epochs=5)   # api.py
    run.evaluate(iw_samples=100)["iw_loglik"]
"""

from .api import Run, fit, load
from .config import Config, load_config
from .errors import VaelabError
from .estimators import ESTIMATORS, Estimate, Estimator
from .evaluate import elbo_terms, evaluate_model, iw_loglik
from .latents import LATENTS, LatentFamily
from .model import VAE, build_model
from .nets import NETS
from .provenance import __version__ as __version__  # one definition, below every module that reports it

__all__ = ["fit", "load", "Run", "Config", "load_config", "VaelabError", "ESTIMATORS", "Estimate", "Estimator",
           "elbo_terms", "evaluate_model", "iw_loglik", "LATENTS", "LatentFamily", "VAE", "build_model", "NETS"]
