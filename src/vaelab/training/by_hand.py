"""A training step with its backward pass written out (`train.backward: manual`, the default where it applies):
the same loss and gradients as autograd to float rounding, at about half the time of a small-batch step on a CPU.

At the field's reference sizes (batch 20-50, MLPs of a few hundred units) a step's time goes to per-operation
overhead, not arithmetic: an eager autograd step is 4-6x its matmuls (benchmarks/step_floor.py). Written out,
a step is its matmuls and one fused elementwise operation per layer, with no graph to build or walk.

What is written out: MLP networks (`nets: mlp`; Linear layers with tanh, relu or leaky_relu between them, the
`demean_input` and `decoder_input: centered` wrappers) and the Gaussian VAE's reparameterised ELBO
(`estimator: reparam`, analytic KL): with s = exp(lv / 2), z = mu + s * eps (eps drawn as Normal.rsample draws
it, so a seed gives the same noise), logits l = dec(z),

    loss = mean_b [ beta * KL(N(mu, s^2) || N(0, I)) - (x . l - sum softplus(l)) ]   (Kingma & Welling 2014)
    dloss/dl = (sigmoid(l) - x) / B,     dloss/dmu = dz + beta mu / B,
    dloss/dlv = dz * s * eps / 2 + beta (s^2 - 1) / (2B),     dz = dec'(z)^T dloss/dl.

`plan` says whether a model and estimator qualify (and why not); anything else trains with autograd. Tests
compare the loss and every gradient with autograd's on the same draws (tests/test_by_hand.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vaelab.estimators.base import Estimate
from vaelab.estimators.pathwise import Reparam
from vaelab.models.latents import GaussianLatent, gaussian_kl
from vaelab.models.vae import VAE, Centered, Demean, bernoulli_log_prob

BACKWARDS = ("auto", "manual", "autograd")


class HandMLP:
    """An MLP (nn.Sequential of Linear and tanh / relu / leaky_relu, optionally after Demean or Centered) run
    forward keeping what its backward needs, and backward writing each weight's and bias's .grad in place."""

    def __init__(self, net: nn.Module) -> None:
        self.shift: tuple[float, float] | None = None                      # x -> a x + c before the first layer
        self.demean: Demean | None = None                                  # x - its mean image [P] first
        self.layers: list[tuple[nn.Linear, str | None, float]] = []        # (linear, activation after it, slope)
        for m in flatten(net):
            if type(m) is Demean and not self.layers:
                self.demean = m                                            # its buffer is read at each call
            elif type(m) is Centered and not self.layers:
                self.shift = (2.0, -1.0)
            elif type(m) is nn.Linear:
                self.layers.append((m, None, 0.0))
            elif self.layers and self.layers[-1][1] is None and type(m) in ACTS:
                slope = float(getattr(m, "negative_slope", 0.0))
                self.layers[-1] = (self.layers[-1][0], ACTS[type(m)], slope)
            else:
                raise NotImplementedError(f"{type(m).__name__} has no hand-written backward")
        if not self.layers or self.layers[-1][1] is not None:
            raise NotImplementedError("the network must end in a Linear layer")
        self.saved: list[tuple[Tensor, Tensor]] = []

    def forward(self, x: Tensor) -> Tensor:
        """The network's output, keeping each layer's input and pre-activation (or output, for tanh and relu)."""
        if self.demean is not None:
            x = x - self.demean.mean                                       # [B, P]
        if self.shift is not None:
            x = x * self.shift[0] + self.shift[1]                          # 2z - 1
        self.saved = []
        for lin, act, slope in self.layers:
            a = torch.addmm(lin.bias, x, lin.weight.t())                   # [B, out]
            if act == "tanh":
                h = a.tanh_()
            elif act == "relu":
                h = a.relu_()
            elif act == "leaky_relu":
                h = torch.nn.functional.leaky_relu(a, slope)
            else:
                h = a
            self.saved.append((x, a if act == "leaky_relu" else h))
            x = h
        return x

    def backward(self, dy: Tensor, need_input_grad: bool) -> Tensor | None:
        """Given dloss/doutput [B, out], set every parameter's .grad; return dloss/dinput [B, in] if asked."""
        for k in range(len(self.layers) - 1, -1, -1):
            lin, act, slope = self.layers[k]
            x, kept = self.saved[k]
            if act == "tanh":
                dy = torch.ops.aten.tanh_backward(dy, kept)                # dy (1 - h^2)
            elif act == "relu":
                dy = torch.ops.aten.threshold_backward(dy, kept, 0.0)
            elif act == "leaky_relu":
                dy = torch.ops.aten.leaky_relu_backward(dy, kept, slope, False)
            torch.mm(dy.t(), x, out=grad_of(lin.weight))                   # [out, in]
            torch.sum(dy, 0, out=grad_of(lin.bias))                        # [out]
            if k or need_input_grad:
                dy = torch.mm(dy, lin.weight)                              # [B, in]
        if need_input_grad and self.shift is not None:
            dy = dy * self.shift[0]
        return dy if need_input_grad else None


ACTS = {nn.Tanh: "tanh", nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu"}


def flatten(net: nn.Module) -> list[nn.Module]:
    """The leaf modules of nested nn.Sequential containers, in order (a lone module as itself). Exact types only:
    a subclass may change what forward computes, so it is a leaf (and then has no hand-written backward)."""
    if type(net) is nn.Sequential:
        return [leaf for m in net for leaf in flatten(m)]
    return [net]


def grad_of(p: nn.Parameter) -> Tensor:
    """p's .grad, made once and then overwritten in place (the optimizers read it there)."""
    if p.grad is None:
        p.grad = torch.empty_like(p)
    return p.grad


class ReparamByHand:
    """`estimator: reparam` on a Gaussian-latent MLP VAE, forward and backward written out (see the module
    docstring): call it on a batch x [B, P] to set every parameter's .grad and get the step's Estimate."""

    def __init__(self, model: VAE) -> None:
        self.model = model
        self.encoder, self.decoder = HandMLP(model.encoder), HandMLP(model.decoder)

    @torch.no_grad()
    def __call__(self, x: Tensor, kl_weight: float | Tensor = 1.0) -> Estimate:
        B = x.shape[0]
        h = self.encoder.forward(x)                                       # [B, 2D]
        mu, lv = h.chunk(2, dim=-1)                                       # [B, D] each
        s = torch.exp(0.5 * lv)                                           # sigma [B, D]
        eps = torch.empty_like(mu).normal_()                              # as Normal.rsample draws it
        z = mu + eps * s                                                  # [B, D]
        logits = self.decoder.forward(z)                                  # [B, P]
        rec, kl = bernoulli_log_prob(x, logits), gaussian_kl(mu, s)        # [B] each, as the model's
        loss = (kl_weight * kl - rec).mean()                              # the loss line, as Reparam's
        dl = torch.sigmoid(logits).sub_(x).div_(B)                        # dloss/dlogits [B, P]
        dz = self.decoder.backward(dl, need_input_grad=True)              # [B, D]
        w = kl_weight / B
        dmu = mu * w + dz                                                 # [B, D]
        dlv = (s.square() - 1.0) * (0.5 * w) + dz * s * eps * 0.5          # [B, D]
        self.encoder.backward(torch.cat([dmu, dlv], dim=-1), need_input_grad=False)
        return Estimate(loss, rec - kl, rec, kl)


def plan(model: nn.Module, estimator: nn.Module) -> tuple[ReparamByHand | None, str]:
    """(the hand-written step, "") when the model and estimator have one, else (None, the reason why not)."""
    if type(estimator) is not Reparam:
        return None, (f"estimator {type(estimator).__name__} has no hand-written backward (reparam, disarm and arm "
                      "have)")
    if type(model) is not VAE or type(model.latent) is not GaussianLatent:
        return None, "only the Gaussian latent family has a hand-written backward"
    if list(model.latent.parameters()):
        return None, "the latent family has parameters of its own"
    try:
        return ReparamByHand(model), ""
    except NotImplementedError as e:
        return None, f"{e} (model.nets: mlp with tanh, relu or leaky_relu has)"
