"""What every data route returns: the train/valid/test `Splits`, the label of an image without one, and the one
pixel scale (k/255 for the byte k) with its exact inverse for floats stored on another grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

PARTS = ("train", "valid", "test")
SPLIT_KEYS = ("x_train", "y_train", "x_valid", "y_valid", "x_test", "y_test")
NO_LABEL = -1   # the label of an image that has none (static MNIST, a user .npz without y_* arrays)


@dataclass
class Splits:
    """Raw images in [0, 1] (float32, shape [N, P] flattened) and int64 labels (NO_LABEL = -1 where an image has
    none: a set without labels is all -1), plus the image shape."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    image_shape: tuple[int, int]
    name: str


def six(xs: list[np.ndarray], ys: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The six split arrays x_train, y_train, ... from train/valid/test images and labels (none given: NO_LABEL)."""
    ys = ys if ys is not None else [np.full(len(x), NO_LABEL, dtype=np.int64) for x in xs]
    return {key: a for part, x, y in zip(PARTS, xs, ys, strict=True) for key, a in ((f"x_{part}", x), (f"y_{part}", y))}


def pixels_from_bytes(k: np.ndarray) -> np.ndarray:
    """Grey levels 0..255 as float32 k/255 in [0, 1] (the one pixel scale of every route)."""
    return k.astype(np.float32) / np.float32(255)


def bytes_from_grid(x: np.ndarray, levels: int, what: str) -> np.ndarray:
    """Recover the bytes k of float pixels stored as k/levels (the classic pickle's k/256, or k/255); a value off
    that grid is a ValueError naming `what`."""
    k = np.rint(x * np.float32(levels)).clip(0, 255).astype(np.uint8)                # [N, P]
    if not np.array_equal(k.astype(np.float32) / np.float32(levels), x):
        raise ValueError(f"{what} pixels are not k/{levels} for bytes k")
    return k


def known_labels(y: np.ndarray | torch.Tensor | None) -> np.ndarray | None:
    """Labels as an int64 numpy array, or None when there are none (None, empty, or every entry NO_LABEL): what
    figures coloured by label take (one colour when None)."""
    if y is None:
        return None
    y = y.cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    return y.astype(np.int64) if y.size and bool((y != NO_LABEL).any()) else None
