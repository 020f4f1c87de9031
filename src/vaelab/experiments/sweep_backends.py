"""The machinery of `vaelab sweep`: DIR/sweep.yaml (the runs' states), the progress line, and the two backends
that run the jobs: `local` (a pool of worker threads, each running one job's `python -m vaelab` processes) and
`ray` (each job a Ray task, locally or on a cluster). Both call `sweep_run.execute_run`, so they do the same."""

from __future__ import annotations

import fcntl
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from vaelab.core import yaml_io
from vaelab.core.atomic import open_append
from vaelab.core.errors import VaelabError
from vaelab.experiments.sweep_run import Job


class Book:
    """DIR/sweep.yaml: the spec and each run's state, rewritten (under a file lock) at every change."""

    def __init__(self, out: Path, head: dict[str, Any], jobs: list[Job], settings: dict[str, dict]) -> None:
        """`head`: what sweep.yaml records of the spec (spec_file, spec, base_config)."""
        self.path, self.lock = out / "sweep.yaml", threading.Lock()
        self.head = head
        self.order = [j.name for j in jobs]
        self.fresh = {j.name: {"settings": settings[j.name], "state": "queued", "error": None} for j in jobs}

    @contextmanager
    def _locked(self):
        with self.lock, open_append(self.path.with_name(".sweep.yaml.lock")) as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def read(self) -> dict[str, dict]:
        """The runs' entries as last written (fresh entries for runs new to sweep.yaml, and for all of them when it
        is damaged: the next update rewrites it; the run directories hold the truth about each run)."""
        try:
            old = yaml_io.read_mapping(self.path, "") if self.path.is_file() else {}
        except VaelabError:
            old = {}
        runs = old.get("runs") if isinstance(old.get("runs"), dict) else {}
        return {n: {**self.fresh[n], **(runs[n] if isinstance(runs.get(n), dict) else {}),
                    "settings": self.fresh[n]["settings"]} for n in self.order}

    def update(self, changes: dict[str, dict[str, Any]]) -> None:
        """Merge {name: fields} into the runs' entries and rewrite sweep.yaml (spec and all entries)."""
        from vaelab.core.atomic import atomic_write_text as write_text

        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self._locked():
            runs = self.read()
            for name, fields in changes.items():
                runs[name] |= fields | {"updated": stamp}
            write_text(self.path, yaml.safe_dump(self.head | {"runs": runs}, sort_keys=False))


class Progress:
    """The sweep's progress line on stderr, one line per event: runs ended so far by state (done, failed, and
    stopped by a signal), and how many are running."""

    def __init__(self, total: int) -> None:
        self.total, self.running, self.ended = total, 0, {"done": 0, "failed": 0, "stopped": 0}
        self.t0, self.lock = time.perf_counter(), threading.Lock()

    def started(self, name: str) -> None:
        with self.lock:
            self.running += 1
            self._line(f"started {name}")

    def finished(self, result: dict[str, Any]) -> None:
        with self.lock:
            self.running = max(0, self.running - 1)
            self.ended[result["state"]] += 1
            what = result["action"] if result["state"] == "done" else f"{result['state'].upper()}: {result['error']}"
            self._line(f"{result['name']}: {what} ({result['seconds']:.0f} s)")

    def _line(self, event: str) -> None:
        counts = ", ".join(f"{n} {state}" for state, n in self.ended.items() if n or state != "stopped")
        print(f"[sweep {time.perf_counter() - self.t0:6.0f} s] {sum(self.ended.values())}/{self.total} finished "
              f"({counts}), {self.running} running | {event}", file=sys.stderr, flush=True)


@contextmanager
def sweep_lock(out: Path):
    """One `vaelab sweep` per directory at a time (array tasks with --only take no lock)."""
    with open_append(out / ".sweep.lock") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise VaelabError(f"another `vaelab sweep` is working on {out}: wait for it to end, or sweep into "
                              "another --out") from err
        yield


def gpu_slots(jobs: list[Job], workers: int) -> list[dict[str, str]]:
    """Per worker slot, the environment that pins it to one GPU when several are visible (else nothing)."""
    if "CUDA_VISIBLE_DEVICES" in os.environ or all(j.device == "cpu" for j in jobs):
        return [{} for _ in range(workers)]
    import torch

    n = torch.cuda.device_count()
    return [{"CUDA_VISIBLE_DEVICES": str(i % n)} if n > 1 else {} for i in range(workers)]


def run_local(jobs: list[Job], workers: int, book: Book, progress: Progress) -> None:
    """A pool of `workers` threads, each running one job at a time as its own `python -m vaelab` processes."""
    import dataclasses
    import queue
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from vaelab.experiments.sweep_run import execute_run

    slots: queue.Queue = queue.Queue()
    for env in gpu_slots(jobs, workers):
        slots.put(env)

    def task(job: Job) -> None:
        env = slots.get()
        try:
            book.update({job.name: {"state": "running", "error": None}})
            progress.started(job.name)
            result = execute_run(dataclasses.replace(job, env=job.env | env))
        finally:
            slots.put(env)
        book.update({job.name: {k: v for k, v in result.items() if k != "name"}})
        progress.finished(result)

    pool = ThreadPoolExecutor(workers)
    try:
        for future in as_completed([pool.submit(task, j) for j in jobs]):
            future.result()
    except KeyboardInterrupt:
        pool.shutdown(wait=True, cancel_futures=True)   # running jobs got the SIGINT too; start no others
        raise
    pool.shutdown()


def run_ray(jobs: list[Job], workers: int | None, book: Book, progress: Progress, address: str | None,
            gpus: float) -> None:
    """Each job a Ray task (`execute_run` in a Ray worker, on any node); `address` (or RAY_ADDRESS) joins a running
    cluster, otherwise a local Ray instance with workers × threads CPUs is started. At most `workers` tasks are in
    flight when given (a cluster without --workers: all of them, Ray schedules by resources)."""
    try:
        import ray
    except ImportError as err:
        raise VaelabError("--backend ray needs Ray, which is not installed: pip install 'vaelab[ray]' (or "
                          "pip install ray), or use --backend local") from err
    from vaelab.experiments.sweep_run import execute_run

    threads = jobs[0].threads
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=(workers or 1) * threads, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=0)(execute_run)
        waiting, pending = list(jobs), {}
        while waiting or pending:
            while waiting and len(pending) < (workers or len(jobs)):
                job = waiting.pop(0)
                pending[remote.remote(job)] = job
                book.update({job.name: {"state": "submitted", "error": None}})
                progress.started(job.name)
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayError as err:   # the worker died, or the task could not run
                result = {"name": job.name, "state": "failed", "error": f"Ray: {str(err).splitlines()[0][:200]}",
                          "action": None, "seconds": 0.0}
            book.update({job.name: {k: v for k, v in result.items() if k != "name"}})
            progress.finished(result)
    finally:
        ray.shutdown()
