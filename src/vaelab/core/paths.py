""""Can this path be written?" probes, run before a command does any work: a directory that is (or can become)
writable, an output file with a known extension in a writable folder. Each failure is one VaelabError naming the
path and the fix. Used by the CLI, the Python API's argument checks and `runs/lifecycle.py`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from vaelab.core.errors import VaelabError


def _nearest_existing(path: Path) -> Path:
    """`path` or the closest ancestor of it that exists."""
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_writable_dir(path: str | Path, what: str) -> None:
    """`path` must be (or can become) a directory this process can write: not a file, not under a file, and
    the directory itself (or its closest existing ancestor) accepts a new file (a probe file, removed at once)."""
    path = Path(path)
    existing = _nearest_existing(path)
    if not existing.is_dir():
        where = "is a file" if existing == Path(os.path.abspath(path)) else f"is under {existing}, which is a file"
        raise VaelabError(f"{what} {path} {where}: choose a directory path")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".vaelab-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise VaelabError(f"cannot write to {existing} ({err.strerror}): make it writable or choose another "
                          f"{what}") from err


def check_output_file(path: str | Path, what: str, extensions: tuple[str, ...]) -> None:
    """An output file path: a known extension, not a directory, in a writable directory."""
    path = Path(path)
    if path.is_dir():
        raise VaelabError(f"{what} {path} is a directory: give a file path such as {path / 'samples.png'}")
    if path.suffix.lower() not in extensions:
        raise VaelabError(f"{what} {path}: unknown image extension {path.suffix or '(none)'!r}: "
                          f"use one of {', '.join(extensions)}")
    existing = _nearest_existing(path.parent)
    if not existing.is_dir():
        raise VaelabError(f"{what} {path} is under {existing}, which is a file: choose another path")
    check_writable_dir(path.parent, f"folder for {what}")
