"""Command line: thin argparse over the library. Every VaelabError becomes one line on stderr and exit code 2;
SIGTERM or SIGHUP outside training (`StopGuard`, from main's first line) one line and exit code 128 + signum.

Each command is an `add_<command>(sub)` that declares its arguments beside the `cmd_<command>(args)` that runs it:
train, evaluate, sample, bundle, unbundle and list here; fit-density, quality, classifier, gradvar and reproduce
in cli/study.py; sweep, compare and stack in experiments/sweep.py, cli/compare.py and
experiments/sweep_stack.py (`add_orchestration`). Shared pieces (the parser class, the limits of the counts) are
in cli/args.py.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from vaelab.cli import study as cli_study
from vaelab.cli.args import IMAGE_EXTENSIONS, SAMPLE_N_MAX, Parser, add_quiet, check_seed, given
from vaelab.config import names
from vaelab.core.errors import Stopped, VaelabError

if TYPE_CHECKING:
    from vaelab.config.schema import Config

# `vaelab sweep`, `compare` and `stack` are declared in the experiments modules (add_orchestration): `parser()` loads
# them only when one of them is the command, and else these one-line stand-ins for `vaelab --help`
# (tests/test_startup.py checks that they say what the real parsers say).
ORCHESTRATION_HELP = {
    "sweep": "train and evaluate a grid of configs x seeds, resumably",
    "compare": "one table of settings: mean ± s.e. across seeds, paired differences",
    "stack": "train one config for many seeds at once, as one stacked model",
}


def add_train(sub) -> None:
    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("config", nargs="?", help="YAML preset, e.g. configs/gaussian_vae.yaml")
    t.add_argument("--data", type=given("a data source name or a PATH"), help=names.DATA_HELP)
    t.add_argument("--epochs", type=int, help="train.epochs; with --resume, extend a run to this many epochs")
    t.add_argument("--seed", type=int, help="train.seed: the run's initialisation, data order and sampling noise")
    t.add_argument("--estimator", type=given("an estimator name (see `vaelab list`)"),
                   help="gradient estimator name (see `vaelab list`)")
    t.add_argument("--device", type=given("auto, cpu, cuda or cuda:N"), help="auto | cpu | cuda")
    t.add_argument("--out", type=given("a run directory"), help="run directory (default runs/<config name>, plus "
                   "what --estimator, --data and --seed change, e.g. runs/bernoulli_vae-disarm-digits)")
    t.add_argument("--resume", metavar="RUN_DIR", type=given("the run directory to continue"),
                   help="continue an interrupted run")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=1e-3")
    t.add_argument("--compile", nargs="?", const="default", metavar="MODE",
                   help="torch.compile the training step (sets train.compile and train.compile_mode: default, or "
                   "reduce-overhead for CUDA graphs on a GPU; needs a C++ compiler on the CPU)")
    add_quiet(t)
    t.set_defaults(func=cmd_train)


def absolute_data_path(data: str) -> str:
    """A data file or folder given by a relative path, as an absolute one (a run then scores the same file from any
    directory); a source name (no "/" or ".") or a missing path is kept as typed."""
    path = Path(data).expanduser()
    return str(path.resolve()) if ("/" in data or "." in data) and path.exists() else data


def train_overrides(args: argparse.Namespace) -> list[str]:
    """`vaelab train`'s arguments as config overrides: the `--set` ones, then --data, --epochs, --seed, --device,
    --estimator and --compile."""
    overrides = list(args.set)
    overrides += [f"data.source={absolute_data_path(args.data)}"] if args.data else []
    overrides += [f"train.epochs={args.epochs}"] if args.epochs is not None else []
    overrides += [f"train.seed={args.seed}"] if args.seed is not None else []
    overrides += [f"train.device={args.device}"] if args.device else []
    overrides += [f"estimator.name={args.estimator}"] if args.estimator else []
    return overrides + (["train.compile=true", f"train.compile_mode={args.compile}"] if args.compile else [])


def train_config(args: argparse.Namespace) -> Config:
    """The config `vaelab train CONFIG ...` trains (benchmarks/published_runs.py's jobs are checked through this)."""
    from vaelab.config.schema import load_config

    cfg = load_config(args.config, train_overrides(args), named=True)   # named by what the overrides change
    cfg.plugins += [m for m in getattr(args, "imports", []) if m not in cfg.plugins]   # --import: the run needs it
    return cfg


def cmd_train(args: argparse.Namespace) -> None:
    from vaelab.runtime.distributed import is_main_process
    from vaelab.training.trainer import train

    if args.resume:
        extra = [o for o in train_overrides(args) if not o.startswith("train.epochs=")]
        if args.config or extra:
            raise VaelabError("--resume takes the run's own config (only --epochs may change, to extend it): "
                              "drop CONFIG and the overrides")
        train(None, args.resume, resume=True, quiet=args.quiet, epochs=args.epochs)
        return
    if not args.config:
        raise VaelabError("give a CONFIG file (e.g. configs/gaussian_vae.yaml) or --resume RUN_DIR")
    cfg = train_config(args)
    out = Path(args.out or f"runs/{cfg.name}")
    train(cfg, out, quiet=args.quiet)
    if is_main_process():   # under torchrun only rank 0 speaks
        print(f"run written to {out}")


def add_evaluate(sub) -> None:
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
                   help="also exact log p(x) by enumerating all 2^D codes (Bernoulli latents, D <= 20; slow past ~12): "
                   "states its cost (2^D x test images decoder rows) first")
    e.add_argument("--yes", action="store_true", help="run --exact above 2^16 codes (minutes to hours)")
    e.add_argument("--best", action="store_true", help="score RUN/best/, the epoch of the best validation ELBO "
                   "(runs trained with train.keep_best: valid_elbo), into RUN/best/eval.json")
    e.add_argument("--autocast", choices=["bf16"], default=None,
                   help="run the decoder under bf16 autocast (log-densities and sums stay fp32): ~1.5x faster on "
                   "CPUs with AVX512-BF16/AMX and on GPUs; changes log p(x) by ~1e-3 nats (benchmarks/RESULTS.md)")
    e.add_argument("--device", default="auto")
    add_quiet(e)
    e.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from vaelab.config.limits import IW_SAMPLES_MAX, check_count
    from vaelab.core.paths import check_writable_dir
    from vaelab.evaluation.run_eval import evaluate_run
    from vaelab.runs.best import best_dir
    from vaelab.runs.loaded_run import open_run
    from vaelab.runtime.distributed import barrier, setup, teardown
    from vaelab.runtime.hardware import resolve_device

    check_count("--iw-samples", args.iw_samples, 0, IW_SAMPLES_MAX, "; 0 skips the IW estimate")
    ctx = setup(resolve_device(args.device))   # under torchrun: the test images are split across the ranks
    try:
        run = open_run(best_dir(args.run) if args.best else args.run, str(ctx.device))
        if args.exact:
            from vaelab.evaluation.exact import check_exact_confirmed

            check_exact_confirmed(run.model, len(run.data.x_test), args.yes)   # cost over 2^16 codes: --yes
        if ctx.is_main:
            check_writable_dir(args.run, "run directory")
        metrics = evaluate_run(run, args.run, args.iw_samples, exact=args.exact, progress=not args.quiet, ctx=ctx,
                               autocast=args.autocast, best=args.best)
        barrier(ctx)   # ranks leave together (see train)
    finally:
        teardown(ctx)
    if ctx.is_main:
        print(json.dumps(metrics, indent=2))


def add_sample(sub) -> None:
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


def cmd_sample(args: argparse.Namespace) -> None:
    from vaelab.config.limits import check_count
    from vaelab.core.paths import check_output_file, check_writable_dir
    from vaelab.evaluation.run_eval import sample_grid
    from vaelab.runs.loaded_run import open_run

    check_count("--n", args.n, 1, SAMPLE_N_MAX, " of one grid")
    check_seed("--seed", args.seed)
    run = open_run(args.run, args.device)
    if args.out:
        check_output_file(args.out, "--out", IMAGE_EXTENSIONS)
    else:
        check_writable_dir(Path(args.run) / "fig", "run directory")
    out = sample_grid(run, args.run, args.n, args.mode, args.prior, args.reconstruct, args.seed, args.out)
    print(f"wrote {out}")


def add_bundle(sub) -> None:
    b = sub.add_parser("bundle", help="write a run's resumable state as one .safetensors file",
                       description="Weights, optimizer, RNG states, metrics.jsonl and config of RUN's last checkpoint "
                       "in one file (no TensorBoard files): `vaelab unbundle FILE --out DIR` on any machine, then "
                       "`vaelab train --resume DIR` continues the run exactly (bit for bit on the CPU). Safe to "
                       "run while RUN trains.")
    b.add_argument("run", metavar="RUN_DIR")
    b.add_argument("--out", required=True, metavar="FILE", help="the bundle to write, e.g. run.safetensors")
    b.set_defaults(func=cmd_bundle)


def cmd_bundle(args: argparse.Namespace) -> None:
    from vaelab.runs.bundle import write_bundle

    out = write_bundle(args.run, args.out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): `vaelab unbundle {out} --out RUN_DIR`, then "
          "`vaelab train --resume RUN_DIR` continues the run")


def add_unbundle(sub) -> None:
    u = sub.add_parser("unbundle", help="turn a `vaelab bundle` file back into a resumable run directory")
    u.add_argument("bundle", metavar="FILE")
    u.add_argument("--out", required=True, metavar="RUN_DIR", help="a new (or empty) run directory")
    u.set_defaults(func=cmd_unbundle)


def cmd_unbundle(args: argparse.Namespace) -> None:
    from vaelab.runs.bundle import unpack_bundle

    state = unpack_bundle(args.bundle, args.out)
    print(f"run written to {args.out} ({state['epoch']} epochs done): `vaelab train --resume {args.out}` "
          "continues it")


def add_list(sub) -> None:
    sub.add_parser("list", help="list the registered latent families, estimators and networks").set_defaults(
        func=cmd_list)


def cmd_list(args: argparse.Namespace) -> None:
    from vaelab.cli.listing import listing

    print(listing(), end="")
    if getattr(args, "imports", None):   # `vaelab --import MODULE list`: what the plugins registered
        from vaelab.estimators.pathwise import ESTIMATORS
        from vaelab.models.latents import LATENTS
        from vaelab.models.nets import NETS

        for registry in (LATENTS, ESTIMATORS, NETS):
            names = [n for n in registry if registry.get(n).__module__.split(".")[0] != "vaelab"]
            print(f"from plugins, {registry.kind}: {', '.join(names) or 'none'}")


def add_orchestration(sub) -> None:
    """`vaelab sweep`, `compare` and `stack` in full (their modules load only when one of them is the command)."""
    from vaelab.cli.compare import add_compare
    from vaelab.experiments.sweep import add_parser as add_sweep
    from vaelab.experiments.sweep_stack import add_parser as add_stack

    for add in (add_sweep, add_compare, add_stack):
        add(sub)


def add_orchestration_stand_ins(sub) -> None:
    """`vaelab sweep`, `compare` and `stack` as names and help lines only (see ORCHESTRATION_HELP)."""
    for name, text in ORCHESTRATION_HELP.items():
        sub.add_parser(name, help=text, add_help=False)


def command_of(argv: list[str]) -> str | None:
    """The command `argv` names: its first word that is not an option (nor the value of a top-level --import)."""
    values = {i + 1 for i, a in enumerate(argv) if a == "--import"}
    return next((a for i, a in enumerate(argv) if not a.startswith("-") and i not in values), None)


def parser(command: str | None = None) -> argparse.ArgumentParser:
    """`vaelab`'s parser: every command's `add_<command>`, in the order `vaelab --help` lists them. sweep, compare
    and stack are declared in full only when `command` is one of them (their modules import torch)."""
    from vaelab.core.provenance import __version__

    p = Parser(prog="vaelab", description="Train, evaluate and compare VAEs on binary images.")
    p.add_argument("--version", action="version", version=f"vaelab {__version__}")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a plugin module (registering nets, latents or estimators) first; repeatable; "
                   "`train` records it in the run's config (plugins:)")
    sub = p.add_subparsers(dest="command", required=True)
    add_sweep_compare_stack = add_orchestration if command in ORCHESTRATION_HELP else add_orchestration_stand_ins
    for add in (add_train, add_evaluate, add_sample, add_bundle, add_unbundle, cli_study.add_fit_density,
                cli_study.add_classifier, cli_study.add_quality, cli_study.add_gradvar, cli_study.add_reproduce,
                add_list, add_sweep_compare_stack):
        add(sub)
    return p


class StartupStop(BaseException):
    """SIGTERM or SIGHUP outside training, raised where the process was (a BaseException, so no `except Exception`
    on the way swallows it); `main` turns it into one line and exit code 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class StopGuard:
    """SIGTERM and SIGHUP from the first line of `main` to its last: each raises StartupStop, so a command stopped
    while torch imports, a config loads or a run directory is being set up ends in one line instead of dying
    silently with -15. Training replaces this handler with runs/lifecycle.StopSignals (a checkpoint at the next safe
    point), which calls `hand_over` and puts this one back when training ends. In the main thread only."""

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __init__(self, command: str | None) -> None:
        self.command, self.trained, self.fired = command, False, False
        self._previous: dict[int, Any] = {}

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if not self.fired:              # a second signal while the first one unwinds: already stopping
            self.fired = True
            raise StartupStop(signum)

    def hand_over(self) -> None:
        """Training began (StopSignals took the signals over): a later stop is no longer before training."""
        self.trained = True

    def line(self, signum: int) -> str:
        """The one line a stop by `signum` prints, true to how far the command got."""
        name = signal.Signals(signum).name
        if self.command != "train":
            return f"stopped by {name} before `vaelab {self.command}` finished: rerun the command"
        if self.trained:
            return (f"stopped by {name} as training ended: every finished epoch is checkpointed; "
                    "`vaelab train --resume RUN_DIR` trains any epochs left")
        return f"stopped by {name} during start-up: nothing was trained; rerun the command"

    def __enter__(self) -> StopGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    with StopGuard(command_of(argv)) as guard:
        try:
            return run(argv)
        except StartupStop as stop:
            print(f"vaelab: {guard.line(stop.signum)}", file=sys.stderr)
            return 128 + stop.signum


def run(argv: list[str]) -> int:
    """Parse `argv` and run its command; every refusal is one line on stderr and an exit code."""
    args = parser(command_of(argv)).parse_args(argv)
    try:
        if args.imports:
            from vaelab.core.plugins import load_plugins

            load_plugins(args.imports)
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
