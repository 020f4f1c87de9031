"""The whole training update as one CUDA graph (`train.cuda_graph`): forward, backward, gradient clipping, Adam and
the metric sums, recorded once per batch shape and replayed for every batch.

A small MLP at batch 128 gives a GPU about 2 microseconds of arithmetic per step but ~100 kernel launches, each
dispatched from Python: measured on an H200, the eager step costs ~3 ms, almost all of it host overhead
(benchmarks/RESULTS.md). Replaying a graph launches everything at once. The numbers are the eager update's: the
same kernels on the same memory, random draws from the same CUDA generator (each replay advances its offset);
only the KL weight becomes a device scalar written before each replay. Recipe: PyTorch's "whole network capture"
(torch.cuda.graphs docs): warm-up steps on a side stream, then capture with the gradients set to None, so the
captured backward allocates them from the graph's own memory pool and replays write them in place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from vaelab.core.errors import VaelabError


class Update(Protocol):
    """What GraphedUpdate replays (train.Step.update): one whole optimisation step on a batch that keeps its
    results in device tensors (the metric sums) and returns nothing, so the whole call can be captured."""

    def __call__(self, x: Tensor, kl_weight: float | Tensor, weight: float = 1.0) -> None: ...


class GraphedUpdate:
    """`update` replayed as a CUDA graph, one per batch shape (an epoch's last, smaller batch gets its own).

    The first `warmup` calls for a shape run eagerly on a side stream (they are real training steps: cuBLAS
    workspaces, autograd's streams and Adam's state are created there, never inside the capture); the next call
    captures the update and replays it. A change of learning rate (train.lr_schedule, at an epoch boundary) drops
    the graphs, which are captured anew at the new rate."""

    def __init__(self, update: Update, optimizer: torch.optim.Optimizer, warmup: int = 3) -> None:
        self.update, self.optimizer, self.warmup = update, optimizer, warmup
        self.graphs: dict[torch.Size, tuple[torch.cuda.CUDAGraph, Tensor, Tensor]] = {}
        self.calls: dict[torch.Size, int] = {}
        self.kl_weights: dict[torch.Size, Tensor] = {}
        self.lrs: list[float] = []                         # the learning rates the graphs were captured with

    def __call__(self, x: Tensor, kl_weight: float, weight: float = 1.0) -> None:
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        if lrs != self.lrs:         # a capture holds Adam's rate as a constant: a new rate needs new graphs
            self.graphs.clear()
            self.calls.clear()
            self.lrs = lrs
        if x.shape not in self.graphs:
            # warm-up and capture both see the KL weight as a device scalar, so a compiled step is compiled for
            # that input during warm-up and never recompiles inside the capture
            static_kl_weight = self.kl_weights.setdefault(x.shape, torch.zeros((), device=x.device))
            static_kl_weight.fill_(kl_weight)
            done = self.calls.get(x.shape, 0)
            if done < self.warmup:
                self.calls[x.shape] = done + 1
                self._on_side_stream(lambda: self.update(x, static_kl_weight, weight))
                return
            self.graphs[x.shape] = self._capture(x, static_kl_weight, weight)
        graph, static_x, static_kl_weight = self.graphs[x.shape]
        static_x.copy_(x)
        static_kl_weight.fill_(kl_weight)
        graph.replay()

    @staticmethod
    def _on_side_stream(fn: Callable[[], None]) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)

    def _capture(self, x: Tensor, static_kl_weight: Tensor,
                 weight: float) -> tuple[torch.cuda.CUDAGraph, Tensor, Tensor]:
        static_x = x.clone()
        self.optimizer.zero_grad(set_to_none=True)       # the captured backward allocates the gradients itself
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.update(static_x, static_kl_weight, weight)
        except RuntimeError as err:
            raise VaelabError(f"train.cuda_graph: this model's update cannot be captured as a CUDA graph "
                              f"({str(err).splitlines()[0][:120]}): set train.cuda_graph=false") from err
        return graph, static_x, static_kl_weight


def enabled(cuda_graph: bool, device: torch.device) -> bool:
    """train.cuda_graph takes effect on CUDA devices only; elsewhere it changes nothing (like train.tf32)."""
    return cuda_graph and device.type == "cuda"


def check(cuda_graph: bool, compile_mode: str, distributed: bool) -> None:
    """Refuse train.cuda_graph where it cannot work, before a run directory is made."""
    if not cuda_graph:
        return
    if distributed:
        raise VaelabError("train.cuda_graph is single-process only: under torchrun set train.cuda_graph=false")
    if compile_mode in ("reduce-overhead", "max-autotune"):
        raise VaelabError(f"train.cuda_graph and train.compile_mode={compile_mode} both make CUDA graphs: "
                          "keep one (train.compile_mode=default with train.cuda_graph=true fuses and graphs)")
