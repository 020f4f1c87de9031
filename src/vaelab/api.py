"""The Python API: `fit` a model from a preset, `load` a trained run, and work with the `Run` in memory.

    import vaelab
    with vaelab.fit("bernoulli_vae", data="digits", estimator="disarm", epochs=5) as run:
        print(run.evaluate(iw_samples=100)["iw_loglik"])    # nats, test-set mean
        codes = run.encode(run.data.x_test)                 # [N, D] posterior means
        run.save_grid("samples.png", 64)                    # a PNG grid of prior samples
        run.save("runs/disarm")                             # a normal run directory; vaelab.load() reads it back

`data` is a source name ("digits", "mnist", ...), a path, or arrays: `x_train`, `(x_train, x_test)` or a dict of
x_train / x_test / x_valid with optional y_* labels (numpy or torch), checked like a user .npz and stored as
RUN/data.npz. Everything the CLI does goes through the same functions (train.train, run_tasks.evaluate_run, ...),
so a number from Python equals the number from the command line for the same run. Arguments are checked as the
CLI checks its options (api_args.py): a bad value raises an `ArgumentError` (a ValueError), a wrong type an
`ArgumentTypeError` (a TypeError), both VaelabErrors with the CLI's one line; numpy scalars and paths are taken.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
import yaml
from safetensors import safe_open
from torch import Tensor

from vaelab.api_args import (
    SHORTCUTS,
    ArgumentError,
    ArgumentTypeError,
    as_argument_error,
    bool_arg,
    choice_arg,
    components_arg,
    config_arg,
    device_arg,
    image_path,
    int_arg,
    path_arg,
    save_path,
    scalar,
    seed_arg,
    shortcut,
    shown,
)
from vaelab.cli.args import IMAGE_EXTENSIONS, QUALITY_N_MAX, SAMPLE_N_MAX
from vaelab.cli.main import absolute_data_path
from vaelab.config.limits import IW_SAMPLES_MAX
from vaelab.config.schema import Config, config_from_values, config_from_yaml_text, load_config
from vaelab.core import yaml_io
from vaelab.core.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from vaelab.core.errors import VaelabError, did_you_mean
from vaelab.data.sources import load_dataset
from vaelab.runs.lifecycle import check_run_dir
from vaelab.runs.loaded_run import LoadedRun, open_run
from vaelab.training.trainer import train

__all__ = ["ArgumentError", "ArgumentTypeError", "Run", "fit", "load", "overrides_from"]

DATA_FILE = "data.npz"     # arrays given to `fit(data=...)`, stored in the run directory
DATA_KEYS = ("x_train", "x_valid", "x_test", "y_train", "y_valid", "y_test")
PRIORS = (None, "normal", "gmm")    # `sample`'s and `quality`'s prior: None is the run's own choice
QUALITY_K = 3                       # neighbours of the precision/recall manifolds (`vaelab quality --k`'s default)


def overrides_from(kwargs: dict[str, Any]) -> list[str]:
    """Keyword arguments as `--set` overrides: shortcuts (`estimator="disarm"`, `epochs=3`), whole sections
    (`train={"lr": 1e-3}`) or dotted keys (`**{"train.lr": 1e-3}`). Numpy scalars, 0-d arrays and paths become
    plain values; another object, or a shortcut of the wrong type (`epochs=2.5`), is an ArgumentTypeError."""
    out = []
    for key, value in kwargs.items():
        value = shortcut(key, value)
        if isinstance(value, dict) and key not in SHORTCUTS:
            out += overrides_from({f"{key}.{k}": v for k, v in value.items()})
            continue
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        out.append(f"{SHORTCUTS.get(key, key)}={text}")
    return out


def _array(value: Any, where: str) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise ArgumentTypeError(f"{where} is a {type(value).__name__}: give a numpy array or a torch tensor")


def data_arrays(data: Any) -> dict[str, np.ndarray]:
    """`fit(data=...)` arrays as the members of a user .npz: x_train alone (the last tenth becomes x_test),
    (x_train, x_test), or a dict of x_train, x_test (optional: the last tenth of x_train), x_valid and labels y_*."""
    if isinstance(data, tuple):
        if len(data) != 2:
            raise ArgumentError(f"data is a tuple of {len(data)}: give (x_train, x_test) or a dict with x_train, "
                                "x_test and optionally x_valid and y_* labels")
        arrays = {"x_train": _array(data[0], "data[0] (x_train)"), "x_test": _array(data[1], "data[1] (x_test)")}
    elif isinstance(data, Mapping):
        unknown = [k for k in data if k not in DATA_KEYS]
        if unknown:
            raise ArgumentError(f"data has key {unknown[0]!r}: {did_you_mean(unknown[0], DATA_KEYS)}use "
                                f"{', '.join(DATA_KEYS)}")
        arrays = {k: _array(v, f"data[{k!r}]") for k, v in data.items()}
    elif isinstance(data, np.ndarray | Tensor | list):
        arrays = {"x_train": _array(data, "data")}
    else:
        raise ArgumentTypeError(f"data = {shown(data)} is a {type(data).__name__}: give a source name, a path, or "
                                "images (a numpy array or a torch tensor, a tuple or a dict of them)")
    if "x_train" not in arrays:
        raise ArgumentError(f"data has keys {sorted(arrays)}: x_train is required (x_test and x_valid optional)")
    if "x_test" not in arrays:
        arrays = _hold_out_test(arrays)
    return arrays


def _hold_out_test(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Without x_test, the last tenth of x_train (and of y_train) is the test set."""
    x = arrays["x_train"]
    if x.ndim not in (2, 3) or len(x) < 3:
        raise ArgumentError(f"data: x_train has shape {x.shape} and there is no x_test: give images [N, P] or "
                            "[N, H, W], N >= 3 (a tenth is held out as the test set), or (x_train, x_test)")
    n_test = max(1, len(x) // 10)
    out = dict(arrays)
    for k in ("x", "y"):
        if f"{k}_train" in arrays:
            out[f"{k}_train"], out[f"{k}_test"] = arrays[f"{k}_train"][:-n_test], arrays[f"{k}_train"][-n_test:]
    return out


def store_data(data: Any, run_dir: Path) -> Path:
    """Check `data` arrays like a user .npz (`load_dataset`: shapes, values in [0, 1], labels) and write them
    as RUN/data.npz (atomically; nothing is written when they are refused). Returns the file's absolute path."""
    arrays = data_arrays(data)
    target = run_dir.resolve() / DATA_FILE
    check_run_dir(run_dir, resume=False)            # a directory holding a run is refused before its data changes
    made = not run_dir.exists()
    try:
        with atomic_path(target) as tmp:
            np.savez(tmp, **arrays)
            with as_argument_error((str(tmp), "data")):
                load_dataset(str(tmp))
    except ArgumentError:
        if made:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return target


def _moved_data(path: Path) -> str | None:
    """RUN/data.npz when the run was trained on arrays (config data.source .../data.npz) and its directory has
    moved since (a saved copy, `mv`): the stored absolute path no longer exists, the file beside the run does."""
    try:
        source = yaml_io.read_mapping(path / "config.yaml", "")["data"]["source"]
    except (VaelabError, KeyError, TypeError):
        return None
    here = path.resolve() / DATA_FILE
    moved = isinstance(source, str) and Path(source).name == DATA_FILE and not Path(source).exists()
    return str(here) if moved and here.is_file() else None


class Run:
    """A trained model with its config, data and history, backed by a run directory (a temporary one when
    `fit` was given no `out`, removed by `close`, at the end of a `with` block, or when garbage-collected)."""

    def __init__(self, path: str | Path, device: str = "auto", tmp: tempfile.TemporaryDirectory | None = None):
        self.path, self._tmp = Path(path_arg("path", path)), tmp
        self.loaded: LoadedRun = open_run(self.path, device_arg("device", device), _moved_data(self.path))

    cfg = property(lambda self: self.loaded.cfg, doc="The run's Config.")
    model = property(lambda self: self.loaded.model, doc="The VAE (encoder, latent family, decoder), eval mode.")
    data = property(lambda self: self.loaded.data, doc="DeviceData: the train/valid/test tensors on the device.")
    history = property(lambda self: self.loaded.state.get("history", []), doc="Per-epoch metrics rows.")

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:   # `with vaelab.fit(...) as run:` removes a temporary run at the end
        self.close()

    def _images(self, x: Any, name: str = "x", binary: bool = False) -> Tensor:
        """`x` ([N, P] or [N, H, W], numpy or torch, values in [0, 1]) as float32 [N, P] on the run's device."""
        t = torch.as_tensor(_array(x, name))
        h, w = self.model.image_shape
        shapes = ((h * w,), (h, w))
        if t.ndim not in (2, 3) or tuple(t.shape[1:]) not in shapes or len(t) == 0:
            raise ArgumentError(f"{name} has shape {tuple(t.shape)}: give images [N, {h * w}] or [N, {h}, {w}] "
                                "like the run's data")
        if t.is_complex():
            raise ArgumentError(f"{name} has dtype {t.dtype}: give real-valued images in [0, 1]")
        t = t.reshape(len(t), h * w).to(self.loaded.device, torch.float32)    # [N, P]
        if not bool(torch.isfinite(t).all()) or bool((t < 0).any()) or bool((t > 1).any()):
            raise ArgumentError(f"{name} has values outside [0, 1] or NaN: scale images to [0, 1]")
        if binary and not bool(((t == 0) | (t == 1)).all()):
            raise ArgumentError(f"{name} is not binary: log p(x) of a Bernoulli decoder needs 0/1 pixels; "
                                f"binarize first, e.g. (x > 0.5)")
        return t

    @torch.no_grad()
    def encode(self, x: Any) -> Tensor:
        """Codes [N, D] of images x [N, P] or [N, H, W]: the posterior mean E q(z|x) (the AE's code; the bits'
        probabilities for a Bernoulli latent)."""
        x = self._images(x)
        return torch.cat([self.model.posterior(xb).mean for xb in x.split(self.cfg.eval.batch_size)])  # [N, D]

    def reconstruct(self, x: Any, mode: str = "probs", seed: int = 0) -> Tensor:
        """Images [N, P] decoded from the posterior mean codes of x; mode probs | threshold | bernoulli."""
        from vaelab.models.sampling import DECODE_MODES, reconstruct

        choice_arg("mode", mode, tuple(DECODE_MODES))
        seed = seed_arg("seed", seed)
        x = self._images(x)
        gen = torch.Generator(self.loaded.device).manual_seed(seed)
        return torch.cat([reconstruct(self.model, xb, mode, gen) for xb in x.split(self.cfg.eval.batch_size)])

    def log_prob(self, x: Any, k: int = 1000, seed: int = 0) -> Tensor:
        """Per-example log p(x) estimates [N] in nats: the importance-weighted bound log (1/k) sum_k p(x, z_k) /
        q(z_k|x) of `vaelab evaluate` (k = 1: a one-sample ELBO; it tightens as k grows). x: binary images.
        An autoencoder uses its fitted mixture (`fit_density` first) and the proposal `vaelab evaluate` uses."""
        from vaelab.evaluation.bounds import iw_loglik

        k = int_arg("k", k, 1, IW_SAMPLES_MAX)
        seed = seed_arg("seed", seed)
        x = self._images(x, binary=True)
        model, proposal = self.model, None
        if model.is_autoencoder:
            from vaelab.evaluation.ae_likelihood import PROPOSAL_FIT_IMAGES, WithPrior, fit_proposal
            from vaelab.models.density import load_run_density

            model = WithPrior(model, load_run_density(self.path, model.latent.dim).to_torch(self.loaded.device))
            proposal = fit_proposal(model, self.data.x_valid[:PROPOSAL_FIT_IMAGES], seed=seed)[0]
        torch.manual_seed(seed)
        return iw_loglik(model, x, k, self.cfg.eval.batch_size, proposal=proposal)

    def evaluate(self, iw_samples: int | None = None, exact: bool = False) -> dict[str, Any]:
        """Test ELBO, KL, reconstruction and the IW log-likelihood with its Monte Carlo error (also eval.json)."""
        from vaelab.evaluation.run_eval import evaluate_run

        if iw_samples is not None:
            iw_samples = int_arg("iw_samples", iw_samples, 0, IW_SAMPLES_MAX, "; 0 skips the IW estimate")
        return evaluate_run(self.loaded, self.path, iw_samples, exact=bool_arg("exact", exact))

    def sample(self, n: int = 100, mode: str = "bernoulli", prior: str | None = None, seed: int = 0) -> Tensor:
        """n images [n, P] decoded from prior codes: mode bernoulli | threshold | probs; prior normal | gmm.
        `n` from 1 to 10,000 and `seed` in 0..2^63-1, as `vaelab sample` takes them."""
        from vaelab.evaluation.run_eval import sampling_prior
        from vaelab.models.sampling import DECODE_MODES, sample

        n = int_arg("n", n, 1, SAMPLE_N_MAX, " of one call")
        seed = seed_arg("seed", seed)
        choice_arg("mode", mode, tuple(DECODE_MODES))
        choice_arg("prior", prior, PRIORS)
        p_z, _, _ = sampling_prior(self.loaded, self.path, prior)
        torch.manual_seed(seed)
        return sample(self.model, n, mode, p_z, torch.Generator(self.loaded.device).manual_seed(seed))

    def save_grid(self, path: str | Path, n: int = 100, mode: str = "bernoulli", prior: str | None = None,
                  seed: int = 0) -> Path:
        """Save n prior samples as one image grid at `path` (.png, .jpg, .pdf or .svg), as `vaelab sample --out`;
        `sample`'s arguments. Returns the path."""
        from vaelab.evaluation.run_eval import sample_grid
        from vaelab.models.sampling import DECODE_MODES

        n = int_arg("n", n, 1, SAMPLE_N_MAX, " of one grid")
        seed = seed_arg("seed", seed)
        choice_arg("mode", mode, tuple(DECODE_MODES))
        choice_arg("prior", prior, PRIORS)
        out = image_path(path, "path", IMAGE_EXTENSIONS)
        return sample_grid(self.loaded, self.path, n, mode, prior, seed=seed, out=out)

    def fit_density(self, components: int | str = 20, covariance: str = "full", seed: int = 0):
        """Fit a Gaussian mixture to the training codes (K by BIC with "auto"); returns the GMMDensity.
        `components` from 1 to the number of training images, or "auto"; `covariance` full | tied | diag | spherical."""
        from vaelab.evaluation.run_eval import fit_run_density
        from vaelab.models.density import COVARIANCE_TYPES

        components = components_arg(components, len(self.data.x_train))
        choice_arg("covariance", covariance, COVARIANCE_TYPES)
        return fit_run_density(self.loaded, self.path, components, covariance, seed_arg("seed", seed))[0]

    def quality(self, n: int = 10000, mode: str = "bernoulli", prior: str | None = None,
                classifier: str | Path | None = None) -> dict[str, Any]:
        """Sample-quality scores (also eval.json), as `vaelab quality`: with the shipped MNIST classifier for runs
        on mnist or mnist-static, else with `classifier`, a file of `vaelab classifier train --data SOURCE` for
        the run's own data; any other pairing raises a VaelabError naming both data sets."""
        from vaelab.evaluation.run_eval import quality_run
        from vaelab.models.sampling import DECODE_MODES

        n = int_arg("n", n, QUALITY_K + 1, QUALITY_N_MAX, " of samples held in memory")
        choice_arg("mode", mode, tuple(DECODE_MODES))
        choice_arg("prior", prior, PRIORS)
        classifier = None if classifier is None else path_arg("classifier", classifier)
        return quality_run(self.loaded, self.path, n, mode, prior, classifier, QUALITY_K)

    def save(self, path: str | Path) -> Path:
        """Copy the run directory to `path` (which must not exist); `vaelab.load(path)` and every CLI command open
        it. A run trained on arrays keeps them as PATH/data.npz, and the copy's config points there. The copy is made
        beside PATH and renamed into place: PATH is the whole run or nothing. PATH inside the run itself is refused."""
        path = save_path(path, self.path)
        tmp = path.parent / f".{path.name}.save-{os.getpid()}.tmp"
        try:
            shutil.copytree(self.path, tmp, ignore=shutil.ignore_patterns("train.lock", "*.tmp"))
            if self.cfg.data.source == str(self.path.resolve() / DATA_FILE):
                _repoint_data(tmp, str(path.resolve() / DATA_FILE))
            os.rename(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    def close(self) -> None:
        """Remove the temporary run directory of an in-memory run (nothing for a saved one)."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __repr__(self) -> str:
        epochs = len(self.history)
        return f"Run({self.cfg.name!r}, {self.cfg.estimator.name}, {epochs} epochs, {str(self.path)!r})"


def _repoint_data(run_dir: Path, source: str) -> None:
    """Set data.source to `source` in a copied run's config.yaml and checkpoint metadata (weights unchanged)."""
    def moved(text: str) -> str:
        cfg = config_from_yaml_text(text)
        cfg.data.source = source
        return cfg.to_yaml()

    if (run_dir / "config.yaml").is_file():
        atomic_write_text(run_dir / "config.yaml", moved((run_dir / "config.yaml").read_text()))
    for ckpt in (run_dir / "checkpoint", run_dir / "checkpoint.old"):
        weights = ckpt / "model.safetensors"
        if weights.is_file():
            with safe_open(weights, framework="pt") as f:
                meta = dict(f.metadata() or {})
            tensors = safetensors.torch.load_file(weights)
            meta["config"] = moved(meta["config"])
            atomic_write_bytes(weights, safetensors.torch.save(tensors, metadata=meta))


def fit(config: str | Path | Config | dict | None = "gaussian_vae", out: str | Path | None = None, *,
        data: Any = None, quiet: bool = True, **overrides: Any) -> Run:
    """Train a model and return its Run (a context manager: `with vaelab.fit(...) as run:` closes it).

    `config`: a preset name ("bernoulli_vae", "literature/disarm_linear"), a YAML path, a dict or a Config.
    `data`: a source name or path, or arrays (numpy or torch): `x_train` (the last tenth is held out as the test
    set), `(x_train, x_test)`, or a dict with x_train and optionally x_test, x_valid and labels y_train, y_test,
    y_valid (all or none), images [N, P] or [N, H, W] with values in [0, 1] (or uint8); they are checked like a
    user .npz and stored as RUN/data.npz, which the run's config names. `overrides`: keyword arguments as in
    `overrides_from` (shortcuts `estimator`, `latent`, `epochs`, `seed`, `device`, `lr`; whole sections
    `train={"lr": 1e-3}`; dotted keys). With `out` the run is written there (as `vaelab train ... --out`); without,
    it lives in a temporary directory until the Run is closed or saved. As with `vaelab train`, the run's name and
    description say what the overrides change: `fit("bernoulli_vae", estimator="disarm")` is bernoulli_vae-disarm."""
    config, source = config_arg(config), scalar(data)
    out, quiet = None if out is None else path_arg("out", out), bool_arg("quiet", quiet)
    arrays = data is not None and not isinstance(source, str | os.PathLike)
    tmp = tempfile.TemporaryDirectory(prefix="vaelab-") if out is None else None
    run_dir = Path(tmp.name) / "run" if tmp is not None else Path(out)
    try:
        if data is not None:   # a relative data path made absolute, as `vaelab train --data` does
            overrides["data"] = str(run_dir.resolve() / DATA_FILE) if arrays else absolute_data_path(
                path_arg("data", source))
        with as_argument_error():
            if isinstance(config, dict):
                cfg = config_from_values(config, overrides_from(overrides), named=True)
            else:
                cfg = load_config(config, overrides_from(overrides), named=True)
        if arrays:   # described without the (temporary) path: "... with data arrays given to vaelab.fit in place ..."
            cfg.description = cfg.description.replace(overrides["data"], "arrays given to vaelab.fit")
            store_data(data, run_dir)
        train(cfg, run_dir, quiet=quiet)
        return Run(run_dir, cfg.train.device, tmp)
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise


def load(path: str | Path, device: str = "auto") -> Run:
    """Open a trained run directory (written by `vaelab train`, `fit(out=...)` or `Run.save`)."""
    return Run(path, device)
