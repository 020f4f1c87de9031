"""Command line: thin argparse over the library. Every VaelabError becomes one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .config import load_config
from .errors import VaelabError


def cmd_train(args: argparse.Namespace) -> None:
    from .train import train

    overrides = list(args.set)
    overrides += [f"data.source={args.data}"] if args.data else []
    overrides += [f"train.epochs={args.epochs}"] if args.epochs is not None else []
    overrides += [f"train.device={args.device}"] if args.device else []
    overrides += [f"estimator.name={args.estimator}"] if args.estimator else []
    if args.resume:
        if args.config or overrides:
            raise VaelabError("--resume takes the run's own config: drop CONFIG and the overrides")
        train(None, args.resume, resume=True, quiet=args.quiet)
        return
    if not args.config:
        raise VaelabError("give a CONFIG file (e.g. configs/gaussian_vae.yaml) or --resume RUN_DIR")
    cfg = load_config(args.config, overrides)
    out = Path(args.out or f"runs/{cfg.name}")
    train(cfg, out, quiet=args.quiet)
    print(f"run written to {out}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_model
    from .run import open_run, write_json

    run = open_run(args.run, args.device)
    k = run.cfg.eval.iw_samples if args.iw_samples is None else args.iw_samples
    metrics = evaluate_model(run.model, run.data.x_test, k, run.cfg.eval.batch_size, progress=not args.quiet)
    path = Path(args.run) / "eval.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    write_json(path, old | metrics)
    print(json.dumps(metrics, indent=2))


def cmd_sample(args: argparse.Namespace) -> None:
    from .plots import save_grid
    from .run import open_run
    from .sampling import reconstruct, sample

    run = open_run(args.run, args.device)
    gen = torch.Generator(run.device).manual_seed(args.seed)
    torch.manual_seed(args.seed)
    if args.reconstruct:
        x = run.data.x_test[: args.n]
        images = torch.stack([x, reconstruct(run.model, x, args.mode, gen)], 1).flatten(0, 1)  # [2n, P] pairs
        title = f"test digits (odd columns) and their reconstructions, mode={args.mode}"
    else:
        images = sample(run.model, args.n, args.mode, generator=gen)
        title = f"{args.n} samples, z ~ prior, mode={args.mode}"
    out = Path(args.out or Path(args.run) / "fig" / f"{'recon' if args.reconstruct else 'samples'}_{args.mode}.png")
    save_grid(images, run.model.image_shape, out, title)
    print(f"wrote {out}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vaelab", description="Train, evaluate and compare VAEs on binary images.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("config", nargs="?", help="YAML preset, e.g. configs/gaussian_vae.yaml")
    t.add_argument("--data", help="mnist | digits | PATH (.npz or MNIST IDX folder)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--estimator", help="gradient estimator name (see `vaelab list`)")
    t.add_argument("--device", help="auto | cpu | cuda")
    t.add_argument("--out", help="run directory (default runs/<config name>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=1e-3")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="test ELBO, KL, reconstruction and IW log-likelihood -> eval.json")
    e.add_argument("run")
    e.add_argument("--iw-samples", type=int, help="K importance samples (default: the config's, 5000)")
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
    s.set_defaults(func=cmd_sample)

    lst = sub.add_parser("list", help="list the registered latent families, estimators and networks")
    lst.set_defaults(func=cmd_list)
    return p


def cmd_list(args: argparse.Namespace) -> None:
    from .estimators import ESTIMATORS
    from .latents import LATENTS
    from .nets import NETS

    for title, reg in (("latent families", LATENTS), ("estimators", ESTIMATORS), ("networks", NETS)):
        print(f"{title}: {', '.join(reg)}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except VaelabError as err:
        print(f"vaelab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vaelab: interrupted; `vaelab train --resume RUN_DIR` continues a training run", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
