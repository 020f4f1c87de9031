"""The data cache: one `.npz` per named source in the cache folder (`cache_dir`, else $VAELAB_DATA, else
~/.cache/vaelab), written atomically, its sha256 recorded in the manifest when written (or first read) and checked
on every read, then read through data/npz.py's bounded reader and checked against the source's published shape."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np

from vaelab.core.atomic import atomic_write
from vaelab.core.errors import VaelabError
from vaelab.data.catalog import Arrays, Source, check_arrays
from vaelab.data.download import MANIFEST, WRITE_FIX, record, recorded_cache, sha256_file
from vaelab.data.npz import read_arrays
from vaelab.data.splits import SPLIT_KEYS, Splits


def mnist_cache_dir() -> Path:
    """The folder of the data caches (mnist-k255.npz, the named sources): $VAELAB_DATA, else ~/.cache/vaelab."""
    return Path(os.environ.get("VAELAB_DATA") or Path.home() / ".cache" / "vaelab").expanduser()


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir` when given, else the default cache folder."""
    return Path(cache_dir).expanduser() if cache_dir is not None else mnist_cache_dir()


def as_splits(spec: Source, arrays: Arrays) -> Splits:
    """The six arrays of source `spec` as Splits."""
    return Splits(**{key: arrays[key] for key in SPLIT_KEYS}, image_shape=spec.image_shape, name=spec.name)


def read_cache(spec: Source, path: Path, root: Path) -> Splits:
    """Load the cached .npz after checking its sha256 against the manifest, then its arrays against the spec. A
    cache without a record (put there by hand, or a deleted manifest) is trusted from now on."""
    digest = sha256_file(path)
    recorded = recorded_cache(root, spec.name)
    if recorded is not None and recorded != digest:
        raise VaelabError(f"{path} changed since it was written (sha256 {digest}, recorded {recorded} in "
                          f"{root / MANIFEST}): delete it to rebuild it from the original files")
    try:
        arrays = read_arrays(path, SPLIT_KEYS)  # no pickles, no absurd headers, before numpy reads an array
        check_arrays(spec, arrays)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        raise VaelabError(f"{spec.name} cache {path} is corrupt ({e}): delete it and run again") from e
    if recorded is None:
        record(root, spec.name, cache=(path.name, digest), required=False)
    return as_splits(spec, arrays)


def write_cache(spec: Source, arrays: Arrays, path: Path, files: dict[str, dict]) -> None:
    """Write the arrays to `path` atomically (a temp file in the same folder, then a rename) and record its sha256
    and the originals' records (`files`) in the manifest beside it."""
    atomic_write(path, lambda f: np.savez_compressed(f, **{key: arrays[key] for key in SPLIT_KEYS}), fix=WRITE_FIX)
    record(path.parent, spec.name, files=files, cache=(path.name, sha256_file(path)))
