"""The long runs behind RESULTS.md's "Reproduced" table, as a resumable queue.

    python benchmarks/published_runs.py [--workers 2] [--only PATTERN] [--list]

Each job is one `vaelab train PRESET --seed S --epochs E --out benchmarks/runs/published/NAME` followed by
`vaelab evaluate`. Started again, the queue skips what is finished, resumes an interrupted run from its last
checkpoint (`vaelab train --resume DIR --epochs E`, which also extends a shorter finished run) and evaluates what
has no eval.json. Each worker runs one job at a time with one thread (OMP_NUM_THREADS=1). Run it in the background:
    nohup python benchmarks/published_runs.py --workers 2 > benchmarks/runs/published/queue.log 2>&1 &
`kill -TERM` (or SIGHUP) on the queue is passed to its running jobs, which checkpoint; it then exits 128 + signum.

Runs outlive a session and a machine through benchmarks/state/: `--save-state` writes each unfinished run (the
selected jobs with a checkpoint) as one resumable bundle, benchmarks/state/NAME.safetensors (`vaelab bundle`:
weights, optimizer, RNG, metrics.jsonl, config), removes the bundles of finished runs, and keeps each finished run's
final state and per-seed files in benchmarks/results/published/seeds/NAME/ (config.yaml, metrics.jsonl,
eval.json, eval-kK.json, run.safetensors: `vaelab unbundle run.safetensors --out RUN`, then `vaelab evaluate
RUN`). A job whose run directory is missing starts from its bundle (`vaelab unbundle`), and a 10^6-step one with
neither continues its seed's finished 10^5-step run (that run's directory, or else its final bundle in seeds/), so
on a fresh checkout the same command continues every run where it stopped:
    python benchmarks/published_runs.py --workers 2 [--only PATTERN]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vaelab.experiments.sweep_run import CHILDREN, RunStopped, forwarding_stops

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("VAELAB_PUBLISHED_RUNS", ROOT / "benchmarks" / "runs" / "published")).resolve()
STATE = Path(os.environ.get("VAELAB_PUBLISHED_STATE", ROOT / "benchmarks" / "state")).resolve()
SEEDS = ROOT / "benchmarks" / "results" / "published" / "seeds"
VAELAB = [sys.executable, "-m", "vaelab"]
LIT = "configs/literature"

# The DisARM paper's estimators in its reference setting (the presets' signal: elbo): DisARM, ARM and REINFORCE
# leave-one-out with 2 samples (the same 2 decoder passes), with their extra `vaelab train` arguments.
ESTIMATORS = (("disarm", []), ("arm", []), ("rloo", ["--set", "estimator.kwargs={num_samples: 2, signal: elbo}"]))
GRAD_STATS = ["--set", "train.grad_stats_every=500", "--set", "train.grad_stats_draws=16"]
# The rows that trained before the hand-written step (train.backward, ef71ce0) trained with autograd, as this makes
# a fresh run of them do: so the command gives back their committed curves bit for bit (the default hand-written
# step agrees to float rounding: 3e-5 nats after 2 epochs on the Gaussian row; on the Bernoulli rows a draw soon
# flips and the curves part, 2.5e-3 after 2 epochs). tests/test_published_runs.py holds every row to its config.
AUTOGRAD = ["--set", "train.backward=autograd"]

# (name, preset, epochs, seed, extra train args); DisARM epochs are 1,000 steps of batch 50.
JOBS = [
    *[(f"disarm_linear-{e}-s{s}", f"{LIT}/disarm_linear.yaml", 100, s, ["--estimator", e, *kw, *AUTOGRAD])
      for s in (0, 1, 2) for e, kw in ESTIMATORS],
    # the nonlinear ones also log the encoder gradient's variance (Fig. 5's right column) every 500 steps, 16 draws
    *[(f"disarm_nonlinear-{e}-s{s}", f"{LIT}/disarm_nonlinear.yaml", 100, s, ["--estimator", e, *kw, *GRAD_STATS])
      for s in (0, 1, 2) for e, kw in ESTIMATORS],
    # Pythae's 784-400-40 setting on Larochelle's .amat files (K = 200 from the preset; K = 5000 added after)
    *[(f"vae_784_400_40_static-s{s}", f"{LIT}/vae_784_400_40_static.yaml", 500, s, AUTOGRAD) for s in (0, 1, 2)],
    # the study's study (its presets' 10 epochs, 10,000 samples scored) over 5 seeds, K = 1000 to fit the CPU
    *[(f"study-s{s}", "reproduce", 10, s, ["--iw-samples", "1000"]) for s in range(5)],
    *[(f"disarm_linear-{e}-s0-1M", f"{LIT}/disarm_linear.yaml", 1000, 0, ["--estimator", e, *kw, *AUTOGRAD])
      for e, kw in ESTIMATORS],
    # Pythae's vae.py MultiStepLR to its end (milestones 500, 750 too): the check of the 500-epoch row's gap; one
    # seed, since Pythae's history shows it ran 500 epochs (RESULTS.md, "Pythae's settings")
    ("vae_784_400_40_static_1000-s0", f"{LIT}/vae_784_400_40_static_1000.yaml", 1000, 0, AUTOGRAD),
    # Burda et al.'s 3,280-epoch schedule: ~8 h of one CPU thread a seed, so it runs over several sessions, resumed
    *[(f"iwae_vae_1layer-s{s}", f"{LIT}/iwae_vae_1layer.yaml", 3280, s, []) for s in (0, 1, 2)],
    # the DisARM paper's nonlinear model at its 10^6 steps (68-80 min of one thread each, two side by side)
    *[(f"disarm_nonlinear-{e}-s0-1M", f"{LIT}/disarm_nonlinear.yaml", 1000, 0, ["--estimator", e, *kw])
      for e, kw in ESTIMATORS],
]


def epochs_done(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.is_file() else 0


def vaelab(args: list[str], log, env: dict[str, str]) -> int:
    """Run `vaelab ARGS` to its exit code; SIGTERM/SIGHUP to this queue reach it (it checkpoints and stops)."""
    code = CHILDREN.run([*VAELAB, *args], stdout=log, stderr=log, env=env, cwd=ROOT, stdin=subprocess.DEVNULL)
    if code and CHILDREN.signum is not None:
        raise RunStopped(f"stopped by {signal.Signals(CHILDREN.signum).name}; the same command resumes it")
    return code


def train_argv(job: tuple, run: Path) -> list[str]:
    """The `vaelab train` arguments that start `job` (not a `reproduce` one) afresh in `run`."""
    _, preset, epochs, seed, extra = job
    return ["train", preset, "--seed", str(seed), "--epochs", str(epochs), "--out", str(run), *extra]


def carried_over(name: str, run: Path) -> Path | None:
    """Where a job with no run directory yet starts, when not at step 0: the bundle to unbundle into `run`, its own in
    STATE (an unfinished run carried over from another session or machine) first. A 1M-step run continues its seed's
    finished 100k-step run: that run's directory, copied into `run` here (None is returned), or else its final
    bundle committed in SEEDS. Without either it starts at step 0, to the same numbers."""
    own, shorter = STATE / f"{name}.safetensors", name.removesuffix("-1M")
    if run.exists():
        return None                                     # resumed as it is
    if own.is_file():
        return own
    if shorter == name:
        return None                                     # not a 1M-step run: step 0
    if (OUT / shorter / "eval.json").is_file():
        shutil.copytree(OUT / shorter, run, ignore=shutil.ignore_patterns("eval.json", "tb"))
        return None
    final = SEEDS / shorter / "run.safetensors"
    return final if final.is_file() else None


def say(line: str) -> None:
    """One timestamped line on stdout in one write (the workers are threads: print's text and newline can part)."""
    sys.stdout.write(f"{time.strftime('%H:%M:%S')} {line}\n")
    sys.stdout.flush()


def run_job(job: tuple, env: dict[str, str], evaluate: bool = True) -> str:
    name, preset, epochs, seed, extra = job
    CHILDREN.check_not_stopped()        # the queue was stopped before this job's turn: touch nothing
    run = OUT / name
    log = open(OUT / f"{name}.log", "a")
    if preset == "reproduce":                           # resumable by itself: finished stages are skipped
        say(f"{name}: vaelab reproduce")
        cmd = ["reproduce", "--out", str(run), "--set", f"train.seed={seed}", *extra]
        return f"{name}: " + (f"failed, see {log.name}" if vaelab(cmd, log, env) else "done")
    bundle = carried_over(name, run)
    if bundle is not None:
        say(f"{name}: vaelab unbundle {bundle}")
        if vaelab(["unbundle", str(bundle), "--out", str(run)], log, env):
            return f"{name}: unbundling failed, see {log.name}"
    done = epochs_done(run)
    if done < epochs:
        has_checkpoint = (run / "checkpoint").is_dir() or (run / "checkpoint.old").is_dir()
        cmd = ["train", "--resume", str(run), "--epochs", str(epochs)] if has_checkpoint else train_argv(job, run)
        say(f"{name}: vaelab {' '.join(cmd)}")
        if vaelab([*cmd, "--quiet"], log, env):
            return f"{name}: training failed, see {log.name}"
    if not evaluate:
        return f"{name}: trained ({epochs_done(run)} epochs), not evaluated"
    if not finished(run, epochs):
        say(f"{name}: vaelab evaluate")
        if vaelab(["evaluate", str(run), "--quiet"], log, env):
            return f"{name}: evaluation failed, see {log.name}"
    return f"{name}: done ({epochs_done(run)} epochs)"


def finished(run: Path, epochs: int) -> bool:
    evaluated = run / "eval.json"
    return evaluated.is_file() and json.loads(evaluated.read_text()).get("epochs_trained") == epochs


def save_state(jobs: list[tuple], env: dict[str, str]) -> None:
    """Bundle every unfinished run that has a checkpoint into STATE; for a finished one, drop its bundle and keep
    its weights and per-seed files in SEEDS."""
    STATE.mkdir(parents=True, exist_ok=True)
    for name, _, epochs, _, _ in jobs:
        run, bundle = OUT / name, STATE / f"{name}.safetensors"
        if finished(run, epochs):
            bundle.unlink(missing_ok=True)
            keep = SEEDS / name
            keep.mkdir(parents=True, exist_ok=True)
            for f in ("config.yaml", "metrics.jsonl", "eval.json", *(p.name for p in run.glob("eval-k*.json"))):
                shutil.copy2(run / f, keep / f)
            with open(OUT / f"{name}.log", "a") as log:    # the final weights (and state): unbundle, then evaluate
                code = vaelab(["bundle", str(run), "--out", str(keep / "run.safetensors")], log, env)
            print(f"{name}: finished; {'bundle failed' if code else 'final bundle'} and per-seed files in "
                  f"{keep.relative_to(ROOT)}")
        elif (run / "checkpoint").is_dir():
            with open(OUT / f"{name}.log", "a") as log:
                code = vaelab(["bundle", str(run), "--out", str(bundle)], log, env)
            print(f"{name}: {'bundle failed' if code else 'bundled'} at {epochs_done(run)}/{epochs} epochs")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--only", default="*", help="fnmatch pattern over job names")
    p.add_argument("--list", action="store_true")
    p.add_argument("--no-eval", action="store_true", help="train only")
    p.add_argument("--save-state", action="store_true", help="bundle unfinished runs into benchmarks/state/ and keep "
                   "finished runs' weights and per-seed files; trains nothing")
    args = p.parse_args()
    jobs = [j for j in JOBS if fnmatch.fnmatch(j[0], args.only)]
    if args.list:
        for j in jobs:
            print(f"{j[0]:40s} {epochs_done(OUT / j[0]):5d}/{j[2]} epochs")
        return
    OUT.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if args.save_state:
        return save_state(jobs, env)
    with forwarding_stops() as children, ThreadPoolExecutor(args.workers) as pool:
        for result in pool.map(lambda j: run_stoppable(j, env, not args.no_eval), jobs):
            say(result)
    if children.signum is not None:     # each stopped run checkpointed: the same command resumes
        sys.exit(128 + children.signum)


def run_stoppable(job: tuple, env: dict[str, str], evaluate: bool) -> str:
    """run_job's result line, or how the job stopped when the queue was asked to stop."""
    try:
        return run_job(job, env, evaluate)
    except RunStopped as stopped:
        return f"{job[0]}: {stopped}"


if __name__ == "__main__":
    main()
