"""vaelab: train, evaluate and compare latent-variable generative models on binary images."""

__version__ = "0.1.0"

from .config import Config, load_config
from .errors import VaelabError
from .estimators import ESTIMATORS, Estimate, Estimator
from .evaluate import elbo_terms, evaluate_model, iw_loglik
from .latents import LATENTS, LatentFamily
from .model import VAE, build_model
from .nets import NETS

__all__ = ["Config", "load_config", "VaelabError", "ESTIMATORS", "Estimate", "Estimator", "elbo_terms",
           "evaluate_model", "iw_loglik", "LATENTS", "LatentFamily", "VAE", "build_model", "NETS"]
