"""The commands that measure trained runs beyond `evaluate`, and the whole study: fit-density, classifier, quality,
gradvar and reproduce, each an `add_<command>(sub)` beside its `cmd_<command>(args)` (cli/main.py registers them)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vaelab.cli.args import BATCH_MAX, DRAWS_MAX, QUALITY_N_MAX, WARMUP_MAX, add_quiet, check_seed, given
from vaelab.config import names
from vaelab.core.errors import VaelabError

if TYPE_CHECKING:
    import numpy as np

    from vaelab.models.density import GMMDensity


def add_fit_density(sub) -> None:
    f = sub.add_parser("fit-density", help="fit a Gaussian mixture to the training codes -> RUN/density.npz",
                       description="Encode the training set (an AE's code, a VAE's posterior mean; dynamically "
                       "binarized images are drawn once with data.eval_seed), fit scikit-learn's GaussianMixture "
                       "(the study's eq. 13) and store it as plain arrays in RUN/density.npz; with --components auto "
                       "K minimises BIC (curve in RUN/bic.json). Also writes RUN/fig/latent_codes*.png. "
                       "Then `vaelab sample RUN --prior gmm` decodes mixture samples and `vaelab evaluate RUN` "
                       "scores an autoencoder under it.")
    f.add_argument("run")
    f.add_argument("--components", default="20", help="number of mixture components K, or auto (BIC, K <= 50)")
    f.add_argument("--covariance", default="full", choices=("full", "diag", "tied", "spherical"))
    f.add_argument("--seed", type=int, default=0, help="seed of EM's k-means initialisation and of the figures")
    f.add_argument("--no-figures", action="store_true", help="skip the latent-space figures")
    f.add_argument("--device", default="auto")
    add_quiet(f)
    f.set_defaults(func=cmd_fit_density)


def cmd_fit_density(args: argparse.Namespace) -> None:
    from vaelab.core.paths import check_writable_dir
    from vaelab.evaluation.run_eval import fit_run_density
    from vaelab.runs.loaded_run import open_run
    from vaelab.viz.latent_figures import write_latent_figures

    components = parse_components(args.components)
    check_seed("--seed", args.seed)
    run = open_run(args.run, args.device)
    check_writable_dir(args.run, "run directory")
    if components != "auto" and components > len(run.data.x_train):
        raise VaelabError(f"--components {components}: more components than the {len(run.data.x_train)} training "
                          "codes they are fitted to: give fewer, or auto")
    density, codes, curve = fit_run_density(run, args.run, components, args.covariance, args.seed,
                                            progress=not args.quiet)
    print(json_summary(density, codes, curve))
    print(f"wrote {Path(args.run) / 'density.npz'}")
    if not args.no_figures:
        labels = run.data.y_train.cpu().numpy()
        for path in write_latent_figures(args.run, codes, labels, density, args.seed):
            print(f"wrote {path}")


def parse_components(text: str) -> int | str:
    """`--components`: a positive integer, or "auto" (K by BIC over density.AUTO_COMPONENTS)."""
    if text == "auto":
        return text
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1:
        raise VaelabError(f"--components {text!r} is neither a positive integer nor auto: e.g. --components 20")
    return k


def json_summary(density: GMMDensity, codes: np.ndarray, curve: dict[int, float] | None) -> str:
    """A short JSON summary of a fit (the mixture, codes [N, D], the BIC curve or None) for stdout."""
    out = {"n_components": density.n_components, "covariance_type": density.covariance_type,
           "n_codes": len(codes), "dim": density.dim, "converged": density.converged_, "n_iter": density.n_iter_,
           "mean_log_density": float(density.score_samples(codes).mean()), "bic": density.bic(codes)}
    if curve is not None:
        out["bic_curve"] = {str(k): round(v, 2) for k, v in curve.items()}
        if density.n_components == max(curve):
            out["note"] = "BIC is still falling at the largest K tried: the best K may be larger"
    return json.dumps(out, indent=2)


def add_classifier(sub) -> None:
    c = sub.add_parser("classifier", help="train the digit classifier whose features `vaelab quality` uses")
    c.add_argument("action", choices=["train"])
    c.add_argument("--data", default="mnist", help="the labelled data whose runs it will score: mnist | digits | "
                   "fashion-mnist | omniglot | caltech-silhouettes | PATH (the shipped file is --data mnist)")
    c.add_argument("--epochs", type=int, default=6)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--batch-size", type=int, default=128)
    c.add_argument("--device", default="cpu", help="cpu (reproduces the shipped weights) | cuda")
    c.add_argument("--out", help="safetensors path (default DATA_cnn.safetensors)")
    add_quiet(c)
    c.set_defaults(func=cmd_classifier)


def cmd_classifier(args: argparse.Namespace) -> None:
    import torch

    from vaelab.config.limits import check_count
    from vaelab.core.paths import check_writable_dir
    from vaelab.evaluation.classifier import save_classifier, train_classifier
    from vaelab.runtime.hardware import resolve_device

    check_count("--epochs", args.epochs, 1, 10_000)
    check_count("--batch-size", args.batch_size, 1, BATCH_MAX)
    check_seed("--seed", args.seed)
    resolve_device(args.device)
    out = Path(args.out or f"{Path(args.data).stem}_cnn.safetensors")
    if out.suffix != ".safetensors":
        raise VaelabError(f"--out {out}: the classifier is saved as safetensors: give a path ending in .safetensors")
    check_writable_dir(out.parent, "folder of --out")
    model, info = train_classifier(args.data, args.epochs, args.seed, args.batch_size, device=args.device,
                                   quiet=args.quiet)
    info["command"] = (f"OMP_NUM_THREADS={torch.get_num_threads()} vaelab classifier train --data {args.data} "
                       f"--epochs {args.epochs} --seed {args.seed} --batch-size {args.batch_size} "
                       f"--device {args.device} --out {out}")
    save_classifier(model, out, info)
    print(json.dumps(info, indent=2))
    print(f"classifier written to {out}", file=sys.stderr)


def add_quality(sub) -> None:
    q = sub.add_parser("quality", help="FID on classifier features, precision/recall, digit coverage -> eval.json")
    q.add_argument("run")
    q.add_argument("--n", type=int, default=10000, help="samples to draw (the test set has 10,000 images)")
    q.add_argument("--mode", default="bernoulli", help="bernoulli | threshold | probs")
    q.add_argument("--prior", choices=["normal", "gmm"],
                   help="normal: the model's own p(z) (VAE default); gmm: RUN/density.npz from `vaelab fit-density` "
                        "(autoencoder default)")
    q.add_argument("--classifier", help="weights from `vaelab classifier train --data SOURCE` for runs on SOURCE "
                   "(default: the shipped MNIST one, for mnist and mnist-static runs only)")
    q.add_argument("--k", type=int, default=3, help="neighbours of the precision/recall manifolds")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--device", default="auto")
    add_quiet(q)
    q.set_defaults(func=cmd_quality)


def cmd_quality(args: argparse.Namespace) -> None:
    from vaelab.config.limits import check_count
    from vaelab.core.paths import check_writable_dir
    from vaelab.evaluation.run_eval import quality_classifier, quality_run
    from vaelab.runs.checkpoint import read_checkpoint
    from vaelab.runs.loaded_run import open_run

    check_count("--k", args.k, 1, 1000)
    check_count("--n", args.n, args.k + 1, QUALITY_N_MAX, " of samples held in memory")
    check_seed("--seed", args.seed)
    source = read_checkpoint(args.run)[0].data.source
    check_writable_dir(args.run, "run directory")
    quality_classifier(source, args.classifier, args.run)   # the classifier fits the run's data: before data loads
    run = open_run(args.run, args.device)
    scores = quality_run(run, args.run, args.n, args.mode, args.prior, args.classifier, args.k, args.seed,
                         progress=not args.quiet)
    print(json.dumps(scores, indent=2))


def add_gradvar(sub) -> None:
    g = sub.add_parser("gradvar", help="gradient bias and variance of estimators on a fixed batch -> JSON + PNG",
                       description="Draws each estimator's encoder gradient many times on a fixed binarized "
                       "training batch and compares it with the exact gradient of the ELBO (enumeration of all "
                       "2^D codes when D <= 16, else a high-draw RLOO reference).")
    g.add_argument("source", metavar="CONFIG_OR_RUN", help="a YAML config (initial parameters) or a run directory")
    g.add_argument("--estimators", default="sfe,sfe-avg,nvil,rloo,disarm,gumbel",
                   type=given("comma-separated estimator names, e.g. disarm,rloo (see `vaelab list`)"),
                   help="comma-separated names")
    g.add_argument("--draws", type=int, default=1000)
    g.add_argument("--batch", type=int, help="images in the fixed batch (default: the config's batch size)")
    g.add_argument("--warmup", type=int, default=100,
                   help="steps training fresh estimators' baselines on the batch before measuring (model fixed)")
    g.add_argument("--data", type=given("a data source name or a PATH"),
                   help=f"override data.source: {names.DATA_HELP}")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    g.add_argument("--out", type=given("an output folder"),
                   help="output folder (default RUN/gradvar or runs/<config name>/gradvar)")
    g.add_argument("--device", default="auto")
    g.add_argument("--seed", type=int, default=0)
    add_quiet(g)
    g.set_defaults(func=cmd_gradvar)


def cmd_gradvar(args: argparse.Namespace) -> None:
    from vaelab.config.limits import check_count
    from vaelab.core.atomic import write_json
    from vaelab.core.paths import check_writable_dir
    from vaelab.evaluation.gradvar_run import format_table, gradvar
    from vaelab.viz.gradvar_plot import plot_gradvar

    check_count("--draws", args.draws, 2, DRAWS_MAX, " of draws (each one estimator call); 2 measure a variance")
    check_count("--batch", args.batch, 1, BATCH_MAX)
    check_count("--warmup", args.warmup, 0, WARMUP_MAX)
    check_seed("--seed", args.seed)
    if args.out:
        check_writable_dir(args.out, "--out")
    names = [n.strip() for n in args.estimators.split(",") if n.strip()]
    if not names:
        raise VaelabError(f"--estimators {args.estimators!r} names no estimator: give comma-separated names, e.g. "
                          "--estimators disarm,rloo (see `vaelab list`)")
    result, default_out = gradvar(args.source, names, args.draws, args.batch, args.warmup, args.set,
                                  args.device, args.seed, args.data, progress=not args.quiet)
    out = Path(args.out or default_out)
    check_writable_dir(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "gradvar.json", result)
    plot_gradvar(result, out / "gradvar.png")
    print(format_table(result))
    print(f"wrote {out / 'gradvar.json'} and {out / 'gradvar.png'}")


def add_reproduce(sub) -> None:
    r = sub.add_parser("reproduce", help="the whole study: train, evaluate, every figure, report.html")
    r.add_argument("--out", default="reports/study", type=given("an output directory"),
                   help="output directory (default reports/study)")
    r.add_argument("--quick", action="store_true", help="short training and small K: minutes on a CPU")
    r.add_argument("--data", type=given("a data source name or a PATH"),
                   help=f"override every model's data: {names.DATA_HELP}")
    r.add_argument("--epochs", type=int, help="override every model's epochs")
    r.add_argument("--device", default="auto")
    r.add_argument("--force", action="store_true", help="retrain every model")
    r.add_argument("--iw-samples", type=int, help="K for the IW log-likelihood (default: 200 quick, else 5000)")
    r.add_argument("--quality-samples", type=int, default=10000, help="samples scored (quick: at most 2000)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every model")
    add_quiet(r)
    r.set_defaults(func=cmd_reproduce)


def cmd_reproduce(args: argparse.Namespace) -> None:
    from vaelab.config.limits import IW_SAMPLES_MAX, check_count
    from vaelab.core.paths import check_writable_dir
    from vaelab.experiments.reproduce import Settings, reproduce

    check_count("--epochs", args.epochs, 1, 10**9)
    check_count("--iw-samples", args.iw_samples, 0, IW_SAMPLES_MAX, "; 0 skips the IW estimate")
    check_count("--quality-samples", args.quality_samples, 2, QUALITY_N_MAX, " of samples held in memory")
    check_writable_dir(args.out, "--out")
    settings = Settings(Path(args.out), args.quick, args.data, args.epochs, args.device, args.force,
                        args.iw_samples, args.quality_samples, list(args.set), quiet=args.quiet)
    print(f"report written to {reproduce(settings)}")
