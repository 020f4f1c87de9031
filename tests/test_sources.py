"""Tests for vaelab.data.sources and catalog: the four benchmark sets, read from small files in their exact formats
and served by a local HTTP server on 127.0.0.1 (real downloads are not possible here)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import re
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from conftest import serve_folder

from vaelab.core.errors import VaelabError
from vaelab.data import sources
from vaelab.data.binarize import binarize
from vaelab.data.readers import read_amat
from vaelab.data.sources import MANIFEST, Original, load_source
from vaelab.data.splits import SPLIT_KEYS


@pytest.fixture
def www(tmp_path: Path):
    """Serve tmp_path/www on 127.0.0.1; yield (folder, base URL, server with its .requests list)."""
    root = tmp_path / "www"
    root.mkdir()
    with serve_folder(root) as (url, server):
        yield root, url, server


def dead_url() -> str:
    """A URL on a port nothing listens on: a download fails at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shrink(monkeypatch: pytest.MonkeyPatch, name: str, sizes: tuple[int, int, int], pin: Path | None = None) -> None:
    """Give source `name` tiny split sizes; with `pin`, publish the sha256s of the files in that folder."""
    spec = sources.SOURCES[name]
    files = tuple(Original(o.filename, None, sha256(pin / o.filename) if pin else None) for o in spec.files)
    monkeypatch.setitem(sources.SOURCES, name, dataclasses.replace(spec, sizes=sizes, files=files))


def images(n: int, seed: int, binary: bool) -> np.ndarray:
    """n random 28x28 images in [0, 1]: 0/1, or multiples of 1/255."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2, (n, 28, 28)).astype(np.float64) if binary else rng.integers(0, 256, (n, 28, 28)) / 255


def write_amat(path: Path, x: np.ndarray) -> None:
    """Larochelle's layout: one image a line, values separated by one space (so 2 bytes per value)."""
    path.write_text("".join(" ".join(str(int(v)) for v in row) + "\n" for row in x.reshape(len(x), -1)))


def flat(x: np.ndarray) -> np.ndarray:
    """Row-major float32 [N, 784]: what the loaders must return."""
    return x.reshape(len(x), -1).astype(np.float32)


def column_major(x: np.ndarray) -> np.ndarray:
    """Each image flattened in MATLAB's im(:) order, one image per row."""
    return np.stack([im.flatten(order="F") for im in x])


def check_splits(splits, name: str, sizes: tuple[int, int, int]) -> None:
    assert splits.name == name and splits.image_shape == (28, 28)
    for part, n in zip(("train", "valid", "test"), sizes, strict=True):
        x, y = getattr(splits, f"x_{part}"), getattr(splits, f"y_{part}")
        assert x.shape == (n, 784) and x.dtype == np.float32 and y.shape == (n,) and y.dtype == np.int64
        assert 0 <= x.min() and x.max() <= 1


# --- the .amat reader -------------------------------------------------------------------------------------------


def test_amat_reader_on_a_hand_made_file(tmp_path: Path):
    path = tmp_path / "a.amat"
    path.write_text("0 1 0 1\n1 1 0 0\r\n\n")  # CRLF and a trailing blank line are tolerated
    np.testing.assert_array_equal(read_amat(path, width=4), [[0, 1, 0, 1], [1, 1, 0, 0]])
    assert read_amat(path, width=4).dtype == np.float32


@pytest.mark.parametrize(("text", "message"), [
    ("0 1 0 1\n0 1 2 1\n", r"line 2: b'2' is not 0, 1 or whitespace"),
    ("0 1 0 1\n0 0.5 1 1\n", r"line 2: b'\.' is not 0, 1 or whitespace"),
    ("0 10 1\n", "line 1: a value with several digits; values must be 0 or 1"),
    ("0 1 0 1\n0 1 0\n", "line 2 has 3 values, expected 4"),
])
def test_amat_reader_refuses_bad_files(tmp_path: Path, text: str, message: str):
    (tmp_path / "a.amat").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_amat(tmp_path / "a.amat", width=4)


def test_amat_layout_matches_the_published_file_sizes(tmp_path: Path):
    """2 bytes a value: the published sizes (78,400,000 and 15,680,000 bytes) are 50,000 and 10,000 lines of 784."""
    write_amat(tmp_path / "a.amat", images(3, 0, binary=True))
    assert (tmp_path / "a.amat").stat().st_size == 3 * 784 * 2
    spec = sources.SOURCES["mnist-static"]
    assert [o.size for o in spec.files] == [n * 784 * 2 for n in spec.sizes]


# --- mnist-static: pinned sha256, download, cache -----------------------------------------------------------------


def serve_static(root: Path) -> list[np.ndarray]:
    xs = [images(n, seed, binary=True) for seed, n in enumerate((6, 2, 3))]
    for x, part in zip(xs, ("train", "valid", "test"), strict=True):
        write_amat(root / f"binarized_mnist_{part}.amat", x)
    return xs


def test_mnist_static_downloads_checks_and_caches(www, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root, url, server = www
    xs = serve_static(root)
    shrink(monkeypatch, "mnist-static", (6, 2, 3), pin=root)
    monkeypatch.setenv("VAELAB_MNIST_STATIC_URL", url.rstrip("/"))  # with or without the trailing slash
    cache = tmp_path / "cache"
    splits = load_source("mnist-static", cache_dir=cache)
    check_splits(splits, "mnist-static", (6, 2, 3))
    for x, got in zip(xs, (splits.x_train, splits.x_valid, splits.x_test), strict=True):
        np.testing.assert_array_equal(got, flat(x))
    assert (splits.y_train == -1).all() and (splits.y_test == -1).all()
    assert sorted(server.requests) == sorted(f"/binarized_mnist_{p}.amat" for p in ("train", "valid", "test"))
    assert sorted(p.name for p in cache.iterdir()) == ["mnist-static.npz", MANIFEST]  # no temp files left
    entry = json.loads((cache / MANIFEST).read_text())["mnist-static"]
    assert entry["cache"]["sha256"] == sha256(cache / "mnist-static.npz")
    assert entry["files"]["binarized_mnist_train.amat"]["sha256"] == sha256(root / "binarized_mnist_train.amat")
    # the second load reads the cache: no request, even with downloads pointed at a dead port
    monkeypatch.setenv("VAELAB_MNIST_STATIC_URL", dead_url())
    again = load_source("mnist-static", cache_dir=cache, download=False)
    assert len(server.requests) == 3
    for key in SPLIT_KEYS:
        np.testing.assert_array_equal(getattr(again, key), getattr(splits, key))


def test_binary_sets_are_unchanged_by_dynamic_binarization(www, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root, url, _ = www
    serve_static(root)
    shrink(monkeypatch, "mnist-static", (6, 2, 3), pin=root)
    monkeypatch.setenv("VAELAB_MNIST_STATIC_URL", url)
    x = torch.from_numpy(load_source("mnist-static", cache_dir=tmp_path).x_train)
    assert torch.equal(binarize(x, "dynamic", torch.Generator().manual_seed(0)), x)  # u < 0 never, u < 1 always
    assert binarize(x, "none") is x


def test_download_with_wrong_checksum_is_refused(www, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root, url, _ = www
    serve_static(root)
    shrink(monkeypatch, "mnist-static", (6, 2, 3), pin=root)
    spec = sources.SOURCES["mnist-static"]
    bad = (Original("binarized_mnist_train.amat", 78400000, "0" * 64), *spec.files[1:])
    monkeypatch.setitem(sources.SOURCES, "mnist-static", dataclasses.replace(spec, files=bad))
    monkeypatch.setenv("VAELAB_MNIST_STATIC_URL", url)
    with pytest.raises(VaelabError, match=r"binarized_mnist_train\.amat from http://127\.0\.0\.1:\d+/binarized_mnist_"
                                          r"train\.amat is not the mnist-static file \(sha256 [0-9a-f]{64}, "
                                          r"\d+ bytes of 78400000; published: 0{64}\).*VAELAB_MNIST_STATIC_URL"):
        load_source("mnist-static", cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # no cache, no manifest, no partial files


def test_wrong_split_size_is_refused(www, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root, url, _ = www
    serve_static(root)
    shrink(monkeypatch, "mnist-static", (7, 2, 3), pin=root)  # the served train file has 6 lines
    monkeypatch.setenv("VAELAB_MNIST_STATIC_URL", url)
    with pytest.raises(VaelabError, match=r"binarized_mnist_train\.amat has 6 images, the published split has 7"):
        load_source("mnist-static", cache_dir=tmp_path)
    assert not (tmp_path / "mnist-static.npz").exists()


def test_offline_errors_name_url_variable_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(VaelabError, match=r"mnist-static is not in .* downloads are off: put binarized_mnist_train"
                                          r"\.amat, .* \(from http://www\.cs\.toronto\.edu/~larocheh/public/datasets/"
                                          r"binarized_mnist/\) in .*mnist-static, or allow downloads"):
        load_source("mnist-static", cache_dir=tmp_path, download=False)
    url = dead_url()
    monkeypatch.setenv("VAELAB_OMNIGLOT_URL", url)
    message = (rf"omniglot not found: download from {re.escape(url)} failed \(.*\); go online, set VAELAB_OMNIGLOT_URL"
               rf" to a mirror, or put chardata\.mat in {re.escape(str(tmp_path / 'omniglot'))}$")
    with pytest.raises(VaelabError, match=message):
        load_source("omniglot", cache_dir=tmp_path)
    assert sorted(tmp_path.iterdir()) == []


# --- fashion-mnist -------------------------------------------------------------------------------------------------
def test_fashion_mnist_download(www, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root, url, _ = www
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 12, dtype=np.uint8),
              "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 5, dtype=np.uint8)}
    for name, a in arrays.items():
        magic = 2051 if a.ndim == 3 else 2049
        (root / name).write_bytes(gzip.compress(struct.pack(f">I{a.ndim}I", magic, *a.shape) + a.tobytes()))
    shrink(monkeypatch, "fashion-mnist", (10, 2, 5), pin=root)
    monkeypatch.setenv("VAELAB_FASHION_MNIST_URL", url)
    splits = load_source("fashion-mnist", cache_dir=tmp_path)
    check_splits(splits, "fashion-mnist", (10, 2, 5))
    train = arrays["train-images-idx3-ubyte.gz"]
    np.testing.assert_array_equal(splits.x_valid, flat(train[10:]) / 255)  # valid = the last training images
    np.testing.assert_array_equal(splits.y_train, arrays["train-labels-idx1-ubyte.gz"][:10])
    np.testing.assert_array_equal(splits.y_test, arrays["t10k-labels-idx1-ubyte.gz"])
    with pytest.raises(VaelabError, match="data is grayscale"):  # grayscale: must be binarized like MNIST
        binarize(torch.from_numpy(splits.x_train), "none")


# --- omniglot: trust on first use ------------------------------------------------------------------------------------
def write_chardata(path: Path, train: np.ndarray, test: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """chardata.mat's layout: images as columns of 784 (column-major), alphabets one-hot [50, N]; return labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 50, len(train)), rng.integers(0, 50, len(test))
    onehot = [np.eye(50)[y].T for y in labels]
    scipy.io.savemat(path, {"data": column_major(train).T, "testdata": column_major(test).T,
                            "target": onehot[0], "testtarget": onehot[1]})
    return labels


def test_omniglot_trust_on_first_use(www, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root, url, server = www
    train, test = images(7, 0, binary=False), images(3, 1, binary=False)
    y_train, y_test = write_chardata(root / "chardata.mat", train, test)
    shrink(monkeypatch, "omniglot", (5, 2, 3))
    monkeypatch.setenv("VAELAB_OMNIGLOT_URL", url)
    cache = tmp_path / "cache"
    splits = load_source("omniglot", cache_dir=cache)
    check_splits(splits, "omniglot", (5, 2, 3))
    np.testing.assert_array_equal(splits.x_train, flat(train[:5]))  # upright, row-major images
    np.testing.assert_array_equal(splits.x_valid, flat(train[5:]))  # valid = the last training images, unshuffled
    np.testing.assert_array_equal(splits.x_test, flat(test))
    np.testing.assert_array_equal(splits.y_valid, y_train[5:])
    np.testing.assert_array_equal(splits.y_test, y_test)
    recorded = json.loads((cache / MANIFEST).read_text())["omniglot"]
    assert recorded["files"]["chardata.mat"]["sha256"] == sha256(root / "chardata.mat")
    assert recorded["files"]["chardata.mat"]["source"] == url + "chardata.mat"
    # a tampered cache is refused
    with np.load(cache / "omniglot.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["x_test"][0, 0] = 1 - arrays["x_test"][0, 0]
    np.savez_compressed(cache / "omniglot.npz", **arrays)
    with pytest.raises(VaelabError, match=r"omniglot\.npz changed since it was written.*delete it to rebuild it"):
        load_source("omniglot", cache_dir=cache, download=False)
    # rebuilt from a download that differs from the first one: refused, the first copy's sha256 wins
    (cache / "omniglot.npz").unlink()
    write_chardata(root / "chardata.mat", train, test, seed=1)
    with pytest.raises(VaelabError, match=r"chardata\.mat from .* is not the omniglot file .*recorded in "
                                          r"sources-manifest\.json on first use"):
        load_source("omniglot", cache_dir=cache)
    assert not (cache / "omniglot.npz").exists() and len(server.requests) == 2


@pytest.mark.parametrize(("change", "message"), [
    ({"data": "wide"}, r"data has shape \(785, 7\): expected 784 pixels"),
    ({"data": "bright"}, "data has values outside \\[0, 1\\]"),
    ({"target": "two-hot"}, "target is not one-hot"),
    ({"testtarget": None}, r"lacks the variables \['testtarget'\]"),
])
def test_omniglot_reader_refuses_bad_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change, message):
    folder = tmp_path / "omniglot"
    folder.mkdir()
    write_chardata(folder / "chardata.mat", images(7, 0, False), images(3, 1, False))
    mat = {k: v for k, v in scipy.io.loadmat(folder / "chardata.mat").items() if not k.startswith("__")}
    edits = {"wide": np.vstack([mat["data"], np.zeros((1, 7))]), "bright": mat["data"] * 2,
             "two-hot": mat["target"] + np.eye(50)[:, :7]}
    for key, what in change.items():
        if what is None:
            del mat[key]
        else:
            mat[key] = edits[what]
    scipy.io.savemat(folder / "chardata.mat", mat)
    shrink(monkeypatch, "omniglot", (5, 2, 3))
    with pytest.raises(VaelabError, match=message + ".*replace the files in .*omniglot with the originals"):
        load_source("omniglot", cache_dir=tmp_path, download=False)


# --- caltech-silhouettes: files put in the cache folder by hand ------------------------------------------------------
def write_caltech(path: Path, xs: list[np.ndarray], labels: list[np.ndarray], dtype=np.uint8) -> None:
    """Marlin's layout: {train,val,test}_data rows of 784 (column-major images), *_labels [N, 1] in 1..101."""
    mat = {}
    for key, x, y in zip(("train", "val", "test"), xs, labels, strict=True):
        mat[f"{key}_data"], mat[f"{key}_labels"] = column_major(x).astype(dtype), y.reshape(-1, 1)
    scipy.io.savemat(path, mat)


def test_caltech_from_the_cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    folder = tmp_path / "caltech-silhouettes"
    folder.mkdir()
    xs = [images(n, seed, binary=True) for seed, n in enumerate((4, 2, 3))]
    labels = [np.array([1, 101, 5, 7]), np.array([2, 3]), np.array([101, 1, 50])]
    write_caltech(folder / "caltech101_silhouettes_28_split1.mat", xs, labels)
    shrink(monkeypatch, "caltech-silhouettes", (4, 2, 3))
    monkeypatch.setenv("VAELAB_CALTECH_SILHOUETTES_URL", dead_url())
    splits = load_source("caltech-silhouettes", cache_dir=tmp_path, download=False)  # no network involved
    check_splits(splits, "caltech-silhouettes", (4, 2, 3))
    for x, got in zip(xs, (splits.x_train, splits.x_valid, splits.x_test), strict=True):
        np.testing.assert_array_equal(got, flat(x))
    np.testing.assert_array_equal(splits.y_train, [0, 100, 4, 6])  # 1..101 -> 0..100
    files = json.loads((tmp_path / MANIFEST).read_text())["caltech-silhouettes"]["files"]
    assert files == {"caltech101_silhouettes_28_split1.mat": {**files["caltech101_silhouettes_28_split1.mat"],
                                                              "source": str(folder / next(iter(files)))}}


@pytest.mark.parametrize(("edit", "message"), [
    ("gray", "train images are not binary, but caltech-silhouettes is published as 0/1 pixels"),
    ("label0", r"test_labels must be 3 integers in 1\.\.101"),
    ("short", "val_data has 1 images, the published split has 2"),
])
def test_caltech_refuses_bad_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: str, message: str):
    folder = tmp_path / "caltech-silhouettes"
    folder.mkdir()
    xs = [images(n, seed, binary=True) for seed, n in enumerate((4, 2, 3))]
    labels = [np.array([1, 2, 3, 4]), np.array([2, 3]), np.array([101, 1, 50])]
    if edit == "gray":
        xs[0] = xs[0] * 0.5
    elif edit == "label0":
        labels[2] = np.array([0, 1, 2])
    else:
        xs[1], labels[1] = xs[1][:1], labels[1][:1]
    write_caltech(folder / "caltech101_silhouettes_28_split1.mat", xs, labels, dtype=np.float64)
    shrink(monkeypatch, "caltech-silhouettes", (4, 2, 3))
    with pytest.raises(VaelabError, match=message):
        load_source("caltech-silhouettes", cache_dir=tmp_path, download=False)
    assert not (tmp_path / "caltech-silhouettes.npz").exists()


# --- cache and table --------------------------------------------------------------------------------------------------
def test_corrupt_cache_says_delete_it(tmp_path: Path):
    (tmp_path / "fashion-mnist.npz").write_bytes(b"not a zip file")
    with pytest.raises(VaelabError, match=r"fashion-mnist cache .*fashion-mnist\.npz is corrupt .*delete it"):
        load_source("fashion-mnist", cache_dir=tmp_path, download=False)


def test_hand_placed_cache_is_validated_and_then_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    shrink(monkeypatch, "mnist-static", (2, 1, 1))
    good = {k: np.zeros((n, 784), np.float32) if k[0] == "x" else np.full(n, -1, np.int64)
            for k, n in zip(SPLIT_KEYS, (2, 2, 1, 1, 1, 1), strict=True)}
    np.savez(tmp_path / "mnist-static.npz", **{**good, "x_test": np.full((1, 784), 0.5, np.float32)})
    with pytest.raises(VaelabError, match="test images are not binary, but mnist-static is published as 0/1"):
        load_source("mnist-static", cache_dir=tmp_path, download=False)
    np.savez(tmp_path / "mnist-static.npz", **good)
    assert load_source("mnist-static", cache_dir=tmp_path, download=False).x_train.shape == (2, 784)
    recorded = json.loads((tmp_path / MANIFEST).read_text())["mnist-static"]["cache"]["sha256"]
    assert recorded == sha256(tmp_path / "mnist-static.npz")


def test_unknown_name_suggests_the_closest():
    with pytest.raises(VaelabError, match=r"unknown data source 'omniglott': did you mean 'omniglot'\?"):
        load_source("omniglott")


def test_sources_table():
    assert list(sources.SOURCES) == ["mnist", "digits", "mnist-static", "fashion-mnist", "omniglot",
                                     "caltech-silhouettes"]
    envs = [spec.url_env for spec in sources.SOURCES.values()]
    assert envs == ["VAELAB_MNIST_URL", "VAELAB_DIGITS_URL", "VAELAB_MNIST_STATIC_URL", "VAELAB_FASHION_MNIST_URL",
                    "VAELAB_OMNIGLOT_URL", "VAELAB_CALTECH_SILHOUETTES_URL"]
    for spec in sources.SOURCES.values():
        assert spec.description and spec.origin and len(spec.sizes) == 3
        assert spec.base_url.endswith("/") or not spec.files
        for original in spec.files:
            assert original.sha256 is None or re.fullmatch("[0-9a-f]{64}", original.sha256)
    assert sources.SOURCES["omniglot"].sizes == (23000, 1345, 8070)  # 24,345 training images, 8,070 test
    assert sources.SOURCES["caltech-silhouettes"].sizes == (4100, 2264, 2307)
    assert [s.binary for s in sources.SOURCES.values()] == [False, False, True, False, False, True]
    assert [s.image_shape for s in sources.SOURCES.values()] == [(28, 28), (8, 8), *[(28, 28)] * 4]


def test_vaelab_train_and_evaluate_on_a_named_source(www, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli):
    """`--data mnist-static` goes through run.prepare_data to the source: a real run on the served files."""
    root, url, _ = www
    xs = serve_static(root)
    shrink(monkeypatch, "mnist-static", (6, 2, 3), pin=root)
    monkeypatch.setenv("VAELAB_MNIST_STATIC_URL", url)
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "cache"))
    run = tmp_path / "run"
    code, _, err = cli("train", "configs/gaussian_vae.yaml", "--data", "mnist-static", "--set", "data.binarize=none",
                       "--set", "model.hidden=[8]", "--set", "model.latent_dim=2", "--epochs", 1, "--out", run,
                       "--quiet")
    assert code == 0, err
    from vaelab.runs.loaded_run import open_run

    opened = open_run(run, "cpu")
    np.testing.assert_array_equal(opened.data.x_test.numpy(), flat(xs[2]))   # binary already: used as served
    assert cli("evaluate", run, "--iw-samples", 5, "--quiet")[0] == 0
    code, _, err = cli("train", "configs/gaussian_vae.yaml", "--data", "fashion-mnst", "--out", tmp_path / "x")
    assert code == 2 and "did you mean 'fashion-mnist'?" in err
