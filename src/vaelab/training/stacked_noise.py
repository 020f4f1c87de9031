"""The random draws of a stacked run (training/stacked.py): each seed's noise from that seed's own generator.

A single run draws its estimator's noise from torch's global generator: `Normal.rsample` calls
`torch.empty(shape).normal_()`, the Bernoulli family and DisARM/RELAX/concrete call `torch.rand`/`torch.rand_like`.
Under `torch.func.vmap` one call stands for all N seeds, so to give seed i exactly the numbers its own run would
draw, the draws are taken outside the vmapped step: `NoisePlan.record` runs one seed's step once and notes each
draw's kind and shape; before every stacked step `draw` makes each draw from each seed's generator ([N, *shape]),
and inside the vmapped step `supply` hands them out in order, so the model code runs unchanged.

Only shape-determined draws can be made ahead; a step that calls a draw whose numbers depend on its arguments
(torch.bernoulli, torch.normal(mean, std), multinomial, dropout, ...) is refused with a clear message."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from vaelab.core.errors import VaelabError

# what a stacked step may draw: name -> kind; each kind is drawn from a seed's generator by `_draw`
SUPPORTED = {torch.Tensor.normal_: "normal_", torch.randn: "randn", torch.randn_like: "randn",
             torch.rand: "rand", torch.rand_like: "rand"}
REFUSED = (torch.bernoulli, torch.Tensor.bernoulli_, torch.normal, torch.multinomial, torch.randint,
           torch.randint_like, torch.randperm, torch.Tensor.uniform_, torch.Tensor.exponential_,
           torch.Tensor.random_, torch.Tensor.cauchy_, torch.Tensor.geometric_, torch.Tensor.log_normal_,
           torch.poisson, F.dropout, torch.dropout)

Draw = tuple[str, tuple[int, ...], torch.dtype]


def _requested(func, args: tuple, kwargs: dict) -> Draw:
    """(kind, shape, dtype) of a supported random call, refusing arguments that change its numbers."""
    kind = SUPPORTED[func]
    if func is torch.Tensor.normal_:
        if args[1:] or set(kwargs) - {"generator"}:
            raise VaelabError("stacked training supports only standard-normal draws (Tensor.normal_())")
        return kind, tuple(args[0].shape), args[0].dtype
    if func in (torch.rand_like, torch.randn_like):
        return kind, tuple(args[0].shape), kwargs.get("dtype") or args[0].dtype
    shape = args[0] if len(args) == 1 and isinstance(args[0], Sequence) else args
    return kind, tuple(int(s) for s in shape), kwargs.get("dtype") or torch.get_default_dtype()


class NoisePlan(TorchFunctionMode):
    """Record a step's draws (`record`, real numbers from the global generator) or hand out pre-drawn ones
    (`supply`, each checked against what the step asks for)."""

    def __init__(self, supplied: Sequence[Tensor] | None = None) -> None:
        super().__init__()
        self.supplied, self.recorded, self.used = supplied, [], 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in REFUSED:
            raise VaelabError(f"this estimator's step draws with {getattr(func, '__name__', func)}, whose numbers "
                              "depend on its arguments, so a stacked run cannot give each seed its own run's draws: "
                              "train the seeds separately (sweep: stack: false)")
        if func not in SUPPORTED:
            return func(*args, **kwargs)
        want = _requested(func, args, kwargs)
        if self.supplied is None:
            self.recorded.append(want)
            return func(*args, **kwargs)
        if self.used >= len(self.supplied):
            raise VaelabError("the stacked step drew more random numbers than its recorded plan: "
                              "train the seeds separately (sweep: stack: false)")
        noise = self.supplied[self.used]
        self.used += 1
        if tuple(noise.shape) != want[1] or noise.dtype != want[2]:
            raise VaelabError(f"the stacked step asked for a {want[1]} draw where its plan has {tuple(noise.shape)}: "
                              "train the seeds separately (sweep: stack: false)")
        return noise


def record(step, *args) -> list[Draw]:
    """Run `step(*args)` once with the global generator's state restored afterwards; its draws in order."""
    devices = [a.device for a in args if isinstance(a, Tensor) and a.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=devices), NoisePlan() as plan:
        step(*args)
    return plan.recorded


def _draw(kind: str, shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> Tensor:
    """One draw from `gen`, made the way the single run makes it from the global generator."""
    if kind == "normal_":
        return torch.empty(shape, dtype=dtype, device=gen.device).normal_(generator=gen)
    fn = torch.randn if kind == "randn" else torch.rand
    return fn(shape, dtype=dtype, device=gen.device, generator=gen)


def draw(plan: list[Draw], gens: list[torch.Generator]) -> list[Tensor]:
    """Every draw of `plan` from every seed's generator: one [N, *shape] tensor per draw."""
    return [torch.stack([_draw(kind, shape, dtype, g) for g in gens]) for kind, shape, dtype in plan]
