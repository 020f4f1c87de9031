"""Crash-safe file writes, one way for all of vaelab: write a temp file in the target's folder, flush it to disk,
rename it over the target. A reader never sees half a file; a failed write (disk full, a file-size limit, no
permission) removes the temp file, leaves the target as it was, and becomes one line naming the path and the fix.
No torch here, so light commands (compare, the sweep driver) stay quick to start."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import VaelabError

FIX = "free disk space or make the folder writable, then run again"


def write_error(path: Path, err: OSError, fix: str = FIX) -> VaelabError:
    """A failed write as one line: what, why (the OS's reason), and the fix."""
    return VaelabError(f"cannot write {path} ({err.strerror or err}): {fix}")


def fsync_write(path: Path, data: bytes) -> None:
    """Write and flush `data` to disk, so a rename that follows never publishes a half-written file."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path, fix: str = FIX) -> Iterator[Path]:
    """Yield a temp path beside `path` (same suffix, so writers that infer a format from it work); when the block
    ends without error the temp file replaces `path`; otherwise it is removed and `path` is untouched."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
        os.close(fd)
    except OSError as err:
        raise write_error(path, err, fix) from err
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        raise write_error(path, err, fix) from err
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], fix: str = FIX) -> Path:
    """Call `write(f)` on a binary file object that becomes `path` once written and flushed to disk."""
    with atomic_path(path, fix) as tmp:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes, fix: str = FIX) -> Path:
    return atomic_write(path, lambda f: f.write(data), fix)


def atomic_write_text(path: str | Path, text: str, fix: str = FIX) -> Path:
    return atomic_write_bytes(path, text.encode(), fix)
