"""The Adam variant of Burda, Grosse & Salakhutdinov's IWAE code (yburda/iwae, optimizers.py), for the preset that
reproduces their Table 1.

It differs from torch's Adam in four ways, all taken from that code:
- beta1 = 0.99 (and beta2 = 0.999);
- the second moments start at ones, not zeros (the first at zeros), and the step count t at 1;
- epsilon (1e-4) is added to sqrt(v) with no bias correction of v; the rate is lr * sqrt(1 - beta2^t) / (1 - beta1^t);
- it is written as a set of Theano updates, which all read the values from before the step: the parameters move by
  the moments of the previous step (so the first step moves nothing) and the moments then take this gradient in.

Per step, with gradient g of the loss:
    p <- p - lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps);   m <- b1 m + (1 - b1) g;
    v <- b2 v + (1 - b2) g^2;   t <- t + 1
State keys are Adam's (step, exp_avg, exp_avg_sq), so checkpoints are checked and resumed like Adam's.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


class BurdaAdam(torch.optim.Optimizer):
    """Adam as in yburda/iwae optimizers.py (see the module docstring); `lr` may change between steps (stages)."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.99, 0.999), eps: float = 1e-4) -> None:
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    @torch.no_grad()
    def step(self, closure=None) -> None:  # noqa: ANN001 (torch's signature)
        """One update of every parameter with a gradient: a few foreach kernels per group, no per-tensor loop."""
        for group in self.param_groups:
            lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if not self.state[p]:
                    self.state[p].update(step=torch.ones((), dtype=torch.float64),   # t starts at 1
                                         exp_avg=torch.zeros_like(p), exp_avg_sq=torch.ones_like(p))  # m 0, v 1
            states = [self.state[p] for p in params]
            grads = [p.grad for p in params]
            ms, vs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
            t = states[0]["step"].item()                     # the same count for every parameter of the group
            rate = lr * (1.0 - b2**t) ** 0.5 / (1.0 - b1**t)
            denom = torch._foreach_add(torch._foreach_sqrt(vs), eps)                  # sqrt(v) + eps, old v
            torch._foreach_add_(params, torch._foreach_div(ms, denom), alpha=-rate)   # the old m (Theano)
            torch._foreach_mul_(ms, b1)
            torch._foreach_add_(ms, grads, alpha=1.0 - b1)
            torch._foreach_mul_(vs, b2)
            torch._foreach_addcmul_(vs, grads, grads, value=1.0 - b2)
            for s in states:
                s["step"].add_(1.0)
