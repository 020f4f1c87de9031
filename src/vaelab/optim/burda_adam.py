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
from typing import Any

import torch
from torch import Tensor


class BurdaAdam(torch.optim.Optimizer):
    """Adam as in yburda/iwae optimizers.py (see the module docstring); `lr` may change between steps (stages).

    Each group's moments live in two flat buffers (the per-parameter state entries are views of them), and its
    gradients are gathered into a third, so a step is a handful of passes over one buffer instead of a dozen
    small kernels per parameter: the same per-element arithmetic as a per-parameter update, so the same bits."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.99, 0.999), eps: float = 1e-4) -> None:
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})
        self.flat: dict[int, dict[str, Any]] = {}                      # group index -> its flat buffers

    @torch.no_grad()
    def step(self, closure=None) -> None:  # noqa: ANN001 (torch's signature)
        """One update of every parameter with a gradient."""
        for i, group in enumerate(self.param_groups):
            lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            f = self._flat(i, params)
            g, m, v, work = f["grad"], f["exp_avg"], f["exp_avg_sq"], f["work"]
            for p, view in zip(params, f["grad_views"], strict=True):
                if p.grad is not view:                                 # autograd made a new one: gather it
                    view.copy_(p.grad)
                    p.grad = view                                      # a hand-written step writes it in place
            t = f["steps"][0].item()                                   # the same count for every parameter
            rate = lr * (1.0 - b2**t) ** 0.5 / (1.0 - b1**t)
            torch.sqrt(v, out=work).add_(eps)                          # sqrt(v) + eps, old v   [N]
            torch.div(m, work, out=work)                               # old m / (sqrt(v) + eps)
            torch._foreach_add_(params, f["work_views"], alpha=-rate)  # the old moments move p (Theano)
            m.mul_(b1).add_(g, alpha=1.0 - b1)
            v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
            torch._foreach_add_(f["steps"], 1.0)

    def _flat(self, i: int, params: list[Tensor]) -> dict[str, Any]:
        """Group i's flat buffers for `params`, made at the first step and again after a load_state_dict (which
        replaces the state entries): moments copied in from the state (t = 1, m = 0, v = 1 when there is none)."""
        f = self.flat.get(i)
        if f is not None and f["params"] == [id(p) for p in params] and all(
                self.state[p]["exp_avg"] is mv for p, mv in zip(params, f["m_views"], strict=True)):
            return f
        n = sum(p.numel() for p in params)
        f = {"params": [id(p) for p in params], "steps": []}
        for key, start in (("exp_avg", 0.0), ("exp_avg_sq", 1.0), ("grad", 0.0), ("work", 0.0)):
            flat = torch.full((n,), start, dtype=params[0].dtype, device=params[0].device)   # [N]
            views = [u.view_as(p) for u, p in zip(flat.split([p.numel() for p in params]), params, strict=True)]
            f[key], f[f"{key}_views"] = flat, views
        for p, m, v in zip(params, f["exp_avg_views"], f["exp_avg_sq_views"], strict=True):
            st = self.state[p]
            if st:
                m.copy_(st["exp_avg"])
                v.copy_(st["exp_avg_sq"])
            st.update(step=st.get("step", torch.ones((), dtype=torch.float64)), exp_avg=m, exp_avg_sq=v)
            f["steps"].append(st["step"])
        f["m_views"] = f["exp_avg_views"]
        self.flat[i] = f
        return f

    def state_dict(self) -> dict[str, Any]:
        """torch's, with the state tensors copied out of the flat buffers (so each is saved on its own)."""
        sd = super().state_dict()
        sd["state"] = {k: {n: t.clone() if isinstance(t, Tensor) else t for n, t in st.items()}
                       for k, st in sd["state"].items()}
        return sd
