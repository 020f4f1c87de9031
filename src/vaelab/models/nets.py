"""Network builders: an encoder maps x [B, P] to raw latent parameters, a decoder maps z [..., D] to logits."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from vaelab.core.errors import VaelabError
from vaelab.core.registry import Registry

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "leaky_relu": lambda: nn.LeakyReLU(0.3),  # the DisARM paper's slope
    "elu": nn.ELU,
    "softplus": nn.Softplus,
}

# A builder takes (data_dim, image_shape, enc_out, latent_dim, hidden, activation) and returns (encoder, decoder).
NETS: Registry[Callable[..., tuple[nn.Module, nn.Module]]] = Registry("network type (model.nets)")


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    """Linear layers of the given sizes with `activation` between them (none after the last)."""
    if activation not in ACTIVATIONS:
        raise VaelabError(f"unknown activation {activation!r}: choose one of {', '.join(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


@NETS.register("mlp")
def mlp_pair(data_dim: int, image_shape: tuple[int, int], enc_out: int, latent_dim: int,
             hidden: list[int], activation: str) -> tuple[nn.Module, nn.Module]:
    """MLP encoder P-h1-...-enc_out and the mirrored decoder D-...-h1-P (the study's 784-512-256-20 and back)."""
    encoder = mlp([data_dim, *hidden, enc_out], activation)
    decoder = mlp([latent_dim, *reversed(hidden), data_dim], activation)
    return encoder, decoder


def conv_sizes(image_shape: tuple[int, int], layers: int) -> list[tuple[int, int]]:
    """Spatial sizes before and after each 3x3, stride-2, padding-1 conv: n -> ceil(n / 2)."""
    sizes = [tuple(image_shape)]
    for _ in range(layers):
        sizes.append(tuple((n + 1) // 2 for n in sizes[-1]))
    return sizes


class ConvEncoder(nn.Module):
    """x [..., H*W] -> [N, 1, H, W] -> stride-2 3x3 convs with `channels` -> flatten -> linear -> [..., enc_out]."""

    def __init__(self, image_shape: tuple[int, int], channels: list[int], enc_out: int, activation: str) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        layers: list[nn.Module] = []
        for c_in, c_out in zip([1, *channels[:-1]], channels, strict=True):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), ACTIVATIONS[activation]()]
        self.convs = nn.Sequential(*layers)
        h, w = conv_sizes(image_shape, len(channels))[-1]
        self.head = nn.Linear(channels[-1] * h * w, enc_out)

    def forward(self, x: Tensor) -> Tensor:
        images = x.reshape(-1, 1, *self.image_shape)                           # [N, 1, H, W]
        return self.head(self.convs(images).flatten(1)).reshape(*x.shape[:-1], -1)  # [..., enc_out]


class PixelBias(nn.Module):
    """One learned logit offset per pixel, [N, 1, H, W] -> [N, P]; `decoder_bias: data_mean` sets it."""

    def __init__(self, pixels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(pixels))

    def forward(self, images: Tensor) -> Tensor:
        return images.flatten(1) + self.bias


class ConvDecoder(nn.Module):
    """z [..., D] -> linear -> [N, C_last, h, w] -> stride-2 transposed convs back to exactly [N, 1, H, W] ->
    logits [..., H*W]. Each transposed conv's output padding undoes the rounding of the matching encoder conv."""

    def __init__(self, image_shape: tuple[int, int], channels: list[int], latent_dim: int, activation: str) -> None:
        super().__init__()
        sizes = conv_sizes(image_shape, len(channels))                          # [(H, W), ..., (h, w)]
        self.start = (channels[-1], *sizes[-1])
        self.stem = nn.Sequential(nn.Linear(latent_dim, math.prod(self.start)), ACTIVATIONS[activation]())
        layers: list[nn.Module] = []
        outs = [*reversed(channels[:-1]), 1]
        for k, (c_in, c_out) in enumerate(zip(reversed(channels), outs, strict=True)):
            small, big = sizes[len(channels) - k], sizes[len(channels) - k - 1]
            pad = tuple(b - (2 * s - 1) for b, s in zip(big, small, strict=True))   # 1 for even sizes, 0 for odd
            last = k == len(channels) - 1
            layers.append(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=pad, bias=not last))
            if not last:
                layers.append(ACTIVATIONS[activation]())
        self.deconvs = nn.Sequential(*layers)
        self.to_logits = PixelBias(math.prod(image_shape))

    def forward(self, z: Tensor) -> Tensor:
        h = self.stem(z.reshape(-1, z.shape[-1])).reshape(-1, *self.start)     # [N, C_last, h, w]
        return self.to_logits(self.deconvs(h)).reshape(*z.shape[:-1], -1)      # [..., P]


@NETS.register("conv")
def conv_pair(data_dim: int, image_shape: tuple[int, int], enc_out: int, latent_dim: int,
              hidden: list[int], activation: str) -> tuple[nn.Module, nn.Module]:
    """Convolutional encoder/decoder for H x W images; `hidden` lists the channels of the stride-2 conv layers."""
    if not hidden or math.prod(image_shape) != data_dim:
        raise VaelabError(f"nets=conv needs model.hidden to list channel counts (got {hidden}) and images whose "
                          f"{image_shape} shape holds all {data_dim} pixels: set e.g. model.hidden=[32,64]")
    if activation not in ACTIVATIONS:
        raise VaelabError(f"unknown activation {activation!r}: choose one of {', '.join(ACTIVATIONS)}")
    return (ConvEncoder(image_shape, hidden, enc_out, activation),
            ConvDecoder(image_shape, hidden, latent_dim, activation))
