"""The autoencoder's likelihood: with a fitted Gaussian mixture as prior (density.GMMDensity), the autoencoder is
the latent-variable model p(x) = ∫ GMM(z) prod_i Bern(x_i | omega_i(z)) dz, one likelihood for all models.

`WithPrior` gives the trained networks that prior (a thin subclass sharing the modules; nothing in the checkpoint
changes), and `evaluate.iw_loglik` estimates log p(x) with the proposal of `laplace_proposal`: a Gaussian fitted
around each input's code (one Gauss-Newton step from it, covariance from the local curvature) widened by a factor
`fit_proposal` picks on validation images, mixed with the GMM itself so that every importance weight stays below
1 / alpha (defensive importance sampling, `DefensiveMixture`). Like the VAEs' estimate it is a stochastic lower
bound on log p(x) in expectation, tightening as K grows; `evaluate_autoencoder` reports it with the reconstruction.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution, MultivariateNormal, constraints

from vaelab.core.errors import check_number
from vaelab.evaluation.bounds import iw_loglik, iw_loglik_terms, summarize
from vaelab.models.vae import VAE

DEFENSIVE_ALPHA = 0.1            # weight of the GMM itself in the proposal: importance weights stay <= 1 / alpha
PROPOSAL_INFLATIONS = tuple(2 ** (i / 2) for i in range(-2, 7))   # Laplace proposal widening tried: 0.5 ... 8
PROPOSAL_FIT_IMAGES = 256        # held-out (validation) images used to choose the inflation
PROPOSAL_FIT_SAMPLES = 64        # importance samples per image while choosing it


class WithPrior(VAE):
    """The same networks (shared, not copied) with another prior p(z): log_joint, sampling and IS use it."""

    def __init__(self, model: VAE, prior: Distribution) -> None:
        super().__init__(model.encoder, model.decoder, model.latent, model.image_shape)
        self.fitted_prior = prior          # a plain attribute: a Distribution is not a module and is not saved
        self.train(model.training)

    def prior(self) -> Distribution:
        return self.fitted_prior


class DefensiveMixture(Distribution):
    """q(z) = (1 - alpha) local(z) + alpha prior(z) (defensive importance sampling, Hesterberg 1995).

    `local` has batch [B] and event [D]; `prior` has event [D]. With this q every importance weight is bounded:
    p(x, z) / q(z) <= prior(z) p(x|z) / (alpha prior(z)) = p(x|z) / alpha <= 1 / alpha.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, local: Distribution, prior: Distribution, alpha: float = DEFENSIVE_ALPHA) -> None:
        check_number("the defensive weight alpha", alpha, 0, 1, open_lo=True, open_hi=True, fix="e.g. 0.1")
        self.local, self.prior, self.alpha = local, prior, alpha
        super().__init__(local.batch_shape, local.event_shape, validate_args=False)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        z_local = self.local.sample(sample_shape)                                      # [*S, B, D]
        z_prior = self.prior.sample(shape)                                             # [*S, B, D]
        from_prior = torch.rand(shape, device=z_local.device) < self.alpha             # [*S, B]
        return torch.where(from_prior[..., None], z_prior.to(z_local), z_local)

    def log_prob(self, z: Tensor) -> Tensor:
        return torch.logaddexp(math.log1p(-self.alpha) + self.local.log_prob(z),
                               math.log(self.alpha) + self.prior.log_prob(z))          # [*S, B]


@torch.no_grad()
def laplace_precision(model: VAE, z: Tensor) -> Tensor:
    """-Hessian of log p(x, z) = log GMM(z) + log p(x|z) at z [B, D], in the Gauss-Newton form: [B, D, D].

    Likelihood part: J^T diag(omega (1 - omega)) J with J the Jacobian of the decoder's logits (the Bernoulli
    Fisher; exact for piecewise-linear ReLU decoders, positive semi-definite for any). Prior part: the component
    precisions of `model.prior()` (a Gaussian mixture) weighted by their responsibility for z (positive definite).
    """
    prior = model.prior()
    comp = prior.component_distribution
    with warnings.catch_warnings():   # torch 2.13's forward-mode AD loads decompositions via deprecated jit.script
        warnings.filterwarnings("ignore", message=".*torch.jit.script", category=DeprecationWarning)
        jac = torch.func.vmap(torch.func.jacfwd(model.decoder))(z)                      # [B, P, D]
    probs = model.decode_probs(z)                                                      # [B, P]
    fisher = torch.einsum("bpd,bp,bpe->bde", jac, probs * (1 - probs), jac)             # [B, D, D]
    resp = torch.softmax(prior.mixture_distribution.logits + comp.log_prob(z[:, None]), -1)   # [B, K]
    return fisher + torch.einsum("bk,kde->bde", resp, comp.precision_matrix)


@torch.no_grad()
def laplace_fit(model: VAE, x: Tensor, newton_steps: int = 1) -> tuple[Tensor, Tensor]:
    """Gaussian approximation of p(z|x) ∝ GMM(z) p(x|z) for x [B, P]: from the encoder's code, `newton_steps`
    Gauss-Newton steps towards the posterior mode, then the precision there. Returns (loc [B, D], precision)."""
    z = model.posterior(x).mean                                                        # [B, D]
    for _ in range(newton_steps):
        grad = torch.func.grad(lambda v: model.log_joint(x, v).sum())(z)               # [B, D]; rows independent
        z = z + torch.linalg.solve(laplace_precision(model, z), grad)                  # [B, D]
    return z, laplace_precision(model, z)


def covariance_cholesky(precision: Tensor, floor: float = 1e-8) -> Tensor:
    """Cholesky factor of precision^-1 [B, D, D], computed in float64 from the symmetrised eigen-decomposition with
    eigenvalues floored at `floor` x the largest, so it stays valid when float32 rounding (a sum of many mixture
    precisions, say) leaves `precision` a hair off positive definite. Returned in `precision`'s dtype."""
    p64 = precision.double()
    evals, evecs = torch.linalg.eigh(0.5 * (p64 + p64.transpose(-1, -2)))            # [B, D], [B, D, D]
    evals = evals.clamp(min=floor * evals.amax(-1, keepdim=True).clamp(min=1e-300))
    covariance = (evecs / evals[..., None, :]) @ evecs.transpose(-1, -2)              # [B, D, D]
    return torch.linalg.cholesky(covariance).to(precision.dtype)


def laplace_proposal(model: VAE, inflation: float = 1.0, alpha: float = DEFENSIVE_ALPHA,
                     newton_steps: int = 1) -> Callable[[Tensor], Distribution]:
    """x -> (1 - alpha) N(z; m(x), inflation^2 H(x)^-1) + alpha GMM(z), with (m, H) from `laplace_fit`.

    A Gaussian fitted around each input's code (one Newton step from it, with the posterior's local shape),
    widened by `inflation` and made defensive by the mixture itself (see DefensiveMixture). `model.prior()`
    must be the fitted mixture (see WithPrior).
    """
    def proposal(x: Tensor) -> Distribution:
        loc, precision = laplace_fit(model, x, newton_steps)                           # [B, D], [B, D, D]
        local = MultivariateNormal(loc, scale_tril=inflation * covariance_cholesky(precision))
        return DefensiveMixture(local, model.prior(), alpha)

    return proposal


def fit_proposal(model: VAE, x: Tensor, inflations: Sequence[float] = PROPOSAL_INFLATIONS,
                 k: int = PROPOSAL_FIT_SAMPLES, alpha: float = DEFENSIVE_ALPHA,
                 seed: int = 0) -> tuple[Callable[[Tensor], Distribution], float, dict[float, float]]:
    """Choose the Laplace proposal's inflation by the mean IS estimate on held-out images x [B, P].

    `model.prior()` must be the mixture (see WithPrior). Any inflation gives a valid estimator; since the estimate
    is a lower bound in expectation, the largest is the tightest. Returns (proposal, inflation, {inflation: mean}).
    """
    devices = [x.device] if x.device.type == "cuda" else []
    curve = {}
    for inflation in inflations:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            proposal = laplace_proposal(model, inflation, alpha)
            curve[inflation] = iw_loglik(model, x, k, batch_size=len(x), proposal=proposal).mean().item()
    best = max(curve, key=curve.get)
    return laplace_proposal(model, best, alpha), best, curve


@torch.no_grad()
def evaluate_autoencoder(model: VAE, x: Tensor, proposal: Callable[[Tensor], Distribution] | None,
                         iw_samples: int = 5000, batch_size: int = 500,
                         progress: bool = False) -> dict[str, float | None]:
    """An autoencoder whose `prior()` is a fitted density (WithPrior): `rec` = log p(x|z(x)) at its code
    (seed eq. 12) and `iw_loglik` = log p(x) by importance sampling from `proposal`, the VAEs' field, likewise a
    stochastic lower bound in expectation (`proposal` is needed when iw_samples > 0: fit_proposal).
    An AE has no ELBO or KL: both are reported as None (JSON null)."""
    rec = torch.cat([model.likelihood(model.posterior(xb).mean).log_prob(xb) for xb in x.split(batch_size)])  # [N]
    per_example = {"rec": rec}
    if iw_samples > 0:
        per_example["iw_loglik"], per_example["iw_loglik_mc_var"] = iw_loglik_terms(
            model, x, iw_samples, batch_size, progress, proposal)
    return {"elbo": None, "kl": None} | summarize(per_example) | {"iw_samples": iw_samples, "n_examples": len(x)}
