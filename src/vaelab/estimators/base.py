"""What every gradient estimator is: `Estimator.forward(model, x, kl_weight)` returns an `Estimate` (a surrogate
loss to differentiate, per-example ELBO terms to report), and the ESTIMATORS registry the families fill in.

Import `vaelab.estimators.pathwise`, not this module, to get every estimator registered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from vaelab.core.errors import check_choice, check_number
from vaelab.core.registry import Registry
from vaelab.models.vae import VAE

ESTIMATORS: Registry[type[Estimator]] = Registry("estimator (estimator.name)")


@dataclass
class Estimate:
    """What one estimator call returns. `loss` is a scalar surrogate; the rest are detached [B] tensors."""

    loss: Tensor
    elbo: Tensor
    rec: Tensor
    kl: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)


class Estimator(nn.Module):
    """Base class. `forward(model, x, kl_weight)` returns an Estimate; `kl_weight` scales only the trained KL and is
    a float or a 0-dim tensor (a CUDA graph's), used the same way: as a factor, never branched on."""

    needs: frozenset[str] = frozenset()   # subset of LatentFamily.offers(): rsample, discrete, kl, kl_at, factorised
    unbiased = True                       # False for relaxations (Gumbel, straight-through)

    def forward(self, model: VAE, x: Tensor, kl_weight: float | Tensor = 1.0) -> Estimate:
        raise NotImplementedError


class MultiSample(Estimator):
    """Base of the estimators that draw K samples per input (rloo, vimco, iwae): stores and checks `num_samples`."""

    min_samples = 2

    def __init__(self, num_samples: int = 4) -> None:
        super().__init__()
        name = next((n for n in ESTIMATORS if ESTIMATORS.get(n) is type(self)), type(self).__name__)
        check_number("estimator.kwargs.num_samples", num_samples, self.min_samples, integer=True,
                     fix=f"{name} needs at least {self.min_samples} per image")
        self.num_samples = num_samples


SIGNALS = {"rec": "log p(x|z) with the KL analytic",
           "elbo": "log p(x|z) + log p(z) - log q(z|x), the DisARM reference's"}


def check_signal(signal: str) -> str:
    """`estimator.kwargs.signal`: "rec" (log p(x|z), the KL analytic; vaelab's default) or "elbo" (the full
    one-sample ELBO, the learning signal of the DisARM reference code, google-research disarm/binary)."""
    return check_choice("estimator.kwargs.signal", signal, SIGNALS)


def elbo_signal(model: VAE, q: Distribution, z: Tensor, x: Tensor, kl_weight: float | Tensor) -> Tensor:
    """log p(x|z) + beta (log p(z) - log q(z|x)) at the drawn z [*S, B, D], detached: [*S, B]."""
    with torch.no_grad():
        return model.likelihood(z).log_prob(x) + kl_weight * (model.prior().log_prob(z) - q.log_prob(z))


def fresh_sample_elbo(model: VAE, q: Distribution, x: Tensor,
                      kl_weight: float | Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The DisARM reference's generative-model loss: the one-sample -ELBO at a fresh z ~ q(z|x), differentiated
    only into the decoder and the prior (z is a draw, log q is held fixed). Returns (loss [B], of value
    -(rec - beta KL), rec [B], the KL at z [B]); rec - KL is that one-sample ELBO, the reference's training ELBO."""
    z = q.sample()                                                            # [B, D]
    rec = model.likelihood(z).log_prob(x)                                     # [B]
    log_p = model.prior().log_prob(z)                                         # [B]
    log_q = q.log_prob(z).detach()                                            # [B]
    return kl_weight * (log_q - log_p) - rec, rec, log_q - log_p.detach()


def estimate(loss: Tensor, rec: Tensor, kl: Tensor, **stats: Tensor) -> Estimate:
    """Package an estimator's result, detaching the reported [B] terms."""
    rec, kl = rec.detach(), kl.detach()
    return Estimate(loss, rec - kl, rec, kl, {k: v.detach() for k, v in stats.items()})
