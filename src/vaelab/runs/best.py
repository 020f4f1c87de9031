"""Best-checkpoint selection and early stopping on the validation ELBO (`train.keep_best`, `train.early_stop_patience`).

Both are decided from the metrics history alone (what metrics.jsonl and the checkpoint hold), so a resumed run
decides exactly as an uninterrupted one: the best epoch is the first epoch with the highest `valid_elbo`; a run
stops early once `early_stop_patience` epochs have passed since that epoch. RUN/best/ is a run directory of its
own holding one checkpoint (RUN/best/checkpoint/, written by checkpoint.save_checkpoint, atomically: a crash keeps
the previous best), so everything that opens a run opens it (`vaelab evaluate RUN --best` scores it).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch

from vaelab.config.schema import Config, TrainConfig
from vaelab.core.errors import VaelabError
from vaelab.runs.checkpoint import save_checkpoint
from vaelab.runtime import distributed

BEST_DIR = "best"
CRITERION = "valid_elbo"


def best_epoch(history: list[dict[str, Any]]) -> int | None:
    """The 1-based index in `history` of the first epoch with the highest finite valid ELBO (None: no such epoch)."""
    scores = [row.get(CRITERION) for row in history]
    finite = [(s, i) for i, s in enumerate(scores, 1) if isinstance(s, int | float) and math.isfinite(s)]
    return max(finite, key=lambda pair: (pair[0], -pair[1]))[1] if finite else None


def keep_best(cfg: Config, run_dir: Path, ts: Any, is_main: bool) -> None:
    """After an epoch was appended to `ts.history` (and before its checkpoint is written): with train.keep_best,
    when it is the best epoch so far, write its weights and training state to RUN/best/ (rank 0 only)."""
    if cfg.train.keep_best is None or not is_main or best_epoch(ts.history) != len(ts.history):
        return
    save_checkpoint(run_dir / BEST_DIR, cfg, ts.model, ts.estimator, ts.state())


def stop_early(t: TrainConfig, history: list[dict[str, Any]], ctx: distributed.Context, quiet: bool) -> bool:
    """Before an epoch: whether train.early_stop_patience epochs have passed without a better valid ELBO; says so
    in one line. Under torchrun rank 0's history decides for every rank (one all-reduce per epoch)."""
    if t.early_stop_patience is None:
        return False
    best = best_epoch(history)
    stop = best is not None and len(history) - best >= t.early_stop_patience
    if ctx.distributed:
        flag = torch.tensor([1.0 if stop and ctx.is_main else 0.0], device=ctx.device)
        stop = bool(distributed.all_reduce_sum(flag, ctx).item() > 0)
    if stop and not quiet:
        print(f"early stop after epoch {len(history)}: no better valid ELBO in {len(history) - best} epochs "
              f"(train.early_stop_patience = {t.early_stop_patience}); the best was epoch {best} "
              f"({history[best - 1][CRITERION]:.2f})", file=sys.stderr)
    return stop


def best_dir(run_dir: str | Path) -> Path:
    """RUN/best/, the run's best checkpoint (`vaelab evaluate RUN --best`); a VaelabError when it has none."""
    best = Path(run_dir) / BEST_DIR
    if not any((best / name / "model.safetensors").is_file() for name in ("checkpoint", "checkpoint.old")):
        raise VaelabError(f"{run_dir} has no best checkpoint ({best}/ is kept only by runs trained with "
                          "train.keep_best: valid_elbo): evaluate its last epoch without --best, or retrain it "
                          "with --set train.keep_best=valid_elbo")
    return best
