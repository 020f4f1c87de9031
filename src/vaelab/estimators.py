"""Gradient estimators: (model, x) -> Estimate(surrogate loss to differentiate, per-example ELBO terms to report).

Each estimator is one registered `nn.Module` class (baselines and control networks are its buffers and
submodules, so they are checkpointed). `needs` says what the latent family must offer; `build_estimator`
refuses a mismatch before training starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, RelaxedBernoulli

from .errors import VaelabError
from .model import VAE
from .nets import ACTIVATIONS
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

    needs: frozenset[str] = frozenset()   # subset of LatentFamily.offers(): rsample, discrete, kl, kl_at, factorised
    unbiased = True                       # False for relaxations (Gumbel, straight-through)

    def forward(self, model: VAE, x: Tensor, kl_weight: float = 1.0) -> Estimate:
        raise NotImplementedError


class MultiSample(Estimator):
    """Base of the estimators that draw K samples per input (rloo, vimco, iwae): stores and checks `num_samples`."""

    min_samples = 2

    def __init__(self, num_samples: int = 4) -> None:
        super().__init__()
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < self.min_samples:
            name = next((n for n in ESTIMATORS if ESTIMATORS.get(n) is type(self)), type(self).__name__)
            raise VaelabError(f"{name} needs estimator.kwargs.num_samples >= {self.min_samples} (an integer), "
                              f"got {num_samples!r}")
        self.num_samples = num_samples


def estimate(loss: Tensor, rec: Tensor, kl: Tensor, **stats: Tensor) -> Estimate:
    """Package an estimator's result, detaching the reported [B] terms."""
    rec, kl = rec.detach(), kl.detach()
    return Estimate(loss, rec - kl, rec, kl, {k: v.detach() for k, v in stats.items()})


@ESTIMATORS.register("reparam")
class Reparam(Estimator):
    """Reparameterization trick z = mu + sigma * eps with analytic KL (Kingma & Welling 2014; the seed's section 2)."""

    needs = frozenset({"rsample", "kl_at"})

    def forward(self, model: VAE, x: Tensor, kl_weight: float = 1.0) -> Estimate:
        q = model.posterior(x)                      # batch [B], event [D]
        z = q.rsample()                             # [B, D]
        rec = model.likelihood(z).log_prob(x)       # [B]
        kl = model.latent.kl_at(q, z)               # [B] analytic, or log q(z|x) - log p(z) for flow posteriors
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
    make = getattr(cls, "from_model", None)   # estimators sized by the model (NVIL's baseline net)
    try:
        return make(model, **kwargs) if make else cls(**kwargs)
    except TypeError as err:
        raise VaelabError(f"bad estimator.kwargs for {name!r}: {err}") from err


# ---------------------------------------------------------------------------------------------------------------
# Estimators for discrete latents. All but VIMCO keep the KL analytic (model.kl) and estimate only the gradient of
# the reconstruction term E_q[log p(x|z)]; their loss value is the -ELBO of the drawn z (the seed's Figure 3 trick).
# ---------------------------------------------------------------------------------------------------------------


def score_term(log_q: Tensor, signal: Tensor) -> Tensor:
    """signal * (log q - log q.detach()): value 0, gradient signal * grad log q (REINFORCE, Williams 1992)."""
    return signal.detach() * (log_q - log_q.detach())


def reinforce_terms(model: VAE, q: Distribution, z: Tensor, x: Tensor,
                    kl_weight: float) -> tuple[Tensor, Tensor, Tensor]:
    """rec = log p(x|z), the KL term at z, and the learning signal a score-function estimator multiplies by
    grad log q(z|x): rec alone when the KL is analytic (its gradient is exact), rec - beta * KL when the KL is a
    Monte Carlo estimate (non-factorised posteriors), since then it depends on the sample too."""
    rec = model.likelihood(z).log_prob(x)                               # [*S, B]
    kl = model.kl_at(q, z)                                              # [B] or [*S, B]
    signal = rec - kl_weight * kl if model.latent.mc_kl else rec        # [*S, B]
    return rec, kl, signal


def bernoulli_logits(q: Distribution) -> Tensor:
    """The [B, D] logits of a factorised Bernoulli posterior; other posteriors are refused with the fix."""
    base = getattr(q, "base_dist", q)
    if not isinstance(base, Bernoulli):
        raise VaelabError(f"this estimator needs a Bernoulli posterior, got {type(base).__name__}: "
                          "set model.latent=bernoulli or pick a score-function estimator (sfe, rloo, ...)")
    return base.logits


@ESTIMATORS.register("sfe")
class ScoreFunction(Estimator):
    """Plain REINFORCE on E_q[log p(x|z)] without a control variate (Williams 1992; the seed's eq. 9)."""

    needs = frozenset({"kl_at"})

    def forward(self, model: VAE, x: Tensor, kl_weight: float = 1.0) -> Estimate:
        q = model.posterior(x)
        z = q.sample()                                          # [B, D]
        rec, kl, signal = reinforce_terms(model, q, z, x, kl_weight)  # [B] each
        loss = kl_weight * kl - rec - score_term(q.log_prob(z), signal)
        return estimate(loss.mean(), rec, kl)


@ESTIMATORS.register("sfe-avg")
class RunningAverageSFE(Estimator):
    """The seed's estimator (eq. 11, Figure 3): REINFORCE with c = a running average of past reconstruction losses.

    `average="cumulative"` (default) is what the seed describes, "the mean of all previous reconstruction losses";
    `average="ema"` is an exponential moving average with `decay` (the cumulative mean until 1/(n+1) < 1 - decay).
    The average is updated after the loss is formed and only in training mode, so the baseline a batch sees never
    depends on that batch and the gradient stays unbiased. The loss value is the true -ELBO of the drawn z.
    """

    needs = frozenset({"kl_at"})

    def __init__(self, average: str = "cumulative", decay: float = 0.9) -> None:
        super().__init__()
        if average not in ("cumulative", "ema") or not 0.0 <= decay < 1.0:
            raise VaelabError(f"sfe-avg: average={average!r}, decay={decay}: use average cumulative or ema "
                              "and 0 <= decay < 1")
        self.average, self.decay = average, decay
        self.register_buffer("baseline", torch.zeros(()))                   # c, nats of reconstruction loss
        self.register_buffer("count", torch.zeros((), dtype=torch.long))    # batches averaged so far

    def forward(self, model: VAE, x: Tensor, kl_weight: float = 1.0) -> Estimate:
        q = model.posterior(x)
        z = q.sample()                                                      # [B, D]
        log_probs_sum = q.log_prob(z)                                       # [B] log q(z|x)
        rec, kl_div_bern, signal = reinforce_terms(model, q, z, x, kl_weight)  # [B] each
        reconstruction_loss = -rec                                          # [B] BCE summed over pixels
        running_avg = self.baseline.clone()
        sfe = -log_probs_sum * (-signal.detach() - running_avg)             # [B] the seed's SFE
        loss = (reconstruction_loss + kl_weight * kl_div_bern - sfe + sfe.detach()).mean()
        if self.training:
            self._update(-signal.detach().mean())
        return estimate(loss, -reconstruction_loss, kl_div_bern, baseline=running_avg)

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
        self.decay, self.normalize = decay, normalize
        self.baseline_net = nn.Sequential(nn.Linear(data_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.register_buffer("signal_mean", torch.zeros(()))
        self.register_buffer("signal_var", torch.ones(()))

    @classmethod
    def from_model(cls, model: VAE, **kwargs) -> NVIL:
        """Size the baseline network's input to the model's images."""
        return cls(math.prod(model.image_shape), **kwargs)

    def forward(self, model: VAE, x: Tensor, kl_weight: float = 1.0) -> Estimate:
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

    def forward(self, model: VAE, x: Tensor, kl_weight: float = 1.0) -> Estimate:
        k = self.num_samples
        q = model.posterior(x)
        z = q.sample((k,))                                      # [K, B, D]
        rec, kl, signal = reinforce_terms(model, q, z, x, kl_weight)  # [K, B], [B] or [K, B], [K, B]
        loo = (signal.sum(0, keepdim=True) - signal) / (k - 1)  # [K, B] mean of the other K-1
        loss = (kl_weight * kl - rec - score_term(q.log_prob(z), signal - loo)).mean(0)
        return estimate(loss.mean(), rec.mean(0), kl.mean(0) if kl.dim() == 2 else kl)


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

    def forward(self, model: VAE, x: Tensor, kl_weight: float = 1.0) -> Estimate:
        k = self.num_samples
        q = model.posterior(x)
        z = q.sample((k,))                                      # [K, B, D]
        log_q = q.log_prob(z)                                   # [K, B]
        rec = model.likelihood(z).log_prob(x)                   # [K, B]
        log_w = rec + kl_weight * (model.prior().log_prob(z) - log_q)  # [K, B]
        bound = torch.logsumexp(log_w, 0) - math.log(k)         # [B]
        signal = bound.detach() - self.leave_one_out(log_w.detach())  # [K, B]
        loss = -(bound + score_term(log_q, signal).sum(0)).mean()
        kl = (log_q - model.prior().log_prob(z)).mean(0) if model.latent.mc_kl else model.kl(q)  # [B]
        return estimate(loss, rec.mean(0), kl, iw_bound=bound)

    @staticmethod
    def leave_one_out(log_w: Tensor) -> Tensor:
        """L_{-j}: the bound with log w_j replaced by the mean of the other K-1 log-weights: [K, B]."""
        k = log_w.shape[0]
        others = (log_w.sum(0, keepdim=True) - log_w) / (k - 1)                # [K, B]
        eye = torch.eye(k, dtype=torch.bool, device=log_w.device)[:, :, None]  # [K, K, 1]
        swapped = torch.where(eye, others[:, None, :], log_w[None, :, :])      # [K(j), K, B]
        return torch.logsumexp(swapped, 1) - math.log(k)


@ESTIMATORS.register("gumbel")
class BinaryConcrete(Estimator):
    """Binary Concrete / Gumbel-softmax relaxation at temperature tau (Maddison et al. 2017; Jang et al. 2017).

    The decoder sees the relaxed sample, so the gradient is biased (`unbiased = False`). Reported terms (and the
    loss value) use the hard sample 1[relaxed > 1/2], which is an exact draw from q; evaluation always uses q.sample().
    """

    needs = frozenset({"discrete", "factorised", "kl"})
    unbiased = False

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise VaelabError(f"estimator.kwargs.temperature must be positive, got {temperature}")
        self.temperature = temperature

    def relaxed(self, q: Distribution) -> tuple[Tensor, Tensor]:
        """A relaxed sample in (0, 1) with reparameterized gradient, and its hard value: [B, D] each."""
        logits = bernoulli_logits(q)
        tau = torch.as_tensor(self.temperature, dtype=logits.dtype, device=logits.device)
        soft = RelaxedBernoulli(tau, logits=logits, validate_args=False).rsample()  # [B, D]
        return soft, (soft > 0.5).to(soft.dtype)

    def forward(self, model: VAE, x: Tensor, kl_weight: float = 1.0) -> Estimate:
        q = model.posterior(x)
        soft, hard = self.relaxed(q)
        relaxed_rec = model.likelihood(soft).log_prob(x)        # [B]
        with torch.no_grad():
            rec = model.likelihood(hard).log_prob(x)            # [B]
        kl = model.kl(q)
        loss = kl_weight * kl - rec - (relaxed_rec - relaxed_rec.detach())
        return estimate(loss.mean(), rec, kl, relaxed_rec=relaxed_rec)


@ESTIMATORS.register("st")
class StraightThrough(BinaryConcrete):
    """Straight-through Gumbel estimator (Jang et al. 2017, sec. 2.2): the decoder sees the hard sample, the
    gradient flows through the binary Concrete relaxation. Biased (`unbiased = False`)."""

    def forward(self, model: VAE, x: Tensor, kl_weight: float = 1.0) -> Estimate:
        q = model.posterior(x)
        soft, hard = self.relaxed(q)
        rec = model.likelihood(hard + soft - soft.detach()).log_prob(x)  # [B] value at the hard sample
        kl = model.kl(q)
        return estimate((kl_weight * kl - rec).mean(), rec, kl)


@ESTIMATORS.register("disarm")
class DisARM(Estimator):
    """DisARM for factorised Bernoulli latents (Dong, Mnih & Tucker 2020, the g_DisARM estimator).

    From one u ~ U(0,1)^D the antithetic pair b = 1[u < sigma(l)], b~ = 1[1 - u < sigma(l)]; with f = log p(x|.)
    the gradient w.r.t. the logits is g = 1/2 (f(b) - f(b~)) (-1)^b~ 1[b != b~] sigma(|l|), fed to the encoder
    through the surrogate (l * g.detach()).sum(-1). The decoder is trained on the mean of f(b) and f(b~).
    """

    needs = frozenset({"discrete", "factorised", "kl"})

    def forward(self, model: VAE, x: Tensor, kl_weight: float = 1.0) -> Estimate:
        q = model.posterior(x)
        logits = bernoulli_logits(q)                            # [B, D]
        probs = torch.sigmoid(logits.detach())
        u = torch.rand_like(probs)
        b = torch.stack([u < probs, 1.0 - u < probs]).to(probs.dtype)  # [2, B, D] the antithetic pair
        f = model.likelihood(b).log_prob(x)                     # [2, B]
        g = 0.5 * (f[0] - f[1]).detach()[:, None] * (1.0 - 2.0 * b[1]) * (b[0] != b[1]) * torch.sigmoid(
            logits.detach().abs())                              # [B, D] d E_q[f] / d logits
        rec = f.mean(0)                                         # [B]
        kl = model.kl(q)
        loss = kl_weight * kl - rec - ((logits - logits.detach()) * g).sum(-1)
        return estimate(loss.mean(), rec, kl)


@ESTIMATORS.register("iwae")
class IWAE(MultiSample):
    """The K-sample importance-weighted bound log 1/K sum_k p(x, z_k) / q(z_k|x) with reparameterised z_k,
    differentiated pathwise (Burda et al. 2016, eq. 8 and 14); K = 1 is the ELBO with a Monte Carlo KL.

    `loss` = -bound. elbo/rec/kl report the standard ELBO terms (rec averaged over the K samples, KL analytic
    where the family has one) so runs compare across estimators; the bound itself is stats["iw_bound"] (always
    at beta = 1). `kl_weight` scales log p(z) - log q(z|x) inside each log-weight, as in `vimco`.
    """

    needs = frozenset({"rsample", "kl_at"})
    objective = "iw"
    min_samples = 1

    def __init__(self, num_samples: int = 5) -> None:
        super().__init__(num_samples)

    def forward(self, model: VAE, x: Tensor, kl_weight: float = 1.0) -> Estimate:
        q = model.posterior(x)
        z = q.rsample((self.num_samples,))                      # [K, B, D]
        rec = model.likelihood(z).log_prob(x)                   # [K, B]
        log_ratio = model.prior().log_prob(z) - q.log_prob(z)   # [K, B] log p(z) - log q(z|x)
        log_k = math.log(self.num_samples)
        bound = torch.logsumexp(rec + log_ratio, 0) - log_k     # [B] the bound at beta = 1
        at_one = isinstance(kl_weight, float) and kl_weight == 1.0     # a tensor weight (CUDA graphs): no host sync
        trained = bound if at_one else torch.logsumexp(rec + kl_weight * log_ratio, 0) - log_k
        kl = -log_ratio.mean(0) if model.latent.mc_kl else model.latent.kl(q)  # [B]
        return estimate(-trained.mean(), rec.mean(0), kl, iw_bound=bound)


@ESTIMATORS.register("relax")
class RELAX(Estimator):
    """RELAX for factorised Bernoulli latents (Grathwohl et al. 2018, "Backpropagation through the Void"), with
    REBAR's conditional sample z~ ~ p(z|b) (Tucker et al. 2017) and control c(z) = eta f(sigmoid(z / tau)) + r(x, z).

    With theta = sigmoid(l), z = l + logit(u), b = 1[z > 0] and f = log p(x|b), the logit gradient
    g = [f(b) - c(z~)] (b - theta) + dc(z)/dl - dc(z~)/dl is unbiased for any c. The control's parameters (tau, eta
    and the MLP r, whose output starts at 0) minimise E|g|^2 through a second-order gradient folded into `loss`.
    """

    needs = frozenset({"discrete", "factorised", "kl"})

    def __init__(self, data_dim: int, latent_dim: int, hidden: int = 50, temperature: float = 0.5,
                 activation: str = "tanh") -> None:
        super().__init__()
        if temperature <= 0:
            raise VaelabError(f"estimator.kwargs.temperature must be positive, got {temperature}")
        if activation not in ACTIVATIONS:
            raise VaelabError(f"estimator.kwargs.activation={activation!r}: choose one of {', '.join(ACTIVATIONS)}")
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        self.eta = nn.Parameter(torch.tensor(1.0))
        self.r = nn.Sequential(nn.Linear(data_dim + latent_dim, hidden), ACTIVATIONS[activation](),
                               nn.Linear(hidden, 1))
        nn.init.zeros_(self.r[2].weight)
        nn.init.zeros_(self.r[2].bias)

    @classmethod
    def from_model(cls, model: VAE, **kwargs) -> RELAX:
        """Size the control network to the model's images and codes."""
        return cls(math.prod(model.image_shape), model.latent.dim, **kwargs)

    def control(self, model: VAE, x: Tensor, z: Tensor) -> Tensor:
        """c(z) = eta * log p(x | sigmoid(z / tau)) + r(x, z): [B]."""
        relaxed = torch.sigmoid(z / self.log_temperature.exp())                  # [B, D]
        return self.eta * model.likelihood(relaxed).log_prob(x) + self.r(torch.cat([x, z], -1)).squeeze(-1)

    def logit_gradient(self, model: VAE, x: Tensor, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(g [B, D] as a function of the control parameters, f(b) [B] with the decoder graph, b [B, D])."""
        eps = torch.finfo(logits.dtype).eps
        lg = logits.detach().requires_grad_()              # the logits as a leaf: dc/dl per example
        theta = torch.sigmoid(lg)
        u, v = (torch.rand_like(lg).clamp(eps, 1 - eps) for _ in range(2))
        z = lg + torch.logit(u)                                                   # [B, D] logistic reparam.
        b = (z > 0).to(lg.dtype).detach()
        u_given_b = b * (1 - theta + v * theta) + (1 - b) * v * (1 - theta)      # u | b, reparameterized in l
        c_z, c_zt = self.control(model, x, z), self.control(model, x, lg + torch.logit(u_given_b))
        (dc,) = torch.autograd.grad((c_z - c_zt).sum(), lg, create_graph=True)    # [B, D] per example
        f = model.likelihood(b).log_prob(x)                                      # [B]
        return (f.detach() - c_zt)[:, None] * (b - theta) + dc, f, b

    def forward(self, model: VAE, x: Tensor, kl_weight: float = 1.0) -> Estimate:
        q = model.posterior(x)
        logits = bernoulli_logits(q)                                             # [B, D]
        with torch.enable_grad():
            g, rec, _ = self.logit_gradient(model, x, logits)
            variance = g.square().sum(-1).mean()                                 # E|g|^2, the control's loss
            ctrl = list(self.parameters())
            ctrl_grads = torch.autograd.grad(variance, ctrl)
        kl = model.kl(q)
        loss = (kl_weight * kl - rec - ((logits - logits.detach()) * g.detach()).sum(-1)).mean()
        loss = loss + sum((p * d).sum() - (p * d).sum().detach() for p, d in zip(ctrl, ctrl_grads, strict=True))
        return estimate(loss, rec, kl, grad_second_moment=variance, temperature=self.log_temperature.exp())
