"""Exact quantities for small binary latent spaces, by enumerating all 2^D codes through `model.log_joint`.

log p(x) = logsumexp_z [log p(z) + log p(x|z)] over the 2^D codes z, and the exact expectations under q(z|x) that
gradient checks differentiate. Cost grows as 2^D x images x decoder: fine for D <= ~12 on a test set, minutes to
hours at D = 20 (2^20 codes x 10k MNIST test images is ~10^10 decoder rows), refused above MAX_EXACT_DIM.
`exact_cost` states that cost in one line; `vaelab evaluate --exact` prints it before any work and asks for
`--yes` above CONFIRM_CODES codes (`check_exact_confirmed`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vaelab.core.errors import VaelabError
from vaelab.core.progress import bar, on_terminal, stage
from vaelab.models.latents import BernoulliLatent
from vaelab.models.vae import VAE
from vaelab.runtime.hardware import chunk_rows

MAX_EXACT_DIM = 20
CONFIRM_CODES = 1 << 16   # above this many codes `vaelab evaluate --exact` runs only with --yes


def all_codes(dim: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """Every binary code of length `dim`, row i holding the bits of i (least significant first): [2^dim, dim]."""
    index = torch.arange(2**dim, device=device)[:, None]                  # [C, 1]
    return ((index >> torch.arange(dim, device=device)) & 1).to(dtype)     # [C, D]


def check_enumerable(model: VAE, max_dim: int = MAX_EXACT_DIM) -> int:
    """The latent dimension D if the model's codes can be enumerated, else a VaelabError naming the fix."""
    latent = model.latent
    if not isinstance(latent, BernoulliLatent):
        raise VaelabError(f"exact enumeration needs a Bernoulli latent, not {type(latent).__name__}: "
                          "use the importance-weighted estimate (--iw-samples) instead")
    if latent.dim > max_dim:
        raise VaelabError(f"exact enumeration of 2^{latent.dim} codes is out of reach (limit 2^{max_dim}): "
                          "use the importance-weighted estimate (--iw-samples) instead")
    return latent.dim


def exact_cost(dim: int, n_images: int) -> str:
    """One line stating what exact log p(x) costs: 2^D codes x N images decoder rows."""
    codes = 2**dim
    return (f"exact log p(x): 2^{dim} = {codes:,} codes x {n_images:,} test images = {codes * n_images:.2e} "
            "decoder rows")


def check_exact_confirmed(model: VAE, n_images: int, confirmed: bool, flag: str = "--yes") -> int:
    """D if exact log p(x) of `n_images` images may run: enumerable, and at most CONFIRM_CODES codes unless
    `confirmed`; else a one-line VaelabError stating the cost and naming `flag`."""
    dim = check_enumerable(model)
    if 2**dim > CONFIRM_CODES and not confirmed:
        raise VaelabError(f"{exact_cost(dim, n_images)}, above 2^{CONFIRM_CODES.bit_length() - 1} codes (minutes "
                          f"to hours): add {flag} to run it, or drop --exact and use the IW estimate")
    return dim


def chunk_size(like: Tensor, rows: int) -> int:
    """How many codes one chunk holds so that a chunk times `rows` images of `like`'s width stays under budget."""
    return max(1, chunk_rows(like.device, like.shape[-1]) // max(rows, 1))


def code_chunks(model: VAE, like: Tensor, rows: int) -> list[Tensor]:
    """All codes on `like`'s device and dtype, split so that a chunk times `rows` images stays under the budget."""
    codes = all_codes(model.latent.dim, like.dtype, like.device)
    return list(codes.split(chunk_size(like, rows)))


def _batch_chunks(batches: tuple[Tensor, ...], codes: Tensor):
    """(batch index, images, code chunk) for every test batch and every chunk of its codes, in order."""
    for index, xb in enumerate(batches):
        for chunk in codes.split(chunk_size(xb, len(xb))):
            yield index, xb, chunk


@torch.no_grad()
def exact_loglik(model: VAE, x: Tensor, batch_size: int = 500, max_dim: int = MAX_EXACT_DIM,
                 progress: bool = False) -> Tensor:
    """log p(x) = logsumexp over all 2^D codes of log p(z) + log p(x|z): per-example [N], exact up to rounding.

    With `progress`, a bar counts code chunks (one batch of images against one chunk of codes); off a terminal,
    where the bar is one line, a line also reports each finished batch of images."""
    dim = check_enumerable(model, max_dim)
    codes = all_codes(dim, x.dtype, x.device)                             # [C, D]
    batches = x.split(batch_size)
    counts = [-(-len(codes) // chunk_size(xb, len(xb))) for xb in batches]   # code chunks per batch
    lines = progress and not on_terminal()
    out: list[Tensor] = []
    parts: list[Tensor] = []
    for index, xb, chunk in bar(_batch_chunks(batches, codes), f"exact log p(x), 2^{dim} codes x {len(x)} images",
                                progress, sum(counts), unit="chunks"):
        z = chunk[:, None, :].expand(-1, len(xb), -1)                     # [c, B, D]
        parts.append(torch.logsumexp(model.log_joint(xb, z), 0))          # [B]
        if len(parts) == counts[index]:                                   # the batch has seen every code
            out.append(torch.logsumexp(torch.stack(parts), 0))            # [B]
            parts = []
            stage(f"exact log p(x): {sum(map(len, out))}/{len(x)} images done", lines)
    return torch.cat(out)                                                 # [N]


def expected_reconstruction(model: VAE, x: Tensor, codes: Tensor | None = None) -> Tensor:
    """sum_z q(z|x) log p(x|z) over `codes` (default: all 2^D), differentiable in encoder and decoder: [B].

    Summed over all codes this is the exact reconstruction term of the ELBO (seed eq. 3); over a chunk of codes it
    is that chunk's share, so callers can accumulate gradients chunk by chunk.
    """
    check_enumerable(model, max_dim=MAX_EXACT_DIM)
    q = model.posterior(x)
    if codes is None:
        codes = all_codes(model.latent.dim, x.dtype, x.device)
    z = codes[:, None, :].expand(-1, len(x), -1)                          # [C, B, D]
    return (q.log_prob(z).exp() * model.likelihood(z).log_prob(x)).sum(0)  # [B]


def exact_kl(model: VAE, x: Tensor) -> Tensor:
    """KL[q(z|x) || p(z)]: the family's closed form, else sum_z q(z|x) (log q(z|x) - log p(z)) over all codes
    (non-factorised binary families such as bernoulli_ar); differentiable: [B]."""
    q = model.posterior(x)
    if model.latent.has_kl:
        return model.kl(q)
    z = all_codes(check_enumerable(model), x.dtype, x.device)[:, None, :].expand(-1, len(x), -1)  # [C, B, D]
    log_q = q.log_prob(z)                                                 # [C, B]
    return (log_q.exp() * (log_q - model.prior().log_prob(z))).sum(0)


def exact_elbo(model: VAE, x: Tensor) -> Tensor:
    """The exact ELBO E_q[log p(x|z)] - KL[q || p] by enumeration, differentiable: [B]."""
    return expected_reconstruction(model, x) - exact_kl(model, x)


def exact_iw_bound(model: VAE, x: Tensor, num_samples: int, max_tuples: int = 1 << 16) -> Tensor:
    """E over K iid z_k ~ q of log (1/K) sum_k p(x, z_k) / q(z_k|x) (Burda et al. 2016), by enumerating all
    (2^D)^K tuples, differentiable: [B]. Only for tiny D and K (at most `max_tuples` tuples)."""
    dim = check_enumerable(model)
    if 2 ** (dim * num_samples) > max_tuples:
        raise VaelabError(f"the exact {num_samples}-sample bound needs 2^{dim * num_samples} code tuples "
                          f"(limit {max_tuples}): use fewer latent bits or samples")
    q = model.posterior(x)
    codes = all_codes(dim, x.dtype, x.device)
    z = codes[:, None, :].expand(-1, len(x), -1)                          # [C, B, D]
    log_q = q.log_prob(z)                                                 # [C, B]
    log_w = model.log_joint(x, z) - log_q                                 # [C, B]
    index = torch.cartesian_prod(*[torch.arange(len(codes), device=x.device)] * num_samples)  # [C^K, K]
    index = index.reshape(-1, num_samples)
    bound = torch.logsumexp(log_w[index], 1) - math.log(num_samples)      # [C^K, B]
    return (log_q[index].sum(1).exp() * bound).sum(0)                     # [B]
