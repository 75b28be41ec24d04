"""Where sweep jobs run: the pipeline options every worker uses, and the in-process executor.

An executor has one method, ``run(jobs, out_dir) -> iterator of result records`` (in any order,
exactly one record per job). :class:`LocalExecutor` runs the jobs one after the other on one
:class:`~maskst.runtime.pipeline.MaskstPipeline` in this process (the default);
:class:`maskst.sweep.ray_executor.RayExecutor` runs them on a Ray actor pool.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

from maskst.errors import InputError
from maskst.sweep.worker import run_job


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
    """How each worker opens its pipeline (the arguments of MaskstPipeline). ``engines`` is made absolute:
    Ray workers do not share the driver's working folder."""

    engines: Path
    backend: str = "ort-cpu"
    threads: int | None = None  # intra-op threads per session; None: ONNX Runtime's default (all cores)
    verify_hashes: bool = True
    allow_fallback: bool = False

    def __post_init__(self):
        object.__setattr__(self, "engines", Path(self.engines).absolute())
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise InputError(f"--threads {self.threads} must be a positive integer")

    def open(self):
        """A new MaskstPipeline (a context manager)."""
        from maskst.runtime.pipeline import MaskstPipeline

        return MaskstPipeline(self.engines, backend=self.backend, verify_hashes=self.verify_hashes,
                              threads=self.threads, allow_fallback=self.allow_fallback)


@dataclasses.dataclass(frozen=True)
class LocalExecutor:
    """Every job in this process, in grid order, on one pipeline opened once."""

    pipeline: PipelineOptions

    def run(self, jobs: list, out_dir: Path) -> Iterator[dict]:
        if not jobs:
            return
        with self.pipeline.open() as pipeline:
            # requests the engines cannot serve (sizes outside the built range, a method the adapter
            # does not take, block names the UNet lacks) are refused before the first generation
            for method in dict.fromkeys(job.method for job in jobs):
                pipeline.check_request(next(job for job in jobs if job.method == method).config)
            for job in jobs:
                yield run_job(pipeline, job, out_dir)
