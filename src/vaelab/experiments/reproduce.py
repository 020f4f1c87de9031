"""`vaelab reproduce`: train the study's models, evaluate them, draw every figure of the seed, write the report.

Resumable: a finished stage is skipped, an unfinished training run resumes from its checkpoint; `force` retrains.
Sample quality is scored with the shipped MNIST classifier on mnist and mnist-static runs; on other data the
stage logs why not (and how to score it with `vaelab classifier train` and `vaelab quality --classifier`) and the
study goes on: the report says so in its Sample quality section.
What the report needs beyond each evaluation is made once per run by report/inputs.py.
`quick` shortens training and evaluation (labelled as such in the report) to finish in minutes on a laptop CPU.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaelab.config.schema import load_config
from vaelab.core.atomic import write_json
from vaelab.core.errors import VaelabError
from vaelab.core.progress import stage as progress_stage
from vaelab.evaluation.run_eval import evaluate_run, fit_run_density, merge_eval, quality_run, sample_grid
from vaelab.runs.loaded_run import open_run
from vaelab.runs.run_dir import RunDir
from vaelab.training.trainer import train


@dataclass(frozen=True)
class Stage:
    """One model of the study: a preset plus overrides, and how the report names it."""

    name: str
    config: str
    title: str
    overrides: tuple[str, ...] = ()


STUDY = (
    Stage("gaussian_vae", "configs/gaussian_vae.yaml", "Gaussian VAE (seed section 2)"),
    Stage("bernoulli_vae", "configs/bernoulli_vae.yaml", "Bernoulli VAE, the study's sfe-avg (section 3)"),
    Stage("bernoulli_vae_disarm", "configs/bernoulli_vae.yaml", "Bernoulli VAE, DisARM estimator",
          ("estimator.name=disarm", "estimator.kwargs={}")),
    Stage("ae_gmm", "configs/ae_gmm.yaml", "Autoencoder + 20-component GMM (section 4)"),
)


@dataclass
class Settings:
    """What `reproduce` was asked for; `quick` values shorten training and evaluation."""

    out: Path
    quick: bool = False
    data: str | None = None
    epochs: int | None = None
    device: str = "auto"
    force: bool = False
    iw_samples: int | None = None
    quality_samples: int = 10000
    extra: list[str] = field(default_factory=list)
    quiet: bool = False               # no stage lines, bars or training lines on stderr

    def log(self, msg: str) -> None:
        """One "[reproduce] ..." stage line on stderr (progress.stage), none when quiet."""
        progress_stage(f"[reproduce] {msg}", not self.quiet)

    def overrides(self) -> list[str]:
        out = [f"train.device={self.device}", *self.extra]
        out += [f"data.source={self.data}"] if self.data else []
        epochs = self.epochs if self.epochs is not None else (QUICK_EPOCHS if self.quick else None)
        out += [f"train.epochs={epochs}"] if epochs is not None else []
        return out

    def eval_samples(self, default: int) -> int:
        return self.iw_samples if self.iw_samples is not None else (QUICK_IW if self.quick else default)

    def n_quality(self) -> int:
        return min(self.quality_samples, QUICK_QUALITY) if self.quick else self.quality_samples


QUICK_EPOCHS, QUICK_IW, QUICK_QUALITY = 5, 200, 2000


def train_stage(stage: Stage, s: Settings, run_dir: Path) -> None:
    """Train, resume an interrupted run, or skip a finished one (`RunDir.plan`)."""
    cfg = load_config(stage.config, [*stage.overrides, *s.overrides()], named=True)   # described as changed
    cfg.name = stage.name
    plan = RunDir(run_dir).plan(cfg.train.epochs)
    if plan.action != "train":
        if plan.differences(cfg, ignore=("train.device", "description")):         # neither changes the run
            raise VaelabError(f"{run_dir} holds a run trained with other settings (quick vs full, --data or "
                              "--epochs): rerun with --force to retrain, or choose another --out")
        if plan.action == "skip":
            s.log(f"{stage.name}: trained ({plan.epoch} epochs), skipping")
            return
        s.log(f"{stage.name}: resuming at epoch {plan.epoch + 1}/{cfg.train.epochs}")
        train(None, run_dir, resume=True, quiet=s.quiet)
        return
    # a run that died before its first checkpoint is restarted by train() itself, under the run's lock (deleting it
    # here could delete a run another process is training in its first epoch)
    s.log(f"{stage.name}: training {cfg.train.epochs} epochs ({cfg.estimator.name} estimator)")
    train(cfg, run_dir, quiet=s.quiet)


def analyse_stage(stage: Stage, s: Settings, run_dir: Path) -> dict[str, Any]:
    """Evaluate, draw the figures and score samples; skipped when eval.json says it was done with these settings."""
    signature = {"quick": s.quick, "iw_samples": s.iw_samples, "quality_samples": s.n_quality()}
    done = RunDir(run_dir).eval()
    if done.get("reproduce") == signature:
        s.log(f"{stage.name}: evaluated, skipping")
        return done
    run = open_run(run_dir, s.device)
    k = s.eval_samples(run.cfg.eval.iw_samples)
    if run.model.is_autoencoder:
        from vaelab.viz.latent_figures import write_latent_figures

        s.log(f"{stage.name}: fitting the 20-component Gaussian mixture to the training codes")
        density, codes, _ = fit_run_density(run, run_dir, 20, "full", progress=not s.quiet)
        write_latent_figures(run_dir, codes, run.data.y_train.cpu().numpy(), density)
    s.log(f"{stage.name}: evaluating on {len(run.data.x_test)} test images (K={k} importance samples)")
    evaluate_run(run, run_dir, k, progress=not s.quiet)
    for mode in ("bernoulli", "threshold", "probs"):
        sample_grid(run, run_dir, 100, mode)
    sample_grid(run, run_dir, 50, "probs", reconstruct=True)
    refusal = quality_refusal(run.cfg.data.source, run_dir)
    if refusal is not None:   # the shipped classifier knows MNIST digits only: note why, and go on with the study
        s.log(f"{stage.name}: sample quality not scored: {refusal}")
    else:
        for mode in ("bernoulli", "threshold"):
            s.log(f"{stage.name}: sample quality of {s.n_quality()} {mode} samples")
            quality_run(run, run_dir, s.n_quality(), mode, progress=not s.quiet)
    merge_eval(run_dir, {"reproduce": signature})
    return RunDir(run_dir).eval()


def quality_refusal(source: str, run_dir: Path) -> str | None:
    """Why the shipped classifier cannot score a run trained on `source` (None when it can: mnist, mnist-static)."""
    from vaelab.evaluation.classifier import load_classifier
    from vaelab.evaluation.quality import classifier_refusal

    return classifier_refusal(load_classifier(), source, None, str(run_dir))


def report_inputs(s: Settings, run_dir: Path) -> None:
    """What the report shows beyond the evaluation (codes in 2-D, latent map, gradient variance); done once."""
    from vaelab.report.inputs import prepare_report_inputs

    prepare_report_inputs(run_dir, s.quick, s.device, s.log, progress=not s.quiet)


def check_stages(s: Settings) -> None:
    """Every stage's config with the settings' overrides (--device, --data, --epochs, --set), checked before the
    study's folder is created: a bad value is refused with nothing written."""
    for stage in STUDY:
        load_config(stage.config, [*stage.overrides, *s.overrides()], named=True)


def reproduce(s: Settings) -> Path:
    """Run every stage of the study into `s.out` and write report.md and report.html there."""
    check_stages(s)
    s.out.mkdir(parents=True, exist_ok=True)
    if s.force:
        for stage in STUDY:
            shutil.rmtree(s.out / stage.name, ignore_errors=True)
    timings = load_timings(s.out)
    for i, stage in enumerate(STUDY, 1):
        left = ", ".join(t.name for t in STUDY[i:]) or "-"
        s.log(f"stage {i}/{len(STUDY)}: {stage.title}  (left after this: {left})")
        t0 = time.perf_counter()
        run_dir = s.out / stage.name
        train_stage(stage, s, run_dir)
        analyse_stage(stage, s, run_dir)
        report_inputs(s, run_dir)
        timings[stage.name] = timings.get(stage.name, 0.0) + time.perf_counter() - t0
        write_json(s.out / "timings.json", timings)
    from vaelab.report.write import write_report

    paths = write_report(s, STUDY, timings)
    s.log(f"report: {paths[0]} and {paths[1]}")
    return paths[0]


def load_timings(out: Path) -> dict[str, float]:
    """timings.json ({} before the first stage); damaged is one line (report/tables.py's `read_timings`)."""
    from vaelab.report.tables import read_timings

    return read_timings(out / "timings.json")
