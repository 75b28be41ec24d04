"""A sweep from start to end: plan the grid, skip finished jobs, run the rest, write ``results.jsonl``.

Files in the output folder:

- one PNG per image (names: :mod:`maskst.sweep.grid`), written by the workers, with metadata;
- ``sweep.json``: the grid (prompts, styles, methods, seeds, run options), engines and digest;
- ``results.jsonl``: one line per job of the grid, written by the driver: lines are appended as
  results come back (a crashed driver leaves what finished), and the file is rewritten in grid
  order when the sweep ends. Jobs skipped because their PNGs were already there have
  ``"cached": true``.

When no job is pending, no pipeline is loaded and Ray is not started.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import filelock
from tqdm.auto import tqdm

from maskst.contract.files import write_atomic
from maskst.errors import InputError
from maskst.runtime.output import check_writable_dir
from maskst.sweep.grid import SweepJob, SweepSpec
from maskst.sweep.store import engines_digest, is_finished
from maskst.sweep.worker import base_record

RESULTS_NAME = "results.jsonl"
LOCK_NAME = ".maskst-sweep.lock"  # one sweep at a time per output folder
SWEEP_NAME = "sweep.json"


@dataclasses.dataclass(frozen=True)
class SweepReport:
    """What a sweep did. ``exit_code``: 0 when every job is ok, 1 when any failed."""

    jobs: int
    ran: int
    cached: int
    failed: int
    results: Path
    seconds: float

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def to_dict(self) -> dict:
        return {"status": "ok" if not self.failed else "error", "jobs": self.jobs, "ran": self.ran,
                "cached": self.cached, "failed": self.failed, "results": str(self.results),
                "seconds": round(self.seconds, 3)}


def plan(spec: SweepSpec, engines: Path, out_dir: Path) -> tuple[list[SweepJob], list[SweepJob]]:
    """(every job in grid order, the jobs not finished in ``out_dir``)."""
    jobs = spec.jobs(engines_digest(engines))
    return jobs, [job for job in jobs if not is_finished(job, out_dir)]


def run_sweep(spec: SweepSpec, engines: Path, out_dir: Path, executor, progress: bool = True,
              on_record: Callable[[dict], None] | None = None) -> SweepReport:
    """Run every unfinished job of ``spec`` with ``executor`` (LocalExecutor or RayExecutor) into ``out_dir``.

    ``on_record`` is called with each record of a job that ran (e.g. to print failures).
    """
    out_dir = Path(out_dir).absolute()
    check_writable_dir(out_dir)
    lock = filelock.FileLock(out_dir / LOCK_NAME)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise InputError(f"--out-dir {out_dir}: another maskst-sweep is writing into it (lock {out_dir / LOCK_NAME}); "
                         "wait for it to finish or choose another folder") from None
    try:
        return _run_locked(spec, engines, out_dir, executor, progress, on_record)
    finally:
        lock.release()


def _run_locked(spec: SweepSpec, engines: Path, out_dir: Path, executor, progress: bool,
                on_record: Callable[[dict], None] | None) -> SweepReport:
    """Run the pending jobs. Records stream to a staging file; this run's sweep.json and results.jsonl replace the
    last run's only once it has produced a result (or had nothing to run), so a rerun that fails before its first
    job (engines without DeepCache, a backend that is not there) leaves the previous run's files as they were."""
    started = time.perf_counter()
    jobs, pending = plan(spec, engines, out_dir)
    spec_text = json.dumps({**spec.to_dict(), "engines": str(Path(engines).absolute()),
                            "engines_manifest": jobs[0].engines_digest}, indent=2) + "\n"
    waiting = {job.index for job in pending}
    records = {job.index: {**base_record(job), "status": "ok", "cached": True} for job in jobs if job.index not in waiting}
    results_path = out_dir / RESULTS_NAME
    staging = out_dir / f".{RESULTS_NAME}.partial"

    def publish() -> None:
        write_atomic(out_dir / SWEEP_NAME, spec_text)
        write_atomic(results_path, "".join(json.dumps(records[index]) + "\n" for index in sorted(records)))

    produced = False
    try:
        with open(staging, "w") as results, tqdm(total=len(pending), desc="jobs", unit="job",
                                                  disable=not progress or not pending) as bar:
            for index in sorted(records):
                results.write(json.dumps(records[index]) + "\n")
            results.flush()
            for record in executor.run(pending, out_dir):
                produced = True
                records[record["job"]] = record
                waiting.discard(record["job"])
                results.write(json.dumps(record) + "\n")
                results.flush()
                bar.update(1)
                if on_record is not None:
                    on_record(record)
    except BaseException:
        if produced:  # the jobs that ran are on disk: report them (a rerun resumes from their PNGs)
            publish()
        raise
    finally:
        staging.unlink(missing_ok=True)
    for job in pending:  # an executor must answer for every job; say so if one did not
        if job.index in waiting:
            records[job.index] = {**base_record(job), "status": "error", "cached": False, "exit_code": 1,
                                  "error": "no result came back from the executor"}
    publish()
    values = list(records.values())
    return SweepReport(jobs=len(jobs), ran=sum(not r["cached"] for r in values),
                       cached=sum(bool(r["cached"]) for r in values),
                       failed=sum(r["status"] != "ok" for r in values), results=results_path,
                       seconds=time.perf_counter() - started)
