"""The latent-variable model: q(z|x), p(z), p(x|z). It returns per-sample, per-example log-densities and never
reduces or picks an objective; estimators and evaluators decide how to combine them."""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent

from vaelab.core.errors import VaelabError
from vaelab.models.latents import LATENTS, LatentFamily, is_autoencoder
from vaelab.models.nets import NETS


class BernoulliImage(Independent):
    """prod_i Bern(x_i | sigmoid(l_i)) over the pixels, with log p(x) = x . l - sum_i softplus(l_i) (seed eq. 7 in
    logit form): one product-sum and one softplus pass instead of binary_cross_entropy_with_logits' several, the
    same value to float precision and ~2x faster on the importance-sampling hot path. x [B, P], l [*S, B, P]."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__(Bernoulli(logits=logits, validate_args=False), 1, validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        return bernoulli_log_prob(value, self.base_dist.logits)                   # [*S, B]


def bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    """log prod_i Bern(x_i | sigmoid(l_i)) = x . l - sum_i softplus(l_i): x [B, P], l [*S, B, P] -> [*S, B]
    (BernoulliImage.log_prob, and the hand-written training steps' reconstruction term)."""
    return torch.einsum("...p,...p->...", x, logits) - F.softplus(logits).sum(-1)


class VAE(nn.Module):
    """Encoder + latent family + Bernoulli decoder. Shapes: x [B, P], z [*S, B, D], log-densities [*S, B]."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent: LatentFamily,
                 image_shape: tuple[int, int]) -> None:
        super().__init__()
        self.encoder, self.decoder, self.latent = encoder, decoder, latent
        self.image_shape = tuple(image_shape)

    @property
    def is_autoencoder(self) -> bool:
        """A deterministic code (latents.is_autoencoder): no KL, and no prior until a density is fitted."""
        return is_autoencoder(self.latent)

    def posterior(self, x: Tensor) -> Distribution:
        """q(z|x): batch [B], event [D]."""
        return self.latent.posterior(self.encoder(x))

    def prior(self) -> Distribution:
        """p(z): event [D]."""
        return self.latent.prior()

    def likelihood(self, z: Tensor) -> Distribution:
        """p(x|z) = prod_i Bern(x_i | omega_i(z)) (seed eq. 7): batch [*S, B], event [P]."""
        return BernoulliImage(self.decoder(z))

    def kl(self, q: Distribution) -> Tensor:
        """Analytic KL[q(z|x) || p(z)]: [B]."""
        return self.latent.kl(q)

    def kl_at(self, q: Distribution, z: Tensor, log_q: Tensor | None = None) -> Tensor:
        """The KL term at the estimator's own sample z: analytic [B], or log q(z|x) - log p(z) [*S, B] (mc_kl);
        `log_q` = q.log_prob(z) when the caller has it."""
        return self.latent.kl_at(q, z, log_q)

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x, z) = log p(z) + log p(x|z): [*S, B] for z [*S, B, D], x [B, P]."""
        return self.prior().log_prob(z) + self.likelihood(z).log_prob(x)

    @torch.no_grad()
    def decode_probs(self, z: Tensor) -> Tensor:
        """omega(z) = sigmoid(decoder(z)): [..., P]."""
        return torch.sigmoid(self.decoder(z))


class Demean(nn.Module):
    """x - mean training image before the encoder (`model.demean_input`, the DisARM reference's --demean_input)."""

    def __init__(self, mean: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone())                   # [P]

    def forward(self, x: Tensor) -> Tensor:
        return x - self.mean


class Centered(nn.Module):
    """2z - 1: binary codes as -1/+1 before the decoder (`model.decoder_input: centered`, the DisARM reference code's
    decoder input under --demean_input)."""

    def forward(self, z: Tensor) -> Tensor:
        return 2.0 * z - 1.0


def glorot_uniform_(module: nn.Module) -> None:
    """Glorot & Bengio 2010 uniform weights and zero biases for every linear and conv layer (`model.init:
    glorot_uniform`: Keras' Dense default, as in the DisARM code, and the IWAE code's nnet.Linear.random)."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ModelSpec(Protocol):
    """What `build_model` reads: the fields of config.ModelConfig (config/schema.py validates against the registries, so
    it sits above this module and is not imported here)."""

    latent: str
    latent_dim: int
    nets: str
    hidden: list[int]
    activation: str
    decoder_bias: str
    demean_input: bool
    decoder_input: str
    init: str
    latent_kwargs: dict[str, Any]


def build_model(cfg: ModelSpec, data_dim: int, image_shape: tuple[int, int],
                train_mean: Tensor | None = None) -> VAE:
    """Assemble networks and latent family from the config; optionally re-initialise them (Glorot uniform), set the
    output bias to logit(mean image) (clipped to [0.001, 0.999], as the DisARM and IWAE reference codes), subtract
    the mean image from the encoder's input and feed the decoder 2z - 1."""
    latent_cls = LATENTS.get(cfg.latent)
    latent = latent_cls(cfg.latent_dim, **cfg.latent_kwargs)
    encoder, decoder = NETS.get(cfg.nets)(data_dim, tuple(image_shape), latent_cls.params_per_dim * cfg.latent_dim,
                                          cfg.latent_dim, list(cfg.hidden), cfg.activation)
    if getattr(cfg, "init", "torch") == "glorot_uniform":
        glorot_uniform_(encoder)
        glorot_uniform_(decoder)
    if cfg.decoder_bias == "data_mean" and train_mean is not None:
        last = [m for m in decoder.modules() if getattr(m, "bias", None) is not None][-1]
        with torch.no_grad():
            last.bias.copy_(torch.logit(train_mean.clamp(1e-3, 1 - 1e-3)).reshape(last.bias.shape))
    if cfg.demean_input:
        if train_mean is None:
            raise VaelabError("model.demean_input needs the training images' mean")
        encoder = nn.Sequential(Demean(train_mean.reshape(-1)), encoder)
    if getattr(cfg, "decoder_input", "code") == "centered":
        decoder = nn.Sequential(Centered(), decoder)
    return VAE(encoder, decoder, latent, image_shape)
