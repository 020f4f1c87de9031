"""Latent families: turn encoder outputs into q(z|x) and own the prior p(z). Add one with `@LATENTS.register`.

A family is a small `nn.Module` (so a learned prior is a parameter and travels with the checkpoint) with:
  params_per_dim   encoder outputs per latent dimension
  reparameterizable / discrete / has_kl / mc_kl / factorised   what gradient estimators may use (`offers`,
                   checked when a model is built)
  autoencoder      q(z|x) is a point mass: no KL, and no prior until one is fitted (`is_autoencoder` asks)
  posterior(h)     h [B, params_per_dim * D] -> Distribution with batch [B], event [D]
  prior()          Distribution with event [D]
  kl(q)            [B] analytic KL[q(z|x) || p(z)] (families with has_kl)
  kl_at(q, z)      the KL term at the estimator's own sample z: kl(q), or log q(z|x) - log p(z) (mc_kl families)
  mean_kl(kl)      kl_at's value for K samples [K, B] averaged over them: the KL term a K-sample estimator reports
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal, constraints

from vaelab.core.errors import VaelabError, check_number
from vaelab.core.registry import Registry
from vaelab.models.autoregressive import MADE, AutoregressiveBernoulli, IAFPosterior, IAFStep

LATENTS: Registry[type[LatentFamily]] = Registry("latent family (model.latent)")


class LatentFamily(nn.Module):
    """Base: see the module docstring for the contract."""

    params_per_dim = 1
    reparameterizable = False
    discrete = False
    has_kl = True          # kl(q) in closed form
    mc_kl = False          # no closed form: the KL term is log q(z|x) - log p(z) at the estimator's sample
    factorised = False     # q(z|x) = prod_i q(z_i|x), its parameters at q.base_dist (DisARM, relaxations)
    autoencoder = False    # a deterministic code (a point mass): no KL term, no prior until a density is fitted

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    @classmethod
    def offers(cls) -> frozenset[str]:
        """What gradient estimators may rely on: a subset of {"rsample", "discrete", "kl", "kl_at", "factorised"}.
        "kl": closed-form `kl(q)`; "kl_at": a KL term, closed-form or Monte Carlo, through `kl_at(q, z)`."""
        flags = {"rsample": cls.reparameterizable, "discrete": cls.discrete, "kl": cls.has_kl,
                 "kl_at": cls.has_kl or cls.mc_kl, "factorised": cls.factorised}
        return frozenset(name for name, ok in flags.items() if ok)

    def kl_at(self, q: Distribution, z: Tensor, log_q: Tensor | None = None) -> Tensor:
        """The KL term for an estimator that drew z [*S, B, D] from q: analytic kl(q) [B] when the family has
        one, else the single-sample Monte Carlo estimate log q(z|x) - log p(z) [*S, B] (unbiased; Kingma &
        Welling 2014, estimator A, eq. 6). Pass the z of the reconstruction: rec - kl_at = log p(x,z) - log q(z|x);
        and `log_q` = q.log_prob(z) when the caller has it already."""
        if self.mc_kl:
            return (q.log_prob(z) if log_q is None else log_q) - self.prior().log_prob(z)
        return self.kl(q)

    def mean_kl(self, kl: Tensor) -> Tensor:
        """The KL term [B] of an estimator that drew K samples z [K, B, D], from `kl_at`'s value for them: the K
        Monte Carlo estimates [K, B] averaged over the samples (mc_kl families), the closed form [B] as it is."""
        return kl.mean(0) if self.mc_kl else kl

    def posterior(self, h: Tensor) -> Distribution:
        raise NotImplementedError

    def prior(self) -> Distribution:
        raise NotImplementedError

    def kl(self, q: Distribution) -> Tensor:
        raise NotImplementedError


def is_autoencoder(latent: str | LatentFamily | type[LatentFamily]) -> bool:
    """The one answer to "is this an autoencoder": whether a latent family (its registered name, class or instance;
    a model answers through `VAE.is_autoencoder`, a config through its model.latent) has a deterministic code."""
    return (LATENTS.get(latent) if isinstance(latent, str) else latent).autoencoder


def check_units(hidden_units: int | None, family: str) -> None:
    """The MADE width of a non-factorised family: None (twice the code's size) or an integer >= 1."""
    if hidden_units is not None:
        check_number("model.latent_kwargs.hidden_units", hidden_units, 1, integer=True,
                     fix=f"give {family} a positive MADE width, or null for twice latent_dim")


@LATENTS.register("gaussian")
class GaussianLatent(LatentFamily):
    """Diagonal Gaussian q(z|x) = N(mu, diag sigma^2), prior N(0, I) (the study's section 2)."""

    params_per_dim = 2
    reparameterizable = True
    factorised = True

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.register_buffer("zero", torch.zeros(()), persistent=False)

    def posterior(self, h: Tensor) -> Distribution:
        mu, logvar = h.chunk(2, dim=-1)  # [B, D] each
        return Independent(Normal(mu, torch.exp(0.5 * logvar), validate_args=False), 1)

    def prior(self) -> Distribution:
        loc = self.zero.expand(self.dim)
        return Independent(Normal(loc, loc + 1.0, validate_args=False), 1)

    def kl(self, q: Distribution) -> Tensor:
        """KL[N(mu, sigma^2) || N(0, I)] = -1/2 sum(1 + log sigma^2 - mu^2 - sigma^2) (Kingma & Welling, App. B)."""
        return gaussian_kl(q.base_dist.loc, q.base_dist.scale)


def gaussian_kl(mu: Tensor, sigma: Tensor) -> Tensor:
    """KL[N(mu, sigma^2) || N(0, I)] = 1/2 sum(mu^2 + sigma^2 - 1 - 2 log sigma): mu, sigma [B, D] -> [B]
    (GaussianLatent.kl, and the hand-written reparam step's)."""
    return 0.5 * (mu.square() + sigma.square() - 1.0 - 2.0 * sigma.log()).sum(-1)


class UniformBernoulli(Bernoulli):
    """torch's Bernoulli, drawn as 1[u < p] with u ~ U[0, 1) from torch.rand: the same distribution as
    torch.bernoulli (as data.binarize draws pixels), but through a draw whose shape does not depend on p, which a
    stacked run (training/stacked.py) reproduces seed by seed."""

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            u = torch.rand(shape, dtype=self.probs.dtype, device=self.probs.device)  # [*S, B, D]
            return (u < self.probs.expand(shape)).to(self.probs.dtype)


@LATENTS.register("bernoulli")
class BernoulliLatent(LatentFamily):
    """Factorised Bernoulli codes q(z|x) = prod Bern(sigmoid(l_i(x))), prior Bern(p) per bit (the study's section 3).

    `prior_probs` is the study's y = 1/2 by default; `learn_prior=True` learns one prior logit per bit
    (the setting of the DisARM / VIMCO benchmarks).
    """

    discrete = True
    factorised = True

    def __init__(self, dim: int, prior_probs: float = 0.5, learn_prior: bool = False) -> None:
        super().__init__(dim)
        check_number("model.latent_kwargs.prior_probs", prior_probs, 0, 1, open_lo=True, open_hi=True,
                     fix="e.g. 0.5, the study's uniform prior")
        logits = torch.full((dim,), math.log(prior_probs / (1.0 - prior_probs)))
        if learn_prior:
            self.prior_logits = nn.Parameter(logits)
        else:
            self.register_buffer("prior_logits", logits)

    def posterior(self, h: Tensor) -> Distribution:
        return Independent(UniformBernoulli(logits=h, validate_args=False), 1)

    def prior(self) -> Distribution:
        return Independent(UniformBernoulli(logits=self.prior_logits, validate_args=False), 1)

    def kl(self, q: Distribution) -> Tensor:
        """sum_i q_i log(q_i/p_i) + (1-q_i) log((1-q_i)/(1-p_i)); for p = 1/2 this is -H[q] + n log 2 (seed eq. 8)."""
        logits, prior = q.base_dist.logits, self.prior_logits  # [B, D], [D]
        probs = torch.sigmoid(logits)
        kl = probs * (F.logsigmoid(logits) - F.logsigmoid(prior)) + (1 - probs) * (
            F.logsigmoid(-logits) - F.logsigmoid(-prior)
        )
        return kl.sum(-1)  # [B]


class PointMass(Distribution):
    """The deterministic code of an autoencoder: all mass at `loc`; `rsample` returns it (shape [*S, B, D])."""

    arg_constraints = {"loc": constraints.real_vector}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc: Tensor) -> None:
        self.loc = loc
        super().__init__(batch_shape=loc.shape[:-1], event_shape=loc.shape[-1:], validate_args=False)

    @property
    def mean(self) -> Tensor:
        return self.loc

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        return self.loc.expand(torch.Size(sample_shape) + self.loc.shape)


@LATENTS.register("deterministic")
class DeterministicLatent(LatentFamily):
    """A plain autoencoder's code (the study's section 4): no KL; the prior is a density fitted afterwards."""

    reparameterizable = True
    has_kl = False
    factorised = True
    autoencoder = True

    def posterior(self, h: Tensor) -> Distribution:
        return PointMass(h)

    def prior(self) -> Distribution:
        raise VaelabError("an autoencoder has no prior until one is fitted: run `vaelab fit-density RUN` first")

    def kl(self, q: Distribution) -> Tensor:
        raise VaelabError("an autoencoder has no KL term: train it with estimator.name=ae")


@LATENTS.register("gaussian_iaf")
class GaussianIAFLatent(GaussianLatent):
    """q(z|x): N(mu, sigma^2) then `steps` inverse autoregressive flow steps conditioned on a context h(x), the
    variable order reversed between steps (Kingma et al. 2016); prior N(0, I); KL by Monte Carlo (`kl_at`).

    The encoder emits mu, log sigma^2 and a D-dimensional context; each step is a MADE with `hidden_units`.
    """

    params_per_dim = 3
    has_kl = False
    mc_kl = True
    factorised = False

    def __init__(self, dim: int, steps: int = 2, hidden_units: int | None = None) -> None:
        super().__init__(dim)
        check_number("model.latent_kwargs.steps", steps, 1, integer=True,
                     fix="gaussian_iaf needs at least one flow step, e.g. 2")
        check_units(hidden_units, "gaussian_iaf")
        hidden = hidden_units or 2 * dim
        self.steps = nn.ModuleList(MADE(dim, dim, hidden, 2, reverse=t % 2 == 1) for t in range(steps))
        for made in self.steps:   # start each step close to the identity: sigma = sigmoid(s) near 1
            nn.init.constant_(made.out.bias[dim:], 2.0)

    def posterior(self, h: Tensor) -> Distribution:
        mu, logvar, context = h.chunk(3, dim=-1)  # [B, D] each
        base = Independent(Normal(mu, torch.exp(0.5 * logvar), validate_args=False), 1)
        return IAFPosterior(base, [IAFStep(made, context) for made in self.steps])

    def kl(self, q: Distribution) -> Tensor:
        raise VaelabError("gaussian_iaf has no closed-form KL: estimate it with latent.kl_at(q, z)")


@LATENTS.register("bernoulli_ar")
class AutoregressiveBernoulliLatent(BernoulliLatent):
    """Binary codes that are not factorised: q(z|x) = prod_i Bern(z_i | sigmoid(b_i(x) + MADE_i(z_<i, c(x)))),
    prior as `bernoulli`; KL by Monte Carlo (`kl_at`). The encoder emits D logits b(x) and a D-dim context c(x)."""

    params_per_dim = 2
    has_kl = False
    mc_kl = True
    factorised = False

    def __init__(self, dim: int, prior_probs: float = 0.5, learn_prior: bool = False,
                 hidden_units: int | None = None) -> None:
        super().__init__(dim, prior_probs, learn_prior)
        check_units(hidden_units, "bernoulli_ar")
        self.made = MADE(dim, dim, hidden_units or 2 * dim, 1)

    def posterior(self, h: Tensor) -> Distribution:
        logits, context = h.chunk(2, dim=-1)  # [B, D] each
        return AutoregressiveBernoulli(logits, context, self.made)

    def kl(self, q: Distribution) -> Tensor:
        raise VaelabError("bernoulli_ar has no closed-form KL: estimate it with latent.kl_at(q, z)")
