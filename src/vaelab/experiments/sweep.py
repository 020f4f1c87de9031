"""`vaelab sweep SPEC.yaml --out DIR [--workers N] [--backend local|ray]`: a grid of runs, trained and evaluated.

A spec (YAML):

    base: bernoulli_vae              # a preset name (configs/NAME.yaml) or a config file
    set: {data.source: digits}       # optional: fixed overrides for every run
    grid:                            # a mapping: the product of its lists; or a list of such mappings (their union)
      estimator.name: [disarm, rloo, sfe-avg]
      train.lr: [1e-4, 3e-4]
    seeds: 5                         # 0..4, or a list [0, 7, 9]; default: the base config's train.seed
    evaluate: {iw_samples: 1000}     # optional; default: each run's eval settings; false: no evaluation
    stack: true                      # optional: train each setting's seeds together as one stacked model
                                     # (experiments/sweep_stack.py, `vaelab stack`); local backend

Each run gets DIR/NAME (NAME from its settings and seed, e.g. `estimator.name=disarm,train.lr=1e-4,seed=0`), its
full config in DIR/configs/NAME.yaml (named NAME, and described by what differs from the base) and its output in
DIR/logs/NAME.log; DIR/sweep.yaml records the spec and each run's state (queued, running, done, failed with its
error). Started again, the sweep skips finished runs and resumes interrupted ones from their checkpoint; a failed
run does not stop the others.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import itertools
import math
import os
import re
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vaelab.config.checks import is_autoencoder
from vaelab.config.schema import Config, from_dict, set_dotted
from vaelab.core import yaml_io
from vaelab.core.errors import Stopped, VaelabError
from vaelab.experiments.sweep_run import Job

SPEC_KEYS = ("base", "set", "grid", "seeds", "evaluate", "stack")
RUNS_MAX = 10_000   # runs in one sweep (settings x seeds), each one a trained model: sized before any list is built
REPO = Path(__file__).resolve().parents[3]


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_base(base: str, spec_dir: Path) -> Path:
    """A config file: `base` as a path (as given, or next to the spec), or a preset under some configs/ folder."""
    names = [base] if base.endswith((".yaml", ".yml")) else [base, f"{base}.yaml"]
    candidates = [Path(base), spec_dir / base] + [root / "configs" / n for root in (Path.cwd(), spec_dir, REPO)
                                                  for n in names]
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise VaelabError(f"sweep spec base {base!r}: no such config file or preset: give a YAML path or a preset name "
                      "such as bernoulli_vae or literature/disarm_linear")


def _grid_size(grid: Any) -> int:
    """How many settings `grid` would expand to (before duplicates are dropped), without building them: 1 for no
    grid, the product of a mapping's list lengths, the sum over a list of mappings; 0 where the shape is wrong
    (`_grid_settings` then says what is)."""
    if grid is None:
        return 1
    if isinstance(grid, list):
        return sum(_grid_size(g) for g in grid)
    if isinstance(grid, dict):
        return math.prod(len(v) if isinstance(v, list) else 0 for v in grid.values())
    return 0


def _grid_settings(grid: Any, where: str) -> list[dict[str, Any]]:
    """The settings of a grid: a mapping -> the product of its lists; a list of mappings -> their union. A grid
    of more than RUNS_MAX settings is refused before it is expanded."""
    if where == "grid" and _grid_size(grid) > RUNS_MAX:
        raise VaelabError(f"sweep spec grid expands to {_grid_size(grid):,} settings, more than the {RUNS_MAX:,} runs "
                          "one sweep may hold: shorten its lists or split the study into several sweeps")
    if grid is None:
        return [{}]
    if isinstance(grid, list):
        settings = [s for i, g in enumerate(grid) for s in _grid_settings(g, f"{where}[{i}]")]
        unique: list[dict[str, Any]] = []
        return [s for s in settings if s not in unique and not unique.append(s)]
    if not isinstance(grid, dict):
        raise VaelabError(f"sweep spec {where} must map config keys to lists of values, e.g. "
                          "{estimator.name: [disarm, rloo]}")
    for key, values in grid.items():
        if key == "train.seed":
            raise VaelabError(f"sweep spec {where}: seeds go in `seeds:` (a count or a list), not in the grid")
        if not isinstance(values, list) or not values:
            raise VaelabError(f"sweep spec {where}.{key} = {values!r}: give a non-empty list of values, e.g. "
                              f"{key}: [{values!r}] (a list-valued key takes a list of lists)")
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]


def _seeds(value: Any, default: int) -> list[int]:
    if value is None:
        return [default]
    if isinstance(value, int) and not isinstance(value, bool) and value > RUNS_MAX:
        raise VaelabError(f"sweep spec seeds = {value:,}: more than the {RUNS_MAX:,} runs one sweep may hold: give "
                          "fewer seeds (seeds: 5 means 0..4)")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value) \
            and len(set(value)) == len(value):
        return list(value)
    raise VaelabError(f"sweep spec seeds = {value!r}: give a count (seeds: 5 means 0..4) or a list of distinct "
                      "integers")


def _iw_samples(value: Any) -> int | None | bool:
    """None: each run's eval.iw_samples; an int: that K; False: no evaluation."""
    if value is None or value is True:
        return None
    if value is False:
        return False
    if isinstance(value, dict) and set(value) <= {"iw_samples"}:
        k = value.get("iw_samples")
        if k is None or (isinstance(k, int) and not isinstance(k, bool) and k >= 0):
            return k
    raise VaelabError(f"sweep spec evaluate = {value!r}: write evaluate: {{iw_samples: K}} (K >= 0), or false")


class Spec:
    """A parsed sweep spec: the base config's values, fixed overrides, the settings and the seeds."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise VaelabError(f"sweep spec {path} not found: give a YAML file (see `vaelab sweep --help`)")
        raw = yaml_io.read_mapping(path, "fix it", f"sweep spec {path}")
        unknown = [k for k in (raw if isinstance(raw, dict) else {"(not a mapping)": 0}) if k not in SPEC_KEYS]
        if unknown:
            raise VaelabError(f"sweep spec {path}: unknown key {unknown[0]!r}: valid keys are {', '.join(SPEC_KEYS)}")
        if not isinstance(raw.get("base"), str):
            raise VaelabError(f"sweep spec {path}: give `base:`, a preset name or config file")
        if not isinstance(raw.get("set") or {}, dict):
            raise VaelabError(f"sweep spec {path}: `set:` must map config keys to values, e.g. {{data.source: digits}}")
        self.path, self.raw = path.resolve(), raw
        self.base = resolve_base(raw["base"], path.parent)
        self.base_values = yaml_io.read_mapping(self.base, "fix it or choose another base", f"base config {self.base}")
        self.fixed: dict[str, Any] = dict(raw.get("set") or {})
        self.settings = _grid_settings(raw.get("grid"), "grid")
        self.seeds = _seeds(raw.get("seeds"), self.config({}, None).train.seed)
        if len(self.settings) * len(self.seeds) > RUNS_MAX:
            raise VaelabError(f"sweep spec {path}: {len(self.settings):,} settings x {len(self.seeds):,} seeds = "
                              f"{len(self.settings) * len(self.seeds):,} runs, more than the {RUNS_MAX:,} one sweep "
                              "may hold: fewer settings or seeds, or several sweeps")
        self.iw_samples = _iw_samples(raw.get("evaluate"))
        self.stack = raw.get("stack", False)
        if not isinstance(self.stack, bool):
            raise VaelabError(f"sweep spec {path}: stack = {self.stack!r}: write stack: true or stack: false")

    def preset(self) -> Config:
        """The base config alone (what runs are described against); the base with `set:` if it is invalid alone."""
        try:
            return from_dict(Config, copy.deepcopy(self.base_values))
        except VaelabError:
            return self.config({}, None)

    def config(self, setting: dict[str, Any], seed: int | None) -> Config:
        """The full config of one run, validated (an unknown key or bad value is refused here, before training)."""
        values = copy.deepcopy(self.base_values)
        for key, value in [*self.fixed.items(), *setting.items()]:
            set_dotted(values, key, value, f"sweep spec key {key}")
        if seed is not None:
            set_dotted(values, "train.seed", seed)
        try:
            return from_dict(Config, values)
        except VaelabError as err:
            raise VaelabError(f"sweep spec {self.path.name}: {err}") from err


def _value_text(value: Any) -> str:
    if isinstance(value, dict):
        return ";".join(f"{k}:{_value_text(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list):
        return "-".join(map(_value_text, value)) or "none"
    return str(value)


def run_name(setting: dict[str, Any], seed: int) -> str:
    """A directory name from a setting and a seed: `key=value,...,seed=S`, unsafe characters replaced by `_`."""
    text = ",".join([*(f"{k}={_value_text(v)}" for k, v in setting.items()), f"seed={seed}"])
    text = re.sub(r"[^A-Za-z0-9._+=,:;-]", "_", text)
    if len(text) > 150:
        text = text[:140] + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return text


def name_run(spec: Spec, cfg: Config, setting: dict[str, Any], name: str, run_dir: Path) -> Config:
    """`cfg` named after its run and described by what differs from the base preset, as `vaelab train` names its
    variants (experiments/sweep_names.py). A name or description that the spec sets itself is kept, and so is the one an
    existing checkpoint in `run_dir` holds when the rest of its config is the same (a sweep started before runs
    were named resumes). Under `stack: true` the seeds of a setting train from one config, so its name and
    description leave the seed out. Returns `cfg`, changed in place."""
    from vaelab.experiments.sweep_names import describe_changes, keep_saved_labels

    keys = {*spec.fixed, *setting}
    preset = spec.preset()
    if "name" not in keys:
        cfg.name = (re.sub(r",?seed=\d+$", "", name) or preset.name) if spec.stack else name
    if "description" not in keys:
        cfg.description = describe_changes(preset, cfg, skip=("train.seed",) if spec.stack else ())
    return keep_saved_labels(cfg, run_dir)


def plan(spec: Spec, out: Path, threads: int) -> tuple[list[Job], dict[str, dict[str, Any]]]:
    """One Job per setting and seed, and {name: its settings and seed}; writes each run's full config to
    OUT/configs/NAME.yaml."""
    from vaelab.core.atomic import atomic_write_text as write_text

    jobs: list[Job] = []
    settings: dict[str, dict[str, Any]] = {}
    (out / "configs").mkdir(parents=True, exist_ok=True)
    for setting, seed in itertools.product(spec.settings, spec.seeds):
        cfg = spec.config(setting, seed)
        name = run_name(setting, seed)
        if any(j.name == name for j in jobs):
            name += "-" + hashlib.sha1(repr((setting, seed)).encode()).hexdigest()[:8]
        name_run(spec, cfg, setting, name, out / name)
        config_path = out / "configs" / f"{name}.yaml"
        if not config_path.is_file() or config_path.read_text() != cfg.to_yaml():
            write_text(config_path, cfg.to_yaml())
        k = cfg.eval.iw_samples if spec.iw_samples is None else (None if spec.iw_samples is False else spec.iw_samples)
        jobs.append(Job(name, str(out / name), str(config_path), str(out / "logs" / f"{name}.log"),
                        cfg.train.epochs, k, is_autoencoder(cfg.model.latent), cfg.train.device, threads,
                        os.getcwd()))
        settings[name] = {**setting, "train.seed": seed}
    return jobs, settings


def sizing(workers: int | None, threads: int | None, n_jobs: int, cores: int) -> tuple[int, int]:
    """(workers, threads per run) with workers × threads <= cores."""
    for flag, value in (("--workers", workers), ("--threads", threads)):
        if value is not None and value < 1:
            raise VaelabError(f"{flag} {value}: give a positive number")
    if workers is None:
        workers = max(1, cores // (threads or 1))
    workers = max(1, min(workers, n_jobs))
    threads = threads or max(1, cores // workers)
    if workers * threads > cores:
        raise VaelabError(f"--workers {workers} x --threads {threads} exceeds the {cores} cores here: lower "
                          "--workers or --threads")
    return workers, threads


def select(jobs: list[Job], only: str) -> Job:
    """The job `only` names: its index in the sweep's list (0-based, as `--list` prints) or its name."""
    if only.isdigit():
        if int(only) >= len(jobs):
            raise VaelabError(f"--only {only}: the sweep has {len(jobs)} runs (0..{len(jobs) - 1}): see --list")
        return jobs[int(only)]
    for job in jobs:
        if job.name == only:
            return job
    raise VaelabError(f"--only {only}: no run of that name in the sweep: see --list")


def run_sweep(spec_path: str | Path, out: str | Path, workers: int | None = None, threads: int | None = None,
              backend: str = "local", only: str | None = None, address: str | None = None,
              gpus: float = 0.0, list_only: bool = False) -> dict[str, dict]:
    """Plan the sweep, run (or list) its runs, and return sweep.yaml's run entries."""
    if backend not in ("local", "ray"):
        raise VaelabError(f"--backend {backend}: use local or ray")
    spec, out = Spec(spec_path), Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    n_runs, cores = len(spec.settings) * len(spec.seeds), available_cores()
    cluster = backend == "ray" and bool(address or os.environ.get("RAY_ADDRESS"))
    if only is not None:
        workers, threads = 1, threads or cores
    elif cluster:
        threads = threads or 1
    else:
        workers, threads = sizing(workers, threads, n_runs, cores)
    jobs, settings = plan(spec, out, threads)
    from vaelab.experiments.sweep_backends import Book, Progress, sweep_lock

    book = Book(out, {"spec_file": str(spec.path), "spec": spec.raw, "base_config": str(spec.base)}, jobs, settings)
    if list_only:
        from vaelab.experiments.sweep_run import describe

        recorded = book.read()
        for i, job in enumerate(jobs):
            status = describe(job)
            failed = recorded[job.name]["state"] == "failed" and status != "done"
            print(f"{i:4d}  {status + (' failed' if failed else ''):20s}  {job.name}")
        return recorded
    selected = jobs if only is None else [select(jobs, only)]
    with sweep_lock(out) if only is None else _nothing():
        book.update({j.name: {"state": "queued", "error": None} for j in selected})
        progress = Progress(len(selected))
        print(f"[sweep] {len(selected)} of {len(jobs)} runs, {backend} backend, "
              f"{workers or 'all'} at a time with {threads} thread(s) each -> {out}", file=sys.stderr, flush=True)
        from vaelab.experiments.sweep_backends import run_local, run_ray

        if backend == "ray":
            run_ray(selected, workers, book, progress, address, gpus)
            return book.read()
        from vaelab.experiments.sweep_run import forwarding_stops

        with forwarding_stops() as children:
            if spec.stack and only is None:
                from vaelab.experiments.sweep_stack import train_groups

                train_groups(selected, settings, out)
            run_local(selected, workers, book, progress)
        if children.signum is not None:
            stopped = sum(e["state"] == "stopped" for e in book.read().values())
            raise Stopped(f"sweep stopped by {signal.Signals(children.signum).name}: {stopped} run(s) stopped, each "
                          f"keeping its last checkpoint; rerun the same command to resume them", children.signum)
    return book.read()


@contextmanager
def _nothing():
    yield


def cmd_sweep(args: argparse.Namespace) -> None:
    runs = run_sweep(args.spec, args.out, args.workers, args.threads, args.backend, args.only, args.address,
                     args.gpus_per_run, args.list)
    if args.list:
        return
    failed = [n for n, e in runs.items() if e["state"] == "failed"]
    done = sum(e["state"] == "done" for e in runs.values())
    print(f"sweep {args.out}: {done} of {len(runs)} runs done; compare them with `vaelab compare {args.out}`")
    if failed:
        raise VaelabError(f"{len(failed)} run(s) failed ({failed[0]}: {runs[failed[0]]['error']}; all errors in "
                          f"{Path(args.out) / 'sweep.yaml'}): fix the cause and rerun the same command, finished "
                          "runs are skipped")


def add_parser(sub) -> None:
    """Register `vaelab sweep` on the CLI's subparsers."""
    s = sub.add_parser("sweep", help="train and evaluate a grid of configs x seeds, resumably",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("spec", metavar="SPEC.yaml")
    s.add_argument("--out", required=True, help="sweep directory (on a shared file system for a Ray cluster)")
    s.add_argument("--workers", type=int, help="runs at a time (default: cores / threads; Ray cluster: all)")
    s.add_argument("--threads", type=int, help="threads per run (default: cores / workers, at least 1)")
    s.add_argument("--backend", default="local", choices=("local", "ray"))
    s.add_argument("--address", help="Ray cluster address (default $RAY_ADDRESS; neither: a local Ray instance)")
    s.add_argument("--gpus-per-run", type=float, default=0.0, help="Ray backend: GPUs each run asks for")
    s.add_argument("--only", metavar="INDEX|NAME", help="run just this one (e.g. $SLURM_ARRAY_TASK_ID), no lock")
    s.add_argument("--list", action="store_true", help="list the runs (index, state, name) and exit")
    s.set_defaults(func=cmd_sweep)
