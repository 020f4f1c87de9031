"""Command line: thin argparse over the library. Every VaelabError becomes one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from .checks import IW_SAMPLES_MAX, SEED_MAX, check_count, check_output_file, check_writable_dir
from .config import load_config
from .errors import Stopped, VaelabError

# Documented limits of the command-line counts (README, "Bad input"): above them a command would run for days or
# hold more than a large machine's memory, so it is refused at once.
SAMPLE_N_MAX = 10_000          # images in one sample grid
QUALITY_N_MAX = 100_000        # samples scored by `quality` (held in memory with their classifier features)
DRAWS_MAX = 10_000             # gradvar draws (kept in memory: draws x encoder parameters x 4 bytes)
BATCH_MAX = 65_536             # gradvar's fixed batch
WARMUP_MAX = 1_000_000         # gradvar warm-up steps
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".pdf", ".svg")


class Parser(argparse.ArgumentParser):
    """argparse with vaelab's error format: one line on stderr (no usage block), exit code 2."""

    def error(self, message: str) -> None:
        print(f"vaelab: error: {message}: see `{self.prog} --help`", file=sys.stderr)
        raise SystemExit(2)


def _seed(flag: str, value: int | None) -> None:
    check_count(flag, value, 0, SEED_MAX)


def cmd_train(args: argparse.Namespace) -> None:
    from .distributed import is_main_process
    from .train import train

    overrides = list(args.set)
    overrides += [f"data.source={args.data}"] if args.data else []
    overrides += [f"train.epochs={args.epochs}"] if args.epochs is not None else []
    overrides += [f"train.seed={args.seed}"] if args.seed is not None else []
    overrides += [f"train.device={args.device}"] if args.device else []
    overrides += [f"estimator.name={args.estimator}"] if args.estimator else []
    overrides += ["train.compile=true", f"train.compile_mode={args.compile}"] if args.compile else []
    if args.resume:
        extra = [o for o in overrides if not o.startswith("train.epochs=")]
        if args.config or extra:
            raise VaelabError("--resume takes the run's own config (only --epochs may change, to extend it): "
                              "drop CONFIG and the overrides")
        train(None, args.resume, resume=True, quiet=args.quiet, epochs=args.epochs)
        return
    if not args.config:
        raise VaelabError("give a CONFIG file (e.g. configs/gaussian_vae.yaml) or --resume RUN_DIR")
    cfg = load_config(args.config, overrides)
    out = Path(args.out or f"runs/{cfg.name}")
    train(cfg, out, quiet=args.quiet)
    if is_main_process():   # under torchrun only rank 0 speaks
        print(f"run written to {out}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .distributed import barrier, setup, teardown
    from .pipeline import evaluate_run
    from .run import open_run, resolve_device

    check_count("--iw-samples", args.iw_samples, 0, IW_SAMPLES_MAX, "; 0 skips the IW estimate")
    ctx = setup(resolve_device(args.device))   # under torchrun: the test images are split across the ranks
    try:
        run = open_run(args.run, str(ctx.device))
        if ctx.is_main:
            check_writable_dir(args.run, "run directory")
        metrics = evaluate_run(run, args.run, args.iw_samples, exact=args.exact, progress=not args.quiet, ctx=ctx,
                               autocast=args.autocast)
        barrier(ctx)   # ranks leave together (see train)
    finally:
        teardown(ctx)
    if ctx.is_main:
        print(json.dumps(metrics, indent=2))

def cmd_sample(args: argparse.Namespace) -> None:
    from .pipeline import sample_grid
    from .run import open_run

    check_count("--n", args.n, 1, SAMPLE_N_MAX, " of one grid")
    _seed("--seed", args.seed)
    run = open_run(args.run, args.device)
    if args.out:
        check_output_file(args.out, "--out", IMAGE_EXTENSIONS)
    else:
        check_writable_dir(Path(args.run) / "fig", "run directory")
    out = sample_grid(run, args.run, args.n, args.mode, args.prior, args.reconstruct, args.seed, args.out)
    print(f"wrote {out}")

def cmd_classifier(args: argparse.Namespace) -> None:
    from .classifier import save_classifier, train_classifier
    from .run import resolve_device

    check_count("--epochs", args.epochs, 1, 10_000)
    check_count("--batch-size", args.batch_size, 1, BATCH_MAX)
    _seed("--seed", args.seed)
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


def cmd_quality(args: argparse.Namespace) -> None:
    from .pipeline import quality_classifier, quality_run
    from .run import open_run, read_checkpoint

    check_count("--k", args.k, 1, 1000)
    check_count("--n", args.n, args.k + 1, QUALITY_N_MAX, " of samples held in memory")
    _seed("--seed", args.seed)
    source = read_checkpoint(args.run)[0].data.source
    check_writable_dir(args.run, "run directory")
    quality_classifier(source, args.classifier, args.run)   # the classifier fits the run's data: before data loads
    run = open_run(args.run, args.device)
    scores = quality_run(run, args.run, args.n, args.mode, args.prior, args.classifier, args.k, args.seed)
    print(json.dumps(scores, indent=2))

def cmd_fit_density(args: argparse.Namespace) -> None:
    from .density import fit_run_density, json_summary, parse_components
    from .figures_latent import write_latent_figures
    from .run import open_run

    components = parse_components(args.components)
    _seed("--seed", args.seed)
    run = open_run(args.run, args.device)
    check_writable_dir(args.run, "run directory")
    if components != "auto" and components > len(run.data.x_train):
        raise VaelabError(f"--components {components}: more components than the {len(run.data.x_train)} training "
                          "codes they are fitted to: give fewer, or auto")
    density, codes, curve = fit_run_density(run, args.run, components, args.covariance, args.seed)
    print(json_summary(density, codes, curve))
    print(f"wrote {Path(args.run) / 'density.npz'}")
    if not args.no_figures:
        labels = run.data.y_train.cpu().numpy()
        for path in write_latent_figures(args.run, codes, labels, density, args.seed):
            print(f"wrote {path}")


def cmd_reproduce(args: argparse.Namespace) -> None:
    from .reproduce import Settings, reproduce

    check_count("--epochs", args.epochs, 1, 10**9)
    check_count("--iw-samples", args.iw_samples, 0, IW_SAMPLES_MAX, "; 0 skips the IW estimate")
    check_count("--quality-samples", args.quality_samples, 2, QUALITY_N_MAX, " of samples held in memory")
    check_writable_dir(args.out, "--out")
    settings = Settings(Path(args.out), args.quick, args.data, args.epochs, args.device, args.force,
                        args.iw_samples, args.quality_samples, list(args.set))
    print(f"report written to {reproduce(settings)}")


def parser() -> argparse.ArgumentParser:
    from . import __version__

    p = Parser(prog="vaelab", description="Train, evaluate and compare VAEs on binary images.")
    p.add_argument("--version", action="version", version=f"vaelab {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("config", nargs="?", help="YAML preset, e.g. configs/gaussian_vae.yaml")
    t.add_argument("--data", help="mnist | digits | PATH (.npz or MNIST IDX folder)")
    t.add_argument("--epochs", type=int, help="train.epochs; with --resume, extend a run to this many epochs")
    t.add_argument("--seed", type=int, help="train.seed: the run's initialisation, data order and sampling noise")
    t.add_argument("--estimator", help="gradient estimator name (see `vaelab list`)")
    t.add_argument("--device", help="auto | cpu | cuda")
    t.add_argument("--out", help="run directory (default runs/<config name>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=1e-3")
    t.add_argument("--compile", nargs="?", const="default", metavar="MODE",
                   help="torch.compile the training step (sets train.compile and train.compile_mode: default, or "
                   "reduce-overhead for CUDA graphs on a GPU; needs a C++ compiler on the CPU)")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="test ELBO, KL, reconstruction and IW log-likelihood -> eval.json",
                       description="iw_loglik is the importance-weighted estimate of log p(x), a stochastic lower "
                       "bound in expectation for every model. An autoencoder is scored under the mixture of "
                       "`vaelab fit-density` (p(z) = GMM) by importance sampling from a defensive proposal "
                       "(a Laplace Gaussian fitted around each input's code, widened by a factor chosen on "
                       "validation images, mixed with the GMM); it has no ELBO or KL (null), and "
                       "rec = log p(x|z(x)) at its code.")
    e.add_argument("run")
    e.add_argument("--iw-samples", type=int, help="K importance samples (default: the config's, 5000)")
    e.add_argument("--exact", action="store_true",
                   help="also exact log p(x) by enumerating all 2^D codes (Bernoulli latents, D <= 20; slow past ~12)")
    e.add_argument("--autocast", choices=["bf16"], default=None,
                   help="run the decoder under bf16 autocast (log-densities and sums stay fp32): ~1.5x faster on "
                   "CPUs with AVX512-BF16/AMX and on GPUs; changes log p(x) by ~1e-3 nats (benchmarks/RESULTS.md)")
    e.add_argument("--device", default="auto")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("sample", help="decode prior samples (or reconstructions) to a PNG grid")
    s.add_argument("run")
    s.add_argument("--n", type=int, default=100)
    s.add_argument("--mode", default="bernoulli", help="bernoulli | threshold | probs")
    s.add_argument("--reconstruct", action="store_true", help="reconstruct test images instead of sampling")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", help="PNG path (default RUN/fig/samples_MODE.png)")
    s.add_argument("--device", default="auto")
    s.add_argument("--prior", choices=("normal", "gmm"),
                   help="normal: the model's own p(z) (default for VAEs); gmm: the mixture of `vaelab fit-density` "
                        "(default for autoencoders)")
    s.set_defaults(func=cmd_sample)

    f = sub.add_parser("fit-density", help="fit a Gaussian mixture to the training codes -> RUN/density.npz",
                       description="Encode the training set (an AE's code, a VAE's posterior mean; dynamically "
                       "binarized images are drawn once with data.eval_seed), fit scikit-learn's GaussianMixture "
                       "(the seed's eq. 13) and store it as plain arrays in RUN/density.npz; with --components auto "
                       "K minimises BIC (curve in RUN/bic.json). Also writes RUN/fig/latent_codes*.png. "
                       "Then `vaelab sample RUN --prior gmm` decodes mixture samples and `vaelab evaluate RUN` "
                       "scores an autoencoder under it.")
    f.add_argument("run")
    f.add_argument("--components", default="20", help="number of mixture components K, or auto (BIC, K <= 50)")
    f.add_argument("--covariance", default="full", choices=("full", "diag", "tied", "spherical"))
    f.add_argument("--seed", type=int, default=0, help="seed of EM's k-means initialisation and of the figures")
    f.add_argument("--no-figures", action="store_true", help="skip the latent-space figures")
    f.add_argument("--device", default="auto")
    f.set_defaults(func=cmd_fit_density)

    c = sub.add_parser("classifier", help="train the digit classifier whose features `vaelab quality` uses")
    c.add_argument("action", choices=["train"])
    c.add_argument("--data", default="mnist", help="the labelled data whose runs it will score: mnist | digits | "
                   "fashion-mnist | omniglot | caltech-silhouettes | PATH (the shipped file is --data mnist)")
    c.add_argument("--epochs", type=int, default=6)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--batch-size", type=int, default=128)
    c.add_argument("--device", default="cpu", help="cpu (reproduces the shipped weights) | cuda")
    c.add_argument("--out", help="safetensors path (default DATA_cnn.safetensors)")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_classifier)

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
    q.set_defaults(func=cmd_quality)

    g = sub.add_parser("gradvar", help="gradient bias and variance of estimators on a fixed batch -> JSON + PNG",
                       description="Draws each estimator's encoder gradient many times on a fixed binarized "
                       "training batch and compares it with the exact gradient of the ELBO (enumeration of all "
                       "2^D codes when D <= 16, else a high-draw RLOO reference).")
    g.add_argument("source", metavar="CONFIG_OR_RUN", help="a YAML config (initial parameters) or a run directory")
    g.add_argument("--estimators", default="sfe,sfe-avg,nvil,rloo,disarm,gumbel", help="comma-separated names")
    g.add_argument("--draws", type=int, default=1000)
    g.add_argument("--batch", type=int, help="images in the fixed batch (default: the config's batch size)")
    g.add_argument("--warmup", type=int, default=100,
                   help="steps training fresh estimators' baselines on the batch before measuring (model fixed)")
    g.add_argument("--data", help="override data.source: mnist | digits | PATH")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    g.add_argument("--out", help="output folder (default RUN/gradvar or runs/<config name>/gradvar)")
    g.add_argument("--device", default="auto")
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=cmd_gradvar)

    r = sub.add_parser("reproduce", help="the whole study: train, evaluate, every figure, report.html")
    r.add_argument("--out", default="reports/study", help="output directory (default reports/study)")
    r.add_argument("--quick", action="store_true", help="short training and small K: minutes on a CPU")
    r.add_argument("--data", help="override every model's data: mnist | digits | PATH")
    r.add_argument("--epochs", type=int, help="override every model's epochs")
    r.add_argument("--device", default="auto")
    r.add_argument("--force", action="store_true", help="retrain every model")
    r.add_argument("--iw-samples", type=int, help="K for the IW log-likelihood (default: 200 quick, else 5000)")
    r.add_argument("--quality-samples", type=int, default=10000, help="samples scored (quick: at most 2000)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every model")
    r.set_defaults(func=cmd_reproduce)

    lst = sub.add_parser("list", help="list the registered latent families, estimators and networks")
    lst.set_defaults(func=cmd_list)
    __import__("vaelab.sweep").sweep.add_parsers(sub)   # `vaelab sweep` and `vaelab compare` (sweep.py, compare.py)
    return p


def cmd_gradvar(args: argparse.Namespace) -> None:
    from .gradcheck import format_table, gradvar, plot_gradvar
    from .run import write_json

    check_count("--draws", args.draws, 2, DRAWS_MAX, " of draws held in memory; 2 measure a variance")
    check_count("--batch", args.batch, 1, BATCH_MAX)
    check_count("--warmup", args.warmup, 0, WARMUP_MAX)
    _seed("--seed", args.seed)
    if args.out:
        check_writable_dir(args.out, "--out")
    names = [n.strip() for n in args.estimators.split(",") if n.strip()]
    result, default_out = gradvar(args.source, names, args.draws, args.batch, args.warmup, args.set,
                                  args.device, args.seed, args.data)
    out = Path(args.out or default_out)
    check_writable_dir(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "gradvar.json", result)
    plot_gradvar(result, out / "gradvar.png")
    print(format_table(result))
    print(f"wrote {out / 'gradvar.json'} and {out / 'gradvar.png'}")


def _summary(obj, width: int = 100) -> str:
    """A registered class's docstring, first paragraph, cut to `width` characters at a word boundary."""
    text = " ".join((obj.__doc__ or "").split("\n\n")[0].split())
    return text if len(text) <= width else text[:width].rsplit(" ", 1)[0] + " ..."


def cmd_list(args: argparse.Namespace) -> None:
    from .config import presets
    from .estimators import ESTIMATORS
    from .latents import LATENTS
    from .nets import NETS

    print("latent families (model.latent):")
    for name in LATENTS:
        print(f"  {name:16s} {_summary(LATENTS.get(name))}")
    print("estimators (estimator.name), and the latent families each fits:")
    for name in ESTIMATORS:
        cls = ESTIMATORS.get(name)
        fits = [lat for lat in LATENTS if cls.needs <= LATENTS.get(lat).offers()]
        print(f"  {name:16s} {_summary(cls)}\n  {'':16s} fits: {', '.join(fits) or 'none'}")
    print(f"networks (model.nets): {', '.join(NETS)}")
    print(f"presets (vaelab train NAME): {', '.join(presets())}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except VaelabError as err:
        print(f"vaelab: error: {err}", file=sys.stderr)
        return 2
    except Stopped as err:
        print(f"vaelab: {err}", file=sys.stderr)
        return 128 + err.signum
    except BrokenPipeError:      # `vaelab list | head`: the reader left; stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:       # the file system refused (disk full, permissions) where no check caught it first
        where = f" {err.filename}" if err.filename else ""
        print(f"vaelab: error: cannot access{where} ({err.strerror or err}): free disk space, fix the "
              "permissions or choose another path", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vaelab: interrupted; `vaelab train --resume RUN_DIR` continues a training run", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
