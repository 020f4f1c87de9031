"""What a run logs while it trains: RUN/metrics.jsonl (one row per epoch), RUN/grad_stats.jsonl
(`train.grad_stats_every`) and TensorBoard in RUN/tb: the epoch rows, the batch values every `train.log_every`
steps (batch/loss, batch/elbo, batch/rec, batch/kl: one batch's per-image means), the gradient statistics (grad/*)
and the run's hyperparameters (the HPARAMS tab, one session per run, so the runs of a sweep line up there with the
final value of every scalar).

Every TensorBoard scalar is on one axis, the optimisation step (an epoch row sits at the step that ended its
epoch). A resumed run's writer starts with `purge_step` = the steps its checkpoint holds + 1, and TensorBoard drops
whatever the interrupted attempt logged past that point, for all tags at once. The batch values reach the sink
once per epoch (the trainer keeps them on the device), so logging them costs no host sync per step.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vaelab.core.atomic import atomic_write_bytes, atomic_write_text, open_append
from vaelab.core.errors import VaelabError

if TYPE_CHECKING:
    import torch

GRAD_STATS = "grad_stats.jsonl"
GRAD_STATS_FIX = "delete it (its rows are in TensorBoard's grad/*) and resume"
BATCH_TAGS = ("batch/loss", "batch/elbo", "batch/rec", "batch/kl")
HPARAMS_SKIPPED = ("description", "literature")   # what a run is compared with, not how it was trained


def steps_done(history: list[dict[str, Any]], partial: dict[str, Any] | None = None) -> int:
    """Optimisation steps of the epochs in `history` (each row says how many it took), plus those of the epoch a
    signal stopped (a checkpoint's `partial` record), if any."""
    return sum(row.get("steps", 0) for row in history) + (partial or {}).get("step", 0)


def read_jsonl(path: Path, fix: str, index: str | None = None) -> list[dict[str, Any]]:
    """The rows of a JSON-lines log (metrics.jsonl, grad_stats.jsonl; none: []). A last line without its newline
    is a row a crash tore while it was appended: dropped. Any other damage (not UTF-8, a line that is not a JSON
    object of numbers or nulls, a row without an integer `index` when one is named) is one VaelabError naming the
    file, the line and `fix`."""
    try:
        text = path.read_bytes().decode("utf-8") if path.is_file() else ""
    except (OSError, UnicodeDecodeError) as err:
        raise VaelabError(f"cannot read {path} ({getattr(err, 'strerror', None) or err.__class__.__name__}): "
                          f"{fix}") from err
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines[:-1], 1):            # lines[-1]: "" or the torn, unfinished last row
        try:
            row = json.loads(line) if line.strip() else {}
        except ValueError:
            row = None
        if not isinstance(row, dict):
            raise VaelabError(f"{path} line {number} is not a JSON object of values ({line[:40]!r}): {fix}")
        problem = _row_problem(row, index) if row else None
        if problem:
            raise VaelabError(f"{path} line {number} has {problem}: {fix}")
        if row:
            rows.append(row)
    return rows


def _row_problem(row: dict[str, Any], index: str | None) -> str | None:
    """What makes a parsed log row unusable (a value that is not a number or null, a missing integer `index`)."""
    for key, value in row.items():
        if isinstance(value, bool) or not isinstance(value, int | float | None):
            return f"{key} = {json.dumps(value)[:40]}, not a number"
    if index is not None and (not isinstance(row.get(index), int) or row[index] < 0):
        return f"no {index} (a count of 0 or more)"
    return None


def read_grad_stats(run_dir: Path) -> list[dict[str, Any]]:
    """RUN/grad_stats.jsonl's rows ([] when there is none), each with its integer `step`; a torn last line is
    dropped, other damage is one VaelabError. `train --resume` reads it through this before it writes anything in
    the run, so a damaged log stops the resume with the run as it was."""
    return read_jsonl(run_dir / GRAD_STATS, GRAD_STATS_FIX, index="step")


def flat_hparams(values: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """A nested config dict as TensorBoard hyperparameters: dotted keys ("train.lr"), lists as JSON text, None
    left out (an empty cell in the HPARAMS table)."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flat_hparams(value, f"{name}.")
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        elif value is not None:
            out[name] = json.dumps(value)
    return out


def _hparams_summary(tag: str, **data: Any):
    """A TensorBoard summary holding hparams plugin data (tensorboard's plugin_data_pb2.HParamsPluginData)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    content = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **data).SerializeToString()
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=content))
    return Summary(value=[Summary.Value(tag=tag, metadata=meta)])


def session_start(hparams: dict[str, bool | int | float | str]):
    """The hparams plugin's session start: this run's hyperparameters, each with its type (bool, number, text)."""
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    _set_hparams(start, hparams)
    return _hparams_summary(metadata.SESSION_START_INFO_TAG, session_start_info=start)


def _set_hparams(start, hparams: dict[str, bool | int | float | str]) -> None:
    """Put `hparams` into a SessionStartInfo, each with its type (bool, number, text)."""
    for name, value in hparams.items():
        if isinstance(value, bool):
            start.hparams[name].bool_value = value
        elif isinstance(value, int | float):
            start.hparams[name].number_value = value
        else:
            start.hparams[name].string_value = value


def update_session_hparams(tb_dir: Path, changes: dict[str, bool | int | float | str]) -> bool:
    """Set `changes` in every HPARAMS session start already written in `tb_dir` (each events file holding one is
    rewritten atomically, its other events as they were); False when there is none. TensorBoard keeps the first
    session start of a run and ignores later ones, so a value known only after training (the K that evaluation
    used) can only be shown by editing that first one."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    found = False
    for path in sorted(tb_dir.glob("events.out.tfevents.*")):
        records, changed = list(RawEventFileLoader(str(path)).Load()), False
        for i, raw in enumerate(records):
            event = Event.FromString(raw)
            for value in event.summary.value:
                if value.tag == metadata.SESSION_START_INFO_TAG and value.metadata.plugin_data.content:
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    _set_hparams(data.session_start_info, changes)
                    value.metadata.plugin_data.content = data.SerializeToString()
                    records[i], changed = event.SerializeToString(), True
        if changed:
            buffer = io.BytesIO()
            writer = RecordWriter(buffer)
            for record in records:
                writer.write(record)
            atomic_write_bytes(path, buffer.getvalue(), f"make {tb_dir} writable and evaluate again")
        found = found or changed
    return found


TEST_KEYS = ("elbo", "rec", "kl", "iw_loglik", "exact_loglik", "iw_samples")


def log_test_metrics(run_dir: Path, config: dict[str, Any], metrics: dict[str, Any], step: int,
                     prefix: str = "test") -> dict[str, float]:
    """An evaluation's numbers (eval.json's `TEST_KEYS`) as TensorBoard scalars PREFIX/KEY in RUN/tb at `step`
    (the steps the scored checkpoint trained), so the HPARAMS tab ranks runs by them; the run's session then
    shows the K the evaluation used as `eval.iw_samples` (a run without a session gets one, from `config`).
    Returns the scalars written."""
    values = {f"{prefix}/{key}": float(metrics[key]) for key in TEST_KEYS
              if isinstance(metrics.get(key), int | float) and not isinstance(metrics[key], bool)}
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # as MetricsSink
        return {}
    tb_dir = run_dir / "tb"
    changes = {"eval.iw_samples": int(metrics["iw_samples"])} if f"{prefix}/iw_samples" in values else {}
    has_session = update_session_hparams(tb_dir, changes) if tb_dir.is_dir() else False
    with contextlib.closing(SummaryWriter(str(tb_dir))) as tb:
        if not has_session:
            tb.file_writer.add_summary(session_start(flat_hparams(
                {k: v for k, v in config.items() if k not in HPARAMS_SKIPPED}) | changes))
        tb.file_writer.add_summary(_scalar_summary(values), step)
    return values


def _scalar_summary(values: dict[str, float]):
    """Scalars as one TensorBoard summary."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    return Summary(value=[Summary.Value(tag=tag, simple_value=float(value)) for tag, value in values.items()])


def session_end():
    """The hparams plugin's session end: the run finished."""
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    return _hparams_summary(metadata.SESSION_END_INFO_TAG, session_end_info=end)


class MetricsSink:
    """metrics.jsonl (rewritten atomically from the full history at each epoch), grad_stats.jsonl and TensorBoard.

    `history` is what the run's checkpoint holds; `done_steps` the steps it holds (default: its epochs' steps;
    more for a run a signal stopped inside an epoch). `hparams` (a nested config dict) opens a session of the
    HPARAMS tab; `finish()` closes it as a success. `log_every` = N keeps every N-th step's batch values.
    `grad_stats` keeps the rows of grad_stats.jsonl up to `done_steps` and appends from there."""

    def __init__(self, run_dir: Path, history: list[dict[str, Any]], *, hparams: dict[str, Any] | None = None,
                 done_steps: int | None = None, log_every: int = 10, grad_stats: bool = False) -> None:
        self.path, self.history, self.log_every = run_dir / "metrics.jsonl", list(history), log_every
        done = steps_done(history) if done_steps is None else done_steps
        self.grad_path = run_dir / GRAD_STATS if grad_stats else None
        if self.grad_path is not None:
            rows = read_grad_stats(run_dir) if done else []   # a torn last line dropped, rows past `done` too
            atomic_write_text(self.grad_path, "".join(json.dumps(r) + "\n" for r in rows if r["step"] <= done))
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=done + 1)
        except ImportError:  # TensorBoard is a declared dependency; tolerate its absence in slim installs
            self.tb = None
        if self.tb is not None and hparams is not None:
            self.tb.file_writer.add_summary(session_start(flat_hparams(
                {k: v for k, v in hparams.items() if k not in HPARAMS_SKIPPED})))

    def log(self, row: dict[str, Any]) -> None:
        """One finished epoch: a line of metrics.jsonl, its numbers in TensorBoard at the epoch's last step."""
        self.history.append(row)
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.history))
        if self.tb is not None:
            self._scalars({key.replace("_", "/", 1): value for key, value in row.items()
                           if isinstance(value, int | float)}, steps_done(self.history))
            self.tb.flush()

    def log_batches(self, first_step: int, values: list[list[float]]) -> None:
        """Steps first_step + 1, first_step + 2, ...: each one's batch (loss, elbo, rec, kl) per image; the steps
        that are multiples of `log_every` go to TensorBoard."""
        if self.tb is None:
            return
        for offset in range((-first_step - 1) % self.log_every, len(values), self.log_every):
            self._scalars(dict(zip(BATCH_TAGS, values[offset], strict=True)), first_step + offset + 1)

    def log_grad_stats(self, step: int, stats: dict[str, float]) -> None:
        """A gradient measurement after `step`: a line of grad_stats.jsonl, grad/* in TensorBoard."""
        if self.grad_path is None:
            return
        with open_append(self.grad_path) as f:        # one write of a whole line; a torn one is dropped on reading
            f.write(json.dumps({"step": step} | stats) + "\n")
        if self.tb is not None:
            self._scalars({f"grad/{key}": stats[key] for key in ("log10_grad_var", "grad_snr")}, step)

    def _scalars(self, values: dict[str, float], step: int) -> None:
        """Scalars of one step as one event (SummaryWriter.add_scalar writes an event per scalar, ~4x the cost)."""
        self.tb.file_writer.add_summary(_scalar_summary(values), step)

    def log_samples(self, model: Any, n: int = 64, seed: int = 0) -> None:
        """`n` samples from the model's prior as one grid in TensorBoard's IMAGES tab (tag `samples`, at the step
        of the last logged epoch), grey levels = the decoder's probabilities; the same prior draws every epoch
        (`seed`), and the training RNG is left as it was. Skipped for an autoencoder (no prior) and for images
        without a 2-D shape."""
        import torch

        from vaelab.models.sampling import sample

        if self.tb is None or model.is_autoencoder or len(model.image_shape) != 2:
            return
        device, training = next(model.parameters()).device, model.training
        model.eval()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            images = sample(model, n, "probs")                                        # [n, P]
        model.train(training)
        height, width = model.image_shape
        if images.shape[1] != height * width:
            return
        self.tb.add_image("samples", image_grid(images, (height, width)), steps_done(self.history))
        self.tb.flush()

    def finish(self) -> None:
        """The run trained all its epochs: its HPARAMS session ends as a success."""
        if self.tb is not None:
            self.tb.file_writer.add_summary(session_end())

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def image_grid(images: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """[n, H*W] images in [0, 1] as one near-square grid [1, rows*H, cols*W] (blank cells at the end)."""
    import torch

    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    cells = torch.zeros(rows * cols, *shape, device=images.device)                  # [rows*cols, H, W]
    cells[: len(images)] = images.reshape(-1, *shape).float()
    grid = cells.reshape(rows, cols, *shape).permute(0, 2, 1, 3)                   # [rows, H, cols, W]
    return grid.reshape(1, rows * shape[0], cols * shape[1]).cpu()                # [1, rows*H, cols*W]


class MemorySink(MetricsSink):
    """What ranks other than 0 keep under torchrun: the history, no files."""

    def __init__(self, history: list[dict[str, Any]]) -> None:
        self.history, self.tb, self.grad_path, self.log_every = list(history), None, None, 1

    def log(self, row: dict[str, Any]) -> None:
        self.history.append(row)
