"""Builders of the hostile cases of test_hostile.py: argv makers, bad files, checkpoint mutations, payloads."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vaelab.cli.main import main
from vaelab.runs.run_dir import RunLock

CONFIG = str(Path("configs/gaussian_vae.yaml").resolve())
SMALL = ["--quiet", "--set", "train.epochs=1", "--set", "model.hidden=[16]", "--set", "model.latent_dim=2"]
MARKER = "PAYLOAD_RAN"


class Payload:
    """Unpickling this creates the marker file (if anything ever unpickles it)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@dataclass
class Case:
    id: str
    make: Callable[[Path, Path], list]        # (workspace, copy of the trained run) -> argv
    expect: str                               # a fragment of the error line
    env: dict[str, str | None] = field(default_factory=dict)
    readonly: str | None = None               # path (relative to the workspace) to make read-only for the call
    lock: bool = False                        # hold the run's lock (another writer) during the call
    subprocess: bool = False


# ------------------------------------------------------------------------------------------------- helpers


def train_new(*extra: str, data: str = "digits") -> Callable[[Path, Path], list]:
    return lambda ws, run: ["train", CONFIG, "--data", data, "--out", ws / "new", *SMALL, *extra]


def setting(value: str) -> Callable[[Path, Path], list]:
    return train_new("--set", value)


def cmd(*args: str) -> Callable[[Path, Path], list]:
    """A command on the run copy: RUN in `args` is replaced by its path, WS/ by the workspace."""
    def make(ws: Path, run: Path) -> list:
        return [run if a == "RUN" else ws / a[3:] if a.startswith("WS/") else a for a in args]
    return make


def npz_data(write: Callable[[Path, Path], None]) -> Callable[[Path, Path], list]:
    def make(ws: Path, run: Path) -> list:
        write(ws / "d.npz", ws)
        return ["train", CONFIG, "--data", ws / "d.npz", "--out", ws / "new", *SMALL]
    return make


def good_arrays(**replace: np.ndarray) -> dict[str, np.ndarray]:
    x = np.random.default_rng(0).random((20, 16), dtype=np.float32)
    return {"x_train": x, "y_train": np.zeros(20, np.int64), "x_test": x[:5], "y_test": np.zeros(5, np.int64),
            **replace}


def savez(**replace: np.ndarray) -> Callable[[Path, Path], None]:
    return lambda path, ws: np.savez(path, **good_arrays(**replace))


def npy_bytes(header: dict, data: bytes) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def zip_members(members: dict[str, bytes], with_good: bool = True) -> Callable[[Path, Path], None]:
    def write(path: Path, ws: Path) -> None:
        with zipfile.ZipFile(path, "w") as zf:
            if with_good:
                for key, a in good_arrays().items():
                    if f"{key}.npy" not in members and key not in members:
                        buf = io.BytesIO()
                        np.save(buf, a)
                        zf.writestr(f"{key}.npy", buf.getvalue())
            for name, raw in members.items():
                zf.writestr(name, raw)
    return write


def pickled_member(path: Path, ws: Path) -> None:
    np.savez(path, **good_arrays(x_train=np.array([Payload(ws / MARKER)], dtype=object)))


def npy_renamed(path: Path, ws: Path) -> None:
    with open(path, "wb") as f:
        np.save(f, good_arrays()["x_train"])


def pickle_renamed(path: Path, ws: Path) -> None:
    path.write_bytes(pickle.dumps(Payload(ws / MARKER)))


ABSURD = npy_bytes({"descr": "<f4", "fortran_order": False, "shape": (10**12, 16)}, b"\0" * 64)
SHORT = npy_bytes({"descr": "<f4", "fortran_order": False, "shape": (100, 16)}, b"\0" * 64 * 10)


def mnist_cache(write: Callable[[Path, Path], None]) -> Callable[[Path, Path], list]:
    def make(ws: Path, run: Path) -> list:
        (ws / "cache").mkdir()
        write(ws / "cache" / "mnist.npz", ws)
        return ["train", CONFIG, "--data", "mnist", "--out", ws / "new", *SMALL]
    return make


def cache_members(**members: bytes) -> Callable[[Path, Path], None]:
    def write(path: Path, ws: Path) -> None:
        x = np.zeros((4, 784), np.float32)
        y = np.zeros(4, np.int64)
        arrays = {f"{k}_{p}": (x if k == "x" else y) for p in ("train", "valid", "test") for k in ("x", "y")}
        with zipfile.ZipFile(path, "w") as zf:
            for key, a in arrays.items():
                if key not in members:
                    buf = io.BytesIO()
                    np.save(buf, a)
                    zf.writestr(f"{key}.npy", buf.getvalue())
            for key, raw in members.items():
                zf.writestr(f"{key}.npy" if raw.startswith(b"\x93NUMPY") else key, raw)
    return write


def cache_pickle(path: Path, ws: Path) -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([Payload(ws / MARKER)], dtype=object), allow_pickle=True)
    cache_members(x_train=buf.getvalue())(path, ws)


# --------------------------------------------------------------------------------------- checkpoint mutations

def state_path(run: Path) -> Path:
    return run / "checkpoint" / "state.pt"


def mutate_state(change: Callable[[dict, Path], object]) -> Callable[[Path, Path], None]:
    """Rewrite RUN/checkpoint/state.pt with `change(state, ws)` applied (its result replaces the state if not
    None)."""
    def apply(ws: Path, run: Path) -> None:
        state = torch.load(state_path(run), weights_only=True)
        new = change(state, ws)
        torch.save(state if new is None else new, state_path(run))
    return apply


def mutate_weights(change: Callable[[dict, dict], None]) -> Callable[[Path, Path], None]:
    """Rewrite RUN/checkpoint/model.safetensors with `change(tensors, metadata)` applied in place."""
    def apply(ws: Path, run: Path) -> None:
        path = run / "checkpoint" / "model.safetensors"
        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata())
        tensors = load_file(path)
        change(tensors, meta)
        save_file(tensors, path, metadata=meta)
    return apply


def on_run(mutation: Callable[[Path, Path], None], *args: str) -> Callable[[Path, Path], list]:
    def make(ws: Path, run: Path) -> list:
        mutation(ws, run)
        return cmd(*args)(ws, run)
    return make


def adam_state(state: dict) -> dict:
    return state["optim"]["optimizers"][0]


def shrink_moments(state: dict, ws: Path) -> None:
    for entry in adam_state(state)["state"].values():
        entry["exp_avg"], entry["exp_avg_sq"] = torch.zeros(3), torch.zeros(3)


def old_format_shrunk(state: dict, ws: Path) -> None:
    shrink_moments(state, ws)
    state["optim"] = adam_state(state)          # runs saved before param groups: one Adam state dict


def extra_group(state: dict, ws: Path) -> None:
    groups = adam_state(state)["param_groups"]
    groups.append(dict(groups[0], params=[999]))


def sgd_key(state: dict, ws: Path) -> None:
    entry = next(iter(adam_state(state)["state"].values()))
    entry["momentum_buffer"] = torch.zeros_like(entry["exp_avg"])


def nan_moment(state: dict, ws: Path) -> None:
    next(iter(adam_state(state)["state"].values()))["exp_avg"].fill_(float("nan"))


def two_optimizers(state: dict, ws: Path) -> None:
    state["optim"]["optimizers"].append(adam_state(state))


def string_lr(state: dict, ws: Path) -> None:
    adam_state(state)["param_groups"][0]["lr"] = "fast"


def partial_epoch(state: dict, ws: Path) -> None:
    state["partial"] = {"step": 3, "epoch_rng": state["data_rng"].clone(), "sums": [0.0] * 4, "beta_sum": 3.0,
                        "seconds": 0.1}


def set_key(key: str, value: object) -> Callable[[dict, Path], None]:
    return lambda state, ws: state.__setitem__(key, value)


def drop_key(key: str) -> Callable[[dict, Path], None]:
    return lambda state, ws: state.__delitem__(key)


def meta_config(text: str | None) -> Callable[[dict, dict], None]:
    def change(tensors: dict, meta: dict) -> None:
        if text is None:
            del meta["config"]
        else:
            meta["config"] = text
    return change


def config_value(old: str, new: str) -> Callable[[dict, dict], None]:
    def change(tensors: dict, meta: dict) -> None:
        assert old in meta["config"]
        meta["config"] = meta["config"].replace(old, new)
    return change


def poison_weight(value: float) -> Callable[[dict, dict], None]:
    def change(tensors: dict, meta: dict) -> None:
        key = next(k for k in tensors if k.startswith("model.") and tensors[k].is_floating_point())
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = value
    return change


def reshape_weight(tensors: dict, meta: dict) -> None:
    key = next(k for k in tensors if k.endswith("weight"))
    tensors[key] = torch.zeros(3, 3)


def write(path: str, content: bytes) -> Callable[[Path, Path], None]:
    def apply(ws: Path, run: Path) -> None:
        target = run / path
        if content == b"<delete>":
            target.unlink()
        else:
            target.write_bytes(content)
    return apply


def in_ws(name: str, content: bytes, *args: str) -> Callable[[Path, Path], list]:
    def make(ws: Path, run: Path) -> list:
        (ws / name).write_bytes(content)
        return cmd(*args)(ws, run)
    return make


def config_file(text: bytes | Callable[[Path], bytes]) -> Callable[[Path, Path], list]:
    def make(ws: Path, run: Path) -> list:
        (ws / "c.yaml").write_bytes(text(ws) if callable(text) else text)
        return ["train", ws / "c.yaml", "--data", "digits", "--out", ws / "new", "--quiet"]
    return make


def stranded(ws: Path, run: Path) -> list:
    (ws / "stopped").mkdir()
    shutil.copy(run / "config.yaml", ws / "stopped" / "config.yaml")
    return ["train", CONFIG, "--data", "digits", "--out", ws / "stopped", *SMALL]


TORCHRUN = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29555"}


def torchrun(**env: str | None) -> dict[str, str | None]:
    return TORCHRUN | env


# ------------------------------------------------------------------------------------------------- running


def snapshot(root: Path) -> dict[str, str]:
    """Every file's sha256 and every folder under `root`."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


DROP_DAC = ["--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]


@contextlib.contextmanager
def read_only(path: Path):
    """`path` not writable for the duration (chmod 0555, undone afterwards). Root ignores permission bits, so a
    root caller must also run the command without CAP_DAC_OVERRIDE (`as_unprivileged`)."""
    path.mkdir(exist_ok=True)
    path.chmod(0o555)
    try:
        yield
    finally:
        path.chmod(0o755)


def as_unprivileged(argv: list[str]) -> list[str]:
    """`argv` run so that permission bits bind: as is for a normal user; for root through util-linux `setpriv`,
    dropping the capabilities that bypass them (still uid 0, so it reads the root-owned tree it ran from)."""
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("read-only cases as root need util-linux setpriv to drop CAP_DAC_OVERRIDE (apt-get install "
                    "util-linux)")
    return [setpriv, *DROP_DAC, "--", *argv]


def _run(argv: list[str]) -> tuple[int, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")        # monkeypatch has applied case.env to os.environ
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stderr


def invoke(case: Case, argv: list, ws: Path, run: Path, capsys) -> tuple[int, str]:
    args = [str(a) for a in argv]
    if case.readonly:                      # a real OS refusal: the command in its own, unprivileged process
        with read_only(ws / case.readonly):
            return _run(as_unprivileged([sys.executable, "-m", "vaelab", *args]))
    if case.subprocess:
        return _run([sys.executable, "-m", "vaelab", *args])
    scope = contextlib.ExitStack()
    with scope:
        if case.lock:
            scope.enter_context(RunLock(ws / "stopped" if (ws / "stopped").is_dir() else run))
        try:
            code = main(args)
        except SystemExit as exc:          # argparse
            code = exc.code
    return code, capsys.readouterr().err
