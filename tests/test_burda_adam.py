"""BurdaAdam against a plain numpy transcription of yburda/iwae's Theano updates (all read pre-step values)."""

from __future__ import annotations

import numpy as np
import torch

from vaelab.optim.burda_adam import BurdaAdam
from vaelab.optim.optimizers import build_optimizers


def theano_adam(p: np.ndarray, grads: list[np.ndarray], lrs: list[float], b1=0.99, b2=0.999, eps=1e-4):
    """The IWAE code's update, maximising -loss: every new value is computed from the old ones, then assigned."""
    m, v, t = np.zeros_like(p), np.ones_like(p), 1.0
    for g, lr in zip(grads, lrs, strict=True):
        obj_grad = -g                                            # their grad is of the objective they ascend
        alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        p, m, v, t = (p + alpha * m / (np.sqrt(v) + eps), b1 * m + (1 - b1) * obj_grad,
                      b2 * v + (1 - b2) * obj_grad**2, t + 1)
    return p


def test_burda_adam_matches_the_theano_updates():
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(3, 4))
    grads = [rng.normal(size=(3, 4)) for _ in range(6)]
    lrs = [1e-3, 1e-3, 7.2e-4, 7.2e-4, 5.2e-4, 5.2e-4]            # the rate changes between stages
    param = torch.nn.Parameter(torch.tensor(p0))
    opt = BurdaAdam([param], lr=lrs[0])
    for i, (g, lr) in enumerate(zip(grads, lrs, strict=True)):
        opt.param_groups[0]["lr"] = lr
        param.grad = torch.tensor(g)
        opt.step()
        if i == 0:
            np.testing.assert_array_equal(param.detach().numpy(), p0)   # the first step moves nothing
    np.testing.assert_allclose(param.detach().numpy(), theano_adam(p0, grads, lrs), rtol=1e-12, atol=1e-14)


def test_param_groups_select_burda_adam_and_its_state_round_trips():
    net = torch.nn.Linear(3, 2)
    named = {f"model.encoder.{k}": p for k, p in net.named_parameters()}
    opt = build_optimizers(named, 1e-3, 1e-8, {"encoder": {"optimizer": "burda_adam"}}, torch.device("cpu"))
    (inner,) = opt.optimizers
    assert isinstance(inner, BurdaAdam) and inner.param_groups[0]["betas"] == (0.99, 0.999)
    assert inner.param_groups[0]["eps"] == 1e-4
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    opt.step()
    twin = build_optimizers(named, 1e-3, 1e-8, {"encoder": {"optimizer": "burda_adam"}}, torch.device("cpu"))
    twin.load_state_dict(opt.state_dict())
    for a, b in zip(inner.state.values(), twin.optimizers[0].state.values(), strict=True):
        assert a["step"].item() == b["step"].item() == 3.0
        torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"], rtol=0, atol=0)
