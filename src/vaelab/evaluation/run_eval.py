"""Run-level steps shared by the CLI, the Python API and `vaelab reproduce`: evaluate, draw a sample grid, score
sample quality, the prior they sample from, and fit the latent mixture (`vaelab fit-density`).

Each takes an opened run (`run.open_run`) and its directory, and merges what it measures into RUN/eval.json.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.distributions import Distribution

from vaelab.core.atomic import write_json
from vaelab.core.errors import VaelabError
from vaelab.core.progress import stage
from vaelab.runs.best import BEST_DIR
from vaelab.runs.loaded_run import LoadedRun
from vaelab.runs.metrics_log import log_test_metrics, steps_done
from vaelab.runs.run_dir import RunDir, data_identity

if TYPE_CHECKING:
    from vaelab.runtime.distributed import Context


def merge_eval(run_dir: str | Path, values: dict[str, Any], keep: tuple[str, ...] | None = None) -> None:
    """Merge `values` into RUN/eval.json (atomic write); with `keep`, old fields are kept only when their names
    start with one of those prefixes (a re-evaluation drops what it no longer computes). A damaged eval.json
    (`RunDir.eval`) counts as none: this write replaces it."""
    old = RunDir(run_dir).eval()
    if keep is not None:
        old = {k: v for k, v in old.items() if k.startswith(keep)}
    write_json(Path(run_dir) / "eval.json", old | values)


def describe(run: LoadedRun) -> dict[str, Any]:
    """What an evaluation describes: config, model, estimator, training length, data (its sha256 for a file or a
    folder, `run_dir.data_identity`: None for a named source), code version."""
    from vaelab.core.provenance import __version__, git_commit

    cfg, history = run.cfg, run.state.get("history", [])
    steps = steps_done(history, run.state.get("partial"))   # a checkpoint written inside an epoch: its steps too
    return {"config_name": cfg.name, "latent": cfg.model.latent, "estimator": cfg.estimator.name,
            "nets": cfg.model.nets, "latent_dim": cfg.model.latent_dim, "seed": cfg.train.seed,
            "epochs_trained": run.state.get("epoch", 0), "steps_trained": steps,
            "train_seconds": round(sum(r.get("seconds", 0.0) for r in history), 1), "data": cfg.data.source,
            "data_sha256": data_identity(cfg.data.source)["data_sha256"] or None,
            "binarize": cfg.data.binarize, "eval_seed": cfg.data.eval_seed, "vaelab_version": __version__,
            "git_commit": git_commit()}


def evaluate_run(run: LoadedRun, run_dir: str | Path, iw_samples: int | None = None, exact: bool = False,
                 progress: bool = False, ctx: Context | None = None, autocast: str | None = None,
                 best: bool = False) -> dict[str, Any]:
    """Test ELBO terms and `iw_loglik` (an AE: log p(x) under its fitted mixture) with its Monte Carlo standard
    error `iw_loglik_mc_stderr`, optionally exact log p(x), and what the run is (`describe`), into eval.json.

    In IEEE fp32 (no TF32 matmuls or convolutions on CUDA) unless `autocast` ("bf16"): then the decoder runs under
    bf16 autocast while the encoder, the log-densities and their sums stay fp32; eval.json records it as
    "decoder_autocast". Under torchrun (`ctx` from distributed.setup) a VAE's test images are split across the ranks
    and rank 0 writes the one result; an autoencoder is evaluated by rank 0 alone. Ranks other than 0 return {}.

    The numbers also go to TensorBoard (RUN/tb: test/elbo, test/iw_loglik, ... at the steps the run trained; the
    HPARAMS session's eval.iw_samples becomes the K used). `best`: `run` is RUN/best (`best.best_dir`, train.keep_best)
    and its numbers go to RUN/best/eval.json and TensorBoard's test_best/*."""
    from vaelab.runtime.hardware import autocast_twin, matmul_precision

    run = dataclasses.replace(run, model=autocast_twin(run.model, autocast, encoder=False))
    torch.manual_seed(run.cfg.train.seed)          # the same importance samples on every call (ranks reseed)
    eval_dir = Path(run_dir) / BEST_DIR if best else Path(run_dir)
    with matmul_precision(False, run.device):
        metrics = _evaluate_run(run, eval_dir, iw_samples, exact, progress, ctx)
    if metrics:                                                   # rank 0 (or the only process)
        _check_finite(metrics, eval_dir)
        metrics = describe(run) | metrics | {"decoder_autocast": autocast} | ({"checkpoint": "best"} if best else {})
        merge_eval(eval_dir, metrics, keep=("quality_",))           # sample scores stay; stale estimates go
        log_test_metrics(Path(run_dir), run.cfg.to_dict(), metrics, metrics["steps_trained"],
                         "test_best" if best else "test")
    return metrics


def _check_finite(metrics: dict[str, Any], run_dir: str | Path) -> None:
    """Refuse (nothing written) a model whose test bound is NaN or infinite: finite weights so large that they
    overflow, the mark of a diverged run."""
    for key in ("elbo", "rec", "kl", "iw_loglik"):
        value = metrics.get(key)
        if isinstance(value, float) and not math.isfinite(value):
            raise VaelabError(f"{run_dir}: the model's test {key} is {value} (its weights overflow: the run "
                              "diverged); nothing written: retrain it with a lower train.lr or a train.grad_clip")


def _evaluate_run(run: LoadedRun, run_dir: str | Path, iw_samples: int | None, exact: bool, progress: bool,
                  ctx: Context | None) -> dict[str, Any]:
    from vaelab.evaluation.bounds import evaluate_model, evaluate_sharded

    k = run.cfg.eval.iw_samples if iw_samples is None else iw_samples
    if exact:
        from vaelab.evaluation.exact import check_enumerable, exact_cost

        dim = check_enumerable(run.model)   # refused before any work (exact enumeration needs a Bernoulli latent)
        stage(exact_cost(dim, len(run.data.x_test)), progress and (ctx is None or ctx.is_main))
    if ctx is not None and ctx.distributed and not run.model.is_autoencoder:
        return evaluate_sharded(run.model, run.data.x_test, k, run.cfg.eval.batch_size, exact, run.cfg.train.seed,
                                ctx, progress) or {}
    if ctx is not None and not ctx.is_main:
        return {}
    if run.model.is_autoencoder:
        return evaluate_autoencoder_run(run, run_dir, k, progress=progress)
    return evaluate_model(run.model, run.data.x_test, k, run.cfg.eval.batch_size, progress, exact)


def sampling_prior(run: LoadedRun, run_dir: str | Path, choice: str | None) -> tuple[Distribution, str, str]:
    """(p(z), choice, label) for `vaelab sample --prior`: normal = the model's own prior (default for VAEs),
    gmm = the fitted mixture (default for autoencoders, which have no prior of their own)."""
    from vaelab.models.density import load_run_density

    is_ae = run.model.is_autoencoder
    choice = choice or ("gmm" if is_ae else "normal")
    if choice == "normal":
        if is_ae:
            raise VaelabError("an autoencoder has no prior of its own: use --prior gmm after "
                              f"`vaelab fit-density {run_dir}`")
        return run.model.prior(), choice, "prior p(z)"
    if choice != "gmm":
        raise VaelabError(f"unknown prior {choice!r}: choose normal or gmm")
    density = load_run_density(run_dir, run.model.latent.dim)
    return density.to_torch(run.device), choice, f"GMM (K={density.n_components}, {density.covariance_type})"


def evaluate_autoencoder_run(run: LoadedRun, run_dir: str | Path, iw_samples: int,
                             progress: bool = False, seed: int = 0) -> dict:
    """`vaelab evaluate` for an autoencoder: test `rec` and `iw_loglik` = log p(x) under the fitted mixture, by
    importance sampling from `ae_likelihood.laplace_proposal`, its inflation chosen on validation images (never
    test ones). Like the VAEs' `iw_loglik`, a stochastic lower bound on log p(x) in expectation."""
    from vaelab.evaluation.ae_likelihood import (
        DEFENSIVE_ALPHA,
        PROPOSAL_FIT_IMAGES,
        WithPrior,
        evaluate_autoencoder,
        fit_proposal,
    )
    from vaelab.models.density import load_run_density

    if iw_samples <= 0:
        return evaluate_autoencoder(run.model, run.data.x_test, None, 0, run.cfg.eval.batch_size)
    density = load_run_density(run_dir, run.model.latent.dim)
    model = WithPrior(run.model, density.to_torch(run.device))
    stage(f"proposal: choosing its widening on {len(run.data.x_valid[:PROPOSAL_FIT_IMAGES])} validation images",
          progress)
    proposal, inflation, _ = fit_proposal(model, run.data.x_valid[:PROPOSAL_FIT_IMAGES], seed=seed)
    torch.manual_seed(seed)
    metrics = evaluate_autoencoder(model, run.data.x_test, proposal, iw_samples, run.cfg.eval.batch_size, progress)
    return metrics | {"prior": "gmm", "gmm_components": density.n_components,
                      "gmm_covariance": density.covariance_type, "proposal": "laplace+gmm",
                      "proposal_alpha": DEFENSIVE_ALPHA, "proposal_inflation": inflation}


def sample_grid(run: LoadedRun, run_dir: str | Path, n: int = 100, mode: str = "bernoulli",
                prior: str | None = None, reconstruct: bool = False, seed: int = 0,
                out: str | Path | None = None) -> Path:
    """A PNG grid of prior samples (or of test digits beside their reconstructions) in RUN/fig/ by default."""
    from vaelab.models.sampling import reconstruct as reconstruct_images
    from vaelab.models.sampling import sample
    from vaelab.viz.plots import save_grid

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
                prior: str | None = None, classifier: str | None = None, k: int = 3, seed: int = 0,
                progress: bool = False) -> dict[str, Any]:
    """Sample-quality scores of n samples against the test set, merged into eval.json as quality_MODE_PRIOR.
    `classifier`: a file of `vaelab classifier train` (None: the shipped MNIST one); refused unless it was trained
    on the run's data (`quality.check_classifier_data`). `progress`: stage lines or bars (core/progress.py)."""
    from vaelab.evaluation.quality import check_shape, quality_scores
    from vaelab.models.sampling import sample

    net = quality_classifier(run.cfg.data.source, classifier, run_dir, run.device)
    check_shape(net, run.data.x_test, f"test images of {run_dir}")
    p_z, choice, _ = sampling_prior(run, run_dir, prior)
    torch.manual_seed(seed)
    samples = sample(run.model, n, mode, p_z, torch.Generator(run.device).manual_seed(seed))
    scores = {"mode": mode, "prior": choice, "seed": seed, "classifier": classifier or "shipped mnist_cnn"}
    scores |= quality_scores(samples, run.data.x_test, net, k, progress=progress)
    merge_eval(run_dir, {f"quality_{mode}_{choice}": scores})
    return scores


def quality_classifier(source: str, classifier: str | Path | None = None, run_dir: str | Path = "RUN",
                       device: torch.device | str = "cpu"):
    """The classifier that scores a run trained on `source` (the shipped one when `classifier` is None); a
    VaelabError naming both data sets and the fix when it was trained on other data."""
    from vaelab.evaluation.classifier import load_classifier
    from vaelab.evaluation.quality import check_classifier_data

    net = load_classifier(classifier, device)
    check_classifier_data(net, source, None if classifier is None else str(classifier), str(run_dir))
    return net


def fit_run_density(run: LoadedRun, run_dir: str | Path, components: int | str = 20, covariance_type: str = "full",
                    seed: int = 0, progress: bool = False):
    """Encode the training set, fit the mixture (K by BIC over density.AUTO_COMPONENTS when components == "auto"),
    write RUN/density.npz (and RUN/bic.json for auto). Returns (GMMDensity, codes [N, D], BIC curve or None)."""
    from vaelab.models import density as dens

    codes = dens.encode(run.model, run.data.fixed_train_images(run.cfg.data.eval_seed))   # reproducible codes
    curve = None
    if components == "auto":
        components, curve = dens.select_components(codes, dens.AUTO_COMPONENTS, covariance_type, seed, progress)
        write_json(Path(run_dir) / dens.BIC_FILE, {"covariance_type": covariance_type, "best_k": components,
                                                   "bic": {str(k): v for k, v in curve.items()}})
    stage(f"fit-density: EM for {components} {covariance_type}-covariance components on {len(codes)} codes", progress)
    density = dens.GMMDensity(int(components), covariance_type, seed).fit(codes)
    density.save(Path(run_dir) / dens.DENSITY_FILE)
    return density, codes, curve
