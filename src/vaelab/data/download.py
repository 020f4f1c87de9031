"""Fetching and verifying original files, and the manifest of the sha256s seen.

A file is checked against the sha256 its source publishes where there is one (tensorflow/datasets' url_checksums),
otherwise by trust on first use: the sha256 of the first copy is recorded in `<cache>/sources-manifest.json` and
every later copy must match it. The manifest also records each cache file's sha256, checked on every read.
`fetch` is the one download: a temp file beside the target, hashed as it streams, renamed into place only once its
sha256 is right (a wrong one is deleted and refused with one line).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from vaelab.core.atomic import atomic_write_text
from vaelab.core.errors import VaelabError

MANIFEST = "sources-manifest.json"
WRITE_FIX = "set VAELAB_DATA to a writable folder"
DOWNLOAD_TIMEOUT_S = 30.0
CHUNK = 1 << 20


@dataclass(frozen=True)
class Original:
    """One original file: its name, and its size and sha256 where a source publishes them (None: trust on first use)."""

    filename: str
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Expected:
    """What a copy of `original` must be: the file of source `source`, with the published sha256 or else the one
    `recorded` on first use (None: the first copy is trusted); `fix` ends the refusal."""

    source: str
    original: Original
    recorded: str | None
    fix: str

    def check(self, digest: str, size: int, where: str) -> dict:
        """Refuse a copy (sha256 `digest`, `size` bytes, from `where`) that is not the expected file with one line;
        return its manifest record."""
        expected = self.original.sha256 or self.recorded
        if expected is not None and digest != expected:
            known = "published" if self.original.sha256 else f"recorded in {MANIFEST} on first use"
            sizes = f", {size} bytes" + (f" of {self.original.size}" if self.original.size else "")
            raise VaelabError(f"{self.original.filename} from {where} is not the {self.source} file (sha256 "
                              f"{digest}{sizes}; {known}: {expected}): {self.fix}")
        return {"sha256": digest, "size": size, "source": where,
                "first_seen": datetime.now(UTC).isoformat(timespec="seconds")}


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path) -> str:
    """Copy `url` to `dest`, 1 MiB at a time, and return the sha256 of what was written. Network faults are
    OSErrors (URLError, HTTPError, timeouts) or http.client.HTTPException."""
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(dest, "wb") as f:
        while chunk := response.read(CHUNK):
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


def fetch(url: str, dest: Path, expected: Expected) -> dict:
    """Download `url` to a temp file beside `dest`, check its sha256 against `expected`, then rename it to `dest`;
    return its manifest record. A wrong file is deleted and refused (VaelabError); nothing is left at `dest`."""
    part = dest.with_name(f".{dest.name}.part")
    try:
        digest = download(url, part)
        record = expected.check(digest, part.stat().st_size, url)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return record


def check_file(path: Path, expected: Expected) -> dict:
    """Check a file put by hand against `expected`; return its manifest record."""
    return expected.check(sha256_file(path), path.stat().st_size, str(path))


def load_manifest(root: Path) -> dict:
    """The recorded sha256s of folder `root` ({} when there is no manifest yet)."""
    path = root / MANIFEST
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as e:
        raise VaelabError(f"{path} is unreadable ({e}): restore it, or delete it to record the files anew") from e


def recorded_files(root: Path, name: str) -> dict[str, dict]:
    """The manifest records of source `name`'s original files, by file name."""
    return load_manifest(root).get(name, {}).get("files", {})


def recorded_cache(root: Path, name: str) -> str | None:
    """The recorded sha256 of source `name`'s cache file, or None."""
    return load_manifest(root).get(name, {}).get("cache", {}).get("sha256")


def record(root: Path, name: str, *, files: dict[str, dict] | None = None, cache: tuple[str, str] | None = None,
           required: bool = True) -> None:
    """Add first-seen file records and/or the cache (file name, sha256) of source `name` to the manifest (recorded
    file entries stay). With `required` False a folder that cannot be written is left as it is (a read-only
    cache stays readable)."""
    manifest = load_manifest(root)
    entry = manifest.setdefault(name, {})
    for filename, info in (files or {}).items():
        entry.setdefault("files", {}).setdefault(filename, info)
    if cache is not None:
        entry["cache"] = {"file": cache[0], "sha256": cache[1]}
    text = json.dumps(manifest, indent=2, sort_keys=True)
    with contextlib.nullcontext() if required else contextlib.suppress(VaelabError):
        atomic_write_text(root / MANIFEST, text, fix=WRITE_FIX)
