"""Run-level steps shared by the CLI and `vaelab reproduce`: evaluate, draw a sample grid, score sample quality.

Each takes an opened run (`run.open_run`) and its directory, and merges what it measures into RUN/eval.json.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .latents import DeterministicLatent
from .run import LoadedRun, write_json

if TYPE_CHECKING:
    from .distributed import Context


def read_eval(run_dir: str | Path) -> dict[str, Any]:
    """RUN/eval.json, or {} when there is none or it is damaged (what evaluates next replaces it)."""
    path = Path(run_dir) / "eval.json"
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}


def merge_eval(run_dir: str | Path, values: dict[str, Any], keep: tuple[str, ...] | None = None) -> None:
    """Merge `values` into RUN/eval.json (atomic write); with `keep`, old fields are kept only when their names
    start with one of those prefixes (a re-evaluation drops what it no longer computes)."""
    old = read_eval(run_dir)
    if keep is not None:
        old = {k: v for k, v in old.items() if k.startswith(keep)}
    write_json(Path(run_dir) / "eval.json", old | values)


def describe(run: LoadedRun) -> dict[str, Any]:
    """What an evaluation describes: config, model, estimator, training length, data, code version."""
    from . import __version__
    from .provenance import git_commit

    cfg, history = run.cfg, run.state.get("history", [])
    return {"config_name": cfg.name, "latent": cfg.model.latent, "estimator": cfg.estimator.name,
            "nets": cfg.model.nets, "latent_dim": cfg.model.latent_dim, "seed": cfg.train.seed,
            "epochs_trained": run.state.get("epoch", 0), "steps_trained": sum(r.get("steps", 0) for r in history),
            "train_seconds": round(sum(r.get("seconds", 0.0) for r in history), 1), "data": cfg.data.source,
            "binarize": cfg.data.binarize, "eval_seed": cfg.data.eval_seed, "vaelab_version": __version__,
            "git_commit": git_commit()}


def is_autoencoder(run: LoadedRun) -> bool:
    return isinstance(run.model.latent, DeterministicLatent)


def evaluate_run(run: LoadedRun, run_dir: str | Path, iw_samples: int | None = None, exact: bool = False,
                 progress: bool = False, ctx: Context | None = None, autocast: str | None = None) -> dict[str, Any]:
    """Test ELBO terms and `iw_loglik` (an AE: log p(x) under its fitted mixture) with its Monte Carlo standard
    error `iw_loglik_mc_stderr`, optionally exact log p(x), and what the run is (`describe`), into eval.json.

    In IEEE fp32 (no TF32 matmuls or convolutions on CUDA) unless `autocast` ("bf16"): then the decoder runs under
    bf16 autocast while the encoder, the log-densities and their sums stay fp32; eval.json records it as
    "decoder_autocast". Under torchrun (`ctx` from distributed.setup) a VAE's test images are split across the ranks
    and rank 0 writes the one result; an autoencoder is evaluated by rank 0 alone. Ranks other than 0 return {}."""
    from .distributed import autocast_twin, matmul_precision

    run = dataclasses.replace(run, model=autocast_twin(run.model, autocast, encoder=False))
    torch.manual_seed(run.cfg.train.seed)          # the same importance samples on every call (ranks reseed)
    with matmul_precision(False, run.device):
        metrics = _evaluate_run(run, run_dir, iw_samples, exact, progress, ctx)
    if metrics:                                                   # rank 0 (or the only process)
        metrics = describe(run) | metrics | {"decoder_autocast": autocast}
        merge_eval(run_dir, metrics, keep=("quality_",))            # sample scores stay; stale estimates go
    return metrics


def _evaluate_run(run: LoadedRun, run_dir: str | Path, iw_samples: int | None, exact: bool, progress: bool,
                  ctx: Context | None) -> dict[str, Any]:
    from .evaluate import evaluate_model

    k = run.cfg.eval.iw_samples if iw_samples is None else iw_samples
    if ctx is not None and ctx.distributed and not is_autoencoder(run):
        from .distributed import evaluate_sharded

        return evaluate_sharded(run.model, run.data.x_test, k, run.cfg.eval.batch_size, exact, run.cfg.train.seed,
                                ctx, progress) or {}
    if ctx is not None and not ctx.is_main:
        return {}
    if is_autoencoder(run):
        from .density import evaluate_autoencoder_run
        from .exact import check_enumerable

        if exact:
            check_enumerable(run.model)   # refuses: exact enumeration needs a Bernoulli latent
        return evaluate_autoencoder_run(run, run_dir, k, progress=progress)
    return evaluate_model(run.model, run.data.x_test, k, run.cfg.eval.batch_size, progress, exact)


def sample_grid(run: LoadedRun, run_dir: str | Path, n: int = 100, mode: str = "bernoulli",
                prior: str | None = None, reconstruct: bool = False, seed: int = 0,
                out: str | Path | None = None) -> Path:
    """A PNG grid of prior samples (or of test digits beside their reconstructions) in RUN/fig/ by default."""
    from .density import sampling_prior
    from .plots import save_grid
    from .sampling import reconstruct as reconstruct_images
    from .sampling import sample

    gen = torch.Generator(run.device).manual_seed(seed)
    torch.manual_seed(seed)
    if reconstruct:
        x = run.data.x_test[:n]
        images = torch.stack([x, reconstruct_images(run.model, x, mode, gen)], 1).flatten(0, 1)  # [2n, P] pairs
        title, name = f"test digits (odd columns) and their reconstructions, mode={mode}", "recon"
    else:
        p_z, choice, label = sampling_prior(run, run_dir, prior)
        images = sample(run.model, n, mode, prior=p_z, generator=gen)
        title, name = f"{n} samples, z ~ {label}, mode={mode}", "samples_gmm" if choice == "gmm" else "samples"
    out = Path(out or Path(run_dir) / "fig" / f"{name}_{mode}.png")
    return save_grid(images, run.model.image_shape, out, title, ncol=20 if reconstruct else None)


def quality_run(run: LoadedRun, run_dir: str | Path, n: int = 10000, mode: str = "bernoulli",
                prior: str | None = None, classifier: str | None = None, k: int = 3, seed: int = 0) -> dict[str, Any]:
    """Sample-quality scores of n samples against the test set, merged into eval.json as quality_MODE_PRIOR."""
    from .classifier import load_classifier
    from .density import sampling_prior
    from .quality import check_shape, quality_scores
    from .sampling import sample

    net = load_classifier(classifier, run.device)
    check_shape(net, run.data.x_test, f"test images of {run_dir}")
    p_z, choice, _ = sampling_prior(run, run_dir, prior)
    torch.manual_seed(seed)
    samples = sample(run.model, n, mode, p_z, torch.Generator(run.device).manual_seed(seed))
    scores = {"mode": mode, "prior": choice, "seed": seed, "classifier": classifier or "shipped mnist_cnn"}
    scores |= quality_scores(samples, run.data.x_test, net, k)
    merge_eval(run_dir, {f"quality_{mode}_{choice}": scores})
    return scores
