"""Sweeps and evaluation: StyleBench-shaped grids of style-transfer jobs, and the method's metrics.

- :mod:`maskst.sweep.grid`: the grid (prompts x styles x methods x seeds) as frozen job records,
  validated in one place, with deterministic file names;
- :mod:`maskst.sweep.store`: a job's identity, its PNG metadata and the resume check;
- :mod:`maskst.sweep.worker`: one job on one :class:`~maskst.runtime.pipeline.MaskstPipeline`
  (shared by the in-process executor and the Ray actors);
- :mod:`maskst.sweep.executors`: the in-process executor; :mod:`maskst.sweep.ray_executor`: Ray Data
  (``map_batches`` over an actor pool; Ray is imported only there);
- :mod:`maskst.sweep.runner`: expand, skip finished jobs, run, write ``results.jsonl``;
- :mod:`maskst.sweep.metrics`, :mod:`maskst.sweep.evaluate`, :mod:`maskst.sweep.plot`: ``maskst-eval``;
- :mod:`maskst.sweep.cli`: ``maskst-sweep`` and ``maskst-eval``.

See ``docs/sweeps.md``.
"""
