"""A user's own data: an .npz of arrays (x_train, x_test, optionally x_valid, with labels y_* for all of them or
none) or a folder of the four MNIST IDX files, gzipped or not. Without x_valid the last tenth of x_train is the
valid set; from IDX files it is the last 10,000 training images, or the last 1/6 of them when there are fewer than
60,000."""

from __future__ import annotations

import math
import pickle
import zipfile
from pathlib import Path

import numpy as np

from vaelab.core.errors import VaelabError
from vaelab.data.catalog import IDX_FILES
from vaelab.data.npz import check_npz
from vaelab.data.readers import read_idx_set
from vaelab.data.splits import NO_LABEL, SPLIT_KEYS, Splits, pixels_from_bytes

NPZ_REQUIRED = ("x_train", "x_test")   # labels y_* are optional: all of them or none (unlabeled: y = -1)


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


def _read_npz(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """The split arrays a user .npz holds, and the names of its other members; an unreadable file is refused."""
    try:
        check_npz(path, SPLIT_KEYS)
    except ValueError as e:
        raise VaelabError(f"{path} is not a readable .npz file: {e}") from e
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise VaelabError(f"{path} is not a readable .npz file ({e}): save it with numpy.savez") from e
    try:
        with np.load(path, allow_pickle=False) as z:
            return {key: z[key] for key in z.files if key in SPLIT_KEYS}, sorted(set(z.files) - set(SPLIT_KEYS))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        raise VaelabError(f"{path} is not a readable .npz file ({e}): save it with numpy.savez") from e


def load_npz(path: Path) -> Splits:
    """A user .npz with x_train, x_test and optionally x_valid, each with its labels y_* (all of them or none:
    without labels every y is NO_LABEL)."""
    arrays, others = _read_npz(path)
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


def load_idx_dir(path: Path) -> Splits:
    """A folder with the four standard MNIST IDX file names, gzipped or not; valid is the last
    min(10,000, N_train // 6) training images."""
    found = [next((c for c in (path / n, path / n.removesuffix(".gz")) if c.is_file()), None) for n in IDX_FILES]
    missing = [name for name, p in zip(IDX_FILES, found, strict=True) if p is None]
    if missing:
        raise VaelabError(f"{path} lacks IDX files {missing}: add them (gzipped or not) or give another source")
    try:
        x_tr, y_tr, x_te, y_te = read_idx_set([p for p in found if p is not None])
    except ValueError as e:
        raise VaelabError(f"{e}: replace the damaged file with the original") from e
    cut = len(x_tr) - min(10000, len(x_tr) // 6)
    if cut == len(x_tr):
        raise VaelabError(f"{path} has only {len(x_tr)} training images: need at least 6 to carve a valid set")
    flat = [pixels_from_bytes(x.reshape(len(x), -1)) for x in (x_tr[:cut], x_tr[cut:], x_te)]
    ys = [y.astype(np.int64) for y in (y_tr[:cut], y_tr[cut:], y_te)]
    h, w = x_tr.shape[1:]
    return Splits(flat[0], ys[0], flat[1], ys[1], flat[2], ys[2], image_shape=(h, w), name=str(path))
