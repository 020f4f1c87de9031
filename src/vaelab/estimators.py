"""Gradient estimators: (model, x) -> Estimate(surrogate loss to differentiate, per-example ELBO terms to report).

Each estimator is one registered `nn.Module` class (baselines and control networks are its buffers and
submodules, so they are checkpointed). `needs` says what the latent family must offer; `build_estimator`
refuses a mismatch before training starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .errors import VaelabError
from .model import VAE
from .registry import Registry

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
    """Base class. `forward(model, x, kl_weight)` returns an Estimate; `kl_weight` scales only the trained KL."""

    needs: frozenset[str] = frozenset()   # subset of {"rsample", "discrete", "kl"}
    unbiased = True                       # False for relaxations (Gumbel, straight-through)

    def forward(self, model: VAE, x: Tensor, kl_weight: float = 1.0) -> Estimate:
        raise NotImplementedError


def estimate(loss: Tensor, rec: Tensor, kl: Tensor, **stats: Tensor) -> Estimate:
    """Package an estimator's result, detaching the reported [B] terms."""
    rec, kl = rec.detach(), kl.detach()
    return Estimate(loss, rec - kl, rec, kl, {k: v.detach() for k, v in stats.items()})


@ESTIMATORS.register("reparam")
class Reparam(Estimator):
    """Reparameterization trick z = mu + sigma * eps with analytic KL (Kingma & Welling 2014; the seed's section 2)."""

    needs = frozenset({"rsample", "kl"})

    def forward(self, model: VAE, x: Tensor, kl_weight: float = 1.0) -> Estimate:
        q = model.posterior(x)                      # batch [B], event [D]
        z = q.rsample()                             # [B, D]
        rec = model.likelihood(z).log_prob(x)       # [B]
        kl = model.kl(q)                            # [B]
        return estimate((kl_weight * kl - rec).mean(), rec, kl)


@ESTIMATORS.register("ae")
class Autoencoder(Estimator):
    """A deterministic autoencoder's loss: the Bernoulli reconstruction term alone (the seed's eq. 12)."""

    def forward(self, model: VAE, x: Tensor, kl_weight: float = 1.0) -> Estimate:
        z = model.posterior(x).mean                 # [B, D]
        rec = model.likelihood(z).log_prob(x)       # [B]
        return estimate(-rec.mean(), rec, torch.zeros_like(rec))


def build_estimator(name: str, kwargs: dict, model: VAE) -> Estimator:
    """Instantiate a registered estimator and check the latent family offers what it needs."""
    cls = ESTIMATORS.get(name)
    latent = model.latent
    offers = latent.offers()
    missing = cls.needs - offers
    if missing:
        fits = [n for n in ESTIMATORS if ESTIMATORS.get(n).needs <= offers]
        raise VaelabError(f"estimator {name!r} needs {', '.join(sorted(missing))}, which latent "
                          f"{type(latent).__name__} lacks: use one of {', '.join(fits)}")
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise VaelabError(f"bad estimator.kwargs for {name!r}: {err}") from err
