"""Posteriors richer than a factorised q(z|x): autoregressive building blocks for the families in models/latents.py.

  MADE                   masked one-hidden-layer network whose output i sees only z_<i (and a context c(x))
  IAFStep                one inverse autoregressive flow step, a torch `Transform` (Kingma et al. 2016)
  IAFPosterior           N(mu, sigma^2) pushed through IAF steps: a `TransformedDistribution`
  AutoregressiveBernoulli  q(z|x) = prod_i Bern(z_i | sigmoid(l_i(x, z_<i))), sampled bit by bit

Neither has a closed-form KL to the prior: the families estimate it by log q(z|x) - log p(z) at the sample the
estimator already drew (`LatentFamily.kl_at`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, TransformedDistribution, constraints
from torch.distributions.transforms import Transform


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask [out, in]."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.float(), persistent=False)

    def masked_weight(self) -> Tensor:
        return self.weight * self.mask

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.masked_weight(), self.bias)


class MADE(nn.Module):
    """Masked autoencoder (Germain et al. 2015), one hidden layer plus a context input.

    Variable i gets degree `degrees[i]` in 1..D; output block k, coordinate i depends on the z_j of lower degree
    and on the context only. z [*S, B, D], context [B, C] -> [*S, B, k, D].
    """

    def __init__(self, dim: int, context_dim: int, hidden: int, outputs_per_dim: int = 1,
                 reverse: bool = False) -> None:
        super().__init__()
        self.dim, self.k = dim, outputs_per_dim
        degrees = torch.arange(dim, 0, -1) if reverse else torch.arange(1, dim + 1)      # [D]
        hidden_degrees = torch.arange(hidden) % max(dim - 1, 1) + 1                      # [H], in 1..D-1
        self.register_buffer("degrees", degrees, persistent=False)
        self.inp = MaskedLinear(hidden_degrees[:, None] >= degrees[None, :])              # [H, D]
        self.ctx = nn.Linear(context_dim, hidden, bias=False)
        self.out = MaskedLinear((degrees[:, None] > hidden_degrees[None, :]).repeat(outputs_per_dim, 1))  # [kD, H]
        self.act = nn.ELU()

    def order(self) -> list[int]:
        """The variables in autoregressive order (lowest degree first)."""
        return torch.argsort(self.degrees).tolist()

    def pre(self, z: Tensor, context: Tensor) -> Tensor:
        """Hidden pre-activations [*S, B, H]; linear in z, which lets a sampler update them bit by bit."""
        return self.inp(z) + self.ctx(context)

    def forward(self, z: Tensor, context: Tensor) -> Tensor:
        out = self.out(self.act(self.pre(z, context)))                                  # [*S, B, k * D]
        return out.unflatten(-1, (self.k, self.dim))                                     # [*S, B, k, D]


class IAFStep(Transform):
    """y = sigma * x + (1 - sigma) * m with [m, s] = MADE(x, c), sigma = sigmoid(s); log|det dy/dx| = sum log sigma.

    The numerically stable IAF update of Kingma et al. (2016), section 4 / Algorithm 1. The forward pass is one
    network call; the inverse (needed only for a z this step did not produce itself) takes D calls.
    """

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True

    def __init__(self, made: MADE, context: Tensor) -> None:
        super().__init__(cache_size=1)
        self.made, self.context = made, context
        self._log_sigma: tuple[Tensor, Tensor] | None = None   # (x, log sigma(x)) of the last forward call

    def _shift_and_log_sigma(self, x: Tensor) -> tuple[Tensor, Tensor]:
        m, s = self.made(x, self.context).unbind(-2)                                     # [*S, B, D] each
        return m, F.logsigmoid(s)

    def _call(self, x: Tensor) -> Tensor:
        m, log_sigma = self._shift_and_log_sigma(x)
        self._log_sigma = (x, log_sigma)
        sigma = log_sigma.exp()
        return sigma * x + (1 - sigma) * m

    def _inverse(self, y: Tensor) -> Tensor:
        x, index = torch.zeros_like(y), torch.arange(self.made.dim, device=y.device)
        for i in self.made.order():      # x_i from y_i and the already solved x_<i; the rest stays 0
            m, log_sigma = self._shift_and_log_sigma(x)
            sigma = log_sigma.exp()
            x = torch.where(index == i, (y - (1 - sigma) * m) / sigma, x)                # [*S, B, D], exact at i
        return x

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        cached = self._log_sigma
        log_sigma = cached[1] if cached is not None and cached[0] is x else self._shift_and_log_sigma(x)[1]
        return log_sigma.sum(-1)                                                         # [*S, B]


class IAFPosterior(TransformedDistribution):
    """z_0 ~ N(mu, sigma^2), z_T = IAF steps(z_0): log q(z_T|x) = log N(z_0) - sum_t log|det| (Kingma et al. 2016).

    `log_prob` of a sample it just drew reuses the cached z_0 (one pass); any other z is inverted exactly.
    """

    def __init__(self, base: Distribution, steps: list[IAFStep]) -> None:
        super().__init__(base, steps, validate_args=False)

    @property
    def mean(self) -> Tensor:
        """The flow applied to the base mean: a central code for reconstructions, not E[z] (no closed form)."""
        z = self.base_dist.mean
        for step in self.transforms:
            z = step(z)
        return z


class AutoregressiveBernoulli(Distribution):
    """q(z|x) = prod_i Bern(z_i | sigmoid(b_i(x) + MADE_i(z_<i, c(x)))): batch [B], event [D].

    `log_prob` is one masked pass; `sample` draws the D bits in order, updating the hidden pre-activations by
    one weight column per bit (NADE's trick, Larochelle & Murray 2011), so a draw costs O(D H), not O(D^2 H).
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.boolean, 1)
    has_rsample = False

    def __init__(self, base_logits: Tensor, context: Tensor, made: MADE) -> None:
        self.base_logits, self.context, self.made = base_logits, context, made          # [B, D], [B, C]
        super().__init__(base_logits.shape[:-1], base_logits.shape[-1:], validate_args=False)

    def logits(self, z: Tensor) -> Tensor:
        """l_i(x, z_<i) for every i at once: [*S, B, D]."""
        return self.base_logits + self.made(z, self.context)[..., 0, :]

    def log_prob(self, z: Tensor) -> Tensor:
        return Bernoulli(logits=self.logits(z), validate_args=False).log_prob(z).sum(-1)  # [*S, B]

    def _sequential(self, sample_shape: torch.Size, draw) -> Tensor:
        """Fill z bit by bit in MADE order with `draw(logit_i) -> z_i`: [*S, B, D]."""
        zeros = self.base_logits.new_zeros(torch.Size(sample_shape) + self.base_logits.shape)  # [*S, B, D]
        pre = self.made.pre(zeros, self.context)                                        # [*S, B, H] at z = 0
        w_in, w_out, b_out = self.made.inp.masked_weight(), self.made.out.masked_weight(), self.made.out.bias
        bits: dict[int, Tensor] = {}
        for i in self.made.order():
            logit = self.base_logits[..., i] + self.made.act(pre) @ w_out[i] + b_out[i]  # [*S, B]
            bits[i] = draw(logit)
            pre = pre + bits[i][..., None] * w_in[:, i]                                  # [*S, B, H]
        return torch.stack([bits[i] for i in range(self.made.dim)], dim=-1)             # [*S, B, D]

    @torch.no_grad()
    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        return self._sequential(torch.Size(sample_shape), lambda logit: torch.bernoulli(torch.sigmoid(logit)))

    @property
    def mean(self) -> Tensor:
        """A mean-field pass (probabilities fed back instead of bits): a central code, not the exact E[z]."""
        return self._sequential(torch.Size(), torch.sigmoid)
