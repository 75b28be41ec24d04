"""One sweep job on one pipeline: generate, write the PNGs with metadata, return the result record.

Shared by the in-process executor and the Ray actors. A job that fails on purpose (a bad style
file, a request the engines refuse, NaN produced, a PNG that cannot be written) returns a record
with ``status: error`` and the message; every other job still runs. A job already finished (see
:func:`maskst.sweep.store.is_finished`) is not run again, also when Ray retries it after a worker
died between writing its PNG and returning.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from pathlib import Path

from maskst.errors import EngineError, MaskstError
from maskst.runtime.output import generation_metadata, save_png
from maskst.sweep.store import is_finished

FIRED_SUFFIX = ".fired"


def base_record(job) -> dict:
    """The fields every ``results.jsonl`` line of ``job`` has, whatever happened to it."""
    config = job.config
    return {"job": job.index, "name": job.name, "images": list(job.images), "prompt_index": job.prompt_index,
            "style_index": job.style_index, "method": job.method, "seed": job.seed, "prompt": config.prompt,
            "style": [str(p) for p in config.style], "content": config.content, "key": job.key}


def crash_if_marked(marker: Path | None, completed: int = 0) -> None:
    """Fault-injection test hook (``maskst-sweep --ray --crash-marker PATH``; Ray workers only).

    If ``marker`` exists and this worker has already run at least N jobs (N = the integer in the
    file; empty file: 0), rename it to ``marker.fired`` and end this process at once
    (``os._exit(1)``: no cleanup, no result), as a killed worker would. The rename is atomic, so
    exactly one worker fires per marker file, and the retried jobs then run normally.
    """
    if marker is None:
        return
    try:
        text = Path(marker).read_text().strip()
    except FileNotFoundError:
        return
    if completed < (int(text) if text else 0):
        return
    try:
        os.replace(marker, str(marker) + FIRED_SUFFIX)
    except FileNotFoundError:  # another worker fired first
        return
    os._exit(1)


def run_job(pipeline, job, out_dir: Path) -> dict:
    """Run ``job`` (a SweepJob) on ``pipeline`` (a MaskstPipeline) unless finished; write its PNGs into ``out_dir``.

    Returns the job's result record (JSON-ready dict): :func:`base_record` plus ``status`` (``ok`` or
    ``error``), ``cached`` (true when the PNGs were already there), and for a job that ran
    ``method_run``, ``masked_elements``, ``seconds``, ``worker`` (host:pid) and ``warnings``; for a
    failed one ``error`` and ``exit_code``.
    """
    out_dir = Path(out_dir)
    record = base_record(job)
    if is_finished(job, out_dir):
        return {**record, "status": "ok", "cached": True}
    started = time.perf_counter()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if pipeline.manifest.digest != job.engines_digest:
                raise EngineError(f"the engines at {pipeline.manifest.folder} (digest {pipeline.manifest.digest}) are not "
                                  f"the ones the sweep was planned with (digest {job.engines_digest}); every worker "
                                  "must see the same engines folder")
            result = pipeline.generate(job.config)
            meta = generation_metadata(job.config, result, pipeline)
            meta["sweep"] = {"key": job.key, "job": job.index, "name": job.name, "prompt_index": job.prompt_index,
                             "style_index": job.style_index, "method": job.method, "seed": job.seed}
            for k, (name, image) in enumerate(zip(job.images, result.images)):
                save_png(out_dir / name, image, {**meta, "image_index": k})
    except MaskstError as exc:
        return {**record, "status": "error", "cached": False, "error": str(exc), "exit_code": exc.exit_code,
                "worker": worker}
    except OSError as exc:  # the PNG could not be written (disk full, permissions, folder gone)
        return {**record, "status": "error", "cached": False, "error": f"writing {out_dir}: {exc}", "exit_code": 1,
                "worker": worker}
    return {**record, "status": "ok", "cached": False, "method_run": result.method.value,
            "masked_elements": result.masked_elements, "seconds": round(time.perf_counter() - started, 3),
            "worker": worker, "warnings": sorted({str(w.message) for w in caught})}
