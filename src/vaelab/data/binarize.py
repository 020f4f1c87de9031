"""Binarization: grayscale images in [0, 1] made binary for a Bernoulli likelihood (`data.binarize`), and the fixed
seeded draws that valid/test (and a static training set) are scored on."""

from __future__ import annotations

import torch

from vaelab.core.errors import VaelabError

BINARIZATIONS = ("dynamic", "static", "threshold", "none")


def binarize(x: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Make images binary for a Bernoulli likelihood.

    "dynamic" and "static" both sample x ~ Bernoulli(x); they differ in when the caller calls this:
    dynamic resamples every epoch, static samples once with a fixed seed and reuses the result.
    "threshold" is x > 0.5; "none" returns x unchanged and requires it to be binary already.
    The draw is u < x with u ~ U[0, 1): the same distribution as torch.bernoulli, 2.2x faster on CPU (0.25 vs
    0.56 s for the 50k MNIST images, a tenth of an epoch).
    """
    if mode not in BINARIZATIONS:
        raise VaelabError(f"unknown binarization {mode!r}: choose one of {', '.join(BINARIZATIONS)}")
    if mode in ("dynamic", "static"):
        return torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype).lt_(x)  # 1.0 where u < x
    if mode == "threshold":
        return (x > 0.5).to(x.dtype)
    if not bool(((x == 0) | (x == 1)).all()):
        raise VaelabError(
            "data is grayscale; a Bernoulli likelihood needs binary data: "
            "set data.binarize to dynamic, static or threshold"
        )
    return x


def fixed_draw(x: torch.Tensor, mode: str, seed: int | torch.Generator) -> torch.Tensor:
    """The fixed binarized draw: images x [N, P] in [0, 1] made binary once, the same bits at every call on every
    device. Under "dynamic" and "static" one Bernoulli draw from a CPU generator seeded by `seed` (or `seed` itself,
    a generator, to draw several sets in turn from one stream), else `binarize(x, mode)`. Returned on x's device."""
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    return binarize(x.cpu(), "dynamic" if mode in ("dynamic", "static") else mode, gen).to(x.device)
