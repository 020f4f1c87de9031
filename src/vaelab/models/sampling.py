"""Turning decoder probabilities omega into images: the study's Figures 1/2 (and 4/5) sampling modes."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution

from vaelab.core.errors import VaelabError
from vaelab.models.vae import VAE

# omega [N, P] -> image [N, P]
DECODE_MODES: dict[str, Callable[[Tensor, torch.Generator | None], Tensor]] = {
    "bernoulli": lambda probs, gen: torch.bernoulli(probs, generator=gen),   # x ~ Bern(omega) (Fig. 1)
    "threshold": lambda probs, gen: (probs > 0.5).to(probs.dtype),            # omega > 0.5 (Fig. 2)
    "probs": lambda probs, gen: probs,                                        # omega itself, grey levels
}


def decode(probs: Tensor, mode: str, generator: torch.Generator | None = None) -> Tensor:
    """Apply a decode mode to omega."""
    if mode not in DECODE_MODES:
        raise VaelabError(f"unknown sampling mode {mode!r}: choose one of {', '.join(DECODE_MODES)}")
    return DECODE_MODES[mode](probs, generator)


@torch.no_grad()
def sample(model: VAE, n: int, mode: str = "bernoulli", prior: Distribution | None = None,
           generator: torch.Generator | None = None) -> Tensor:
    """z ~ prior (the model's own by default), omega = decoder(z), image by `mode`: [n, P]."""
    prior = prior if prior is not None else model.prior()
    z = prior.sample((n,))                                 # [n, D]
    return decode(model.decode_probs(z), mode, generator)


@torch.no_grad()
def reconstruct(model: VAE, x: Tensor, mode: str = "probs", generator: torch.Generator | None = None) -> Tensor:
    """Decode the posterior mean code of each image: [B, P]."""
    return decode(model.decode_probs(model.posterior(x).mean), mode, generator)
