"""Seeds trained together: `vaelab stack CONFIG --seeds 0-31 --out DIR`, and a sweep's `stack: true`.

`vaelab stack` trains one config once per seed as one stacked model (training/stacked.py) into DIR/seed=S (or the
directories --runs names), each an ordinary run. A sweep spec with `stack: true` first trains, for every setting,
its seeds together this way (one `vaelab stack` process per setting, its log in DIR/logs/stack-NAME.log); the
sweep then evaluates each run as usual. A setting that cannot be stacked (its estimator's draws, train.cuda_graph,
runs at different epochs) is said in one line and its seeds train one by one, as without `stack`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

from vaelab.config.checks import check_int
from vaelab.config.schema import load_config
from vaelab.core.atomic import open_append
from vaelab.core.errors import VaelabError
from vaelab.experiments.sweep_run import CHILDREN, Job
from vaelab.runs.run_dir import RunDir

SEEDS_MAX = 1024   # seeds stacked in one process (each is a whole model in memory)


def parse_seeds(text: str) -> list[int]:
    """'0-31' -> 0..31; '0,3,7' -> [0, 3, 7]. A lone number is refused: a sweep's `seeds: 5` means 0..4, so
    `--seeds 5` would read either way (write 0-4, or 5-5 for seed 5). Ranges are sized before they are built."""
    if text.strip().isdigit():
        n = int(text)
        raise VaelabError(f"--seeds {text}: a lone number is ambiguous (a sweep's `seeds: {n}` means 0..{n - 1}): "
                          f"write 0-{max(n - 1, 0)} for {n} seeds, or {n}-{n} for seed {n} alone")
    spans: list[tuple[int, int]] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            spans.append((int(lo), int(hi) if hi else int(lo)))
    except ValueError:
        raise VaelabError(f"--seeds {text!r}: give seeds as 0-31 or 0,1,2") from None
    for lo, hi in spans:
        for s in (lo, hi):
            check_int("--seeds", s, 0, 2**63 - 1, fix="give seeds between 0 and 2^63 - 1")
    if sum(max(hi - lo + 1, 0) for lo, hi in spans) > SEEDS_MAX:
        raise VaelabError(f"--seeds {text!r} names more than {SEEDS_MAX:,} seeds: stack at most {SEEDS_MAX:,} in one "
                          "process (run several stacks, or a sweep)")
    seeds = [s for lo, hi in spans for s in range(lo, hi + 1)]
    if not seeds or len(set(seeds)) != len(seeds):
        raise VaelabError(f"--seeds {text!r}: give each seed once, e.g. 0-31 or 0,1,2")
    return seeds


def cmd_stack(args: argparse.Namespace) -> None:
    from vaelab.training.stacked import train_stacked

    seeds = parse_seeds(args.seeds)
    if (args.out is None) == (args.runs is None):
        raise VaelabError("give --out DIR (runs go to DIR/seed=S) or --runs, one directory per seed")
    runs = args.runs or [str(Path(args.out) / f"seed={s}") for s in seeds]
    if len(runs) != len(seeds):
        raise VaelabError(f"--runs names {len(runs)} directories for {len(seeds)} seeds: give one per seed")
    overrides = list(args.set) + ([f"train.epochs={args.epochs}"] if args.epochs is not None else []) + (
        [f"train.device={args.device}"] if args.device else [])
    cfg = load_config(args.config, overrides)
    train_stacked(cfg, seeds, runs, resume=args.resume, quiet=args.quiet)
    print(f"{len(seeds)} runs written: {runs[0]} ... {runs[-1]}" if len(runs) > 1 else f"run written to {runs[0]}")


def add_parser(sub) -> None:
    """Register `vaelab stack` on the CLI's subparsers."""
    s = sub.add_parser("stack", help="train one config for many seeds at once, as one stacked model",
                       description=__doc__.split("\n\n", 1)[0])
    s.add_argument("config", help="a preset name or YAML config")
    s.add_argument("--seeds", required=True, help="0-31 or 0,1,2 (a lone number is refused: write 0-4 or 5-5)")
    s.add_argument("--out", help="runs go to OUT/seed=S")
    s.add_argument("--runs", nargs="+", help="one run directory per seed instead of --out")
    s.add_argument("--resume", action="store_true", help="continue the runs from their checkpoints")
    s.add_argument("--epochs", type=int)
    s.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_stack)


def groups(jobs: list[Job], settings: dict[str, dict[str, Any]]) -> list[list[Job]]:
    """The sweep's jobs grouped by setting (everything but the seed); groups of two or more runs."""
    by_setting: dict[str, list[Job]] = {}
    for job in jobs:
        key = repr(sorted((k, repr(v)) for k, v in settings[job.name].items() if k != "train.seed"))
        by_setting.setdefault(key, []).append(job)
    return [g for g in by_setting.values() if len(g) > 1]


def _resume_or_fresh(group: list[Job]) -> bool | None:
    """False: no run started; True: all stopped at the same epoch short of the target (`RunDir.plan` says resume);
    None: not stackable (finished, stranded, unreadable or at different epochs: the sweep takes them one by one and
    reports what it finds)."""
    runs = [RunDir(j.run_dir) for j in group]
    if all(r.kind == "empty" for r in runs):
        return False
    try:
        plans = [r.plan(group[0].epochs) for r in runs]
    except VaelabError:
        return None
    if any(p.action != "resume" for p in plans) or len({p.epoch for p in plans}) != 1:
        return None
    return True


def train_groups(jobs: list[Job], settings: dict[str, dict[str, Any]], out: Path) -> None:
    """Train each setting's seeds together (one `vaelab stack` process each); what cannot is left to the sweep."""
    for group in groups(jobs, settings):
        resume = _resume_or_fresh(group)
        if resume is None:
            continue                                   # finished, or runs at different points: one by one
        seeds = [str(settings[j.name]["train.seed"]) for j in group]
        log = out / "logs" / f"stack-{group[0].name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "vaelab", "stack", group[0].config_path, "--seeds", ",".join(seeds),
               "--runs", *[j.run_dir for j in group], "--quiet", *(["--resume"] if resume else [])]
        print(f"[sweep] stacking {len(group)} seeds of {group[0].name}", file=sys.stderr, flush=True)
        with open_append(log) as f:                     # never through a planted symlink
            code = CHILDREN.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=group[0].cwd)
        if CHILDREN.signum is not None:
            return                                     # stopped: the runs keep their checkpoints
        if code:
            last = (log.read_text().strip().splitlines() or ["no output"])[-1]
            print(f"[sweep] not stacked ({last}); its seeds train one by one", file=sys.stderr, flush=True)
