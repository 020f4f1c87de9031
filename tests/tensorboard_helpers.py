"""Reading a run's TensorBoard files back as TensorBoard itself does (EventAccumulator, purge on restart included)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import metadata, plugin_data_pb2


def accumulator(run: Path) -> EventAccumulator:
    """Every event of RUN/tb, its files read in the order they were started. TensorBoard orders them by name, which
    starts with the second they were created and ends with a per-process counter: a run resumed in-process within
    the same second as the counter gains a digit would come first; the copies here are named by start time."""
    files = sorted((run / "tb").glob("events.out.tfevents.*"),
                   key=lambda f: next(iter(EventFileLoader(str(f)).Load())).wall_time)
    with tempfile.TemporaryDirectory() as tmp:
        for i, f in enumerate(files):
            shutil.copy(f, Path(tmp) / f"events.out.tfevents.{i:06d}")
        return EventAccumulator(tmp, size_guidance={"scalars": 0}).Reload()


def scalars(run: Path, skip: tuple[str, ...] = ("seconds",)) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value), ...] of every scalar TensorBoard shows for the run (wall-clock tags skipped)."""
    acc = accumulator(run)
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"] if tag not in skip}


def hparams(run: Path) -> tuple[dict[str, Any], int | None]:
    """The run's hyperparameters as the HPARAMS tab reads them, and its session's end status (None: not ended)."""
    content = accumulator(run).PluginTagToContent(metadata.PLUGIN_NAME)
    start = plugin_data_pb2.HParamsPluginData.FromString(content[metadata.SESSION_START_INFO_TAG]).session_start_info
    values = {name: getattr(v, v.WhichOneof("kind")) for name, v in start.hparams.items()}
    end = content.get(metadata.SESSION_END_INFO_TAG)
    return values, plugin_data_pb2.HParamsPluginData.FromString(end).session_end_info.status if end else None
