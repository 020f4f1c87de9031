"""Score-function (REINFORCE) estimators: sfe, sfe-avg, nvil, rloo and vimco. Each multiplies a learning signal,
centred by a control variate, by grad log q(z|x) through `score_term`, a term of value zero.

All but VIMCO keep the KL analytic (model.kl) and estimate only the gradient of the reconstruction term
E_q[log p(x|z)]; their loss value is the -ELBO of the drawn z (the study's Figure 3 trick). Registered in ESTIMATORS
when vaelab.estimators.pathwise is imported.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from vaelab.core.errors import VaelabError, check_number
from vaelab.estimators.base import (
    ESTIMATORS,
    Estimate,
    Estimator,
    MultiSample,
    check_signal,
    elbo_signal,
    estimate,
    fresh_sample_elbo,
)
from vaelab.models.vae import VAE


def score_term(log_q: Tensor, signal: Tensor) -> Tensor:
    """signal * (log q - log q.detach()): value 0, gradient signal * grad log q (REINFORCE, Williams 1992)."""
    return signal.detach() * (log_q - log_q.detach())


def reinforce_terms(model: VAE, q: Distribution, z: Tensor, x: Tensor,
                    kl_weight: float | Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """rec = log p(x|z), the KL term at z, and the learning signal a score-function estimator multiplies by
    grad log q(z|x): rec alone when the KL is analytic (its gradient is exact), rec - beta * KL when the KL is a
    Monte Carlo estimate (non-factorised posteriors), since then it depends on the sample too."""
    rec = model.likelihood(z).log_prob(x)                               # [*S, B]
    kl = model.kl_at(q, z)                                              # [B] or [*S, B]
    signal = rec - kl_weight * kl if model.latent.mc_kl else rec        # [*S, B]
    return rec, kl, signal


@ESTIMATORS.register("sfe")
class ScoreFunction(Estimator):
    """Plain REINFORCE on E_q[log p(x|z)] without a control variate (Williams 1992; the study's eq. 9)."""

    needs = frozenset({"kl_at"})

    def forward(self, model: VAE, x: Tensor, kl_weight: float | Tensor = 1.0) -> Estimate:
        q = model.posterior(x)
        z = q.sample()                                          # [B, D]
        rec, kl, signal = reinforce_terms(model, q, z, x, kl_weight)  # [B] each
        loss = kl_weight * kl - rec - score_term(q.log_prob(z), signal)
        return estimate(loss.mean(), rec, kl)


@ESTIMATORS.register("sfe-avg")
class RunningAverageSFE(Estimator):
    """The study's estimator (eq. 11, Figure 3): REINFORCE with c = a running average of past reconstruction losses.

    `average="cumulative"` (default) is what the seed describes, "the mean of all previous reconstruction losses";
    `average="ema"` is an exponential moving average with `decay` (the cumulative mean until 1/(n+1) < 1 - decay).
    The average is updated after the loss is formed and only in training mode, so the baseline a batch sees never
    depends on that batch and the gradient stays unbiased. The loss value is the true -ELBO of the drawn z.
    """

    needs = frozenset({"kl_at"})

    def __init__(self, average: str = "cumulative", decay: float = 0.9) -> None:
        super().__init__()
        if average not in ("cumulative", "ema"):
            raise VaelabError(f"estimator.kwargs.average = {average!r} is not known: choose cumulative or ema")
        check_number("estimator.kwargs.decay", decay, 0, 1, open_hi=True, fix="e.g. 0.9")
        self.average, self.decay = average, decay
        self.register_buffer("baseline", torch.zeros(()))                   # c, nats of reconstruction loss
        self.register_buffer("count", torch.zeros((), dtype=torch.long))    # batches averaged so far

    def forward(self, model: VAE, x: Tensor, kl_weight: float | Tensor = 1.0) -> Estimate:
        q = model.posterior(x)
        z = q.sample()                                                      # [B, D]
        log_q = q.log_prob(z)                     # [B]; before the KL, so the gradient's rounding is as it was
        rec, kl, signal = reinforce_terms(model, q, z, x, kl_weight)        # [B] each
        c = self.baseline.clone()                                           # mean past loss -signal: c ~ -E[signal]
        loss = kl_weight * kl - rec - score_term(log_q, signal + c)         # the study's SFE: signal - (-c)
        if self.training:
            self._update(-signal.detach().mean())
        return estimate(loss.mean(), rec, kl, baseline=c)

    @torch.no_grad()
    def _update(self, value: Tensor) -> None:
        weight = 1.0 / (self.count + 1.0)                                   # cumulative mean
        if self.average == "ema":
            weight = weight.clamp(min=1.0 - self.decay)
        self.baseline.add_(weight * (value - self.baseline))
        self.count.add_(1)


@ESTIMATORS.register("nvil")
class NVIL(Estimator):
    """Neural variational inference and learning (Mnih & Gregor 2014, sec. 3 and Algorithm 1).

    The learning signal log p(x|z) is centred by an input-dependent baseline c(x) (an MLP with one tanh layer,
    regressed onto the signal by a squared error folded into `loss`) and by a running mean; with `normalize` the
    whole encoder gradient is then divided by max(1, running std), a per-step rescaling reported as
    stats["encoder_grad_scale"] (an unbiased gradient times that positive factor). Running statistics use `decay`
    (0.8 in the paper) and are updated after the loss is formed, in training mode only.
    """

    needs = frozenset({"kl_at"})

    def __init__(self, data_dim: int, hidden: int = 100, decay: float = 0.8, normalize: bool = True) -> None:
        super().__init__()
        check_number("estimator.kwargs.decay", decay, 0, 1, open_hi=True, fix="e.g. 0.8 (Mnih & Gregor's)")
        self.decay, self.normalize = decay, normalize
        self.baseline_net = nn.Sequential(nn.Linear(data_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.register_buffer("signal_mean", torch.zeros(()))
        self.register_buffer("signal_var", torch.ones(()))

    @classmethod
    def from_model(cls, model: VAE, **kwargs) -> NVIL:
        """Size the baseline network's input to the model's images."""
        return cls(math.prod(model.image_shape), **kwargs)

    def forward(self, model: VAE, x: Tensor, kl_weight: float | Tensor = 1.0) -> Estimate:
        scale = self.signal_var.sqrt().clamp(min=1.0) if self.normalize else torch.ones_like(self.signal_var)
        h = model.encoder(x)                                    # [B, enc_out]
        h = h / scale + h.detach() * (1.0 - 1.0 / scale)        # same value, encoder gradient / scale
        q = model.latent.posterior(h)
        z = q.sample()                                          # [B, D]
        rec, kl, signal = reinforce_terms(model, q, z, x, kl_weight)  # [B] each
        target = signal.detach() - self.signal_mean             # [B] what c(x) learns to predict
        c = self.baseline_net(x.to(self.signal_mean.dtype)).squeeze(-1).to(rec.dtype)  # [B]
        regression = (target - c).square().mean()
        loss = (kl_weight * kl - rec - score_term(q.log_prob(z), target - c)).mean() + regression - regression.detach()
        if self.training:
            self._update(signal.detach() - c.detach())
        return estimate(loss, rec, kl, baseline_mse=regression, encoder_grad_scale=1.0 / scale)

    @torch.no_grad()
    def _update(self, centred: Tensor) -> None:
        self.signal_mean.lerp_(centred.mean().to(self.signal_mean.dtype), 1.0 - self.decay)
        self.signal_var.lerp_(centred.var(unbiased=False).to(self.signal_var.dtype), 1.0 - self.decay)


@ESTIMATORS.register("rloo")
class RLOO(MultiSample):
    """REINFORCE with K samples per input, each baselined by the mean of the other K-1 ("Buy 4 REINFORCE samples,
    get a baseline for free", Kool, van Hoof & Welling 2019). Reported terms average the K samples."""

    needs = frozenset({"kl_at"})

    def __init__(self, num_samples: int = 4, signal: str = "rec") -> None:
        super().__init__(num_samples)
        self.signal = check_signal(signal)

    def forward(self, model: VAE, x: Tensor, kl_weight: float | Tensor = 1.0) -> Estimate:
        k = self.num_samples
        q = model.posterior(x)
        z = q.sample((k,))                                      # [K, B, D]
        if self.signal == "elbo":                               # the DisARM reference's reinforce_loo
            return self._elbo_signal(model, q, z, x, kl_weight)
        rec, kl, signal = reinforce_terms(model, q, z, x, kl_weight)  # [K, B], [B] or [K, B], [K, B]
        loo = (signal.sum(0, keepdim=True) - signal) / (k - 1)  # [K, B] mean of the other K-1
        loss = (kl_weight * kl - rec - score_term(q.log_prob(z), signal - loo)).mean(0)
        return estimate(loss.mean(), rec.mean(0), model.latent.mean_kl(kl))

    def _elbo_signal(self, model: VAE, q: Distribution, z: Tensor, x: Tensor, kl_weight: float | Tensor) -> Estimate:
        """signal="elbo": each sample's full one-sample ELBO, baselined by the others', as the encoder's learning
        signal; the decoder and prior trained on a fresh draw's one-sample ELBO (estimator_base.fresh_sample_elbo)."""
        signal = elbo_signal(model, q, z, x, kl_weight)        # [K, B]
        loo = (signal.sum(0, keepdim=True) - signal) / (self.num_samples - 1)   # [K, B]
        generative, rec, kl = fresh_sample_elbo(model, q, x, kl_weight)          # [B] each
        loss = generative - score_term(q.log_prob(z), signal - loo).mean(0)
        return estimate(loss.mean(), rec, kl)


@ESTIMATORS.register("vimco")
class VIMCO(MultiSample):
    """The K-sample importance-weighted bound (Burda et al. 2016) with VIMCO's leave-one-out control variates
    (Mnih & Rezende 2016, sec. 3): sample j's learning signal is L - L_{-j}, where L_{-j} replaces log w_j by the
    mean of the other log-weights (their geometric-mean variant).

    Unlike the others it differentiates the whole log p(x, z) - log q(z|x), so its target is the gradient of the
    K-sample bound (`objective = "iw"`), and `loss` = -bound. elbo/rec/kl report the standard ELBO terms (rec
    averaged over the K samples; KL analytic, or its K-sample Monte Carlo mean for `mc_kl` families such as a
    non-factorised bernoulli_ar) so runs compare across estimators; the bound is stats["iw_bound"].
    `kl_weight` scales log p(z) - log q(z|x) inside each weight (1 gives the bound).
    """

    needs = frozenset({"kl_at"})
    objective = "iw"

    def forward(self, model: VAE, x: Tensor, kl_weight: float | Tensor = 1.0) -> Estimate:
        k = self.num_samples
        q = model.posterior(x)
        z = q.sample((k,))                                      # [K, B, D]
        log_q = q.log_prob(z)                                   # [K, B]
        rec = model.likelihood(z).log_prob(x)                   # [K, B]
        log_w = rec + kl_weight * (model.prior().log_prob(z) - log_q)  # [K, B]
        bound = torch.logsumexp(log_w, 0) - math.log(k)         # [B]
        signal = bound.detach() - self.leave_one_out(log_w.detach())  # [K, B]
        loss = -(bound + score_term(log_q, signal).sum(0)).mean()
        kl = model.latent.mean_kl(model.kl_at(q, z, log_q))    # [B]
        return estimate(loss, rec.mean(0), kl, iw_bound=bound)

    @staticmethod
    def leave_one_out(log_w: Tensor) -> Tensor:
        """L_{-j}: the bound with log w_j replaced by the mean of the other K-1 log-weights: [K, B]."""
        k = log_w.shape[0]
        others = (log_w.sum(0, keepdim=True) - log_w) / (k - 1)                # [K, B]
        eye = torch.eye(k, dtype=torch.bool, device=log_w.device)[:, :, None]  # [K, K, 1]
        swapped = torch.where(eye, others[:, None, :], log_w[None, :, :])      # [K(j), K, B]
        return torch.logsumexp(swapped, 1) - math.log(k)
