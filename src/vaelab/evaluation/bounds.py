"""Evaluation: per-example tensors first (sklearn's `score_samples` style), means and standard errors second."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from vaelab.core.progress import bar
from vaelab.evaluation.exact import exact_loglik
from vaelab.models.vae import VAE
from vaelab.runtime.distributed import Context, gather_rows, seed_sampling
from vaelab.runtime.hardware import chunk_rows


@torch.no_grad()
def elbo_terms(model: VAE, x: Tensor, batch_size: int = 1000) -> dict[str, Tensor]:
    """Per-example ELBO = E_q[log p(x|z)] - KL (seed eq. 3), one z per image, analytic KL (or, for families
    without one, log q(z|x) - log p(z) at the same z): {elbo, rec, kl} [N]."""
    parts: dict[str, list[Tensor]] = {"elbo": [], "rec": [], "kl": []}
    for xb in x.split(batch_size):
        q = model.posterior(xb)
        z = q.sample()                                   # [B, D]
        rec = model.likelihood(z).log_prob(xb)           # [B]
        kl = torch.zeros_like(rec) if model.is_autoencoder else model.kl_at(q, z)  # [B]; an AE has no KL (eq. 12)
        for k, v in (("elbo", rec - kl), ("rec", rec), ("kl", kl)):
            parts[k].append(v)
    return {k: torch.cat(v) for k, v in parts.items()}


@torch.no_grad()
def iw_loglik_terms(model: VAE, x: Tensor, k: int = 5000, batch_size: int = 500, progress: bool = False,
                    proposal: Callable[[Tensor], Distribution] | None = None) -> tuple[Tensor, Tensor]:
    """log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q: per-example [N] (Burda et al. 2016, eq. 8), and the Monte
    Carlo variance of each estimate [N] by the delta method: with w_k the importance weights,
    Var[log mean_k w_k] ~= Var[w] / (K E[w]^2), estimated as (mean(w^2) / mean(w)^2 - 1) / (K - 1).

    The estimate is a stochastic lower bound on log p(x) in expectation that tightens as K grows. Samples are
    drawn in chunks of at most hardware.ROWS_PER_CHUNK decoded rows and combined with log-sum-exps in at least
    float32, so memory is bounded. `proposal` replaces q(z|x) (an autoencoder's fitted proposal, say)."""
    proposal = proposal or model.posterior
    logliks, mc_vars = [], []
    for xb in bar(x.split(batch_size), f"IW log-likelihood, K={k}, {len(x)} images", progress):
        q = proposal(xb)
        per_chunk = max(1, chunk_rows(xb.device, xb.shape[1]) // xb.shape[0])
        lse, lse2 = [], []
        for start in range(0, k, per_chunk):
            z = q.sample((min(per_chunk, k - start),))              # [S, B, D]
            log_w = model.log_joint(xb, z) - q.log_prob(z)          # [S, B]
            log_w = log_w.to(torch.promote_types(log_w.dtype, torch.float32))
            lse.append(torch.logsumexp(log_w, 0))                   # [B]
            lse2.append(torch.logsumexp(2 * log_w, 0))              # [B]
        m1 = torch.logsumexp(torch.stack(lse), 0) - math.log(k)     # [B] log mean w
        m2 = torch.logsumexp(torch.stack(lse2), 0) - math.log(k)    # [B] log mean w^2
        logliks.append(m1)
        ratio = torch.expm1(m2 - 2 * m1).clamp_min(0)               # [B] Var[w] / E[w]^2, estimated
        mc_vars.append(ratio / (k - 1) if k > 1 else torch.full_like(m1, math.nan))
    return torch.cat(logliks), torch.cat(mc_vars)


def iw_loglik(model: VAE, x: Tensor, k: int = 5000, batch_size: int = 500, progress: bool = False,
              proposal: Callable[[Tensor], Distribution] | None = None) -> Tensor:
    """The importance-weighted log-likelihood estimate per example [N] (see `iw_loglik_terms`)."""
    return iw_loglik_terms(model, x, k, batch_size, progress, proposal)[0]


def mean_and_stderr(values: Tensor) -> tuple[float, float]:
    """Mean and its standard error over examples."""
    v = values.double()
    return v.mean().item(), (v.std() / math.sqrt(max(len(v), 1))).item() if len(v) > 1 else 0.0


def summarize(per_example: dict[str, Tensor]) -> dict[str, float]:
    """{name: mean, name_stderr: standard error over examples} for each per-example tensor; a `NAME_mc_var`
    tensor (Monte Carlo variances of per-example estimates) becomes `NAME_mc_stderr` = sqrt(sum var) / N, the
    Monte Carlo standard error of the mean estimate: what a rerun with new samples would move it by."""
    out: dict[str, float] = {}
    for name, values in per_example.items():
        if name.endswith("_mc_var"):
            out[name.replace("_mc_var", "_mc_stderr")] = values.double().sum().sqrt().item() / max(len(values), 1)
        else:
            out[name], out[f"{name}_stderr"] = mean_and_stderr(values)
    return out


def per_example_metrics(model: VAE, x: Tensor, iw_samples: int = 5000, batch_size: int = 500,
                        progress: bool = False, exact: bool = False) -> dict[str, Tensor]:
    """Per-example test terms [N]: elbo, rec, kl; iw_loglik and its Monte Carlo variance iw_loglik_mc_var when
    iw_samples > 0; exact_loglik (log p(x) by
    enumerating every code, small Bernoulli latents only) when `exact`."""
    per_example = elbo_terms(model, x)
    if iw_samples > 0:
        per_example["iw_loglik"], per_example["iw_loglik_mc_var"] = iw_loglik_terms(
            model, x, iw_samples, batch_size, progress)
    if exact:
        per_example["exact_loglik"] = exact_loglik(model, x, batch_size, progress=progress)
    return per_example


def evaluate_model(model: VAE, x: Tensor, iw_samples: int = 5000, batch_size: int = 500,
                   progress: bool = False, exact: bool = False) -> dict[str, float]:
    """Test ELBO, KL and reconstruction, the importance-weighted log-likelihood (`iw_loglik`) and, when `exact`,
    the exact log p(x), in nats: means and standard errors of `per_example_metrics`."""
    per_example = per_example_metrics(model, x, iw_samples, batch_size, progress, exact)
    return summarize(per_example) | {"iw_samples": iw_samples, "n_examples": len(x)}


def evaluate_sharded(model: VAE, x: Tensor, iw_samples: int, batch_size: int, exact: bool, seed: int,
                     ctx: Context, progress: bool = False) -> dict[str, Any] | None:
    """`evaluate_model` (plus `exact_loglik` when asked) with the test images split across the ranks, each rank
    drawing its own importance samples; rank 0 gets the summary of all images, the other ranks None."""
    seed_sampling(seed, ctx, 1 << 20)                      # a stream no training epoch uses
    part = x.tensor_split(ctx.world_size)[ctx.rank]        # [n_r, P]
    per_example = per_example_metrics(model, part, iw_samples, batch_size, progress and ctx.is_main, exact)
    gathered = gather_rows(per_example, len(x), ctx)
    if not ctx.is_main:
        return None
    return summarize(gathered) | {"iw_samples": iw_samples, "n_examples": len(x), "processes": ctx.world_size}
