"""Network builders: an encoder maps x [B, P] to raw latent parameters, a decoder maps z [..., D] to logits."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .errors import VaelabError
from .registry import Registry

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
    """MLP encoder P-h1-...-enc_out and the mirrored decoder D-...-h1-P (the seed's 784-512-256-20 and back)."""
    encoder = mlp([data_dim, *hidden, enc_out], activation)
    decoder = mlp([latent_dim, *reversed(hidden), data_dim], activation)
    return encoder, decoder
