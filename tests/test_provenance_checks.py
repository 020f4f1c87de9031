"""A run records what it was trained on (the data file's absolute path and sha256, its config's hash, a run id, in
model.safetensors' metadata and in state.pt) and every later command checks it: a replaced data file refuses
`train --resume` and `evaluate` in one line (exit 2), a foreign state.pt is refused, an edited config.yaml is named
in one line and the checkpoint's config is used; checkpoints from before these fields still resume and evaluate."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vaelab.data.sources import load_dataset
from vaelab.runs.loaded_run import open_run
from vaelab.runs.run_dir import data_identity

TINY = ["--quiet", "--device", "cpu", "--epochs", "1", "--set", "model.hidden=[16]", "--set", "model.latent_dim=4",
        "--set", "train.batch_size=32", "--set", "train.steps_per_epoch=2"]
FIELDS = ("run_id", "config_sha256", "data_source", "data_sha256")


def write_digits(path: Path, shift: int = 0) -> Path:
    """A small digits .npz; `shift` picks other training images (another data set of the same shape)."""
    s = load_dataset("digits")
    np.savez(path, x_train=s.x_train[shift:shift + 300], x_valid=s.x_valid[:100], x_test=s.x_test[:100])
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def meta(run: Path) -> dict[str, str]:
    with safe_open(run / "checkpoint" / "model.safetensors", framework="pt") as f:
        return dict(f.metadata())


def state(run: Path) -> dict:
    return torch.load(run / "checkpoint" / "state.pt", weights_only=True)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def data(tmp_path) -> Path:
    return write_digits(tmp_path / "d.npz")


@pytest.fixture
def trained(tmp_path, data, cli) -> Path:
    """`vaelab train bernoulli_vae --data d.npz --epochs 1` (sfe-avg), tiny."""
    run = tmp_path / "run"
    code, _, err = cli("train", "bernoulli_vae", "--data", data, "--out", run, *TINY)
    assert code == 0, err
    return run


def test_the_checkpoint_records_the_data_file_its_sha256_and_the_config_hash(trained, data, cli):
    m = meta(trained)
    assert m["data_source"] == str(data.resolve()) and m["data_sha256"] == sha256(data)
    canonical = json.dumps(yaml.safe_load(m["config"]), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert m["config_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert len(m["run_id"]) == 32 and state(trained)["provenance"] == {k: m[k] for k in FIELDS}
    code, _, err = cli("train", "--resume", trained, "--epochs", "2", "--quiet")
    assert code == 0, err
    again = meta(trained)
    assert again["run_id"] == m["run_id"] and again["data_sha256"] == m["data_sha256"]   # the same run, same data
    assert again["config_sha256"] != m["config_sha256"]               # train.epochs is now 2: the config it records
    assert state(trained)["provenance"] == {k: again[k] for k in FIELDS}


def test_resume_refuses_a_replaced_data_file_and_writes_nothing(trained, data, tmp_path, cli):
    was = sha256(data)
    shutil.copy(data, tmp_path / "original.npz")
    write_digits(data, shift=5)                                   # same name, same shapes, other images
    before = (trained / "checkpoint" / "model.safetensors").read_bytes()
    code, _, err = cli("train", "--resume", trained, "--epochs", "2", "--quiet")
    assert code == 2
    assert one_line(err) == (f"vaelab: error: {trained} was trained on {data.resolve()} with sha256 {was[:12]}…, the "
                             f"file now has {sha256(data)[:12]}…: put the original back, or start a new run")
    assert (trained / "checkpoint" / "model.safetensors").read_bytes() == before and state(trained)["epoch"] == 1
    shutil.copy(tmp_path / "original.npz", data)                  # the fix it names
    code, _, err = cli("train", "--resume", trained, "--epochs", "2", "--quiet")
    assert code == 0 and state(trained)["epoch"] == 2, err


@pytest.mark.parametrize("origin", ["disarm run", "older vaelab"])
def test_a_foreign_optimizer_state_is_refused(origin, trained, data, tmp_path, cli):
    ours = meta(trained)["run_id"]
    if origin == "disarm run":                                   # another run's state.pt, shapes that fit
        other = tmp_path / "disarm"
        assert cli("train", "bernoulli_vae", "--data", data, "--estimator", "disarm", "--out", other, *TINY)[0] == 0
        foreign = state(other)
        mine = state(trained)["optim"]["optimizers"][0]["state"]
        assert [v["exp_avg"].shape for v in foreign["optim"]["optimizers"][0]["state"].values()] == \
            [v["exp_avg"].shape for v in mine.values()]
        theirs = f"{foreign['provenance']['run_id'][:12]}…"
    else:                                                       # a state.pt from before run ids, beside new weights
        foreign = {k: v for k, v in state(trained).items() if k != "provenance"}
        theirs = "none"
    torch.save(foreign, trained / "checkpoint" / "state.pt")
    expected = (f"vaelab: error: {trained}/checkpoint/state.pt is a foreign optimizer state (its run_id is {theirs}, "
                f"the weights beside it have {ours[:12]}…): put the run's own state.pt back, or resume from a backup "
                "copy")
    code, _, err = cli("train", "--resume", trained, "--epochs", "2", "--quiet")
    assert code == 2 and one_line(err) == expected
    code, _, err = cli("evaluate", trained, "--iw-samples", "5", "--quiet")
    assert code == 2 and one_line(err) == expected


def test_evaluate_names_an_edited_config_and_uses_the_checkpoints(trained, data, cli):
    code, out, err = cli("evaluate", trained, "--iw-samples", "5", "--quiet")
    assert code == 0 and err == "", err
    first = json.loads(out)
    assert first["data_sha256"] == sha256(data)                  # eval.json says what the numbers were measured on
    config = trained / "config.yaml"
    text = config.read_text()
    assert "  lr: 0.001\n" in text and "  - 16\n" in text
    config.write_text(text.replace("  lr: 0.001\n", "  lr: 0.01\n"))
    code, out, err = cli("evaluate", trained, "--iw-samples", "5", "--quiet")
    assert code == 0
    assert one_line(err) == (f"vaelab: {config} was edited after training (train.lr 0.001 -> 0.01): opening it under "
                             "the checkpoint's config, the one it was trained with")
    again = json.loads(out)
    assert (again["elbo"], again["iw_loglik"]) == (first["elbo"], first["iw_loglik"])   # the same model and data
    config.write_text(text.replace("  - 16\n", "  - 32\n"))          # a change the weights could not even load
    code, out, err = cli("evaluate", trained, "--iw-samples", "5", "--quiet")
    assert code == 0 and json.loads(out)["elbo"] == first["elbo"]
    assert one_line(err).startswith(f"vaelab: {config} was edited after training (model.hidden [16] -> [32]): ")


def test_resume_names_an_edited_config_and_continues_under_the_checkpoints(trained, cli):
    config = trained / "config.yaml"
    config.write_text(config.read_text().replace("  lr: 0.001\n", "  lr: 0.5\n"))
    code, _, err = cli("train", "--resume", trained, "--epochs", "2", "--quiet")
    assert code == 0
    assert one_line(err) == (f"vaelab: {config} was edited after training (train.lr 0.001 -> 0.5): resuming under "
                             "the checkpoint's config, the one it was trained with")
    assert yaml.safe_load(meta(trained)["config"])["train"]["lr"] == 0.001


def test_evaluate_refuses_a_changed_data_file_unless_the_data_is_given(trained, data, tmp_path, cli, capsys):
    was, moved = sha256(data), tmp_path / "elsewhere.npz"
    shutil.copy(data, moved)                                       # the original contents at another path
    write_digits(data, shift=5)
    now = sha256(data)
    code, _, err = cli("evaluate", trained, "--iw-samples", "5", "--quiet")
    assert code == 2
    assert one_line(err) == (f"vaelab: error: {trained} was trained on {data.resolve()} with sha256 {was[:12]}…, the "
                             f"file now has {now[:12]}…: its test numbers would not compare; put the original back, "
                             "or train a new run on it")
    assert not (trained / "eval.json").exists()
    run = open_run(trained, "cpu", str(data))                      # named explicitly: used, and said so
    assert one_line(capsys.readouterr().err) == (
        f"vaelab: {trained} is opened on {data} (sha256 {now[:12]}…), not on the data it was trained on "
        f"({data.resolve()}, sha256 {was[:12]}…): its numbers do not compare with the run's own")
    assert len(run.data.x_test) == 100
    open_run(trained, "cpu", str(moved))                           # the data it was trained on, moved: silent
    assert capsys.readouterr().err == ""


def strip_provenance(run: Path) -> None:
    """Make `run`'s checkpoint look written before provenance: no fields in the metadata or state.pt."""
    m = {k: v for k, v in meta(run).items() if k not in FIELDS}
    save_file(load_file(run / "checkpoint" / "model.safetensors"), run / "checkpoint" / "model.safetensors", m)
    torch.save({k: v for k, v in state(run).items() if k != "provenance"}, run / "checkpoint" / "state.pt")


def test_a_checkpoint_without_the_fields_still_resumes_and_evaluates(trained, data, cli):
    strip_provenance(trained)
    code, _, err = cli("evaluate", trained, "--iw-samples", "5", "--quiet")
    assert code == 0 and err == "", err
    code, _, err = cli("train", "--resume", trained, "--epochs", "2", "--quiet")
    assert code == 0 and err == "", err
    m = meta(trained)                                              # recorded from the resumed run on
    assert m["data_sha256"] == sha256(data) and state(trained)["provenance"]["run_id"] == m["run_id"]


def test_a_bundle_keeps_the_fields(trained, tmp_path, cli):
    bundle, moved = tmp_path / "run.safetensors", tmp_path / "moved"
    assert cli("bundle", trained, "--out", bundle)[0] == 0
    assert cli("unbundle", bundle, "--out", moved)[0] == 0
    assert {k: meta(moved)[k] for k in FIELDS} == {k: meta(trained)[k] for k in FIELDS}
    assert state(moved)["provenance"] == state(trained)["provenance"]
    code, _, err = cli("train", "--resume", moved, "--epochs", "2", "--quiet")
    assert code == 0 and err == "", err
    assert meta(moved)["run_id"] == meta(trained)["run_id"]


def test_a_named_source_given_for_a_file_run_is_said_and_a_folder_is_identified_by_its_idx_files(
        trained, data, tmp_path, capsys):
    open_run(trained, "cpu", "digits")
    assert one_line(capsys.readouterr().err) == (
        f"vaelab: {trained} is opened on digits (sha256 none), not on the data it was trained on ({data.resolve()}, "
        f"sha256 {sha256(data)[:12]}…): its numbers do not compare with the run's own")
    folder = tmp_path / "idx"
    folder.mkdir()
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz"]
    for i, name in enumerate(names):
        (folder / name).write_bytes(bytes([i]) * 10)
    expected = hashlib.sha256("".join(f"{n} {sha256(folder / n)}\n" for n in names).encode()).hexdigest()
    assert data_identity(str(folder)) == {"data_source": str(folder), "data_sha256": expected}
    (folder / "notes.txt").write_text("not read by the loader")
    assert data_identity(str(folder))["data_sha256"] == expected
    (folder / names[1]).write_bytes(b"other")
    assert data_identity(str(folder))["data_sha256"] != expected
    assert data_identity("digits") == {"data_source": "digits", "data_sha256": ""}
