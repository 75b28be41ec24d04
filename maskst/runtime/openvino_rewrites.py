"""Rewrites of an OpenVINO model once it is reshaped to a request's static shapes, before the CPU plugin compiles it.

Exact rewrites only: the compiled model computes the same numbers, with less work. What the static shapes make
trivial, OpenVINO's own transformations do not always remove.

- **Reductions over axes of size 1** (``ReduceSum`` / ``ReduceMean`` / ``ReduceMax`` / ``ReduceMin`` /
  ``ReduceProd``) are the identity. They become a ``Squeeze``, or nothing with ``keep_dims``. The UNet's
  regional IP-Adapter attention (:mod:`maskst.export.regional_attention`) sums its R region outputs. A request
  without regions has R = 1, and OpenVINO 2026.4 still ran each of the 16 sums as a ReduceSum kernel plus a
  reorder out of f32. On the full-size SD 1.5 UNet, int8 hybrid, 256 px, CFG batch 2, 2 Zen 4 cores, a call went
  from 585.6 to 573.7 ms (paired median difference -11.6 ms over 16 alternated pairs). The outputs were bit for
  bit the same (docs/benchmarks-history.md, "Zen 4, twelfth session").

:data:`GRAPH_REWRITES` names what is applied. It is part of the compiled-blob key
(:meth:`maskst.runtime.openvino_runner.OpenVinoRunner.blob_path`), so blobs compiled before a rewrite existed
are not taken for ones compiled with it.
"""

from __future__ import annotations

import numpy as np

# reductions whose value over one element is that element
IDENTITY_REDUCTIONS = frozenset({"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd"})


def drop_unit_reductions(model) -> int:
    """Replace, in place, every reduction of ``model`` (``openvino.Model``) whose reduced axes all have static
    size 1 by a ``Squeeze`` of those axes (by its input with ``keep_dims``). Reductions with non-constant axes,
    a dynamic rank or any reduced axis of another (or dynamic) size stay. Returns how many were replaced."""
    import openvino.opset13 as ops

    replaced = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() not in IDENTITY_REDUCTIONS:
            continue
        axes_node = op.input_value(1).get_node()
        shape = op.input(0).get_partial_shape()
        if axes_node.get_type_name() != "Constant" or shape.rank.is_dynamic:
            continue
        rank = shape.rank.get_length()
        axes = sorted({int(axis) % rank for axis in axes_node.get_data().reshape(-1)})
        if not axes or not all(shape[axis].is_static and shape[axis].get_length() == 1 for axis in axes):
            continue
        source = op.input_value(0)
        if not op.get_attributes().get("keep_dims", False):
            source = ops.squeeze(source, ops.constant(np.array(axes, dtype=np.int64))).output(0)
        # the reduction's output names move to the replacement (a graph output keeps its name)
        op.output(0).replace(source)
        replaced += 1
    return replaced


# name (recorded in the blob key) -> rewrite (model in place -> nodes replaced), applied in this order
REWRITES = {"unit_reductions": drop_unit_reductions}
GRAPH_REWRITES = tuple(REWRITES)


def rewrite_for_static_shapes(model) -> dict[str, int]:
    """Apply every rewrite of :data:`GRAPH_REWRITES` to ``model`` in place; {rewrite: nodes replaced}."""
    return {name: rewrite(model) for name, rewrite in REWRITES.items()}
