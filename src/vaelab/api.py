"""The Python API: `fit` a model from a preset, `load` a trained run, and work with the `Run` in memory.

    import vaelab
    run = vaelab.fit("bernoulli_vae", data="digits", estimator="disarm", epochs=5)
    print(run.evaluate(iw_samples=100)["iw_loglik"])        # nats, test-set mean
    images = run.sample(16, mode="threshold")               # [16, P] tensor
    run.save("runs/disarm")                                 # a normal run directory; vaelab.load() reads it back

Everything the CLI does goes through the same functions (train.train, run_tasks.evaluate_run, ...), so a number
from Python equals the number from the command line for the same run.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from torch import Tensor

from .config import Config, config_from_values, load_config
from .run_files import LoadedRun, open_run
from .train import train

SHORTCUTS = {"data": "data.source", "estimator": "estimator.name", "latent": "model.latent", "epochs": "train.epochs",
             "seed": "train.seed", "device": "train.device", "lr": "train.lr"}


def overrides_from(kwargs: dict[str, Any]) -> list[str]:
    """Keyword arguments as `--set` overrides: shortcuts (`estimator="disarm"`, `epochs=3`), whole sections
    (`train={"lr": 1e-3}`) or dotted keys (`**{"train.lr": 1e-3}`)."""
    out = []
    for key, value in kwargs.items():
        if isinstance(value, dict) and key not in SHORTCUTS:
            out += overrides_from({f"{key}.{k}": v for k, v in value.items()})
            continue
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        out.append(f"{SHORTCUTS.get(key, key)}={text}")
    return out


class Run:
    """A trained model with its config, data and history, backed by a run directory (a temporary one when
    `fit` was given no `out`, removed when the Run is garbage-collected or `close`d)."""

    def __init__(self, path: str | Path, device: str = "auto", tmp: tempfile.TemporaryDirectory | None = None):
        self.path, self._tmp = Path(path), tmp
        self.loaded: LoadedRun = open_run(self.path, device)

    cfg = property(lambda self: self.loaded.cfg, doc="The run's Config.")
    model = property(lambda self: self.loaded.model, doc="The VAE (encoder, latent family, decoder), eval mode.")
    data = property(lambda self: self.loaded.data, doc="DeviceData: the train/valid/test tensors on the device.")
    history = property(lambda self: self.loaded.state.get("history", []), doc="Per-epoch metrics rows.")

    def evaluate(self, iw_samples: int | None = None, exact: bool = False) -> dict[str, Any]:
        """Test ELBO, KL, reconstruction and the IW log-likelihood with its Monte Carlo error (also eval.json)."""
        from .checks import check_int
        from .run_tasks import evaluate_run

        if iw_samples is not None:
            check_int("iw_samples", iw_samples, 0, 1_000_000)
        return evaluate_run(self.loaded, self.path, iw_samples, exact=exact)

    def sample(self, n: int = 100, mode: str = "bernoulli", prior: str | None = None, seed: int = 0) -> Tensor:
        """n images [n, P] decoded from prior codes: mode bernoulli | threshold | probs; prior normal | gmm."""
        import torch

        from .run_tasks import sampling_prior
        from .sampling import sample

        p_z, _, _ = sampling_prior(self.loaded, self.path, prior)
        torch.manual_seed(seed)
        return sample(self.model, n, mode, p_z, torch.Generator(self.loaded.device).manual_seed(seed))

    def fit_density(self, components: int | str = 20, covariance: str = "full", seed: int = 0):
        """Fit a Gaussian mixture to the training codes (K by BIC with "auto"); returns the GMMDensity."""
        from .run_tasks import fit_run_density

        return fit_run_density(self.loaded, self.path, components, covariance, seed)[0]

    def quality(self, n: int = 10000, mode: str = "bernoulli", prior: str | None = None,
                classifier: str | Path | None = None) -> dict[str, Any]:
        """Sample-quality scores (also eval.json), as `vaelab quality`: with the shipped MNIST classifier for runs
        on mnist or mnist-static, else with `classifier`, a file of `vaelab classifier train --data SOURCE` for
        the run's own data; any other pairing raises a VaelabError naming both data sets."""
        from .run_tasks import quality_run

        return quality_run(self.loaded, self.path, n, mode, prior, None if classifier is None else str(classifier))

    def save(self, path: str | Path) -> Path:
        """Copy the run directory to `path` (which must not exist); `vaelab.load(path)` opens it again."""
        path = Path(path)
        if path.exists():
            from .errors import VaelabError
            raise VaelabError(f"{path} exists: save to a new path")
        shutil.copytree(self.path, path, ignore=shutil.ignore_patterns("train.lock", "*.tmp"))
        return path

    def close(self) -> None:
        """Remove the temporary run directory of an in-memory run (nothing for a saved one)."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __repr__(self) -> str:
        epochs = len(self.history)
        return f"Run({self.cfg.name!r}, {self.cfg.estimator.name}, {epochs} epochs, {str(self.path)!r})"


def fit(config: str | Path | Config | dict | None = "gaussian_vae", out: str | Path | None = None, *,
        quiet: bool = True, **overrides: Any) -> Run:
    """Train a model and return its Run. `config`: a preset name ("bernoulli_vae", "literature/disarm_linear"), a
    YAML path, a dict or a Config; `overrides`: see `overrides_from`. With `out` the run is written there (as
    `vaelab train ... --out`); without, it lives in a temporary directory until the Run is closed or saved. As with
    `vaelab train`, the run's name and description say what the overrides change (`config.name_variant`): e.g.
    `fit("bernoulli_vae", estimator="disarm")` is named bernoulli_vae-disarm and not described as the seed's SFE."""
    if isinstance(config, Config):
        config = config.to_dict()
    if isinstance(config, dict):
        cfg = config_from_values(config, overrides_from(overrides), named=True)
    else:
        cfg = load_config(config, overrides_from(overrides), named=True)
    tmp = tempfile.TemporaryDirectory(prefix="vaelab-") if out is None else None
    run_dir = Path(tmp.name) / "run" if tmp is not None else Path(out)
    train(cfg, run_dir, quiet=quiet)
    return Run(run_dir, cfg.train.device, tmp)


def load(path: str | Path, device: str = "auto") -> Run:
    """Open a trained run directory (written by `vaelab train`, `fit(out=...)` or `Run.save`)."""
    return Run(path, device)
