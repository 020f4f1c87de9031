"""Ex-post latent densities: a Gaussian mixture fitted by EM to the codes of the training set (the study's
section 4, eq. 13) turns a deterministic autoencoder into a generative model, and gives any model with a
continuous code an alternative prior (ex-post density estimation, Ghosh et al. 2020).

`GMMDensity` wraps scikit-learn's `GaussianMixture` (fit / score_samples / sample / bic, fitted state with a
trailing underscore) and exports the same density as a torch `MixtureSameFamily`, so that sampling and
importance sampling use it like any prior. It is stored as plain arrays in RUN/density.npz, never a pickle.
`select_components` picks K by BIC. Fitting a run's training codes (`vaelab fit-density`) is evaluation/run_eval.py's
`fit_run_density`; the autoencoder's likelihood under the mixture is evaluation/ae_likelihood.py's.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from torch import Tensor
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from vaelab.core.atomic import atomic_write
from vaelab.core.errors import VaelabError
from vaelab.core.progress import bar
from vaelab.models.vae import VAE

FORMAT = "vaelab-gmm-1"
DENSITY_FILE = "density.npz"
BIC_FILE = "bic.json"
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
ARRAYS = ("format", "covariance_type", "seed", "weights", "means", "covariances")   # what density.npz holds
AUTO_COMPONENTS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50)   # K tried by `--components auto`


class GMMDensity:
    """A Gaussian mixture p(z) = sum_r pi_r N(z | mu_r, Sigma_r) (seed eq. 13), fitted by sklearn's EM.

    Fitted state: weights_ [K], means_ [K, D], covariances_ in sklearn's shape for `covariance_type`
    (full [K, D, D], tied [D, D], diag [K, D], spherical [K]), converged_ and n_iter_ (NaN / -1 after `load`).
    """

    def __init__(self, n_components: int = 20, covariance_type: str = "full", seed: int = 0,
                 max_iter: int = 500, reg_covar: float = 1e-6) -> None:
        if covariance_type not in COVARIANCE_TYPES:
            raise VaelabError(f"unknown covariance type {covariance_type!r}: "
                              f"choose one of {', '.join(COVARIANCE_TYPES)}")
        if int(n_components) < 1:
            raise VaelabError(f"n_components={n_components} must be at least 1: give a positive number of components")
        self.n_components, self.covariance_type, self.seed = int(n_components), covariance_type, seed
        self.max_iter, self.reg_covar = max_iter, reg_covar

    def fit(self, codes: np.ndarray) -> GMMDensity:
        """Run EM on codes [N, D]; a run that stops at max_iter is kept and reported by `converged_`."""
        codes = _check_codes(codes, self.n_components)
        gm = GaussianMixture(self.n_components, covariance_type=self.covariance_type, max_iter=self.max_iter,
                             reg_covar=self.reg_covar, random_state=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            try:
                gm.fit(codes)
            except ValueError as err:   # sklearn: a collapsed component with an ill-defined covariance
                raise VaelabError(f"the Gaussian mixture fit failed ({str(err)[:90]}...): use fewer components "
                                  "or --covariance diag") from err
        self._set_state(gm.weights_, gm.means_, gm.covariances_)
        self.converged_, self.n_iter_ = bool(gm.converged_), int(gm.n_iter_)
        return self

    def _set_state(self, weights: np.ndarray, means: np.ndarray, covariances: np.ndarray) -> None:
        """Store the arrays and rebuild sklearn's scorer from them (the same path after `fit` and `load`)."""
        self.weights_, self.means_, self.covariances_ = (np.asarray(a, np.float64) for a in
                                                         (weights, means, covariances))
        self.n_components = len(self.weights_)
        gm = GaussianMixture(self.n_components, covariance_type=self.covariance_type, random_state=self.seed)
        gm.weights_, gm.means_, gm.covariances_ = self.weights_, self.means_, self.covariances_
        gm.precisions_cholesky_ = _precisions_cholesky(self.covariances_, self.covariance_type)
        gm.n_features_in_ = self.means_.shape[1]
        self.mixture_ = gm
        self.converged_, self.n_iter_ = float("nan"), -1

    @property
    def dim(self) -> int:
        return self.means_.shape[1]

    def score_samples(self, z: np.ndarray) -> np.ndarray:
        """log p(z) per row: [N] (sklearn's score_samples)."""
        return self.mixture_.score_samples(_check_codes(z, 1, self.dim))

    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """n draws [n, D]: a component by its weight, then its Gaussian (seed section 4), in random order.
        `seed` defaults to the density's own, so repeated calls give the same draws."""
        self.mixture_.random_state = self.seed if seed is None else seed
        z, _ = self.mixture_.sample(n)                     # sklearn returns them grouped by component
        return z[np.random.default_rng(self.mixture_.random_state).permutation(n)]

    def bic(self, codes: np.ndarray) -> float:
        """Bayesian information criterion on codes [N, D]; lower is better (sklearn's bic)."""
        return float(self.mixture_.bic(_check_codes(codes, 1, self.dim)))

    def full_covariances(self) -> np.ndarray:
        """Covariances expanded to [K, D, D] whatever the covariance type."""
        k, d, cov = self.n_components, self.dim, self.covariances_
        if self.covariance_type == "full":
            return cov.copy()
        if self.covariance_type == "tied":
            return np.broadcast_to(cov, (k, d, d)).copy()
        diag = cov if self.covariance_type == "diag" else np.repeat(cov[:, None], d, axis=1)   # [K, D]
        return np.einsum("kd,de->kde", diag, np.eye(d))

    def to_torch(self, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> MixtureSameFamily:
        """The same density as Categorical + MultivariateNormal in torch (log_prob equals score_samples)."""
        tril = np.linalg.cholesky(self.full_covariances())                    # [K, D, D], in float64
        as_t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)        # noqa: E731
        return MixtureSameFamily(Categorical(probs=as_t(self.weights_)),
                                 MultivariateNormal(as_t(self.means_), scale_tril=as_t(tril)))

    def save(self, path: str | Path) -> Path:
        """Write plain arrays to an .npz (temp file + rename): weights, means, covariances, type, format tag."""
        return atomic_write(path, lambda f: np.savez(
            f, format=np.array(FORMAT), covariance_type=np.array(self.covariance_type), seed=np.array(self.seed),
            weights=self.weights_, means=self.means_, covariances=self.covariances_))

    @classmethod
    def load(cls, path: str | Path, dim: int | None = None) -> GMMDensity:
        """Read a file written by `save`; a missing, damaged or foreign file (with `dim`: a mixture over codes of
        another size than the model's, as one copied from another run) is a VaelabError naming the fix."""
        path = Path(path)
        if not path.is_file():
            raise VaelabError(f"no fitted density at {path}: run `vaelab fit-density {path.parent}` first")
        fix = f"refit it with `vaelab fit-density {path.parent}`"
        try:
            with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:   # our handle: closed on errors
                missing = [k for k in ARRAYS if k not in f.files]
                arrays = {} if missing else {k: f[k] for k in ARRAYS}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
            raise VaelabError(f"{path} is damaged or not a vaelab density ({type(err).__name__}): {fix}") from err
        if missing:
            raise VaelabError(f"{path} is damaged or not a vaelab density (no {missing[0]!r} array): {fix}")
        if arrays["format"].shape != () or str(arrays["format"]) != FORMAT:
            raise VaelabError(f"{path} is not a vaelab density (format {str(arrays['format'])[:40]!r}): {fix}")
        try:
            density = cls(len(arrays["weights"]), str(arrays["covariance_type"]), _seed(arrays["seed"]))
            _check_state(arrays["weights"], arrays["means"], arrays["covariances"], density.covariance_type)
            density._set_state(arrays["weights"], arrays["means"], arrays["covariances"])
        except (ValueError, TypeError, IndexError, np.linalg.LinAlgError, VaelabError) as err:
            raise VaelabError(f"{path} holds an invalid mixture ({str(err)[:80]}): {fix}") from err
        if dim is not None and density.dim != dim:
            raise VaelabError(f"{path} is a mixture over {density.dim}-D codes but the run's model has "
                              f"{dim}-D codes (a density fitted to another run?): {fix}")
        return density

    def __repr__(self) -> str:
        return f"GMMDensity(n_components={self.n_components}, covariance_type={self.covariance_type!r})"


def _check_codes(codes: np.ndarray, n_components: int, dim: int | None = None) -> np.ndarray:
    """Codes as a finite float64 [N, D] array with at least `n_components` rows (and D == dim when given)."""
    if isinstance(codes, Tensor):
        codes = codes.detach().cpu().numpy()
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or (dim is not None and codes.shape[1] != dim):
        raise VaelabError(f"codes must be an [N, {dim or 'D'}] array, got shape {codes.shape}: pass one code per row")
    if not np.isfinite(codes).all():
        raise VaelabError("codes contain NaN or infinity: the encoder diverged; retrain with a lower train.lr")
    if len(codes) < n_components:
        raise VaelabError(f"{len(codes)} codes cannot fit {n_components} components: use fewer components")
    return codes


def _seed(value: np.ndarray) -> int:
    """A stored seed: one integer in numpy's seed range."""
    if value.shape != () or value.dtype.kind not in "iu" or not 0 <= int(value) < 2**32:
        raise ValueError(f"seed {str(value)[:20]} is not an integer in 0..2**32-1")
    return int(value)


def _check_state(weights: np.ndarray, means: np.ndarray, covariances: np.ndarray, covariance_type: str) -> None:
    """Refuse arrays whose shapes or values cannot be a mixture of this covariance type: real numbers, finite,
    weights >= 0 summing to 1, variances > 0, full and tied covariances symmetric (their definiteness is checked by
    the Cholesky factorisation in `_precisions_cholesky`)."""
    if any(a.dtype.kind not in "iuf" for a in (weights, means, covariances)):
        raise ValueError(f"arrays of dtype {weights.dtype}, {means.dtype}, {covariances.dtype}, not real numbers")
    if means.ndim != 2:
        raise ValueError(f"means of shape {means.shape}, not [K, D]")
    k, d = means.shape
    shapes = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}
    if weights.shape != (k,) or covariances.shape != shapes[covariance_type]:
        raise ValueError(f"shapes weights {weights.shape}, means {means.shape}, covariances {covariances.shape}")
    if not (np.isfinite(weights).all() and np.isfinite(means).all() and np.isfinite(covariances).all()):
        raise ValueError("non-finite values")
    if (weights < 0).any() or abs(weights.sum() - 1.0) > 1e-6:
        raise ValueError("weights do not sum to 1")
    if covariance_type in ("full", "tied"):
        if not np.allclose(covariances, np.swapaxes(covariances, -1, -2), rtol=1e-6, atol=1e-12):
            raise ValueError("covariances that are not symmetric")
        if (np.diagonal(covariances, axis1=-2, axis2=-1) <= 0).any():
            raise ValueError("non-positive variances")


def _precisions_cholesky(covariances: np.ndarray, covariance_type: str) -> np.ndarray:
    """sklearn's precisions_cholesky_ from covariances (as in sklearn.mixture._compute_precision_cholesky)."""
    def inv_chol(cov: np.ndarray) -> np.ndarray:
        chol = scipy.linalg.cholesky(cov, lower=True)
        return scipy.linalg.solve_triangular(chol, np.eye(len(cov)), lower=True).T

    if covariance_type == "full":
        return np.stack([inv_chol(c) for c in covariances])
    if covariance_type == "tied":
        return inv_chol(covariances)
    if (covariances <= 0).any():
        raise ValueError("non-positive variances")
    return 1.0 / np.sqrt(covariances)


def select_components(codes: np.ndarray, candidates: Iterable[int] = AUTO_COMPONENTS, covariance_type: str = "full",
                      seed: int = 0, progress: bool = False) -> tuple[int, dict[int, float]]:
    """Fit one mixture per K and return (K with the lowest BIC, {K: BIC}) for `--components auto`; `progress`: a
    bar over the K tried (core/progress.py)."""
    codes = _check_codes(codes, 1)
    ks = sorted({int(k) for k in candidates if 1 <= int(k) <= len(codes)})
    if not ks:
        raise VaelabError(f"no candidate number of components fits {len(codes)} codes: give smaller candidates")
    curve = {k: GMMDensity(k, covariance_type, seed).fit(codes).bic(codes)
             for k in bar(ks, f"fit-density: BIC of mixtures with K = {ks[0]}..{ks[-1]}", progress, unit="fits")}
    return min(curve, key=curve.get), curve


# ----- run directories: the codes of a run and its stored density -----------------------------------------


def encode(model: VAE, x: Tensor, batch_size: int = 1000) -> np.ndarray:
    """Continuous codes [N, D] float64: the AE's code or a VAE's posterior mean (the point Ghosh et al. fit)."""
    if model.latent.discrete:
        raise VaelabError(f"latent family {type(model.latent).__name__} has discrete codes; a Gaussian mixture "
                          "needs continuous ones: fit-density works on gaussian and deterministic latents")
    with torch.no_grad():
        return torch.cat([model.posterior(xb).mean for xb in x.split(batch_size)]).double().cpu().numpy()


def load_run_density(run_dir: str | Path, dim: int | None = None) -> GMMDensity:
    """The mixture fitted by `vaelab fit-density RUN`; `dim` (the model's code size) refuses one over other codes."""
    return GMMDensity.load(Path(run_dir) / DENSITY_FILE, dim)
