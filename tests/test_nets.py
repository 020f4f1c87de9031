"""Convolutional networks: exact H x W round trips, any leading dims, the data-mean bias, and that they train."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from vaelab.core.errors import VaelabError
from vaelab.models.nets import NETS, conv_sizes
from vaelab.models.vae import build_model
from vaelab.runs.device_data import prepare_data
from vaelab.runs.loaded_run import build


@pytest.mark.parametrize("shape, channels", [((28, 28), [32, 64]), ((8, 8), [8, 16]), ((7, 9), [4, 8, 8]),
                                             ((1, 5), [4]), ((2, 3), [4, 4, 4, 4])])
def test_conv_shapes_round_trip_any_image_size(shape, channels):
    pixels = shape[0] * shape[1]
    encoder, decoder = NETS.get("conv")(pixels, shape, 10, 3, channels, "relu")
    assert encoder(torch.rand(5, pixels)).shape == (5, 10)
    assert decoder(torch.randn(5, 3)).shape == (5, pixels)
    assert decoder(torch.randn(4, 5, 3)).shape == (4, 5, pixels)              # [S, B, D] -> [S, B, P]
    # the transposed convs land exactly on H x W (no crop): the per-pixel bias is added after them
    *_, last_deconv = (m for m in decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d))
    h = torch.randn(2, channels[0], *conv_sizes(shape, 1)[1])
    assert last_deconv(h).shape == (2, 1, *shape)


def test_conv_decoder_keeps_samples_apart_across_leading_dims():
    """Decoding [S, B, D] equals decoding each [B, D] slice: the flatten/restore does not mix rows."""
    _, decoder = NETS.get("conv")(64, (8, 8), 6, 3, [4, 8], "elu")
    z = torch.randn(3, 2, 3)
    torch.testing.assert_close(decoder(z), torch.stack([decoder(zs) for zs in z]))


def test_conv_encoder_sees_the_image_layout():
    """A pixel's effect reaches the encoder output through the 2-D layout: flipping the image changes the code."""
    encoder, _ = NETS.get("conv")(63, (7, 9), 4, 2, [4], "relu")
    x = torch.rand(1, 7, 9)
    flipped = x.flip(-1)
    assert not torch.allclose(encoder(x.reshape(1, -1)), encoder(flipped.reshape(1, -1)))


def test_conv_data_mean_bias_sets_the_per_pixel_logits():
    cfg = tiny_config("model.nets=conv", "model.hidden=[4, 8]", "model.decoder_bias=data_mean").model
    mean = torch.rand(64) * 0.8 + 0.1
    model = build_model(cfg, 64, (8, 8), mean)
    torch.testing.assert_close(model.decoder.to_logits.bias.detach(), torch.logit(mean))


def test_conv_needs_channels_and_consistent_shapes():
    with pytest.raises(VaelabError, match="channel counts"):
        NETS.get("conv")(64, (8, 8), 4, 2, [], "relu")
    with pytest.raises(VaelabError, match="holds all 60 pixels"):
        NETS.get("conv")(60, (8, 8), 4, 2, [4], "relu")
    with pytest.raises(VaelabError, match="unknown activation"):
        NETS.get("conv")(64, (8, 8), 4, 2, [4], "swish")


def test_conv_vae_trains_on_digits():
    """50 reparam steps on digits lower the loss clearly (mean of the last 10 vs the first 10)."""
    cfg = tiny_config("model.nets=conv", "model.hidden=[8, 16]", "model.latent_dim=4", "train.device=cpu")
    data = prepare_data(cfg.data, torch.device("cpu"))
    model, estimator = build(cfg, data, torch.device("cpu"))
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(50):
        x = data.x_train[torch.randint(len(data.x_train), (64,), generator=gen)]
        x = torch.bernoulli(x, generator=gen)
        est = estimator(model, x)
        optim.zero_grad()
        est.loss.backward()
        optim.step()
        losses.append(est.loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 5, (first, last)


def test_demean_input_feeds_the_encoder_x_minus_the_training_mean():
    from vaelab.config.schema import ModelConfig
    from vaelab.models.vae import build_model

    mean = torch.rand(64)
    torch.manual_seed(3)
    plain = build_model(ModelConfig(hidden=[16], latent_dim=3), 64, (8, 8), mean)
    torch.manual_seed(3)
    demeaned = build_model(ModelConfig(hidden=[16], latent_dim=3, demean_input=True), 64, (8, 8), mean)
    x = torch.bernoulli(torch.rand(5, 64))
    torch.testing.assert_close(demeaned.posterior(x).mean, plain.posterior(x - mean).mean)
