"""Per-group optimizers (train.param_groups): each group takes its own optimizer's update, checked in closed form."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from vaelab.core.errors import VaelabError
from vaelab.optim.optimizers import build_optimizers
from vaelab.runs.device_data import prepare_data
from vaelab.runs.loaded_run import build
from vaelab.training.trainer import train

BERNOULLI = ("model.latent=bernoulli", "estimator.name=disarm", "model.latent_kwargs={learn_prior: true}")


def _model(*overrides):
    cfg = tiny_config(*BERNOULLI, *overrides)
    data = prepare_data(cfg.data, torch.device("cpu"))
    model, est = build(cfg, data, torch.device("cpu"))
    named = {f"model.{k}": p for k, p in model.named_parameters()}
    return cfg, data, model, est, named


def test_sgd_prior_and_adam_elsewhere_take_their_closed_form_first_steps():
    cfg, data, model, est, named = _model()
    opt = build_optimizers(named, 1e-3, 1e-8, {"prior": {"optimizer": "sgd", "lr": 0.01}}, torch.device("cpu"))
    before = {k: p.detach().clone() for k, p in named.items()}
    opt.zero_grad()
    est(model, data.x_train[:64]).loss.backward()
    grads = {k: p.grad.clone() for k, p in named.items()}
    opt.step()
    prior = "model.latent.prior_logits"
    torch.testing.assert_close(named[prior] - before[prior], -0.01 * grads[prior], rtol=1e-6, atol=1e-9)
    # Adam's first step is -lr * g / (|g| + eps): a move of lr against the gradient's sign
    w = "model.decoder.net.0.weight" if "model.decoder.net.0.weight" in named else next(
        k for k in named if k.startswith("model.decoder") and k.endswith("weight"))
    g = grads[w]
    torch.testing.assert_close(named[w] - before[w], -1e-3 * g / (g.abs() + 1e-8), rtol=1e-4, atol=1e-9)


def test_learning_rate_schedule_scales_each_groups_own_rate(tmp_path):
    cfg = tiny_config(*BERNOULLI, "train.epochs=2", "train.lr_schedule={kind: exponential, gamma: 0.5}",
                      "train.param_groups={prior: {optimizer: sgd, lr: 0.01}}")
    train(cfg, tmp_path / "run", quiet=True)
    state = torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=True)
    adam_state, sgd_state = state["optim"]["optimizers"]
    assert adam_state["param_groups"][0]["lr"] == pytest.approx(5e-4)
    assert sgd_state["param_groups"][0]["lr"] == pytest.approx(5e-3)


def test_resume_with_param_groups_continues_bit_for_bit(tmp_path):
    from safetensors.torch import load_file

    groups = "train.param_groups={prior: {optimizer: sgd, lr: 0.01}, encoder: {betas: [0.5, 0.9]}}"
    train(tiny_config(*BERNOULLI, "train.epochs=3", groups), tmp_path / "straight", quiet=True)
    train(tiny_config(*BERNOULLI, "train.epochs=2", groups), tmp_path / "two", quiet=True)
    train(None, tmp_path / "two", resume=True, quiet=True, epochs=3)        # extended to 3 epochs
    a, b = (load_file(tmp_path / d / "checkpoint" / "model.safetensors") for d in ("straight", "two"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("groups", "message"), [
    ({"priors": {"lr": 0.1}}, "unknown group; choose from prior"),
    ({"prior": {"optimizer": "rmsprop"}}, "choose adam, sgd, burda_adam"),
    ({"prior": {"optimizer": "sgd", "betas": [0.9, 0.9]}}, r"unknown key\(s\) betas for sgd"),
    ({"prior": {"lr": -1}}, r"lr = -1 must be a finite number > 0"),
    ({"prior": {"lr": float("nan")}}, r"lr = nan must be a finite number > 0"),
    ({"control": {"betas": [0.9, 1.5]}}, r"betas\[1\] = 1.5 must be a finite number in \[0, 1\)"),
    ({"control": {"betas": [0.9]}}, r"must be two numbers in \[0, 1\)"),
    ({"prior": 0.01}, "must be a mapping"),
])
def test_bad_param_groups_are_refused(groups, message):
    *_, named = _model()
    with pytest.raises(VaelabError, match=message):
        build_optimizers(named, 1e-3, 1e-8, groups, torch.device("cpu"))


def test_a_group_with_no_parameters_is_refused_with_the_fix():
    _, _, model, _, _ = _model()
    named = {f"model.{k}": p for k, p in model.named_parameters() if "prior" not in k}
    with pytest.raises(VaelabError, match="no such parameters.*learn_prior: true"):
        build_optimizers(named, 1e-3, 1e-8, {"prior": {"optimizer": "sgd"}}, torch.device("cpu"))
