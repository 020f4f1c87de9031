"""The hand-written step (training/by_hand.py) against autograd: the same loss and reported terms on the same draws,
every gradient equal to float rounding (float64), the trainer choosing it where it applies and refusing it, with
the reason, where it does not; whole runs agree with autograd runs to float tolerance."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from vaelab.config import names
from vaelab.config.schema import load_config
from vaelab.core.errors import VaelabError
from vaelab.estimators.base import ESTIMATORS
from vaelab.estimators.pathwise import build_estimator
from vaelab.models.vae import build_model
from vaelab.runtime import distributed
from vaelab.training import by_hand
from vaelab.training.step import hand_plan, hand_written, make_step
from vaelab.training.trainer import train

CASES = {   # preset, overrides: tanh (the IWAE preset), relu, leaky_relu with a demeaned input, no hidden layer
    "iwae_tanh": ("literature/iwae_vae_1layer", []),
    "study_relu": ("gaussian_vae", []),
    "leaky_demean": ("gaussian_vae", ["model.activation=leaky_relu", "model.demean_input=true",
                                      "model.hidden=[64, 32]"]),
    "linear": ("gaussian_vae", ["model.hidden=[]", "model.init=glorot_uniform"]),
}


def model_for(preset: str, overrides: list[str]):
    cfg = load_config(preset, overrides)
    torch.manual_seed(0)
    mean = torch.rand(784, dtype=torch.float64) * 0.8 + 0.1                     # [P] a training mean image
    return build_model(cfg.model, 784, (28, 28), mean).double()


def grads(model) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("beta", [1.0, 0.3, "tensor"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_terms_and_every_gradient_equal_autograd(case, beta):
    model = model_for(*CASES[case])
    beta = torch.tensor(0.7, dtype=torch.float64) if beta == "tensor" else beta
    x = torch.bernoulli(torch.rand(9, 784, dtype=torch.float64))                # [B, P]
    reparam = ESTIMATORS.get("reparam")()
    torch.manual_seed(5)
    ref = reparam(model, x, beta)
    ref.loss.backward()
    expected = grads(model)
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))                               # overwritten, not accumulated
    step, why = by_hand.plan(model, reparam)
    assert step is not None, why
    torch.manual_seed(5)                                                        # the same eps
    got = step(x, beta)
    for name in ("loss", "elbo", "rec", "kl"):
        torch.testing.assert_close(getattr(got, name), getattr(ref, name).detach(), rtol=1e-13, atol=1e-12)
    for k, g in grads(model).items():
        torch.testing.assert_close(g, expected[k], rtol=1e-10, atol=1e-13, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("overrides, estimator, reason", [
    ([], "iwae", "estimator IWAE"),
    (["model.latent=gaussian_iaf"], "reparam", "Gaussian latent family"),
    (["model.activation=elu"], "reparam", "ELU has no hand-written backward"),
    (["model.nets=conv", "model.hidden=[8]"], "reparam", "has no hand-written backward"),
])
def test_plan_names_why_a_model_has_no_hand_written_step(overrides, estimator, reason):
    model = model_for("gaussian_vae", overrides)
    step, why = by_hand.plan(model, ESTIMATORS.get(estimator)())
    assert step is None and reason in why


def test_a_subclass_with_its_own_forward_is_not_taken_for_its_base():
    class Doubled(torch.nn.Sequential):                                         # a plugin's net, say
        def forward(self, x):
            return 2 * super().forward(x)

    class Scaled(torch.nn.Linear):
        def forward(self, x):
            return 3 * super().forward(x)

    model = model_for("gaussian_vae", [])
    for swap in (lambda: Doubled(*model.encoder), lambda: torch.nn.Sequential(Scaled(784, 40))):
        model.encoder = swap()
        step, why = by_hand.plan(model, ESTIMATORS.get("reparam")())
        assert step is None and "has no hand-written backward" in why


def test_the_trainer_picks_it_on_a_cpu_unless_told_otherwise():
    cpu = distributed.Context(device=torch.device("cpu"))

    def chosen(*overrides: str, ctx=cpu):
        cfg = tiny_config(*overrides)
        model = build_model(cfg.model, 64, (8, 8)).double()
        return hand_written(cfg.train, model, ESTIMATORS.get(cfg.estimator.name)(), ctx)

    cfg = tiny_config()
    step = make_step(cfg, build_model(cfg.model, 64, (8, 8)), ESTIMATORS.get("reparam")(),
                     torch.optim.Adam([torch.zeros(1)]), cpu, torch.zeros(2, 64), 4)
    assert isinstance(step.by_hand, by_hand.ReparamByHand)                      # auto: the faults suite's preset
    assert isinstance(chosen("train.backward=manual"), by_hand.ReparamByHand)
    assert chosen("train.backward=autograd") is None
    assert chosen("train.compile=true") is None                                 # auto leaves wrappers to autograd
    assert chosen("train.autocast=bf16") is None
    assert chosen(ctx=distributed.Context(device=torch.device("cuda"))) is None  # a GPU has its CUDA graph
    with pytest.raises(VaelabError, match="train.backward = manual: train.compile wraps the autograd step"):
        chosen("train.backward=manual", "train.compile=true")


def test_manual_on_an_estimator_without_one_is_one_line_and_exit_2(cli, tmp_path):
    code, _, err = cli("train", "configs/gaussian_vae.yaml", "--data", "digits", "--estimator", "iwae",
                       "--set", "train.backward=manual", "--epochs", "1", "--out", tmp_path / "r")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "train.backward = manual: estimator IWAE has no hand-written backward" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("overrides", [
    [],
    ["model.latent=bernoulli", "estimator.name=disarm", "estimator.kwargs={signal: elbo}", "model.latent_dim=8",
     "model.latent_kwargs={learn_prior: true}", "model.decoder_input=centered", "model.demean_input=true",
     "train.param_groups={prior: {optimizer: sgd, lr: 0.01}}"],
    ["model.latent=bernoulli", "estimator.name=arm", "model.latent_dim=8", "model.activation=leaky_relu"],
    ["train.grad_clip=0.5", "train.kl_weight={kind: linear, start: 0.0, beta: 1.0, warmup_epochs: 2}",
     "model.activation=tanh"],
], ids=["reparam", "disarm_reference", "arm", "reparam_clip_warmup"])
def test_a_run_by_hand_equals_an_autograd_run_to_float_tolerance(tmp_path, overrides):
    histories = {how: train(tiny_config("train.epochs=3", f"train.backward={how}", *overrides), tmp_path / how,
                            quiet=True) for how in ("manual", "autograd")}
    for a, b in zip(histories["manual"], histories["autograd"], strict=True):
        for key in ("train_loss", "train_rec", "train_kl", "valid_elbo"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
    manual, autograd = (load_file(tmp_path / h / "checkpoint" / "model.safetensors") for h in histories)
    assert manual.keys() == autograd.keys() and len(manual) > 4
    for k in manual:                                      # 3 epochs of Adam: rounding grows, stays far below 1e-3
        torch.testing.assert_close(manual[k], autograd[k], rtol=1e-3, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


def registered_pairs():
    """Every registered estimator with every latent family it fits (config/names.py's table of the registries)."""
    return [(name, latent) for name, _, fits in names.ESTIMATOR_ROWS for latent in fits]


@pytest.mark.parametrize("estimator, latent", registered_pairs())
def test_hand_written_steps_are_where_the_listing_says(estimator, latent):
    cfg = tiny_config(f"model.latent={latent}", f"estimator.name={estimator}")
    model = build_model(cfg.model, 64, (8, 8), torch.full((64,), 0.3))
    step, why = hand_plan(model, build_estimator(estimator, {}, model))
    assert (step is not None) == (names.HAND_WRITTEN.get(estimator) == latent), why


def test_a_run_saved_before_the_option_existed_resumes_with_autograd():
    from vaelab.config.schema import config_from_yaml_text

    text = tiny_config().to_yaml()
    assert config_from_yaml_text(text).train.backward == "auto"
    old = "\n".join(line for line in text.splitlines() if not line.strip().startswith("backward:"))
    assert old != text and config_from_yaml_text(old).train.backward == "autograd"


def test_a_run_saved_before_the_option_existed_is_not_called_edited(tmp_path):
    """Its config.yaml and its checkpoint's config both lack train.backward: both read as autograd, so opening it
    says nothing about an edit (it used to say "train.backward 'autograd' -> 'auto'")."""
    from vaelab.config.schema import config_from_yaml_text
    from vaelab.runs.run_dir import RunDir

    old = "\n".join(line for line in tiny_config().to_yaml().splitlines() if not line.strip().startswith("backward:"))
    (tmp_path / "config.yaml").write_text(old)
    run = RunDir(tmp_path)
    assert run.config().train.backward == "autograd"
    assert run.config_edit(config_from_yaml_text(old)) is None
    edited = old.replace("lr: ", "lr: 0.5 # ", 1)
    (tmp_path / "config.yaml").write_text(edited)
    assert run.config_edit(config_from_yaml_text(old)).startswith("train.lr")
