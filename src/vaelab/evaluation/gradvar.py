"""Gradient diagnostics: each estimator's gradient against the exact one, with its bias, variance and cost.

On a fixed batch and fixed parameters, `draw_grads` draws an estimator's gradient many times and `diagnose`
compares the draws with the exact gradient of the mean ELBO, computed with autograd through the exact expectation
sum_z q(z|x) log p(x|z) - KL over all 2^D codes (D <= EXACT_MAX_DIM). Above that the target is a high-draw
reference (RLOO with many samples) whose own noise is reported next to the biases. All gradients here are of the
objective (the ELBO, or the K-sample bound for estimators with `objective = "iw"`), i.e. minus the loss gradient.
`vaelab gradvar` around these numbers (a run or config, the batch, the table) is evaluation/gradvar_run.py; its
figure is viz/gradvar_plot.py.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vaelab.core.errors import VaelabError
from vaelab.core.progress import bar, stage
from vaelab.estimators.pathwise import Estimator
from vaelab.estimators.score_function import RLOO
from vaelab.evaluation.exact import code_chunks, exact_iw_bound, exact_kl, expected_reconstruction
from vaelab.models.vae import VAE

EXACT_MAX_DIM = 16


def flat_grad(value: Tensor, params: Sequence[nn.Parameter]) -> Tensor:
    """d value / d params, flattened and concatenated (zeros for parameters `value` does not use): [n_params]."""
    grads = torch.autograd.grad(value, list(params), allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                      for p, g in zip(params, grads, strict=True)])


def objective_of(estimator: Estimator) -> tuple[str, int]:
    """("elbo", 1), or ("iw", K) for an estimator of the K-sample importance-weighted bound (VIMCO)."""
    if getattr(estimator, "objective", "elbo") == "iw":
        return "iw", int(estimator.num_samples)
    return "elbo", 1


def exact_grad(model: VAE, x: Tensor, params: Sequence[nn.Parameter], objective: str = "elbo",
               num_samples: int = 1) -> Tensor:
    """Exact gradient of the mean ELBO (or K-sample bound) w.r.t. `params`, by enumerating all codes: [n_params].

    The ELBO's reconstruction term is summed chunk by chunk of codes, accumulating gradients, so memory stays
    bounded; the KL (analytic, else enumerated) is differentiated once.
    """
    if objective == "iw":
        return flat_grad(exact_iw_bound(model, x, num_samples).mean(), params)
    grad = flat_grad(-exact_kl(model, x).mean(), params)
    for codes in code_chunks(model, x, len(x)):
        grad += flat_grad(expected_reconstruction(model, x, codes).mean(), params)
    return grad


def draw_grads(estimator: Estimator, model: VAE, x: Tensor, params: Sequence[nn.Parameter], draws: int,
               replicas: int = 1, progress: bool = False, desc: str = "gradient draws") -> Iterator[Tensor]:
    """`draws` independent gradient estimates of the objective w.r.t. `params`, one [n_params] row at a time.

    Each row is one estimator call on `x` repeated `replicas` times along the batch, i.e. the mean of `replicas`
    independent single-draw gradients (faster in tests; the per-draw covariance is `replicas` times the rows').
    The estimator runs in eval mode, so running baselines stay frozen. NVIL's normalisation factor
    (stats["encoder_grad_scale"]) is divided out of the encoder entries, measuring the estimator before rescaling.
    `progress`: a bar over the draws, named `desc` (core/progress.py).
    """
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    is_encoder = torch.cat([torch.full((p.numel(),), id(p) in encoder_ids) for p in params]).to(x.device)
    xr = x.repeat(replicas, 1)                                            # [replicas * B, P]
    was_training = estimator.training
    estimator.eval()
    try:
        for _ in bar(range(draws), desc, progress, unit="draws"):
            est = estimator(model, xr)
            g = flat_grad(-est.loss, params)                              # [n_params]
            if "encoder_grad_scale" in est.stats:
                g = torch.where(is_encoder, g / est.stats["encoder_grad_scale"], g)
            yield g
    finally:
        estimator.train(was_training)


def estimator_grads(*args: Any, **kwargs: Any) -> Tensor:
    """All of `draw_grads`'s rows at once: [draws, n_params] (for tests and small models)."""
    return torch.stack(list(draw_grads(*args, **kwargs)))


@dataclass
class GradMoments:
    """The mean and per-coordinate variance of gradient draws, accumulated one draw at a time in float64
    (Welford 1962), so `gradvar` never holds the [draws, n_params] matrix (1000 draws of 10^6 parameters: 4 GB)."""

    n: int
    mean: Tensor                                                          # [n_params], float64
    m2: Tensor                                                            # [n_params] sum of squared deviations

    @classmethod
    def of(cls, rows: Iterable[Tensor]) -> GradMoments:
        n, mean, m2 = 0, None, None
        for row in rows:
            row = row.double()
            n += 1
            if mean is None:
                mean, m2 = row.clone(), torch.zeros_like(row)
            else:
                delta = row - mean
                mean += delta / n
                m2 += delta * (row - mean)
        if n < 2:
            raise VaelabError(f"gradient statistics need at least 2 draws, got {n}: raise --draws")
        return cls(n, mean, m2)

    def variance_trace(self) -> float:
        """Sum over coordinates of the unbiased per-coordinate variance (the trace of the covariance)."""
        return (self.m2.sum() / (self.n - 1)).item()


def warm_up(estimator: Estimator, model: VAE, x: Tensor, steps: int = 100, lr: float = 1e-2) -> None:
    """Train an estimator's own state (running baselines, control networks) on `x` with the model held fixed."""
    params = list(estimator.parameters())
    if not params and not list(estimator.buffers()):
        return                                                            # nothing to warm up
    optim = torch.optim.Adam(params, lr=lr) if params else None
    estimator.train()
    for _ in range(steps):
        with torch.set_grad_enabled(optim is not None):
            est = estimator(model, x)
        if optim is not None:
            for p, g in zip(params, torch.autograd.grad(est.loss, params, allow_unused=True), strict=True):
                p.grad = g
            optim.step()


def reference_grad(model: VAE, x: Tensor, params: Sequence[nn.Parameter], draws: int = 20,
                   num_samples: int = 500, progress: bool = False) -> tuple[Tensor, float]:
    """An unbiased high-draw ELBO gradient (RLOO with `num_samples` samples, `draws` times) and its noise norm."""
    grads = GradMoments.of(draw_grads(RLOO(num_samples).to(x.device), model, x, params, draws, progress=progress,
                                      desc=f"gradvar: reference gradient, RLOO with {num_samples} samples"))
    return grads.mean.to(x.dtype), math.sqrt(grads.variance_trace() / draws)


def summarize_grads(grads: GradMoments, target: Tensor | None, replicas: int = 1) -> dict[str, float | None]:
    """Bias norm, its noise floor, trace of the per-draw covariance, MSE, relative bias and cosine to the target."""
    n = grads.n
    variance = grads.variance_trace() * replicas                         # per single draw
    out: dict[str, float | None] = {"variance": variance, "log10_variance": math.log10(max(variance, 1e-300))}
    if target is None:
        return out | {"bias_norm": None, "bias_noise_floor": None, "mse": None, "relative_bias": None, "cosine": None}
    mean = grads.mean.to(target.dtype)
    bias = (mean - target).norm().item()
    return out | {
        "bias_norm": bias,
        "bias_noise_floor": math.sqrt(variance / (n * replicas)),        # E|mean - target| of an unbiased estimator
        "mse": bias**2 + variance,                                       # E|g - target|^2 of a single draw
        "relative_bias": bias / max(target.norm().item(), 1e-300),
        "cosine": torch.nn.functional.cosine_similarity(mean, target, dim=0).item(),
    }


def diagnose(estimators: dict[str, Estimator], model: VAE, x: Tensor, draws: int = 1000,
             params: Sequence[nn.Parameter] | None = None, reference_draws: int = 20,
             reference_samples: int = 500, progress: bool = False) -> dict[str, Any]:
    """Per estimator: bias against the exact (or reference) gradient, variance, MSE, cosine and seconds per draw.

    `params` default to the encoder's, whose gradient is what the estimators differ in. `progress`: a stage line
    for the target gradient and a bar over each estimator's draws (core/progress.py).
    """
    label = "encoder" if params is None else "selected"
    params = list(model.encoder.parameters()) if params is None else list(params)
    dim = model.latent.dim
    exact = dim <= EXACT_MAX_DIM
    if exact:
        stage(f"gradvar: exact gradient, enumerating 2^{dim} codes for {len(x)} images", progress)
        target, ref_noise = exact_grad(model, x, params), 0.0
        reference = f"exact: enumeration of all 2^{dim} codes"
    else:
        target, ref_noise = reference_grad(model, x, params, reference_draws, reference_samples, progress)
        reference = (f"reference: mean of {reference_draws} RLOO gradients with {reference_samples} samples each "
                     f"(2^{dim} codes are too many to enumerate); its noise norm is {ref_noise:.4g}")
    rows = []
    for name, est in estimators.items():
        objective, k = objective_of(est)
        row_target = target
        if objective == "iw":
            row_target = exact_grad(model, x, params, "iw", k) if exact and dim * k <= 16 else None
        t0 = time.perf_counter()
        grads = GradMoments.of(draw_grads(est, model, x, params, draws, progress=progress, desc=f"gradvar: {name}"))
        seconds = (time.perf_counter() - t0) / draws
        rows.append({"estimator": name, "unbiased": bool(est.unbiased),
                     "target": "elbo" if objective == "elbo" else f"iw bound, K={k}",
                     "seconds_per_draw": seconds, **summarize_grads(grads, row_target)})
    return {"reference": reference, "reference_noise": ref_noise, "target_norm": target.norm().item(),
            "latent_dim": dim, "batch": len(x), "draws": draws, "params": label,
            "n_params": sum(p.numel() for p in params), "rows": rows}


def training_grad_stats(estimator: Estimator, model: VAE, x: Tensor, draws: int = 8) -> dict[str, float]:
    """The encoder gradient's noise on batch `x` at the current parameters, from `draws` extra estimator calls
    (`train.grad_stats_every`): `grad_var` = trace of the per-draw covariance (the sum over encoder parameters of
    each coordinate's variance, as `gradvar` reports), `grad_snr` = |mean gradient| / sqrt(grad_var), the signal
    of one draw over its noise. The global RNG state is restored afterwards, so training draws exactly what it
    would have drawn without the measurement."""
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(x.device) if x.device.type == "cuda" else None
    try:
        params = list(model.encoder.parameters())
        grads = GradMoments.of(draw_grads(estimator, model, x, params, draws))
    finally:
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, x.device)
    variance = grads.variance_trace()
    signal = grads.mean.norm().item()
    return {"grad_var": variance, "log10_grad_var": math.log10(max(variance, 1e-300)),
            "grad_snr": signal / math.sqrt(variance) if variance > 0 else math.inf}
