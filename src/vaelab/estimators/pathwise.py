"""Gradient estimators: (model, x) -> Estimate(surrogate loss to differentiate, per-example ELBO terms to report).

Each estimator is one registered `nn.Module` class (baselines and control networks are its buffers and
submodules, so they are checkpointed). `needs` says what the latent family must offer; `build_estimator`
refuses a mismatch before training starts. Importing this module registers all of them: the pathwise ones
(reparam, ae, iwae) and those on a Bernoulli posterior's logits (gumbel, st, disarm, arm, relax) are here, the
score-function family (sfe, sfe-avg, nvil, rloo, vimco) in estimators/score_function.py, the base classes in
estimators/base.py.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, RelaxedBernoulli

from vaelab.core.errors import VaelabError, check_number
from vaelab.estimators import score_function  # noqa: F401  (registers sfe, sfe-avg, nvil, rloo, vimco)
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
from vaelab.models.nets import ACTIVATIONS
from vaelab.models.vae import VAE


@ESTIMATORS.register("reparam")
class Reparam(Estimator):
    """Reparameterization trick z = mu + sigma * eps with analytic KL (Kingma & Welling 2014; the study's section 2)."""

    needs = frozenset({"rsample", "kl_at"})

    def forward(self, model: VAE, x: Tensor, kl_weight: float | Tensor = 1.0) -> Estimate:
        q = model.posterior(x)                      # batch [B], event [D]
        z = q.rsample()                             # [B, D]
        rec = model.likelihood(z).log_prob(x)       # [B]
        kl = model.latent.kl_at(q, z)               # [B] analytic, or log q(z|x) - log p(z) for flow posteriors
        return estimate((kl_weight * kl - rec).mean(), rec, kl)


@ESTIMATORS.register("ae")
class Autoencoder(Estimator):
    """A deterministic autoencoder's loss: the Bernoulli reconstruction term alone (the study's eq. 12)."""

    def forward(self, model: VAE, x: Tensor, kl_weight: float | Tensor = 1.0) -> Estimate:
        z = model.posterior(x).mean                 # [B, D]
        rec = model.likelihood(z).log_prob(x)       # [B]
        return estimate(-rec.mean(), rec, torch.zeros_like(rec))


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

    def forward(self, model: VAE, x: Tensor, kl_weight: float | Tensor = 1.0) -> Estimate:
        q = model.posterior(x)
        z = q.rsample((self.num_samples,))                      # [K, B, D]
        rec = model.likelihood(z).log_prob(x)                   # [K, B]
        log_q = q.log_prob(z)                                   # [K, B]
        log_ratio = model.prior().log_prob(z) - log_q           # [K, B] log p(z) - log q(z|x)
        log_k = math.log(self.num_samples)
        bound = torch.logsumexp(rec + log_ratio, 0) - log_k     # [B] the bound at beta = 1, reported
        trained = torch.logsumexp(rec + kl_weight * log_ratio, 0) - log_k  # [B] the bound at beta = kl_weight
        kl = model.latent.mean_kl(model.kl_at(q, z, log_q))     # [B]
        return estimate(-trained.mean(), rec.mean(0), kl, iw_bound=bound)


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
# Estimators on the logits of a factorised Bernoulli posterior: relaxations (gumbel, st), DisARM's antithetic
# pair and RELAX's learned control. They keep the KL analytic (model.kl) and estimate only the gradient of the
# reconstruction term E_q[log p(x|z)].
# ---------------------------------------------------------------------------------------------------------------


def check_temperature(temperature: float) -> None:
    """A relaxation's temperature: a finite number > 0."""
    check_number("estimator.kwargs.temperature", temperature, 0, open_lo=True, fix="e.g. 0.5 or 1.0")


def bernoulli_logits(q: Distribution) -> Tensor:
    """The [B, D] logits of a factorised Bernoulli posterior; other posteriors are refused with the fix."""
    base = getattr(q, "base_dist", q)
    if not isinstance(base, Bernoulli):
        raise VaelabError(f"this estimator needs a Bernoulli posterior, got {type(base).__name__}: "
                          "set model.latent=bernoulli or pick a score-function estimator (sfe, rloo, ...)")
    return base.logits


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
        check_temperature(temperature)
        self.temperature = temperature

    def relaxed(self, q: Distribution) -> tuple[Tensor, Tensor]:
        """A relaxed sample in (0, 1) with reparameterized gradient, and its hard value: [B, D] each."""
        logits = bernoulli_logits(q)
        tau = torch.as_tensor(self.temperature, dtype=logits.dtype, device=logits.device)
        soft = RelaxedBernoulli(tau, logits=logits, validate_args=False).rsample()  # [B, D]
        return soft, (soft > 0.5).to(soft.dtype)

    def forward(self, model: VAE, x: Tensor, kl_weight: float | Tensor = 1.0) -> Estimate:
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

    def forward(self, model: VAE, x: Tensor, kl_weight: float | Tensor = 1.0) -> Estimate:
        q = model.posterior(x)
        soft, hard = self.relaxed(q)
        rec = model.likelihood(hard + soft - soft.detach()).log_prob(x)  # [B] value at the hard sample
        kl = model.kl(q)
        return estimate((kl_weight * kl - rec).mean(), rec, kl)


class AntitheticPair(Estimator):
    """Base of the estimators that draw one u ~ U(0,1)^D, decode two codes b, b~ built from it and turn f(b), f(b~)
    into a gradient g w.r.t. the posterior logits, fed to the encoder through (l * g.detach()).sum(-1).

    `signal="rec"` (default): f = log p(x|.), the KL analytic, the decoder trained on the mean of f(b) and f(b~).
    `signal="elbo"`: f = log p(x|.) + log p(.) - log q(.|x), and the decoder and prior are trained on the one-sample
    ELBO of a separate fresh draw, as in the DisARM reference code (google-research disarm/binary networks.py)."""

    needs = frozenset({"discrete", "factorised", "kl"})

    def __init__(self, signal: str = "rec") -> None:
        super().__init__()
        self.signal = check_signal(signal)

    def pair(self, u: Tensor, probs: Tensor) -> Tensor:
        """The two codes from u [B, D]: [2, B, D]."""
        raise NotImplementedError

    def logit_gradient(self, f: Tensor, b: Tensor, u: Tensor, logits: Tensor) -> Tensor:
        """g [B, D] from f [2, B] (detached), the pair b [2, B, D], u and the logits [B, D] (detached)."""
        raise NotImplementedError

    def forward(self, model: VAE, x: Tensor, kl_weight: float | Tensor = 1.0) -> Estimate:
        q = model.posterior(x)
        logits = bernoulli_logits(q)                            # [B, D]
        probs = torch.sigmoid(logits.detach())
        u = torch.rand_like(probs)
        b = self.pair(u, probs)                                 # [2, B, D]
        f = model.likelihood(b).log_prob(x) if self.signal == "rec" else elbo_signal(model, q, b, x, kl_weight)
        g = self.logit_gradient(f.detach(), b, u, logits.detach())  # [B, D] d E_q[f] / d logits
        encoder = ((logits - logits.detach()) * g).sum(-1)      # [B] zero in value, gradient g through the logits
        if self.signal == "rec":
            rec, kl = f.mean(0), model.kl(q)                    # [B] each
            generative = kl_weight * kl - rec                   # [B] the decoder's (and prior's) loss
        else:
            generative, rec, kl = fresh_sample_elbo(model, q, x, kl_weight)   # [B] each
        return estimate((generative - encoder).mean(), rec, kl)


@ESTIMATORS.register("disarm")
class DisARM(AntitheticPair):
    """DisARM for factorised Bernoulli latents (Dong, Mnih & Tucker 2020, the g_DisARM estimator).

    From one u ~ U(0,1)^D the antithetic pair b = 1[u < sigma(l)], b~ = 1[1 - u < sigma(l)]; the gradient w.r.t.
    the logits is g = 1/2 (f(b) - f(b~)) (-1)^b~ 1[b != b~] sigma(|l|). See AntitheticPair for f and `signal`.
    """

    def pair(self, u: Tensor, probs: Tensor) -> Tensor:
        return torch.stack([u < probs, 1.0 - u < probs]).to(probs.dtype)      # [2, B, D] the antithetic pair

    def logit_gradient(self, f: Tensor, b: Tensor, u: Tensor, logits: Tensor) -> Tensor:
        return 0.5 * (f[0] - f[1])[:, None] * (1.0 - 2.0 * b[1]) * (b[0] != b[1]) * torch.sigmoid(logits.abs())


@ESTIMATORS.register("arm")
class ARM(AntitheticPair):
    """ARM, augment-REINFORCE-merge (Yin & Zhou 2019), in the form of the DisARM reference code's `arm`: from one
    u ~ U(0,1)^D the codes b1 = 1[u > 1 - sigma(l)] and b2 = 1[u < sigma(l)], and the logit gradient
    g = (f(b1) - f(b2)) (u - 1/2). Unbiased; DisARM is its Rao-Blackwellisation over u given (b1, b2). See
    AntitheticPair for f and `signal`."""

    def pair(self, u: Tensor, probs: Tensor) -> Tensor:
        return torch.stack([u > 1.0 - probs, u < probs]).to(probs.dtype)      # [2, B, D]

    def logit_gradient(self, f: Tensor, b: Tensor, u: Tensor, logits: Tensor) -> Tensor:
        return (f[0] - f[1])[:, None] * (u - 0.5)


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
        check_temperature(temperature)
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
        u_given_b = (b * (1 - theta + v * theta) + (1 - b) * v * (1 - theta)).clamp(eps, 1 - eps)  # u | b, in l
        c_z, c_zt = self.control(model, x, z), self.control(model, x, lg + torch.logit(u_given_b))
        (dc,) = torch.autograd.grad((c_z - c_zt).sum(), lg, create_graph=True)    # [B, D] per example
        f = model.likelihood(b).log_prob(x)                                      # [B]
        return (f.detach() - c_zt)[:, None] * (b - theta) + dc, f, b

    def forward(self, model: VAE, x: Tensor, kl_weight: float | Tensor = 1.0) -> Estimate:
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
