"""Named benchmark sets: static (fixed-binarization) MNIST, Fashion-MNIST, Omniglot 28x28, Caltech-101 silhouettes.

Each set is read from the user cache (`<cache>/<name>.npz`, cache = `cache_dir`, `$VAELAB_DATA` or ~/.cache/vaelab),
else from its original files put by hand in `<cache>/<name>/`, else downloaded from its canonical location
(`VAELAB_<NAME>_URL` overrides the base URL; the file names are appended). Originals are checked against the sha256
that tensorflow/datasets publishes where there is one; otherwise by trust on first use: the sha256 of the first copy
is recorded in `<cache>/sources-manifest.json` and every later copy must match it. The cache file's own sha256 is
recorded there when it is written (or first read) and checked on every read. Sets without labels get y = -1.
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import scipy.io
from scipy.io.matlab import MatReadError

from vaelab.core.atomic import atomic_write, atomic_write_text
from vaelab.core.errors import VaelabError, did_you_mean
from vaelab.data.datasets import SOURCES as DATA_SOURCES
from vaelab.data.datasets import (
    SPLIT_KEYS,
    Splits,
    _read_idx,
    download,
    load_splits,
    mnist_cache_dir,
    pixels_from_bytes,
)
from vaelab.data.npz import check_npz

MANIFEST = "sources-manifest.json"
WRITE_FIX = "set VAELAB_DATA to a writable folder"
PIXELS = 784  # every set here is 28x28
PARTS = ("train", "valid", "test")


@dataclass(frozen=True)
class Original:
    """One original file: its name, and its size and sha256 where a source publishes them (None: trust on first use)."""

    filename: str
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Source:
    """A named benchmark set: what it is, its split sizes, where it comes from, and how its originals are read."""

    name: str
    description: str
    sizes: tuple[int, int, int]  # train, valid, test
    origin: str
    base_url: str
    files: tuple[Original, ...]
    binary: bool  # pixels are exactly 0/1: use data.binarize "none" (dynamic binarization leaves them unchanged)
    n_classes: int  # labels are 0..n_classes-1; 0 means the set has no labels and y is -1
    read: Callable[[Source, list[Path]], dict[str, np.ndarray]] = field(repr=False, compare=False)

    @property
    def url_env(self) -> str:
        """The environment variable that overrides the base URL, e.g. VAELAB_MNIST_STATIC_URL."""
        return "VAELAB_" + self.name.upper().replace("-", "_") + "_URL"


# --- readers: original files -> the six split arrays; a ValueError names what is wrong with which file -----------


def _read_amat(path: Path, width: int = PIXELS) -> np.ndarray:
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


def _count(x: np.ndarray, expected: int, what: str) -> None:
    """Raise ValueError unless x has `expected` rows."""
    if len(x) != expected:
        raise ValueError(f"{what} has {len(x)} images, the published split has {expected}")


def _six(xs: list[np.ndarray], ys: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The six split arrays x_train, y_train, ... from train/valid/test images and labels (none given: y = -1)."""
    ys = ys if ys is not None else [np.full(len(x), -1, dtype=np.int64) for x in xs]
    return {key: a for part, x, y in zip(PARTS, xs, ys, strict=True) for key, a in ((f"x_{part}", x), (f"y_{part}", y))}


def _read_static_mnist(spec: Source, paths: list[Path]) -> dict[str, np.ndarray]:
    """Larochelle's binarized_mnist_{train,valid,test}.amat: the three splits as published, no labels."""
    xs = [_read_amat(path) for path in paths]
    for x, n, path in zip(xs, spec.sizes, paths, strict=True):
        _count(x, n, path.name)
    return _six(xs)


def _read_fashion(spec: Source, paths: list[Path]) -> dict[str, np.ndarray]:
    """Fashion-MNIST IDX files: train is split into the first sizes[0] and the last sizes[1] images."""
    x_tr, y_tr, x_te, y_te = (_read_idx(p, m) for p, m in zip(paths, (2051, 2049, 2051, 2049), strict=True))
    n_tr, n_va, n_te = spec.sizes
    for x, y, n, path in ((x_tr, y_tr, n_tr + n_va, paths[0]), (x_te, y_te, n_te, paths[2])):
        _count(x, n, path.name)
        if x.shape[1:] != (28, 28) or len(y) != n:
            raise ValueError(f"{path.name}: images {x.shape[1:]} and {len(y)} labels for {n} images, expected 28x28")
    xs = [pixels_from_bytes(x.reshape(len(x), -1)) for x in (x_tr[:n_tr], x_tr[n_tr:], x_te)]
    return _six(xs, [y.astype(np.int64) for y in (y_tr[:n_tr], y_tr[n_tr:], y_te)])


def _loadmat(path: Path, keys: list[str]) -> dict[str, np.ndarray]:
    """Read the named variables of a MATLAB v5 file with scipy.io.loadmat (no pickle involved)."""
    try:
        mat = scipy.io.loadmat(path, variable_names=keys)
    except (OSError, ValueError, TypeError, NotImplementedError, EOFError, zlib.error, MatReadError) as e:
        raise ValueError(f"{path.name} is not a readable MATLAB file ({e})") from e
    missing = [key for key in keys if key not in mat]
    if missing:
        raise ValueError(f"{path.name} lacks the variables {missing} (has {sorted(k for k in mat if k[0] != '_')})")
    return {key: mat[key] for key in keys}


def _mat_images(a: np.ndarray, n: int, what: str, columns: bool) -> np.ndarray:
    """Images stored one per column (or row) as column-major 28x28 vectors -> float32 [n, 784] in row-major order."""
    if a.ndim != 2 or a.dtype.kind not in "biuf":
        raise ValueError(f"{what} is {a.dtype} {a.shape}: expected a numeric matrix of images")
    x = a.T if columns else a
    if x.shape[1] != PIXELS:
        raise ValueError(f"{what} has shape {a.shape}: expected {PIXELS} pixels per image")
    _count(x, n, what)
    x = x.astype(np.float32)
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ValueError(f"{what} has values outside [0, 1]")
    return np.ascontiguousarray(x.reshape(n, 28, 28).transpose(0, 2, 1)).reshape(n, PIXELS)  # MATLAB's im(:) order


def _onehot_labels(t: np.ndarray, n: int, what: str, n_classes: int) -> np.ndarray:
    """Labels from a one-hot matrix [K, n] (one column per image, K <= n_classes) -> int64 [n] in 0..K-1."""
    if t.ndim != 2 or t.shape[1] != n or not 1 <= t.shape[0] <= n_classes:
        raise ValueError(f"{what} is {t.shape}: expected one-hot columns [K <= {n_classes}, {n}]")
    if not np.isin(t, (0, 1)).all() or not (t.sum(axis=0) == 1).all():
        raise ValueError(f"{what} is not one-hot: every column must hold exactly one 1")
    return t.argmax(axis=0).astype(np.int64)


def _read_omniglot(spec: Source, paths: list[Path]) -> dict[str, np.ndarray]:
    """IWAE's chardata.mat: images as columns, alphabets one-hot; valid = the last sizes[1] training images."""
    mat = _loadmat(paths[0], ["data", "testdata", "target", "testtarget"])
    n_tr, n_va, n_te = spec.sizes
    x_train = _mat_images(mat["data"], n_tr + n_va, f"{paths[0].name}: data", columns=True)
    x_test = _mat_images(mat["testdata"], n_te, f"{paths[0].name}: testdata", columns=True)
    y_train = _onehot_labels(mat["target"], n_tr + n_va, f"{paths[0].name}: target", spec.n_classes)
    y_test = _onehot_labels(mat["testtarget"], n_te, f"{paths[0].name}: testtarget", spec.n_classes)
    return _six([x_train[:n_tr], x_train[n_tr:], x_test], [y_train[:n_tr], y_train[n_tr:], y_test])


def _read_caltech(spec: Source, paths: list[Path]) -> dict[str, np.ndarray]:
    """caltech101_silhouettes_28_split1.mat: {train,val,test}_data rows of 784, *_labels 1..101 (stored as 0..100)."""
    mat = _loadmat(paths[0], [f"{p}_{k}" for p in ("train", "val", "test") for k in ("data", "labels")])
    out = {}
    for part, key, n in zip(PARTS, ("train", "val", "test"), spec.sizes, strict=True):
        out[f"x_{part}"] = _mat_images(mat[f"{key}_data"], n, f"{paths[0].name}: {key}_data", columns=False)
        y = mat[f"{key}_labels"]
        if y.size != n or y.dtype.kind not in "biuf" or not np.isin(y, np.arange(1, spec.n_classes + 1)).all():
            raise ValueError(f"{paths[0].name}: {key}_labels must be {n} integers in 1..{spec.n_classes}")
        out[f"y_{part}"] = y.reshape(-1).astype(np.int64) - 1
    return out


# Published sha256 and sizes of the originals: tensorflow/datasets, tensorflow_datasets/url_checksums/
# binarized_mnist.txt and fashion_mnist.txt. Omniglot and Caltech silhouettes have none: trust on first use.
SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "mnist-static", "MNIST with Larochelle & Murray's fixed binarization: binary pixels, no labels (y = -1)",
            (50000, 10000, 10000), "Larochelle's binarized_mnist_{train,valid,test}.amat, splits as published",
            "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",
            (Original("binarized_mnist_train.amat", 78400000,
                      "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d"),
             Original("binarized_mnist_valid.amat", 15680000,
                      "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2"),
             Original("binarized_mnist_test.amat", 15680000,
                      "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c")),
            binary=True, n_classes=0, read=_read_static_mnist),
        Source(
            "fashion-mnist", "Zalando's Fashion-MNIST: grayscale in [0, 1] (binarize it like MNIST), labels 0..9",
            (50000, 10000, 10000), "Zalando's IDX files; valid = the last 10,000 of the 60,000 training images",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            (Original("train-images-idx3-ubyte.gz", 26421880,
                      "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
             Original("train-labels-idx1-ubyte.gz", 29515,
                      "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
             Original("t10k-images-idx3-ubyte.gz", 4422102,
                      "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
             Original("t10k-labels-idx1-ubyte.gz", 5148,
                      "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5")),
            binary=False, n_classes=10, read=_read_fashion),
        Source(
            "omniglot", "Omniglot 28x28 as used by IWAE: grayscale in [0, 1] (binarize it), alphabet labels",
            (23000, 1345, 8070), "chardata.mat of the IWAE code (yburda/iwae); valid = the last 1,345 of the 24,345 "
            "training images, as in the DisARM code",
            "https://raw.githubusercontent.com/yburda/iwae/master/datasets/OMNIGLOT/",
            (Original("chardata.mat"),), binary=False, n_classes=50, read=_read_omniglot),
        Source(
            "caltech-silhouettes", "Caltech-101 silhouettes 28x28: binary pixels, class labels 0..100",
            (4100, 2264, 2307), "Marlin et al. (2010), caltech101_silhouettes_28_split1.mat, splits as published",
            "https://people.cs.umass.edu/~marlin/data/",
            (Original("caltech101_silhouettes_28_split1.mat"),), binary=True, n_classes=101, read=_read_caltech),
    )
}


def _check_arrays(spec: Source, arrays: dict[str, np.ndarray]) -> None:
    """Raise ValueError unless the six arrays have the published sizes, dtypes, pixel values and label range."""
    for part, n in zip(PARTS, spec.sizes, strict=True):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.dtype != np.float32 or x.shape != (n, PIXELS) or y.dtype != np.int64 or y.shape != (n,):
            raise ValueError(f"{part} is {x.dtype} {x.shape} / {y.dtype} {y.shape}, expected float32 [{n}, {PIXELS}]"
                             f" / int64 [{n}]")
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise ValueError(f"{part} images have values outside [0, 1]")
        if spec.binary and not np.isin(x, (0, 1)).all():
            raise ValueError(f"{part} images are not binary, but {spec.name} is published as 0/1 pixels")
        low, high = (-1, -1) if spec.n_classes == 0 else (0, spec.n_classes - 1)
        if y.size and (y.min() < low or y.max() > high):
            raise ValueError(f"{part} labels are outside {low}..{high}")


# --- the manifest of recorded sha256s, the cache, downloads ------------------------------------------------------


def _sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _load_manifest(root: Path) -> dict:
    """The recorded sha256s ({} when there is no manifest yet)."""
    path = root / MANIFEST
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as e:
        raise VaelabError(f"{path} is unreadable ({e}): restore it, or delete it to record the files anew") from e


def _record(root: Path, name: str, files: dict[str, dict] | None = None, cache: str | None = None) -> None:
    """Add first-seen file sha256s and/or the cache sha256 of `name` to the manifest (recorded entries stay)."""
    manifest = _load_manifest(root)
    entry = manifest.setdefault(name, {})
    for filename, info in (files or {}).items():
        entry.setdefault("files", {}).setdefault(filename, info)
    if cache is not None:
        entry["cache"] = {"file": f"{name}.npz", "sha256": cache}
    atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True), fix=WRITE_FIX)


def _read_cache(spec: Source, path: Path, root: Path) -> Splits:
    """Load the cached .npz after checking its sha256 against the manifest, then its arrays against the spec."""
    digest = _sha256(path)
    recorded = _load_manifest(root).get(spec.name, {}).get("cache", {}).get("sha256")
    if recorded is not None and recorded != digest:
        raise VaelabError(f"{path} changed since it was written (sha256 {digest}, recorded {recorded} in "
                          f"{root / MANIFEST}): delete it to rebuild it from the original files")
    try:
        check_npz(path, SPLIT_KEYS)  # no pickles, no absurd headers, before numpy reads an array
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in SPLIT_KEYS}
        _check_arrays(spec, arrays)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise VaelabError(f"{spec.name} cache {path} is corrupt ({e}): delete it and run again") from e
    if recorded is None:  # a cache put here by hand, or a deleted manifest: trust it from now on
        _record(root, spec.name, cache=digest)
    return Splits(**arrays, image_shape=(28, 28), name=spec.name)


def _check_original(spec: Source, original: Original, path: Path, recorded: dict, where: str) -> dict:
    """Compare a file's sha256 with the published or the first recorded one; return its manifest record."""
    digest, size = _sha256(path), path.stat().st_size
    expected = original.sha256 or recorded.get(original.filename, {}).get("sha256")
    if expected is not None and digest != expected:
        known = "published" if original.sha256 else f"recorded in {MANIFEST} on first use"
        sizes = f", {size} bytes" + (f" of {original.size}" if original.size else "")
        raise VaelabError(f"{original.filename} from {where} is not the {spec.name} file (sha256 {digest}{sizes}; "
                          f"{known}: {expected}): replace it with the file from {spec.base_url}, or set {spec.url_env}"
                          " to a good mirror")
    return {"sha256": digest, "size": size, "source": where,
            "first_seen": datetime.now(UTC).isoformat(timespec="seconds")}


def _parse(spec: Source, paths: list[Path], fix: str) -> dict[str, np.ndarray]:
    """Read the checked originals into the split arrays and validate them; a bad file is a VaelabError."""
    try:
        arrays = spec.read(spec, paths)
        _check_arrays(spec, arrays)
    except (OSError, ValueError) as e:
        raise VaelabError(f"{spec.name} originals are not as published ({e}): {fix}") from e
    return arrays


Parsed = tuple[dict[str, np.ndarray], dict[str, dict]]  # the split arrays and the manifest records of the originals


def _from_folder(spec: Source, folder: Path, root: Path, where: Callable[[Original], str], fix: str) -> Parsed:
    """Check and parse the originals in `folder`; return the arrays and their manifest records."""
    recorded = _load_manifest(root).get(spec.name, {}).get("files", {})
    records = {o.filename: _check_original(spec, o, folder / o.filename, recorded, where(o)) for o in spec.files}
    return _parse(spec, [folder / o.filename for o in spec.files], fix), records


def _download(spec: Source, root: Path, base: str) -> Parsed:
    """Download the originals from `base` into a temp folder in `root` (then removed), check them and parse them."""
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{spec.name}-download-") as tmp:
        for original in spec.files:
            download(base + original.filename, Path(tmp) / original.filename)
        return _from_folder(spec, Path(tmp), root, lambda o: base + o.filename,
                            f"the files at {base} are not the published ones; set {spec.url_env} to another mirror")


def _spec(name: str) -> Source:
    """The Source called `name`, or a VaelabError suggesting the closest name."""
    if name in SOURCES:
        return SOURCES[name]
    raise VaelabError(f"unknown benchmark set {name!r}: {did_you_mean(name, SOURCES)}choose one of "
                      f"{', '.join(SOURCES)}")


def load_source(name: str, *, cache_dir: str | Path | None = None, download: bool = True) -> Splits:
    """Load a named benchmark set from the cache, from originals in `<cache>/<name>/`, or by a checked download."""
    spec = _spec(name)
    root = Path(cache_dir).expanduser() if cache_dir is not None else mnist_cache_dir()
    cache, folder = root / f"{name}.npz", root / name
    if cache.is_file():
        return _read_cache(spec, cache, root)
    names = ", ".join(o.filename for o in spec.files)
    base = os.environ.get(spec.url_env) or spec.base_url
    base = base if base.endswith("/") else base + "/"
    if all((folder / o.filename).is_file() for o in spec.files):
        arrays, records = _from_folder(spec, folder, root, lambda o: str(folder / o.filename),
                                       f"replace the files in {folder} with the originals from {base}")
    elif not download:
        raise VaelabError(f"{name} is not in {root} and downloads are off: put {names} (from {base}) in {folder}, "
                          "or allow downloads")
    else:
        try:
            arrays, records = _download(spec, root, base)
        except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError and timeouts are OSErrors
            raise VaelabError(f"{name} not found: download from {base} failed ({e}); go online, set {spec.url_env} "
                              f"to a mirror, or put {names} in {folder}") from e
    splits = Splits(**arrays, image_shape=(28, 28), name=name)
    atomic_write(cache, lambda f: np.savez_compressed(f, **arrays), fix=WRITE_FIX)
    _record(root, name, files=records, cache=_sha256(cache))
    return splits


def load_dataset(source: str, *, cache_dir: str | Path | None = None, download: bool = True) -> Splits:
    """Any data source: a benchmark set of this module by name (SOURCES), else `data.load_splits` ("mnist",
    "digits", a .npz file, a folder of IDX files). An unknown name is refused with every known name."""
    if source in SOURCES:
        return load_source(source, cache_dir=cache_dir, download=download)
    known = [*DATA_SOURCES, *SOURCES]
    if source not in DATA_SOURCES and not Path(source).expanduser().exists() and not (
            source.endswith(".npz") or "/" in source or os.sep in source):
        close = difflib.get_close_matches(source, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise VaelabError(f"unknown data source {source!r}: {hint}choose one of {', '.join(known)} or give a path "
                          "to a .npz file or a folder of IDX files")
    return load_splits(source, cache_dir=cache_dir, download=download)
