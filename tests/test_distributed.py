"""Multi-process training and evaluation (torchrun, DDP on Gloo), --compile, bf16 autocast and the TF32 switch.

The central check: two Gloo processes on the CPU, each on half of every batch, end with the parameters one process
reaches on the whole batches (|difference| <= 1e-6 after 32 Adam steps; float rounding gives ~3e-8, while
leaving out the per-rank loss weights of the uneven last batch already gives ~3e-5).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file
from torch import nn
from torch.distributions import Bernoulli, Independent

from vaelab.core.errors import VaelabError
from vaelab.runs.device_data import prepare_data
from vaelab.runs.loaded_run import build
from vaelab.runtime import distributed
from vaelab.runtime.distributed import Context
from vaelab.training.trainer import Objective, train

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# digits: 1297 training images = 15 batches of 86 + one of 7, which two ranks split 4 + 3 (loss weights 8/7, 6/7)
TINY = ["--data", "digits", "--device", "cpu", "--set", "model.hidden=[32]", "--set", "model.latent_dim=4",
        "--set", "train.batch_size=86", "--set", "train.epochs=2"]


def run_job(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """Run a (torchrun) command in its own process group; kill the whole group if it hangs."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env |= {"OMP_NUM_THREADS": "1", distributed.TIMEOUT_ENV: "60"}   # a stalled collective fails within a minute
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:8])}... hung for {timeout}s:\n{err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoint" / "model.safetensors")


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------ sharding, seeds


def test_shards_partition_each_batch_and_their_weights_give_the_global_mean():
    idx, values = torch.randperm(23), torch.randn(23, dtype=torch.float64)
    parts = [distributed.shard(idx, Context(rank=r, world_size=3)) for r in range(3)]
    assert torch.equal(torch.cat([p for p, _ in parts]), idx)              # disjoint, complete, in order
    assert [len(p) for p, _ in parts] == [8, 8, 7]
    # what DDP computes: the average over ranks of weight_r * (rank r's mean loss)
    ddp = sum(w * values[p].mean() for p, w in parts) / 3
    assert torch.allclose(ddp, values[idx].mean(), rtol=1e-12, atol=0)
    assert distributed.shard(idx, Context()) == (idx, 1.0)


def test_a_last_batch_smaller_than_the_world_is_dropped_only_under_torchrun():
    batches = torch.arange(13).split(4)                                      # sizes 4, 4, 4, 1
    assert len(distributed.keep_batches(batches, Context(rank=1, world_size=2))) == 3
    assert distributed.keep_batches(batches, Context()) is batches


def test_each_rank_draws_its_own_noise_and_one_process_keeps_its_rng():
    def draws(rank: int, epoch: int) -> torch.Tensor:
        distributed.seed_sampling(7, Context(rank=rank, world_size=2), epoch)
        return torch.randn(5)

    assert not torch.equal(draws(0, 0), draws(1, 0))        # independent micro-batch noise
    assert not torch.equal(draws(0, 0), draws(0, 1))        # fresh noise each epoch
    assert torch.equal(draws(1, 3), draws(1, 3))            # reproducible: a resumed epoch redraws it
    torch.manual_seed(0)
    state = torch.get_rng_state()
    distributed.seed_sampling(7, Context(), 0)
    assert torch.equal(torch.get_rng_state(), state)        # one process: the checkpointed RNG is left alone


def test_without_torchrun_setup_joins_nothing(monkeypatch):
    for world in (None, "1"):
        monkeypatch.delenv("WORLD_SIZE", raising=False)
        if world:
            monkeypatch.setenv("WORLD_SIZE", world)
        ctx = distributed.setup(torch.device("cpu"))
        assert ctx == Context() and not torch.distributed.is_initialized()


def test_unused_parameters_are_found_so_ddp_can_be_told():
    cfg = tiny_config()
    data = prepare_data(cfg.data, torch.device("cpu"))
    model, estimator = build(cfg, data, torch.device("cpu"))
    estimator.spare = nn.Parameter(torch.zeros(3))                          # a parameter no loss reaches
    step = Objective(model, estimator)
    assert distributed.unused_parameters(step, data.x_valid[:8]) == ["estimator.spare"]
    assert all(p.grad is None for p in step.parameters()) and step.training


# ------------------------------------------------------------------------------------------ precision options


def test_bf16_autocast_runs_the_nets_in_bf16_and_the_log_densities_in_fp32():
    cfg = tiny_config("estimator.name=ae")                                   # deterministic: comparable exactly
    data = prepare_data(cfg.data, torch.device("cpu"))
    model, estimator = build(cfg, data, torch.device("cpu"))
    first_layer = next(m for m in model.decoder.modules() if isinstance(m, nn.Linear))
    seen = []
    first_layer.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    x = data.x_valid[:16]
    est = Objective(model, estimator, "bf16")(x)
    assert seen == [torch.bfloat16] and est.rec.dtype == est.loss.dtype == torch.float32
    # the same computation by hand: bf16 networks, fp32 Bernoulli log-likelihood summed over the pixels
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = model.encoder(x)
    z = model.latent.posterior(h.float()).mean
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.decoder(z)
    rec = Independent(Bernoulli(logits=logits.float()), 1).log_prob(x)      # [16]
    assert torch.allclose(est.rec, rec, rtol=0, atol=1e-4)
    # bf16 rounds the logits to 8 bits of mantissa: the ~40-nat log-likelihoods move, by well under a nat
    full = Objective(model, estimator)(x)
    assert 0 < (est.rec - full.rec).abs().max() < 1.0
    assert Objective(model, estimator, "bf16").model.decoder.net is model.decoder   # the same parameters


def test_bf16_training_on_digits_and_bad_options_refused_before_a_run_dir(tmp_path):
    history = train(tiny_config("train.autocast=bf16", "train.steps_per_epoch=5"), tmp_path / "bf16", quiet=True)
    assert all(torch.isfinite(torch.tensor(r["train_elbo"])) for r in history)
    with pytest.raises(VaelabError, match="train.autocast = 'fp8' is not supported"):
        train(tiny_config("train.autocast=fp8"), tmp_path / "bad", quiet=True)
    assert not (tmp_path / "bad").exists()


def test_bf16_decoder_evaluation_is_recorded_and_within_hundredths_of_a_nat_of_fp32(tmp_path, cli):
    run = tmp_path / "run"
    train(tiny_config("train.steps_per_epoch=20"), run, quiet=True)
    results = []
    for extra in ([], [], ["--autocast", "bf16"]):
        code, out, _ = cli("evaluate", run, "--iw-samples", 50, "--quiet", *extra)
        assert code == 0
        results.append(json.loads(out))
    fp32, again, bf16 = results
    assert fp32 == again and fp32["decoder_autocast"] is None           # seeded: the same draws every call
    assert bf16["decoder_autocast"] == "bf16" == json.loads((run / "eval.json").read_text())["decoder_autocast"]
    for key in ("iw_loglik", "elbo", "rec"):                               # same draws, bf16-rounded logits
        assert 0 < abs(bf16[key] - fp32[key]) < 0.05, (key, bf16[key], fp32[key])
    assert bf16["kl"] == fp32["kl"]                                        # the encoder stays fp32
    with pytest.raises(SystemExit) as exc:                                # argparse: choices
        cli("evaluate", run, "--autocast", "fp8")
    assert exc.value.code == 2


def test_tf32_leaves_cpu_numbers_unchanged(tmp_path):
    train(tiny_config("train.steps_per_epoch=5"), tmp_path / "fp32", quiet=True)
    train(tiny_config("train.steps_per_epoch=5", "train.tf32=true"), tmp_path / "tf32", quiet=True)
    a, b = weights(tmp_path / "fp32"), weights(tmp_path / "tf32")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compiled_step_matches_eager(tmp_path):
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is not available in this PyTorch")
    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        pytest.skip("torch.compile on the CPU needs a C++ compiler (g++/clang++) on PATH")
    overrides = ("train.epochs=1", "train.steps_per_epoch=4")
    eager = train(tiny_config(*overrides), tmp_path / "eager", quiet=True)
    compiled = train(tiny_config(*overrides, "train.compile=true"), tmp_path / "compiled", quiet=True)
    a, b = weights(tmp_path / "eager"), weights(tmp_path / "compiled")
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-5) for k in a)   # fused kernels round differently
    assert abs(eager[0]["train_elbo"] - compiled[0]["train_elbo"]) < 1e-3


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compiled_step_is_not_recompiled_as_the_kl_weight_changes(tmp_path, monkeypatch):
    # a KL warm-up changes the weight at every step; as a Python float it would recompile the step each time
    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        pytest.skip("torch.compile on the CPU needs a C++ compiler (g++/clang++) on PATH")
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    torch._dynamo.reset()
    history = train(tiny_config("train.epochs=2", "train.steps_per_epoch=8", "train.compile=true",
                                "train.kl_weight={kind: linear, start: 0.0, beta: 1.0, warmup_steps: 16}"),
                    tmp_path / "run", quiet=True)
    assert [round(r["kl_weight"], 4) for r in history] == [0.2188, 0.7188]   # means of 0/16..7/16 and 8/16..15/16


# ------------------------------------------------------------------------------------------ two Gloo processes


@pytest.mark.slow
def test_two_gloo_processes_take_the_one_process_step_on_the_combined_batch(tmp_path):
    # `ae` has no sampling noise, so the two runs see the same numbers up to rounding (dynamic binarization
    # comes from the shared data generator, identical on every rank)
    single = train(tiny_config("train.batch_size=86", "train.epochs=2", "estimator.name=ae", "train.device=cpu"),
                   tmp_path / "one", quiet=True)
    job = run_job([*TORCHRUN, "-m", "vaelab", "train", "configs/gaussian_vae.yaml", *TINY, "--estimator", "ae",
                   "--out", str(tmp_path / "ddp")])
    a, b = weights(tmp_path / "one"), weights(tmp_path / "ddp")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-6), (k, (a[k] - b[k]).abs().max().item())
    for one, ddp in zip(single, rows(tmp_path / "ddp"), strict=True):   # all-reduced: the whole epoch's means
        assert one["steps"] == ddp["steps"] == 16
        for key in ("train_loss", "train_elbo", "train_rec"):
            assert ddp[key] == pytest.approx(one[key], abs=1e-4)
    # rank 0 alone wrote files and spoke
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["checkpoint", "config.yaml", "metrics.jsonl", "tb"]
    assert len(list((tmp_path / "ddp" / "tb").iterdir())) == 1              # one event file (one writer)
    assert job.stdout.count("run written to") == 1 and job.stderr.count("epoch 2/2") == 1


RESUME_SCRIPT = """
import sys
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from vaelab.config.schema import config_from_yaml_text, load_config
from vaelab.training.trainer import train

out = sys.argv[1]
dist.init_process_group("gloo")     # train() joins this group and leaves it open
def cfg(epochs):
    return load_config("configs/gaussian_vae.yaml", ["data.source=digits", "model.hidden=[32]", "model.latent_dim=4",
                       "train.batch_size=86", "train.device=cpu", f"train.epochs={epochs}"])
train(cfg(2), out + "/straight", quiet=True)
train(cfg(1), out + "/resumed", quiet=True)
if dist.get_rank() == 0:            # let the finished one-epoch run ask for a second epoch
    path = out + "/resumed/checkpoint/model.safetensors"
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    c = config_from_yaml_text(meta["config"])
    c.train.epochs = 2
    save_file(load_file(path), path, metadata=meta | {"config": c.to_yaml()})
dist.barrier()
train(None, out + "/resumed", resume=True, quiet=True)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_resume_under_torchrun_equals_the_uninterrupted_run(tmp_path):
    """With `reparam` (per-rank noise reseeded each epoch) a two-process run resumed after epoch 1 ends with the
    same bits as one that never stopped."""
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    run_job([*TORCHRUN, str(script), str(tmp_path)])
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drop = {"seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows(tmp_path / "straight")] == \
           [{k: v for k, v in r.items() if k not in drop} for r in rows(tmp_path / "resumed")]


@pytest.mark.slow
def test_sharded_evaluate_gives_one_result_equal_to_one_process(tmp_path, cli):
    """Exact log p(x) (all 2^4 codes) is deterministic: the two ranks' halves of the test set, gathered, give the
    one-process value; the Monte Carlo fields agree within their standard errors."""
    run = tmp_path / "bern"
    train(tiny_config("model.latent=bernoulli", "estimator.name=disarm", "train.epochs=1", "train.steps_per_epoch=5",
                      "train.device=cpu"), run, quiet=True)
    shutil.copytree(run, tmp_path / "copy")
    code, out, _ = cli("evaluate", run, "--iw-samples", 50, "--exact", "--quiet", "--device", "cpu")
    assert code == 0
    one = json.loads(out)
    job = run_job([*TORCHRUN, "-m", "vaelab", "evaluate", str(tmp_path / "copy"), "--iw-samples", "50", "--exact",
                   "--quiet", "--device", "cpu"])
    two = json.loads(job.stdout)                                              # printed once, by rank 0
    assert two == json.loads((tmp_path / "copy" / "eval.json").read_text())
    assert two["n_examples"] == one["n_examples"] == 250 and two["processes"] == 2
    for key in ("exact_loglik", "exact_loglik_stderr", "kl", "kl_stderr"):   # deterministic per image
        assert two[key] == pytest.approx(one[key], rel=1e-6)
    for key in ("elbo", "iw_loglik"):
        assert abs(two[key] - one[key]) < 4 * (one[f"{key}_stderr"] ** 2 + two[f"{key}_stderr"] ** 2) ** 0.5
