"""Hostile cases for the files vaelab reads back (issue 27 item 4), in test_hostile.py's table form: each one exits 2
with one line naming the file and the fix, and leaves the workspace as it was.

- density.npz (`vaelab sample RUN --prior gmm` reads it): one copied from a run with other codes, non-finite or
  non-positive variances, weights that do not sum to 1, a missing array, other dtypes, an asymmetric covariance;
- state.pt history rows: strings, lists, non-text keys, epochs out of order or not integers;
- grad_stats.jsonl on `train --resume RUN --epochs 2` (which rewrites config.yaml): damage other than a torn last
  line is refused before anything in the run is written (the snapshot check sees config.yaml unchanged);
- the study's timings.json on `vaelab reproduce`: refused before any stage runs.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from hostile_helpers import Case, config_value, mutate_state, mutate_weights, on_run

RESUME = ("train", "--resume", "RUN", "--epochs", "2", "--quiet")
EVALUATE = ("evaluate", "RUN", "--iw-samples", "5", "--quiet", "--device", "cpu")
SAMPLE_GMM = ("sample", "RUN", "--prior", "gmm", "--n", "4", "--device", "cpu")
GOOD_GMM = {"format": np.array("vaelab-gmm-1"), "covariance_type": np.array("full"), "seed": np.array(0),
            "weights": np.array([0.25, 0.75]), "means": np.array([[0.0, 1.0], [-1.0, 0.5]]),
            "covariances": np.stack([np.eye(2), 2 * np.eye(2)])}      # the hostile run's codes are 2-D


def density(**replace: np.ndarray | None) -> Callable[[Path, Path], None]:
    """Write RUN/density.npz: a valid 2-component mixture over 2-D codes with `replace`d arrays (None: left out)."""
    def apply(ws: Path, run: Path) -> None:
        arrays = {k: v for k, v in (GOOD_GMM | replace).items() if v is not None}
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        (run / "density.npz").write_bytes(buf.getvalue())
    return apply


def history(change: Callable[[list], None]) -> Callable[[Path, Path], None]:
    """Rewrite state.pt with its history rows changed by `change(rows)`."""
    def apply(state: dict, ws: Path) -> None:
        change(state["history"])
    return mutate_state(apply)


def grad_stats(text: bytes) -> Callable[[Path, Path], None]:
    """Turn train.grad_stats_every on in the checkpoint's config and write RUN/grad_stats.jsonl as `text`."""
    probe_on = mutate_weights(config_value("grad_stats_every: null", "grad_stats_every: 3"))

    def apply(ws: Path, run: Path) -> None:
        probe_on(ws, run)
        (run / "grad_stats.jsonl").write_bytes(text)
    return apply


ROW = b'{"step": 3, "grad_var": 0.5, "log10_grad_var": -0.3, "grad_snr": 1.0}\n'


def study_timings(content: bytes) -> Callable[[Path, Path], list]:
    """WS/study/timings.json = `content`, then `vaelab reproduce --out WS/study`."""
    def make(ws: Path, run: Path) -> list:
        (ws / "study").mkdir()
        (ws / "study" / "timings.json").write_bytes(content)
        return ["reproduce", "--out", ws / "study", "--quick", "--data", "digits", "--device", "cpu", "--quiet"]
    return make


DENSITY_CASES = [
    Case("density-other-run", on_run(density(means=np.zeros((2, 3)), covariances=np.stack([np.eye(3)] * 2)),
                                     *SAMPLE_GMM), "is a mixture over 3-D codes but the run's model has 2-D codes"),
    Case("density-nan-mean", on_run(density(means=np.array([[np.nan, 0.0], [0.0, 0.0]])), *SAMPLE_GMM),
         "non-finite values"),
    Case("density-negative-variance", on_run(density(covariances=np.stack([-np.eye(2), np.eye(2)])), *SAMPLE_GMM),
         "non-positive variances"),
    Case("density-diag-negative", on_run(density(covariance_type=np.array("diag"),
                                                 covariances=np.array([[1.0, -1.0], [1.0, 1.0]])), *SAMPLE_GMM),
         "non-positive variances"),
    Case("density-weights-sum", on_run(density(weights=np.array([0.5, 0.6])), *SAMPLE_GMM), "weights do not sum to 1"),
    Case("density-negative-weight", on_run(density(weights=np.array([1.5, -0.5])), *SAMPLE_GMM),
         "weights do not sum to 1"),
    Case("density-missing-means", on_run(density(means=None), *SAMPLE_GMM), "no 'means' array"),
    Case("density-string-weights", on_run(density(weights=np.array(["a", "b"])), *SAMPLE_GMM), "not real numbers"),
    Case("density-complex-weights", on_run(density(weights=np.array([0.25, 0.75], complex)), *SAMPLE_GMM),
         "not real numbers"),
    Case("density-asymmetric", on_run(density(covariances=np.stack([[[1.0, 0.9], [0.0, 1.0]], np.eye(2)])),
                                      *SAMPLE_GMM), "not symmetric"),
    Case("density-seed-negative", on_run(density(seed=np.array(-3)), *SAMPLE_GMM), "seed -3"),
    Case("density-wrong-format", on_run(density(format=np.array("other")), *SAMPLE_GMM), "not a vaelab density"),
    Case("density-truncated", on_run(lambda ws, run: (density()(ws, run), (run / "density.npz").write_bytes(
        (run / "density.npz").read_bytes()[:200])), *SAMPLE_GMM), "is damaged or not a vaelab density"),
]

HISTORY_CASES = [
    Case("history-string-value", on_run(history(lambda rows: rows[0].__setitem__("train_elbo", "x")), *EVALUATE),
         "history row 1 with 'train_elbo' = 'x', not a number"),
    Case("history-string-value-resume", on_run(history(lambda rows: rows[0].__setitem__("train_elbo", "x")),
                                               *RESUME), "not a number"),
    Case("history-list-value", on_run(history(lambda rows: rows[0].__setitem__("seconds", [1.0])), *EVALUATE),
         "'seconds' = [1.0], not a number"),
    Case("history-bool-value", on_run(history(lambda rows: rows[0].__setitem__("lr", True)), *EVALUATE),
         "'lr' = True"),
    Case("history-int-key", on_run(history(lambda rows: rows[0].__setitem__(3, 1.0)), *EVALUATE),
         "history row 1 with 3 = 1.0"),
    Case("history-epoch-string", on_run(history(lambda rows: rows[0].__setitem__("epoch", "1")), *RESUME),
         "'epoch' = '1', not a number"),
    Case("history-epoch-out-of-order", on_run(history(lambda rows: rows[0].__setitem__("epoch", 4)), *EVALUATE),
         "epoch 4: the rows are not epochs 1, 2, ... in order"),
    Case("history-epoch-missing", on_run(history(lambda rows: rows[0].pop("epoch")), *EVALUATE),
         "epoch None"),
    Case("history-row-not-dict", on_run(history(lambda rows: rows.__setitem__(0, [1, 2])), *EVALUATE),
         "history row 1 of type list"),
]

GRAD_STATS_CASES = [
    Case("gradstats-garbage-line", on_run(grad_stats(b"xx\n" + ROW), *RESUME),
         "grad_stats.jsonl line 1 is not a JSON object"),
    Case("gradstats-not-utf8", on_run(grad_stats(ROW + b"\xff\xfe\n"), *RESUME), "(UnicodeDecodeError)"),
    Case("gradstats-list-row", on_run(grad_stats(ROW + b"[1, 2]\n"), *RESUME), "line 2 is not a JSON object"),
    Case("gradstats-string-value", on_run(grad_stats(b'{"step": 3, "grad_var": "x"}\n'), *RESUME),
         'line 1 has grad_var = "x", not a number'),
    Case("gradstats-string-step", on_run(grad_stats(b'{"step": "3", "grad_var": 1.0}\n'), *RESUME),
         'step = "3", not a number'),
    Case("gradstats-no-step", on_run(grad_stats(b'{"grad_var": 1.0}\n' + ROW), *RESUME), "line 1 has no step"),
    Case("gradstats-nested", on_run(grad_stats(b'{"step": 3, "grad_var": {"a": 1}}\n'), *RESUME),
         "not a number"),
]

STUDY_CASES = [
    Case("timings-truncated", study_timings(b'{"gaussian_vae": 1'), "timings.json is damaged: delete it"),
    Case("timings-garbage", study_timings(b"\xff\xfe\x00garbage"), "timings.json is damaged"),
    Case("timings-list", study_timings(b"[1, 2]"), "timings.json is damaged"),
    Case("timings-string-seconds", study_timings(b'{"gaussian_vae": "x"}'), "timings.json is damaged"),
    Case("timings-negative", study_timings(b'{"gaussian_vae": -5}'), "timings.json is damaged"),
]

CASES = DENSITY_CASES + HISTORY_CASES + GRAD_STATS_CASES + STUDY_CASES
