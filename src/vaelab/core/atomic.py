"""Crash-safe file writes, one way for all of vaelab: write a temp file in the target's folder, flush it to disk,
rename it over the target. A reader never sees half a file; a failed write (disk full, a file-size limit, no
permission) removes the temp file, leaves the target as it was, and becomes one line naming the path and the fix.
Files are created with mode 0666 & ~umask, as a plain open() would create them (mkstemp alone gives 0600, which
hides config.yaml, eval.json or a report from other users and web servers). No torch here, so light commands
(compare, the sweep driver) stay quick to start."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from vaelab.core.errors import VaelabError

FIX = "free disk space or make the folder writable, then run again"


def write_error(path: Path, err: OSError, fix: str = FIX) -> VaelabError:
    """A failed write as one line: what, why (the OS's reason), and the fix."""
    return VaelabError(f"cannot write {path} ({err.strerror or err}): {fix}")


def current_umask() -> int:
    """This process's umask, read without changing it (Linux's /proc/self/status); elsewhere set and restored
    at once (the only portable way, not thread-safe for the instant it takes)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def link_error(path: Path) -> VaelabError:
    """A symbolic link where vaelab writes a file, refused: writing through it would change a file elsewhere."""
    try:
        target = f" (to {os.readlink(path)})"
    except OSError:
        target = ""
    return VaelabError(f"{path} is a symbolic link{target}: vaelab never writes through one; delete the link and "
                       "run again")


def open_append(path: str | Path, fix: str = FIX) -> TextIO:
    """`path` opened for appending text (created if absent), never through a symbolic link (O_NOFOLLOW): for the
    logs that grow line by line. A link there is refused with `link_error`."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as err:
        if path.is_symlink():                    # ELOOP from O_NOFOLLOW
            raise link_error(path) from err
        raise write_error(path, err, fix) from err
    return os.fdopen(fd, "a")


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
    except OSError as err:
        raise write_error(path, err, fix) from err
    tmp = Path(name)
    try:
        try:
            os.fchmod(fd, 0o666 & ~current_umask())     # mkstemp's 0600 -> what open() would have made
        finally:
            os.close(fd)
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


def write_json(path: Path, values: dict[str, Any]) -> None:
    """`values` as indented JSON with a final newline, written atomically (`atomic_write_text`)."""
    atomic_write_text(path, json.dumps(values, indent=2) + "\n")
