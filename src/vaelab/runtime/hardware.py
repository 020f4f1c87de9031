"""How the model meets the machine: the device it runs on, how many decoded rows one chunk of work holds there,
bf16 autocast, `torch.compile` and the TF32 switch, with the checks that refuse what this machine cannot run.

Processes and DDP are runtime/distributed.py's; this module is about one process on one device.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from vaelab.core.errors import VaelabError
from vaelab.models.vae import VAE

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# Rows (samples x images) decoded at once, per device type; bounds memory whatever K is (~rows * P floats). On a
# CPU ~2k rows keep each tensor at a few MB, in cache: measured 3x faster than 32k rows. On an H200, K = 5000 over
# the 10,000 test images took 3.27 s with 16k rows, 1.84 s with 64k and 1.56 s with 256k (benchmarks/RESULTS.md),
# so a GPU takes up to 256k rows, fewer where a quarter of its free memory would not hold them.
ROWS_PER_CHUNK = {"cpu": 2048, "cuda": 1 << 18}
BYTES_PER_PIXEL_ROW = 64   # ~16 fp32 temporaries per decoded pixel: logits, log-density terms, their sums


def check_device_name(where: str, value: Any) -> None:
    if not isinstance(value, str) or not DEVICE_PATTERN.fullmatch(value):
        raise VaelabError(f"{where} = {value!r} is not a device vaelab runs on: use auto, cpu, cuda or cuda:N")


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else the CPU; `cpu`, `cuda` and `cuda:N` are taken as given (CUDA must be
    there, N must name one of its GPUs). Anything else (mps, meta, ...) is refused: vaelab runs on CPUs and CUDA."""
    check_device_name("--device", name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise VaelabError(f"device {name!r} requested but no CUDA GPU is visible: use --device cpu or auto")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise VaelabError(f"device {name!r}: only {torch.cuda.device_count()} GPU(s) visible: "
                              f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return torch.device(name)


def chunk_rows(device: torch.device, pixels: int = 784) -> int:
    """How many decoded rows (samples x images) of `pixels` pixels one chunk holds on `device`."""
    rows = ROWS_PER_CHUNK.get(device.type, ROWS_PER_CHUNK["cpu"])
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        rows = min(rows, max(1024, free // 4 // (pixels * BYTES_PER_PIXEL_ROW)))
    return rows


def check_options(compile: bool, autocast: str | None, device: torch.device, compile_mode: str = "default") -> None:
    """Refuse train.compile / train.autocast settings this machine cannot run, before a run directory is made."""
    if compile_mode not in COMPILE_MODES:
        raise VaelabError(f"train.compile_mode = {compile_mode!r} is not a torch.compile mode: use one of "
                          + ", ".join(COMPILE_MODES))
    if autocast is not None and autocast not in AUTOCAST_DTYPES:
        raise VaelabError(f"train.autocast = {autocast!r} is not supported: use bf16, or null for fp32")
    if autocast == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise VaelabError("train.autocast = bf16 but this GPU has no bfloat16 support: set train.autocast=null")
    if compile and not hasattr(torch, "compile"):
        raise VaelabError("train.compile needs torch.compile (PyTorch >= 2.0): upgrade torch or drop --compile")


class AutocastNet(nn.Module):
    """A network run under autocast(dtype) whose output is handed on in fp32: the log-densities, their sums over
    pixels and latents, and the KL are then computed in fp32 from the bf16-rounded network outputs."""

    def __init__(self, net: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.net, self.dtype = net, dtype

    def forward(self, x: Tensor) -> Tensor:
        # no cache of bf16 weight copies: each network runs once per step, and a CUDA graph cannot hold the cache
        with torch.autocast(x.device.type, dtype=self.dtype, cache_enabled=False):
            out = self.net(x)
        return out.float()


def autocast_twin(model: VAE, autocast: str | None, encoder: bool = True) -> VAE:
    """`model` itself when `autocast` is None, else a twin sharing its modules (so its parameters) whose decoder,
    and encoder unless `encoder=False`, run under autocast with fp32 outputs (AutocastNet)."""
    check_options(False, autocast, torch.device("cpu"))
    if autocast is None:
        return model
    dtype = AUTOCAST_DTYPES[autocast]
    enc = AutocastNet(model.encoder, dtype) if encoder else model.encoder
    return type(model)(enc, AutocastNet(model.decoder, dtype), model.latent, model.image_shape)


def compile_step(step: nn.Module, mode: str = "default") -> Callable[[Tensor, float | Tensor], Any]:
    """torch.compile of the step's forward (and, through AOTAutograd, its backward); the optimizer stays eager.
    The compiled callable returns what `step` returns (an Estimate for train.Objective).

    The KL weight reaches the compiled code as a device scalar: torch.compile specialises on Python floats, so a
    KL warm-up schedule would otherwise recompile at every step and, past dynamo's recompile limit, run eagerly.
    mode="reduce-overhead" replays the compiled forward and backward as CUDA graphs (on CUDA; elsewhere it is the
    default mode); each call then marks a new training iteration, so the graphs' output buffers are reused safely."""
    check_options(True, None, torch.device("cpu"), mode)
    compiled = torch.compile(step, dynamic=False, mode=None if mode == "default" else mode)
    graphs = mode in ("reduce-overhead", "max-autotune")
    scalars: dict[torch.device, Tensor] = {}

    def run(x: Tensor, kl_weight: float | Tensor = 1.0) -> Any:
        if not isinstance(kl_weight, Tensor):
            kl_weight = scalars.setdefault(x.device, torch.zeros((), device=x.device)).fill_(kl_weight)
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return compiled(x, kl_weight)
    return run


@contextlib.contextmanager
def matmul_precision(tf32: bool, device: torch.device) -> Iterator[None]:
    """CUDA fp32 matmuls and cuDNN convolutions in TF32 (10-bit mantissa) when `tf32`, else full IEEE fp32 (also
    for convolutions, which PyTorch otherwise runs in TF32 by default); the previous settings come back after.
    Nothing changes on the CPU."""
    if device.type != "cuda":
        yield
        return
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = matmul.fp32_precision, conv.fp32_precision
    matmul.fp32_precision = conv.fp32_precision = "tf32" if tf32 else "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = before
