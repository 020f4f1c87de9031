"""Checks of an .npz file before numpy reads its arrays: no pickles, no absurd shapes, nothing that is not an array.

np.load(allow_pickle=False) already refuses object arrays, but it allocates an array of the header's shape before
reading its bytes (a damaged or hostile header can ask for terabytes), returns a plain ndarray for a lone .npy file
renamed .npz, and raw bytes for a member that is not a .npy. These checks read only the zip directory and each
member's .npy header.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")   # a zip's first local header, or an empty zip's end record


def _memory_bytes() -> int:
    """This machine's physical memory (an array claiming more than half of it is refused before it is read)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def _check_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, names: tuple[str, ...] | None) -> None:
    """One .npz member: a .npy array of plain numbers whose header is consistent with the bytes stored."""
    key = info.filename.removesuffix(".npy")
    if names is not None and key not in names:
        return
    if not info.filename.endswith(".npy"):
        raise ValueError(f"member {info.filename!r} is not a numpy array (no .npy): save arrays with numpy.savez")
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
        header = f.tell() if f.seekable() else None
    if dtype.hasobject:
        raise ValueError(f"member {key!r} holds Python objects (a pickle), refused unread: save plain numeric "
                         "arrays with numpy.savez")
    nbytes = math.prod(shape) * dtype.itemsize
    if header is not None and header + nbytes != info.file_size:
        raise ValueError(f"member {key!r} claims shape {shape} ({nbytes:,} bytes) but holds "
                         f"{info.file_size - header:,}: the file is damaged; save it again")
    if nbytes > _memory_bytes() // 2:
        raise ValueError(f"member {key!r} claims shape {shape} ({nbytes / 2**30:.1f} GiB), more than half this "
                         "machine's memory: use a smaller data set")


def check_npz(path: Path, names: tuple[str, ...] | None = None) -> None:
    """Refuse, before numpy reads any array, a file that is not a zip of .npy arrays (a lone .npy or a pickle
    renamed .npz), members that are pickles or not arrays, and headers whose shape the stored bytes cannot hold
    (so nothing absurd is allocated). `names`: only these members are checked (None: all). Raises ValueError."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == np.lib.format.MAGIC_PREFIX:
        raise ValueError("it is a single .npy array renamed .npz: save x_train and x_test (with labels y_train "
                         "and y_test, if any) together with numpy.savez")
    if magic[:4] not in ZIP_MAGIC:
        raise ValueError("it is not a zip archive of arrays: save it with numpy.savez")
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            _check_member(zf, info, names)


def read_arrays(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The members `keys` of an .npz file, read after `check_npz` passed (so nothing absurd is allocated and no
    pickle is loaded). Raises ValueError, KeyError (a missing member), OSError or zipfile.BadZipFile."""
    check_npz(path, keys)
    with np.load(path, allow_pickle=False) as z:
        return {key: z[key] for key in keys}
