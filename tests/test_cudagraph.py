"""train.cuda_graph: the whole update (forward, backward, Adam, metric sums) replayed as a CUDA graph must give the
eager update's numbers. The GPU tests run where CUDA is visible (they were run on an H200: benchmarks/RESULTS.md);
the option's checks and its no-op on the CPU run everywhere.

digits has 1297 training images: 20 batches of 64 and one of 17 per epoch, so 5 epochs exercise both graphs (the
64-image one is captured after 3 eager warm-up steps in epoch 1, the 17-image one after 3 epochs of warm-up)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from vaelab.core.errors import VaelabError
from vaelab.training import cudagraph
from vaelab.training.trainer import train

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
GRAPHED = ("train.cuda_graph=true",)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoint" / "model.safetensors")


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@cuda
def test_graphed_autoencoder_update_matches_eager(tmp_path):
    # `ae` draws no noise, so the graphed run must reproduce the eager one up to rounding: after 105 Adam steps
    # (lr 1e-3) a skipped, repeated or stale update would move the weights by ~1e-3 or more
    common = ("estimator.name=ae", "model.latent=deterministic", "train.epochs=5", "train.device=cuda")
    eager = train(tiny_config(*common), tmp_path / "eager", quiet=True)
    graphed = train(tiny_config(*common, *GRAPHED), tmp_path / "graphed", quiet=True)
    diff = max_difference(weights(tmp_path / "eager"), weights(tmp_path / "graphed"))
    assert diff < 1e-4, diff
    for e, g in zip(eager, graphed, strict=True):
        assert abs(e["train_elbo"] - g["train_elbo"]) < 1e-3, (e, g)   # the sums the graph accumulates


@cuda
@pytest.mark.slow
def test_graphed_compiled_update_matches_eager(tmp_path):
    # torch.compile inside the graph: the step must be compiled during warm-up (the KL weight already a device
    # scalar there), never inside the capture, where compiling is not allowed
    common = ("estimator.name=ae", "model.latent=deterministic", "train.epochs=2", "train.device=cuda")
    train(tiny_config(*common), tmp_path / "eager", quiet=True)
    train(tiny_config(*common, *GRAPHED, "train.compile=true"), tmp_path / "graphed", quiet=True)
    diff = max_difference(weights(tmp_path / "eager"), weights(tmp_path / "graphed"))
    assert diff < 1e-4, diff


@cuda
def test_graphed_vae_draws_fresh_noise_and_learns_like_eager(tmp_path):
    # reparam samples inside the graph; frozen noise (one eps replayed forever) would still lower the loss, so the
    # check is against the eager run: per-epoch train ELBO within 0.5 nats (Monte Carlo noise of 1297 images is
    # ~0.1), and the last epoch clearly better than the first
    common = ("train.epochs=5", "train.device=cuda")
    eager = train(tiny_config(*common), tmp_path / "eager", quiet=True)
    graphed = train(tiny_config(*common, *GRAPHED), tmp_path / "graphed", quiet=True)
    for e, g in zip(eager, graphed, strict=True):
        assert abs(e["train_elbo"] - g["train_elbo"]) < 0.5, (e, g)
    assert graphed[-1]["train_elbo"] > graphed[0]["train_elbo"] + 2


@cuda
def test_graphed_running_average_baseline_updates_every_step(tmp_path):
    # sfe-avg keeps its baseline and count as buffers updated in place: every replay must advance them
    cfg = ["model.latent=bernoulli", "estimator.name=sfe-avg", "train.epochs=5", "train.device=cuda"]
    history = train(tiny_config(*cfg, *GRAPHED), tmp_path / "graphed", quiet=True)
    train(tiny_config(*cfg), tmp_path / "eager", quiet=True)
    steps = sum(r["steps"] for r in history)
    graphed_w, eager_w = weights(tmp_path / "graphed"), weights(tmp_path / "eager")
    assert graphed_w["estimator.count"].item() == eager_w["estimator.count"].item() == steps
    assert abs(graphed_w["estimator.baseline"].item() - eager_w["estimator.baseline"].item()) < 1.0


@cuda
def test_graphed_kl_warmup_follows_the_schedule(tmp_path):
    # the KL weight is a device scalar written before each replay: one stuck at its value at capture time (~0.07)
    # would leave the trained loss ~KL nats away from the eager run's once the weight reaches 1
    cfg = ["estimator.name=iwae", "estimator.kwargs={num_samples: 3}", "train.epochs=4", "train.device=cuda",
           "train.kl_weight={kind: linear, start: 0.0, beta: 1.0, warmup_steps: 42}"]
    graphed = train(tiny_config(*cfg, *GRAPHED), tmp_path / "graphed", quiet=True)
    eager = train(tiny_config(*cfg), tmp_path / "eager", quiet=True)
    assert [r["kl_weight"] for r in graphed] == [r["kl_weight"] for r in eager]
    for e, g in zip(eager, graphed, strict=True):
        assert abs(e["train_loss"] - g["train_loss"]) < 0.5, (e, g)


@cuda
def test_graphed_update_follows_a_learning_rate_schedule(tmp_path):
    # a capture holds Adam's rate as a constant: each new rate must give new graphs, or the weights drift from eager
    common = ("estimator.name=ae", "model.latent=deterministic", "train.epochs=5", "train.device=cuda",
              "train.lr_schedule={kind: exponential, gamma: 0.3}")
    train(tiny_config(*common), tmp_path / "eager", quiet=True)
    train(tiny_config(*common, *GRAPHED), tmp_path / "graphed", quiet=True)
    diff = max_difference(weights(tmp_path / "eager"), weights(tmp_path / "graphed"))
    assert diff < 1e-4, diff


def test_cuda_graph_is_a_no_op_on_the_cpu(tmp_path):
    train(tiny_config("train.epochs=1", "train.device=cpu"), tmp_path / "plain", quiet=True)
    train(tiny_config("train.epochs=1", "train.device=cpu", *GRAPHED), tmp_path / "graphed", quiet=True)
    assert max_difference(weights(tmp_path / "plain"), weights(tmp_path / "graphed")) == 0.0


def test_cuda_graph_refuses_torchrun_and_nested_graphs():
    cudagraph.check(True, "default", distributed=False)           # fine
    cudagraph.check(False, "reduce-overhead", distributed=True)    # off: nothing to refuse
    with pytest.raises(VaelabError, match="single-process"):
        cudagraph.check(True, "default", distributed=True)
    with pytest.raises(VaelabError, match="both make CUDA graphs"):
        cudagraph.check(True, "reduce-overhead", distributed=False)


def test_unknown_compile_mode_is_refused_before_a_run_directory_exists(cli, tmp_path):
    code, _, err = cli("train", "configs/gaussian_vae.yaml", "--data", "digits", "--device", "cpu",
                       "--compile", "fastest", "--out", tmp_path / "run")
    assert code == 2 and "train.compile_mode = 'fastest'" in err and "reduce-overhead" in err
    assert not (tmp_path / "run").exists()


def test_compile_mode_from_the_cli_meets_the_cuda_graph_check(cli, tmp_path):
    # `--compile MODE` sets train.compile_mode; with train.cuda_graph it would make graphs twice: refused, exit 2
    code, _, err = cli("train", "configs/gaussian_vae.yaml", "--data", "digits", "--device", "cpu",
                       "--compile", "reduce-overhead", "--set", "train.cuda_graph=true", "--out", tmp_path / "run")
    assert code == 2 and "train.compile_mode=reduce-overhead" in err
    assert not (tmp_path / "run").exists()
