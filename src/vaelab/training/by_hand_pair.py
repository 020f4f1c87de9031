"""The antithetic Bernoulli estimators' training step (`estimator: disarm` or `arm` on a factorised Bernoulli MLP
VAE) with its backward pass written out: the same random draws, loss and reported terms as the autograd estimator
(estimators/pathwise.py AntitheticPair), every gradient equal to float rounding, without building a graph.

Notation: x [B, P] the batch, l = enc(x) [B, D] the posterior logits, q = sigma(l), pi [D] the prior logits,
beta = kl_weight, u ~ U(0,1)^{B x D} (torch.rand_like(q), as the estimator draws it), (b, b~) = pair(u, q) the
antithetic codes, L_k = dec(b_k) [B, P] their decoder logits, log p(x|b) = x . L - sum softplus(L), and
g = logit_gradient(f(b), f(b~), u, l) [B, D] the estimator's logit gradient, treated as a constant:

    DisARM (Dong, Mnih & Tucker 2020, eq. 8):  g = 1/2 (f(b) - f(b~)) (-1)^b~ 1[b != b~] sigma(|l|)
    ARM (Yin & Zhou 2019, in DisARM's code's form):  g = (f(b1) - f(b2)) (u - 1/2)

The encoder sees g through the surrogate -mean_b sum_d (l - sg(l)) g (zero in value), so dloss/dl gets -g / B.

signal: rec (f = log p(x|.), the KL analytic):
    loss = mean_b [ beta KL(Bern(q) || Bern(sigma(pi))) - 1/2 (f(b) + f(b~)) ]
    dloss/dL_k = (sigma(L_k) - x) / (2B)                        (both decoder passes, as one [2B, P] batch)
    dloss/dl   = beta q (1 - q) (l - pi) / B - g / B             (dKL/dl = q (1 - q) (l - pi))
    dloss/dpi  = beta / B sum_b (sigma(pi) - q_b)                (dKL/dpi = sigma(pi) - q; learned prior only)

signal: elbo (f = log p(x|.) + beta (log p(.) - log q(.|x)), no gradient; the decoder and prior trained on the
one-sample ELBO at a fresh z = 1[v < q], v ~ U(0,1) drawn after u, as fresh_sample_elbo's q.sample()):
    loss = mean_b [ beta (log q(z|x) - log p(z)) - log p(x|z) ]  (log q(z|x) held fixed)
    dloss/dL_z = (sigma(L_z) - x) / B,   dloss/dl = -g / B,   dloss/dpi = beta / B sum_b (sigma(pi) - z_b)
(d log Bern(z; sigma(pi)) / dpi = z - sigma(pi).) Tests: tests/test_by_hand_pair.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaelab.estimators.base import Estimate
from vaelab.estimators.pathwise import ARM, AntitheticPair, DisARM
from vaelab.models.latents import BernoulliLatent
from vaelab.models.vae import VAE
from vaelab.training.by_hand import HandMLP, grad_of


def log_likelihood(x: Tensor, logits: Tensor) -> Tensor:
    """log p(x|b) = x . L - sum softplus(L) for decoder logits L [*S, B, P] and x [B, P]: [*S, B]. The model's
    `bernoulli_log_prob`, with a product and a sum in place of its einsum: equal to float rounding, and kept in this
    form because the committed DisARM-nonlinear rows (benchmarks/results/published/seeds/) trained with it, so that
    their command gives their curves back bit for bit (with the einsum a draw flips within the first epoch)."""
    return (logits * x).sum(-1) - F.softplus(logits).sum(-1)


def log_ratio(codes: Tensor, logits: Tensor, prior: Tensor) -> Tensor:
    """log q(c|x) - log p(c) = c . (l - pi) - sum softplus(l) + sum softplus(pi) for codes c [*S, B, D], since
    log Bern(c; sigma(a)) = c a - softplus(a): [*S, B]. Linear in c, so at c = q = sigma(l) it is the analytic
    KL[Bern(q) || Bern(sigma(pi))] of BernoulliLatent.kl (there: q (ls(l) - ls(pi)) + (1 - q)(ls(-l) - ls(-pi)))."""
    return (codes * (logits - prior)).sum(-1) - F.softplus(logits).sum(-1) + F.softplus(prior).sum(-1)


class AntitheticPairByHand:
    """`estimator: disarm` or `arm` (either `signal`) on a Bernoulli-latent MLP VAE, forward and backward written
    out (see the module docstring): call it on a batch x [B, P] to set every trained parameter's .grad
    (overwritten, as zero_grad + backward would) and get the step's Estimate."""

    def __init__(self, model: VAE, estimator: AntitheticPair) -> None:
        self.model, self.estimator = model, estimator
        self.encoder, self.decoder = HandMLP(model.encoder), HandMLP(model.decoder)

    @property
    def prior(self) -> Tensor:
        """The prior logits pi [D], read at each call (a buffer is a new tensor after .to() or .double())."""
        return self.model.latent.prior_logits

    @property
    def learn_prior(self) -> bool:
        """Whether pi is trained (model.latent_kwargs.learn_prior)."""
        return isinstance(self.prior, nn.Parameter) and self.prior.requires_grad

    @torch.no_grad()
    def __call__(self, x: Tensor, kl_weight: float | Tensor = 1.0) -> Estimate:
        logits = self.encoder.forward(x)                                   # [B, D]
        probs = torch.sigmoid(logits)                                      # [B, D]
        u = torch.rand_like(probs)                                         # the estimator's draw
        b = self.estimator.pair(u, probs)                                  # [2, B, D]
        if self.estimator.signal == "rec":
            return self.rec_signal(x, logits, probs, u, b, kl_weight)
        return self.elbo_signal(x, logits, probs, u, b, kl_weight)

    def decode_pair(self, x: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """The pair's decoder logits [2B, P] (one batch, activations kept) and log p(x|b_k) [2, B]."""
        pair_logits = self.decoder.forward(b.flatten(0, 1))                # [2B, P]
        return pair_logits, log_likelihood(x, pair_logits.view(2, *x.shape))

    def rec_signal(self, x: Tensor, logits: Tensor, probs: Tensor, u: Tensor, b: Tensor,
                   kl_weight: float | Tensor) -> Estimate:
        """f = log p(x|.), the KL analytic; the decoder trained on both codes of the pair."""
        B = x.shape[0]
        pair_logits, f = self.decode_pair(x, b)                            # [2B, P], [2, B]
        g = self.estimator.logit_gradient(f, b, u, logits)                 # [B, D]
        rec, kl = f.mean(0), log_ratio(probs, logits, self.prior)          # [B] each, the KL analytic
        loss = (kl_weight * kl - rec).mean()                               # the surrogate's part is 0 in value
        dL = torch.sigmoid(pair_logits).view(2, *x.shape).sub_(x).div_(2 * B)  # dloss/dL_k [2, B, P]
        self.decoder.backward(dL.flatten(0, 1), need_input_grad=False)
        w = kl_weight / B
        dl = (logits - self.prior) * probs * (1.0 - probs) * w - g / B     # dloss/dl [B, D]
        self.encoder.backward(dl, need_input_grad=False)
        if self.learn_prior:
            grad_of(self.prior).copy_((torch.sigmoid(self.prior) * B - probs.sum(0)) * w)  # [D]
        return Estimate(loss, rec - kl, rec, kl)

    def elbo_signal(self, x: Tensor, logits: Tensor, probs: Tensor, u: Tensor, b: Tensor,
                    kl_weight: float | Tensor) -> Estimate:
        """f = the one-sample ELBO at each code (no gradient); decoder and prior trained on a fresh draw's ELBO."""
        B = x.shape[0]
        z = (torch.rand(probs.shape, dtype=probs.dtype, device=probs.device) < probs).to(probs.dtype)  # [B, D]
        ratio = log_ratio(torch.cat([b, z[None]]), logits, self.prior)     # [3, B] log q - log p at b, b~, z
        _, f = self.decode_pair(x, b)                                      # [2, B] log p(x|b_k)
        f = f - kl_weight * ratio[:2]                                      # [2, B] elbo_signal
        g = self.estimator.logit_gradient(f, b, u, logits)                 # [B, D]
        z_logits = self.decoder.forward(z)                                 # [B, P], activations kept
        rec = log_likelihood(x, z_logits)                                  # [B]
        kl = ratio[2]                                                      # [B] log q(z|x) - log p(z)
        loss = (kl_weight * kl - rec).mean()                               # the surrogate's part is 0 in value
        self.decoder.backward(torch.sigmoid(z_logits).sub_(x).div_(B), need_input_grad=False)
        self.encoder.backward(g / -B, need_input_grad=False)               # dloss/dl [B, D]
        if self.learn_prior:
            grad_of(self.prior).copy_((torch.sigmoid(self.prior) * B - z.sum(0)) * (kl_weight / B))  # [D]
        return Estimate(loss, rec - kl, rec, kl)


def plan(model: nn.Module, estimator: nn.Module) -> tuple[AntitheticPairByHand | None, str]:
    """(the hand-written step, "") when the model and estimator have one, else (None, the reason why not)."""
    if type(estimator) not in (DisARM, ARM):
        return None, f"estimator {type(estimator).__name__} has no hand-written antithetic step (disarm, arm have)"
    if type(model) is not VAE or type(model.latent) is not BernoulliLatent:
        return None, "only the factorised Bernoulli latent family has a hand-written antithetic step"
    try:
        return AntitheticPairByHand(model, estimator), ""
    except NotImplementedError as e:
        return None, f"{e} (model.nets: mlp with tanh, relu or leaky_relu has)"
