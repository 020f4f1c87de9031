"""`vaelab evaluate` beside a training run: a checkpoint is read whole or not at all. save_checkpoint swaps whole
directories by rename, and read_checkpoint reads both files through one descriptor of the directory it found, so
a swap between reading the weights and reading the state cannot pair one checkpoint's weights with the next one's
state (issue 27: "state.pt is from epoch 82 but the weights beside it from epoch 81"). The swap is made at a fixed
point, between the two reads, so the verdict does not depend on timing."""

from __future__ import annotations

import shutil

import pytest

from vaelab.core.errors import VaelabError
from vaelab.runs import checkpoint

ARGS = ["gaussian_vae", "--data", "digits", "--quiet", "--device", "cpu", "--set", "train.steps_per_epoch=2",
        "--set", "eval.iw_samples=5"]


@pytest.fixture
def two_checkpoints(cli, tmp_path):
    """A run at epoch 2, and a copy of its checkpoint directory from epoch 1."""
    run = tmp_path / "run"
    assert cli("train", *ARGS, "--epochs", "1", "--out", run)[0] == 0
    shutil.copytree(run / "checkpoint", tmp_path / "epoch1")
    assert cli("train", "--resume", run, "--epochs", "2")[0] == 0
    return run, tmp_path / "epoch1"


def swap_after_first_read(monkeypatch, run, replacement):
    """Make the writer's swap (checkpoint/ -> checkpoint.old/, the new one in) happen right after the reader has
    read its first file."""
    real = checkpoint._read_member
    calls = []

    def read_then_swap(dir_fd, name):
        data = real(dir_fd, name)
        calls.append(name)
        if len(calls) == 1:
            (run / "checkpoint").rename(run / "checkpoint.old")
            shutil.copytree(replacement, run / "checkpoint")
        return data

    monkeypatch.setattr(checkpoint, "_read_member", read_then_swap)
    return calls


def test_a_swap_between_the_two_reads_still_gives_one_whole_checkpoint(two_checkpoints, monkeypatch):
    run, epoch1 = two_checkpoints
    calls = swap_after_first_read(monkeypatch, run, epoch1)
    _, _, state = checkpoint.read_checkpoint(run)
    assert calls == list(checkpoint.MEMBERS)
    assert state["epoch"] == 2 and len(state["history"]) == 2     # both files from the directory first opened
    monkeypatch.undo()
    assert checkpoint.read_checkpoint(run)[2]["epoch"] == 1         # the swapped-in checkpoint is read next time


def test_reading_by_path_would_have_mixed_them(two_checkpoints):
    """The failure the descriptor prevents: the epoch-2 weights beside the epoch-1 state are refused as
    inconsistent, so the test above would fail if the files were read by path."""
    run, epoch1 = two_checkpoints
    shutil.copy(epoch1 / "state.pt", run / "checkpoint" / "state.pt")
    with pytest.raises(VaelabError, match="epoch"):
        checkpoint.read_checkpoint(run)


def test_a_directory_removed_under_the_reader_is_read_again(two_checkpoints, monkeypatch):
    """The writer's cleanup removes checkpoint.old/ with its files: a reader that opened it reads the run again."""
    run, _ = two_checkpoints
    real = checkpoint._read_member
    removed = []

    def vanish_once(dir_fd, name):
        if not removed:
            removed.append(name)
            raise FileNotFoundError(2, "No such file or directory", name)
        return real(dir_fd, name)

    monkeypatch.setattr(checkpoint, "_read_member", vanish_once)
    assert checkpoint.read_checkpoint(run)[2]["epoch"] == 2 and removed == ["model.safetensors"]
