"""The Python API checks its arguments like the CLI (issue 27): a wrong type is a TypeError, a value out of range a
ValueError, both one-line VaelabErrors worded as the CLI words the same option; natural types (numpy scalars, 0-d
arrays and tensors, pathlib paths) give the same config, run and results as the plain Python values."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import vaelab
from vaelab import api
from vaelab.core.errors import VaelabError

ROOT = Path(__file__).resolve().parents[1]
TINY = {"data": "digits", "epochs": 1, "seed": 0, "model": {"hidden": [16], "latent_dim": 3},
        "train": {"batch_size": 64}}
SEED_LIMIT = "give a number from 0 to 9,223,372,036,854,775,807"


class Trained(Exception):
    """Raised by the stand-in for training: `fit` got as far as handing over its Config."""


@pytest.fixture
def handed(monkeypatch):
    """`fit(...)` -> (the Config and run directory it hands to training), nothing trained."""
    seen = {}

    def fake_train(cfg, run_dir, quiet):
        seen.update(cfg=cfg, run_dir=run_dir, quiet=quiet)
        raise Trained

    monkeypatch.setattr(api, "train", fake_train)

    def fit(*args, **kwargs):
        with pytest.raises(Trained):
            vaelab.fit(*args, **kwargs)
        return seen["cfg"].to_yaml(), seen["run_dir"], seen["quiet"]

    return fit


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny Gaussian VAE on digits, written to disk (the CLI opens it too)."""
    return vaelab.fit("gaussian_vae", tmp_path_factory.mktemp("api_args") / "run", **TINY)


def one_line(error: BaseException) -> str:
    assert isinstance(error, VaelabError) and "\n" not in str(error), repr(error)
    return str(error)


# ---------------------------------------------------------------------------------------------------------------
# fit: natural types give the plain value's config; other objects and wrong types are refused

@pytest.mark.parametrize(("natural", "plain"), [
    ({"epochs": np.int64(2)}, {"epochs": 2}),
    ({"epochs": np.array(2)}, {"epochs": 2}),
    ({"epochs": torch.tensor(2)}, {"epochs": 2}),
    ({"seed": np.int64(3)}, {"seed": 3}),
    ({"seed": np.uint8(3)}, {"seed": 3}),
    ({"lr": np.float32(1e-3)}, {"lr": 1e-3}),          # float32's shortest decimal, not 0.0010000000474974513
    ({"lr": np.float16(0.5)}, {"lr": 0.5}),
    ({"lr": np.float64(2e-3)}, {"lr": 2e-3}),
    ({"lr": np.longdouble(0.25)}, {"lr": 0.25}),
    ({"lr": np.array(2e-3)}, {"lr": 2e-3}),
    ({"estimator": np.str_("disarm")}, {"estimator": "disarm"}),
    ({"train": {"tf32": np.bool_(True)}}, {"train": {"tf32": True}}),
    ({"train.tf32": np.array(True)}, {"train.tf32": True}),
    ({"model": {"hidden": [np.int64(8), np.int32(4)]}}, {"model": {"hidden": [8, 4]}}),
    ({"model": {"hidden": (8, 4)}}, {"model": {"hidden": [8, 4]}}),
])
def test_numpy_and_torch_scalars_give_the_plain_values_config(handed, natural, plain):
    base = {"data": "digits", "model.latent_dim": 3}
    assert handed("gaussian_vae", **base, **natural)[0] == handed("gaussian_vae", **base, **plain)[0]


def test_paths_give_the_same_config_and_run_directory_as_strings(handed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez("x.npz", x_train=np.zeros((20, 64)), x_test=np.ones((5, 64)))
    preset = ROOT / "configs" / "gaussian_vae.yaml"
    with_paths = handed(preset, Path("out"), data=Path("x.npz"), quiet=np.bool_(False))
    with_strings = handed(str(preset), "out", data="x.npz", quiet=False)
    assert with_paths == with_strings
    # a relative data path is stored absolute, as `vaelab train --data x.npz` stores it
    assert f"source: {tmp_path.resolve() / 'x.npz'}" in with_paths[0]
    assert with_paths[1:] == (Path("out"), False)


def test_natural_types_train_the_same_run(tmp_path):
    """End to end: a run from numpy scalars and paths has the plain run's config.yaml and weights."""
    natural = vaelab.fit(ROOT / "configs" / "gaussian_vae.yaml", tmp_path / "natural", data=Path("digits"),
                         epochs=np.int64(1), seed=np.int64(3), lr=np.float32(1e-3), model={"hidden": [np.int64(16)],
                                                                                           "latent_dim": 3})
    plain = vaelab.fit(str(ROOT / "configs" / "gaussian_vae.yaml"), str(tmp_path / "plain"), data="digits",
                       epochs=1, seed=3, lr=1e-3, model={"hidden": [16], "latent_dim": 3})
    assert (tmp_path / "natural" / "config.yaml").read_text() == (tmp_path / "plain" / "config.yaml").read_text()
    assert all(torch.equal(a, b) for a, b in zip(natural.model.state_dict().values(),
                                                 plain.model.state_dict().values(), strict=True))
    assert torch.equal(natural.sample(np.int64(4), seed=np.uint8(2)), plain.sample(4, seed=2))


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"epochs": object()}, TypeError, r"^epochs = <object object at 0x\w+> is a object: give a number, str"),
    ({"epochs": {1}}, TypeError, r"^epochs = \{1\} is a set"),
    ({"epochs": np.arange(3)}, TypeError, r"^epochs = array\(\[0, 1, 2\]\) is a ndarray"),
    ({"epochs": 2.5}, TypeError, r"^epochs = 2.5 is a float: give an int \(train.epochs\)$"),
    ({"epochs": True}, TypeError, r"^epochs = True is a bool: give an int"),
    ({"seed": np.bool_(True)}, TypeError, r"^seed = True is a bool: give an int \(train.seed\)$"),
    ({"seed": "3"}, TypeError, r"^seed = '3' is a str"),
    ({"lr": "fast"}, TypeError, r"^lr = 'fast' is a str: give a number \(train.lr\)$"),
    ({"lr": 1j}, TypeError, r"^lr = 1j is a complex"),
    ({"device": 0}, TypeError, r"^device = 0 is a int: give a str \(train.device\)$"),
    ({"estimator": None}, TypeError, r"^estimator = None is a NoneType: give a str"),
    ({"model": {1: 2}}, TypeError, r"^model has key 1, a int: config keys are str$"),
    ({"model": {"hidden": "wide"}}, TypeError, r"^config key model.hidden = 'wide' is not a list: fix the value$"),
    ({"model": {"hidden": [object()]}}, TypeError, r"^model\['hidden'\]\[0\] = <object"),
    ({"config": object()}, TypeError, r"^config = <object .*: give a path \(a str or a pathlib.Path\)$"),
    ({"config": 5}, TypeError, r"^config = 5 is a int: give a path"),
    ({"out": 5}, TypeError, r"^out = 5 is a int: give a path"),
    ({"out": ""}, ValueError, r"^out is an empty string: give a path$"),
    ({"quiet": "no"}, TypeError, r"^quiet = 'no' is a str: give True or False$"),
    ({"quiet": 1}, TypeError, r"^quiet = 1 is a int: give True or False$"),
    ({"data": 5}, TypeError, r"^data = 5 is a int: give a source name, a path, or images"),
    ({"data": b"digits"}, TypeError, r"^data = b'digits' is a bytes"),
    # values out of range: the config check's line, word for word as `vaelab train --epochs 0` prints it
    ({"epochs": 0}, ValueError, r"^train.epochs = 0 must be an integer >= 1: fix the value$"),
    ({"seed": -1}, ValueError, r"^train.seed = -1 must be an integer in 0..9223372036854775807: give a seed"),
    ({"seed": np.int64(-1)}, ValueError, r"^train.seed = -1 must be an integer"),
    ({"lr": -1.0}, ValueError, r"^train.lr = -1.0"),
    ({"device": "gpu"}, ValueError, r"'gpu'"),
    ({"estimator": "dsarm"}, ValueError, r"did you mean 'disarm'"),
    ({"config": "gausian_vae"}, ValueError, r"did you mean 'gaussian_vae'"),
    ({"train.foo": 1}, ValueError, r"^unknown config key 'train.foo'"),
])
def test_fit_refuses_bad_arguments_in_one_line(handed, kwargs, error, message, tmp_path):
    kwargs = {"config": "gaussian_vae", "data": "digits", "out": tmp_path / "run", **kwargs}
    with pytest.raises(error, match=message) as info:
        handed(kwargs.pop("config"), kwargs.pop("out"), **kwargs)
    one_line(info.value)
    assert isinstance(info.value, api.ArgumentError | api.ArgumentTypeError)
    assert not (tmp_path / "run").exists()


def test_fit_errors_are_the_clis_lines(handed, cli):
    """`fit(epochs=0)` and `vaelab train --epochs 0` refuse with the same line."""
    with pytest.raises(ValueError) as info:
        handed("gaussian_vae", data="digits", epochs=0)
    code, _, err = cli("train", "gaussian_vae", "--data", "digits", "--epochs", 0)
    assert code == 2 and err.strip() == f"vaelab: error: {one_line(info.value)}"


# ---------------------------------------------------------------------------------------------------------------
# Run's methods and load

def bad_calls(run, tmp_path):
    """(label, call, exception type, message regex) for every public method's arguments."""
    x = run.data.x_test[:4]
    return [
        ("sample(-1)", lambda: run.sample(-1), ValueError, r"^n -1: give a number from 1 to 10,000$"),
        ("sample(0)", lambda: run.sample(0), ValueError, r"^n 0: give a number from 1 to 10,000$"),
        ("sample('5')", lambda: run.sample("5"), TypeError, r"^n = '5' is a str: give an int from 1 to 10,000$"),
        ("sample(2.5)", lambda: run.sample(2.5), TypeError, r"^n = 2.5 is a float"),
        ("sample(True)", lambda: run.sample(True), TypeError, r"^n = True is a bool"),
        ("sample(bool_)", lambda: run.sample(np.bool_(True)), TypeError, r"^n = True is a bool"),
        ("sample(10**9)", lambda: run.sample(10**9), ValueError, r"^n 1000000000: .* \(the limit of one call\)$"),
        ("sample(seed=2**64)", lambda: run.sample(seed=2**64), ValueError,
         rf"^seed 18446744073709551616: {SEED_LIMIT} \(the limit\)$"),
        ("sample(seed=-1)", lambda: run.sample(seed=-1), ValueError, rf"^seed -1: {SEED_LIMIT}$"),
        ("sample(seed=1.0)", lambda: run.sample(seed=1.0), TypeError, r"^seed = 1.0 is a float"),
        ("sample(mode)", lambda: run.sample(mode="thresold"), ValueError, r"did you mean 'threshold'"),
        ("sample(mode=3)", lambda: run.sample(mode=3), TypeError, r"^mode = 3 is a int: give one of bernoulli"),
        ("sample(prior)", lambda: run.sample(prior="gaussian"), ValueError, r"^prior = 'gaussian' is not known"),
        ("quality(n=-5)", lambda: run.quality(n=-5), ValueError, r"^n -5: give a number from 4 to 100,000$"),
        ("quality(n=3)", lambda: run.quality(n=3), ValueError, r"^n 3: give a number from 4 to 100,000$"),
        ("quality(n=10**6)", lambda: run.quality(n=10**6), ValueError, r"the limit of samples held in memory"),
        ("quality(n=2.5)", lambda: run.quality(n=2.5), TypeError, r"^n = 2.5 is a float"),
        ("quality(mode)", lambda: run.quality(n=10, mode="x"), ValueError, r"^mode = 'x' is not known"),
        ("quality(prior=1)", lambda: run.quality(n=10, prior=1), TypeError, r"^prior = 1 is a int"),
        ("quality(classifier=5)", lambda: run.quality(n=10, classifier=5), TypeError,
         r"^classifier = 5 is a int: give a path"),
        ("fit_density(2.5)", lambda: run.fit_density(components=2.5), TypeError,
         r"^components = 2.5 is a float: give a positive int or 'auto'$"),
        ("fit_density(True)", lambda: run.fit_density(components=True), TypeError, r"^components = True is a bool"),
        ("fit_density(0)", lambda: run.fit_density(components=0), ValueError,
         r"^components 0 is neither a positive integer nor auto: e.g. components=20$"),
        ("fit_density('x')", lambda: run.fit_density(components="x"), ValueError, r"^components 'x' is neither"),
        ("fit_density(10**6)", lambda: run.fit_density(components=10**6), ValueError,
         r"^components 1000000: more components than the \d+ training codes"),
        ("fit_density(covariance)", lambda: run.fit_density(covariance="ful"), ValueError, r"did you mean 'full'"),
        ("fit_density(seed=-1)", lambda: run.fit_density(seed=-1), ValueError, rf"^seed -1: {SEED_LIMIT}$"),
        ("evaluate(iw_samples=2.5)", lambda: run.evaluate(iw_samples=2.5), TypeError, r"^iw_samples = 2.5 is a"),
        ("evaluate(iw_samples=-1)", lambda: run.evaluate(iw_samples=-1), ValueError, r"^iw_samples -1: give a"),
        ("evaluate(exact='yes')", lambda: run.evaluate(exact="yes"), TypeError, r"^exact = 'yes' is a str"),
        ("log_prob(k=0)", lambda: run.log_prob(x, k=0), ValueError, r"^k 0: give a number from 1 to 1,000,000$"),
        ("log_prob(k='5')", lambda: run.log_prob(x, k="5"), TypeError, r"^k = '5' is a str"),
        ("log_prob(seed=-1)", lambda: run.log_prob(x, seed=-1), ValueError, r"^seed -1"),
        ("reconstruct(mode=None)", lambda: run.reconstruct(x, mode=None), TypeError, r"^mode = None is a NoneType"),
        ("reconstruct(seed=0.5)", lambda: run.reconstruct(x, seed=0.5), TypeError, r"^seed = 0.5 is a float"),
        ("encode(list)", lambda: run.encode([1, 0]), TypeError, r"^x is a list"),
        ("save_grid(5)", lambda: run.save_grid(5), TypeError, r"^path = 5 is a int: give a path"),
        ("save_grid(.txt)", lambda: run.save_grid(tmp_path / "g.txt"), ValueError, r"unknown image extension"),
        ("save_grid(n=0)", lambda: run.save_grid(tmp_path / "g.png", 0), ValueError, r"^n 0: give a number"),
        ("save(5)", lambda: run.save(5), TypeError, r"^path = 5 is a int: give a path"),
        ("save('')", lambda: run.save(""), ValueError, r"^path is an empty string"),
        ("save(run)", lambda: run.save(run.path), ValueError, r"exists: save to a new path$"),
        ("save(inside)", lambda: run.save(run.path / "copy"), ValueError,
         r"^path .*/copy is inside the run directory .*: save to a path outside it$"),
        ("save(inside, relative)", lambda: run.save(Path(os.path.relpath(run.path)) / "fig" / "x"), ValueError,
         r"is inside the run directory"),
        ("load(5)", lambda: vaelab.load(5), TypeError, r"^path = 5 is a int: give a path"),
        ("load(device=3)", lambda: vaelab.load(run.path, device=3), TypeError, r"^device = 3 is a int"),
        ("load(device='gpu')", lambda: vaelab.load(run.path, device="gpu"), ValueError,
         r"^device = 'gpu' is not a device vaelab runs on: use auto, cpu, cuda or cuda:N$"),
    ]


def test_run_methods_refuse_bad_arguments_with_the_right_type_and_line(run, tmp_path):
    before = sorted(p.name for p in run.path.rglob("*"))
    for label, call, error, message in bad_calls(run, tmp_path):
        with pytest.raises(error) as info:
            call()
        assert re.search(message, one_line(info.value)), (label, str(info.value))
        assert isinstance(info.value, api.ArgumentError | api.ArgumentTypeError), label
    assert sorted(p.name for p in run.path.rglob("*")) == before      # nothing was written into the run
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("argv", "call"), [
    (["sample", "{run}", "--n", 0], lambda run: run.sample(0)),
    (["sample", "{run}", "--n", 20000], lambda run: run.save_grid(run.path / "g.png", 20000)),
    (["sample", "{run}", "--seed", -1], lambda run: run.sample(4, seed=-1)),
    (["sample", "{run}", "--seed", 2**64], lambda run: run.sample(4, seed=2**64)),
    (["quality", "{run}", "--n", -5], lambda run: run.quality(n=-5)),
    (["quality", "{run}", "--n", 10**9], lambda run: run.quality(n=10**9)),
    (["evaluate", "{run}", "--iw-samples", -1], lambda run: run.evaluate(iw_samples=-1)),
    (["evaluate", "{run}", "--iw-samples", 10**7], lambda run: run.evaluate(iw_samples=10**7)),
    (["fit-density", "{run}", "--seed", -1], lambda run: run.fit_density(seed=-1)),
])
def test_run_method_errors_are_the_clis_lines_without_the_dashes(run, cli, argv, call):
    code, _, err = cli(*[str(run.path) if a == "{run}" else a for a in argv])
    with pytest.raises(ValueError) as info:
        call(run)
    flag = argv[2]
    want = err.strip().removeprefix("vaelab: error: ").replace(flag, flag.lstrip("-").replace("-", "_"))
    assert code == 2 and one_line(info.value) == want


def test_run_methods_take_numpy_and_torch_scalars_and_paths(run, tmp_path):
    x = run.data.x_test[:8]
    assert torch.equal(run.sample(np.int64(5), seed=np.uint8(2)), run.sample(5, seed=2))
    assert torch.equal(run.sample(np.array(5), seed=torch.tensor(2), mode=np.str_("threshold")),
                       run.sample(5, seed=2, mode="threshold"))
    assert torch.equal(run.reconstruct(x, mode="bernoulli", seed=np.int32(4)), run.reconstruct(x, "bernoulli", 4))
    assert torch.equal(run.log_prob(x, k=np.int16(3), seed=np.int64(1)), run.log_prob(x, k=3, seed=1))
    a = run.fit_density(components=np.int64(2), covariance=np.str_("diag"), seed=np.int64(1))
    b = run.fit_density(components=2, covariance="diag", seed=1)
    assert np.array_equal(a.means_, b.means_)
    assert run.evaluate(iw_samples=np.int64(2), exact=np.bool_(False))["iw_samples"] == 2
    grid = run.save_grid(tmp_path / "g.png", np.int64(4))
    assert grid == tmp_path / "g.png" and grid.read_bytes()[:4] == b"\x89PNG"
    again = vaelab.load(Path(run.path), np.str_("cpu"))
    assert torch.equal(again.sample(3, seed=1), run.sample(3, seed=1))


def test_save_is_whole_or_nothing_and_leaves_no_temporary_copy(run, tmp_path):
    saved = run.save(tmp_path / "deep" / "copy")
    assert saved == tmp_path / "deep" / "copy" and (saved / "checkpoint" / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["copy"]
    assert (saved / "config.yaml").read_text() == (run.path / "config.yaml").read_text()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=r"^folder of path .*/file is a file: choose a directory path$"):
        run.save(blocker / "copy")
