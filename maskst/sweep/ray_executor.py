"""Sweep jobs on Ray Data: ``map_batches`` over an actor pool, one MaskstPipeline per actor.

Ray is imported only here (``pip install "maskst[ray]"``). The driver turns the pending jobs into a
dataset of JSON rows (one block per ``batch_size`` jobs), maps them with :class:`SweepActor` on
``ActorPoolStrategy(size=workers)`` with ``num_cpus`` / ``num_gpus`` per actor, and streams the result
records back; the actors write the PNGs themselves, so ``out_dir``, the engines folder and the style
images must be on storage every node sees (on one machine, any folder).

Fault tolerance is Ray's: Ray Data starts its actors with ``max_restarts=-1`` and
``max_task_retries=-1``, so when a worker process dies its actor is restarted (the pipeline loaded
again in ``__init__``) and its unfinished batches are submitted again. A retried job whose PNGs were
already written is not generated twice (:func:`maskst.sweep.worker.run_job` checks first).
Exceptions of maskst itself are not retried: they become ``status: error`` records (also when an
actor cannot open its pipeline: then each of its jobs fails with that message).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import socket
from pathlib import Path
from typing import Iterator

import numpy as np

from maskst.errors import BackendError, InputError, MaskstError
from maskst.sweep.executors import PipelineOptions
from maskst.sweep.grid import SweepJob
from maskst.sweep.worker import base_record, crash_if_marked, run_job

MAX_BLOCKS = 10_000  # dataset blocks at most (one map task each); above this, several batches share a block


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """``address``: None starts a local Ray (or uses the one this process is already connected to);
    otherwise passed to ``ray.init(address=...)`` ("auto", "ray://head:10001", ...).
    ``crash_marker``: the fault-injection test hook of :func:`maskst.sweep.worker.crash_if_marked`."""

    address: str | None = None
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    batch_size: int = 1
    crash_marker: Path | None = None

    def __post_init__(self):
        if not isinstance(self.workers, int) or self.workers < 1:
            raise InputError(f"--workers {self.workers} must be a positive integer")
        if not self.cpus_per_worker > 0:
            raise InputError(f"--cpus-per-worker {self.cpus_per_worker} must be positive")
        if not self.gpus_per_worker >= 0:
            raise InputError(f"--gpus-per-worker {self.gpus_per_worker} must be 0 or positive")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InputError(f"--batch-size {self.batch_size} must be a positive integer")
        if self.crash_marker is not None:
            object.__setattr__(self, "crash_marker", Path(self.crash_marker).absolute())
            text = self.crash_marker.read_text().strip() if self.crash_marker.is_file() else ""
            if text and not text.isdigit():
                raise InputError(f"--crash-marker {self.crash_marker} must be empty or hold a job count; got {text!r}")


class SweepActor:
    """Ray Data callable class: loads one pipeline in ``__init__``; each call runs a batch of jobs.

    Batch in: ``{"job": array of SweepJob JSON strings}``; out: ``{"record": array of result-record JSON strings}``.
    """

    def __init__(self, pipeline: PipelineOptions, out_dir: str, crash_marker: str | None):
        # a pipeline this node cannot open (engines folder not on shared storage, another maskst version)
        # fails this actor's jobs with the message instead of the whole dataset with a traceback
        self.pipeline, self.init_error = None, None
        try:
            self.pipeline = pipeline.open()
        except MaskstError as exc:
            self.init_error = exc
        self.out_dir = Path(out_dir)
        self.crash_marker = Path(crash_marker) if crash_marker else None
        self.completed = 0  # jobs this actor process has run (for the test hook)

    def __call__(self, batch: dict) -> dict:
        records = []
        for text in batch["job"]:
            job = SweepJob.from_json(str(text))
            if self.init_error is not None:
                records.append({**base_record(job), "status": "error", "cached": False,
                                "error": f"worker {socket.gethostname()}:{os.getpid()} could not open the pipeline: "
                                         f"{self.init_error}", "exit_code": self.init_error.exit_code})
                continue
            crash_if_marked(self.crash_marker, self.completed)
            records.append(run_job(self.pipeline, job, self.out_dir))
            self.completed += 1
        return {"record": np.array([json.dumps(r) for r in records], dtype=object)}


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise BackendError('--ray needs Ray Data: pip install "maskst[ray]" (or "ray[data]")') from None
    return ray


@dataclasses.dataclass(frozen=True)
class RayExecutor:
    pipeline: PipelineOptions
    options: RayOptions = RayOptions()

    def run(self, jobs: list, out_dir: Path) -> Iterator[dict]:
        if not jobs:
            return
        ray = import_ray()
        started_here = not ray.is_initialized()
        if started_here:
            local = {} if self.options.address else {"include_dashboard": False}
            try:
                ray.init(address=self.options.address, configure_logging=False, **local)
            except (ConnectionError, ValueError) as exc:
                raise BackendError(f"--ray {self.options.address or ''}: could not start or reach Ray ({exc})") from None
        try:
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False  # the sweep draws its own bar
            logging.getLogger("ray.data").setLevel(logging.ERROR)  # execution plans and bar notices; errors still show
            blocks = min(math.ceil(len(jobs) / self.options.batch_size), MAX_BLOCKS)
            dataset = ray.data.from_items([{"job": job.to_json()} for job in jobs], override_num_blocks=blocks)
            threads = self.pipeline.threads or max(1, int(self.options.cpus_per_worker))
            pipeline = dataclasses.replace(self.pipeline, threads=threads)
            dataset = dataset.map_batches(
                SweepActor, fn_constructor_kwargs={"pipeline": pipeline, "out_dir": str(Path(out_dir).absolute()),
                                                   "crash_marker": str(self.options.crash_marker or "")},
                compute=ray.data.ActorPoolStrategy(size=self.options.workers), batch_size=self.options.batch_size,
                batch_format="numpy", num_cpus=self.options.cpus_per_worker,
                num_gpus=self.options.gpus_per_worker or None)
            try:
                for row in dataset.iter_rows():
                    yield json.loads(row["record"])
            except ray.exceptions.RayError as exc:
                raise BackendError(f"the Ray sweep stopped ({type(exc).__name__}: {exc}); the jobs that finished are "
                                   "kept, a rerun does the rest") from None
        finally:
            if started_here:
                ray.shutdown()
