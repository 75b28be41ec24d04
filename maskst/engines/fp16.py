"""``--precision fp16``: ONNX-level float16 conversion with an fp32 block list, checked against fp32.

Why ONNX-level: TensorRT 11 builds strongly typed networks only, so precision must come from the
ONNX dtypes (DESIGN section 5). The same fp16 graphs serve ONNX Runtime (CPU, CUDA, TensorRT EP)
and native TensorRT 10 and 11.

How: onnxruntime's bundled converter (``onnxruntime.transformers.float16.convert_float_to_float16``)
with ``keep_io_types=True``: every graph input and output stays float32, so runners, IO specs
and the numpy pipeline are unchanged; the casts to and from fp16 live inside the graph.

What stays fp32, and why (see docs/gpu.md for the measured effect):

* whole graphs (:data:`FP32_GRAPHS`): ``vae_decoder`` (SD VAEs overflow fp16 in the mid-block
  and up-blocks: the NaN/black-image failure every SD fp16 deployment knows) and
  ``image_conditioner`` (the MaskST mask is a discrete decision, a 2-means split or a quantile of
  1024 products; fp16 rounding of ``p`` moves elements across the split, and the graph costs
  microseconds anyway);
  ``lineart`` (the control-image annotator: its output is quantised to uint8 like an image, once per
  request, so fp16 would only move pixels across quantisation steps for no measurable time).
* op types (:data:`DEFAULT_FP32_OPS`, plus ``ExportOptions.fp32_ops``): the normalisations and the
  reductions that make up decomposed ones. A variance is a sum of squares over hundreds to
  thousands of activations and overflows fp16's 65504 long before the activations do; E[x^2]-E[x]^2
  also cancels catastrophically at 11 bits of mantissa. PyTorch's own fp16 LayerNorm/GroupNorm
  kernels accumulate in fp32 for the same reason. Softmax and Erf are *not* blocked: ONNX Runtime
  and TensorRT fp16 softmax kernels subtract the row max and accumulate in fp32 internally, and
  blocking them would route the largest UNet tensors (attention probabilities,
  ``[2*heads, 4096, 4096]`` at 512 px; the GEGLU hidden state) through fp32 casts and keep
  TensorRT from fusing attention. Add them with ``--fp32-op Softmax`` if a model needs it.
* sinusoidal embeddings (:func:`sinusoid_nodes`): ``Sin``/``Cos`` and the float chain that feeds
  them back to a graph input (the UNet's timestep projection ``t * freqs``). At t = 999 an fp16
  product has an absolute error of ~0.5 rad, which turns sin/cos into noise; diffusers computes
  this embedding in fp32 for the same reason.

The converter has three defects that this module repairs (:func:`repair_graph`, tested): a tensor
read by two blocked nodes gets two identical ``Cast`` nodes with one name and one output (an
invalid model); every blocked node gets its own casts, so a tensor passed from one fp32 node to
the next is rounded to fp16 in between (``fp32 -> Cast(fp16) -> Cast(fp32)``, folded here, so an
fp32 chain such as the timestep projection really is fp32); and the inserted casts are appended
at the end of the node list (not topologically sorted, which TensorRT's ONNX parser requires).

Parity: each converted graph is run next to its fp32 graph on ONNX Runtime CPU on the same random
feeds (export dims and a second set of dims), through the one comparator (:mod:`maskst.contract.compare`):
element-wise. Failures are collected and raised as one :class:`maskst.errors.ParityError`; all
results are recorded in the manifest.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
from pathlib import Path

import numpy as np

from maskst.engines.onnx_files import save_graph
from maskst.errors import EngineError
from maskst.contract.compare import Comparison, Tolerance, compare_outputs, raise_failures, records_json, run_onnx_cpu
from maskst.contract.spec import GraphSpec

FP32_GRAPHS = ("image_conditioner", "vae_decoder", "lineart")
DEFAULT_FP32_OPS = (
    "LayerNormalization", "InstanceNormalization", "GroupNormalization",  # the normalisations
    "ReduceMean", "ReduceSumSquare", "ReduceL2", "Pow", "Sqrt",  # decomposed norms / variances / L2 norms
)
SINUSOID_OPS = ("Sin", "Cos")
SINUSOID_CHAIN_LIMIT = 32  # nodes kept fp32 behind each Sin/Cos; a timestep projection needs ~6
# fp16 vs fp32 tolerance, element-wise (numpy.allclose form). fp16 rounds at 4.9e-4 relative per op;
# on the tiny fixtures the worst graph error is 3.4e-3 (docs/gpu.md; full-size SD 1.5 graphs were
# not measured here). 2e-2 + 2e-2 * |ref| leaves room for deeper graphs while still catching what
# a bad conversion does: an fp16 overflow or a wrong cast gives errors of order 1, inf or NaN.
FP16_ATOL = 2e-2
FP16_RTOL = 2e-2

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ConversionStats:
    """What one conversion did. ``casts_added``: net nodes added (after repairs); ``blocked_ops``:
    fp32 nodes by op type; ``sinusoid_nodes``: nodes of Sin/Cos chains kept fp32."""

    nodes: int
    casts_added: int
    fp16_initializer_bytes: int
    fp32_initializer_bytes: int
    blocked_ops: dict[str, int]
    sinusoid_nodes: int
    duplicates_removed: int
    round_trip_casts_folded: int


def op_block_list(extra: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The op types kept fp32: the converter's own list (ops without fp16 kernels, e.g. Range,
    TopK, CumSum) + :data:`DEFAULT_FP32_OPS` + ``extra`` (``ExportOptions.fp32_ops``)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    return sorted(set(DEFAULT_OP_BLOCK_LIST) | set(DEFAULT_FP32_OPS) | set(extra))


def _float_tensors(model) -> set[str]:
    """Names of float32 tensors of the (shape-inferred) main graph."""
    import onnx

    graph = model.graph
    floats = {v.name for v in list(graph.input) + list(graph.output) + list(graph.value_info)
              if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    floats |= {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    for node in graph.node:  # Constant outputs are not always in value_info
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == onnx.TensorProto.FLOAT:
                    floats.add(node.output[0])
    return floats


def sinusoid_nodes(model, limit: int = SINUSOID_CHAIN_LIMIT) -> set[str]:
    """Names of Sin/Cos nodes and of the float-producing nodes behind them (breadth-first, at
    most ``limit`` per Sin/Cos), including the Constant frequency tables. ``model`` must carry
    inferred value_info (the walk follows float32 tensors only, so int64 shape logic is left alone).
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    floats = _float_tensors(model)
    blocked: set[str] = set()
    for node in graph.node:
        if node.op_type not in SINUSOID_OPS:
            continue
        blocked.add(node.name)
        queue, taken = list(node.input), 0
        while queue and taken < limit:
            name = queue.pop(0)
            src = producer.get(name)
            if src is None or src.name in blocked or name not in floats:
                continue
            blocked.add(src.name)
            taken += 1
            queue.extend(src.input)
    return blocked


def _subgraph_inputs(node) -> set[str]:
    """Outer-scope names a node's subgraphs (If/Loop/Scan bodies) read."""
    names: set[str] = set()
    for attr in node.attribute:
        for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            produced = {o for n in sub.node for o in n.output} | {i.name for i in sub.input} | {
                t.name for t in sub.initializer}
            for n in sub.node:
                names |= {i for i in n.input if i and i not in produced}
                names |= _subgraph_inputs(n) - produced
    return names


def _elem_types(graph) -> dict[str, int]:
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.input) + list(graph.output) + list(graph.value_info)}
    types.update({t.name: t.data_type for t in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
        elif node.op_type == "Cast":
            types[node.output[0]] = next(a.i for a in node.attribute if a.name == "to")
    return types


def fold_cast_round_trips(model) -> int:
    """Rewire ``x(fp32) -> Cast(fp16) -> Cast(fp32) -> z`` to read ``x``; returns casts removed.

    The converter gives every blocked node its own casts, so a tensor passed between two fp32
    nodes (a sinusoid chain, a decomposed norm, a graph input feeding a blocked node) is rounded
    to fp16 on the way; folding the round trip keeps the chain truly fp32. The fp16 cast stays
    while other (fp16) nodes read it.
    """
    import onnx

    graph = model.graph
    nodes = list(graph.node)
    types = _elem_types(graph)
    producer = {out: idx for idx, node in enumerate(nodes) for out in node.output}
    outputs = {o.name for o in graph.output}
    fp16, fp32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    rename: dict[str, str] = {}
    drop: set[int] = set()
    for idx, node in enumerate(nodes):
        if node.op_type != "Cast" or types.get(node.output[0]) != fp32 or node.output[0] in outputs:
            continue
        first = nodes[producer[node.input[0]]] if node.input[0] in producer else None
        if (first is not None and first.op_type == "Cast" and types.get(first.output[0]) == fp16
                and types.get(first.input[0]) == fp32):
            rename[node.output[0]] = first.input[0]
            drop.add(idx)
    if not rename:
        return 0

    def resolve(name: str) -> str:
        while name in rename:  # chains of round trips: a -> b -> c
            name = rename[name]
        return name

    readers: dict[str, int] = {}
    for idx, node in enumerate(nodes):
        if idx in drop:
            continue
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = resolve(name)
            readers[node.input[i]] = readers.get(node.input[i], 0) + 1
    removed = set(rename)
    for idx, node in enumerate(nodes):  # fp16 casts nobody reads any more
        if (node.op_type == "Cast" and idx not in drop and types.get(node.output[0]) == fp16
                and node.output[0] not in outputs and not readers.get(node.output[0])):
            drop.add(idx)
            removed.add(node.output[0])
    keep = [node for idx, node in enumerate(nodes) if idx not in drop]
    infos = [vi for vi in graph.value_info if vi.name not in removed]
    del graph.node[:]
    graph.node.extend(keep)
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return len(drop)


def repair_graph(model) -> tuple[int, int]:
    """Drop the converter's duplicate Cast nodes and value_infos, fold fp32->fp16->fp32 cast round
    trips, then sort the nodes topologically.

    Returns (duplicate nodes removed, round-trip casts removed). Raises EngineError if two
    *different* nodes write one tensor or the graph has a cycle (converter bugs we cannot repair).
    """
    graph = model.graph
    seen: dict[str, object] = {}
    keep, duplicates = [], 0
    for node in graph.node:
        for out in node.output:
            if out in seen:
                if seen[out] == node:  # protobuf equality: same name, op, inputs, outputs, attributes
                    duplicates += 1
                    break
                raise EngineError(f"fp16 conversion produced two different nodes writing {out!r} "
                                  f"({seen[out].name} and {node.name}); report this with the ONNX file")
        else:
            for out in node.output:
                seen[out] = node
            keep.append(node)
    infos, names = [], set()
    for vi in graph.value_info:
        if vi.name not in names:
            names.add(vi.name)
            infos.append(vi)
    del graph.node[:]
    graph.node.extend(keep)
    del graph.value_info[:]
    graph.value_info.extend(infos)
    folded = fold_cast_round_trips(model)
    keep = list(graph.node)

    # Kahn's algorithm, stable: among ready nodes the earliest in the original order goes first.
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    produced_by = {out: idx for idx, node in enumerate(keep) for out in node.output}
    deps: list[set[int]] = []
    users: dict[int, list[int]] = {}
    for idx, node in enumerate(keep):
        need = {produced_by[name] for name in set(node.input) | _subgraph_inputs(node)
                if name not in available and name in produced_by}
        deps.append(need)
        for d in need:
            users.setdefault(d, []).append(idx)
    ready = [idx for idx, d in enumerate(deps) if not d]
    heapq.heapify(ready)
    order = []
    while ready:
        idx = heapq.heappop(ready)
        order.append(idx)
        for user in users.get(idx, ()):
            deps[user].discard(idx)
            if not deps[user]:
                heapq.heappush(ready, user)
    if len(order) != len(keep):
        raise EngineError("fp16 conversion produced a graph with a cycle; report this with the ONNX file")
    sorted_nodes = [keep[i] for i in order]
    del graph.node[:]
    graph.node.extend(sorted_nodes)
    return duplicates, folded


def convert_model(model, fp32_ops: tuple[str, ...] | list[str] = ()):
    """fp16 copy of an in-memory ONNX model (weights loaded). Returns (model, ConversionStats).

    ``model`` is modified in place by the converter; pass a copy to keep the original.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # Shape inference here (not in the converter) so models whose weights exceed protobuf's 2 GB
    # limit work: callers infer on the weightless proto, see convert_file.
    if not model.graph.value_info:  # the sinusoid walk follows inferred float32 tensors
        model = onnx.shape_inference.infer_shapes(model)
    nodes_before = len(model.graph.node)
    blocked_ops = op_block_list(fp32_ops)
    sinusoids = sinusoid_nodes(model)
    converted = convert_float_to_float16(
        model, keep_io_types=True, disable_shape_infer=True, op_block_list=blocked_ops,
        node_block_list=sorted(sinusoids),
    )
    duplicates, folded = repair_graph(converted)
    counts: dict[str, int] = {}
    for node in converted.graph.node:
        if node.op_type in blocked_ops:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    sizes = {onnx.TensorProto.FLOAT16: 0, onnx.TensorProto.FLOAT: 0}
    for t in converted.graph.initializer:
        if t.data_type in sizes:
            sizes[t.data_type] += len(t.raw_data) if t.raw_data else t.ByteSize()
    stats = ConversionStats(
        nodes=len(converted.graph.node),
        casts_added=len(converted.graph.node) - nodes_before,
        fp16_initializer_bytes=sizes[onnx.TensorProto.FLOAT16],
        fp32_initializer_bytes=sizes[onnx.TensorProto.FLOAT],
        blocked_ops=dict(sorted(counts.items())),
        sinusoid_nodes=len(sinusoids),
        duplicates_removed=duplicates,
        round_trip_casts_folded=folded,
    )
    return converted, stats


def convert_file(src: Path, dst: Path, fp32_ops: tuple[str, ...] | list[str] = ()) -> ConversionStats:
    """Convert ``src`` (fp32 ONNX, external data beside it allowed) into ``dst``.

    Saved by :func:`maskst.engines.onnx_files.save_graph` (large weights in one ``<dst>.data``;
    the fp16 SD 1.5 UNet is ~1.7 GB, close to protobuf's 2 GB limit); it passes ``onnx.checker``.
    """
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=False)
    model = onnx.shape_inference.infer_shapes(model)  # weightless proto: fine for any model size
    load_external_data_for_model(model, str(src.parent))
    converted, stats = convert_model(model, fp32_ops)
    save_graph(converted, dst)
    return stats


def parity_dims(spec: GraphSpec) -> list[dict[str, int]]:
    """Dims of the fp16-vs-fp32 cases: the profile's opt dims, then another batch at the smallest size."""
    opt = {name: r.opt for name, r in spec.dims.items()}
    # batch-like dims (N images, B = 2N, S style images, R style regions): another count; spatial dims: the smallest
    other = {name: ((r.max if r.max != r.opt else r.min) if name in ("N", "B", "S", "R") else r.min)
             for name, r in spec.dims.items()}
    return [opt] if other == opt else [opt, other]


def compare_fp16(spec: GraphSpec, fp32_path: Path, fp16_path: Path, feeds: list[dict[str, np.ndarray]],
                 atol: float | None = None, rtol: float | None = None) -> list[Comparison]:
    """Run the fp32 and fp16 graphs on ONNX Runtime CPU on the same feeds; compare every output
    (default tolerance: FP16_ATOL / FP16_RTOL)."""
    tolerance = Tolerance(FP16_ATOL if atol is None else atol, FP16_RTOL if rtol is None else rtol)
    return compare_outputs(spec.name, [t.name for t in spec.outputs], run_onnx_cpu(fp32_path, feeds),
                           run_onnx_cpu(fp16_path, feeds), tolerance, reference="onnxruntime-cpu fp32",
                           candidate="onnxruntime-cpu fp16")


def convert_staged_graphs(staging: Path, graphs: dict[str, dict], options) -> dict:
    """The exporter hook for ``--precision fp16``: convert the staged fp32 graphs in place.

    ``graphs``: the manifest's ``graphs`` section (``{name: {"file", "spec", "parity"}}``); each
    converted graph's entry gets ``file`` = ``<name>.fp16.onnx``, ``precision`` and
    ``fp16_parity``; its fp32 file is deleted from the staging folder afterwards. Graphs in
    :data:`FP32_GRAPHS` keep their fp32 file and get ``precision: fp32``. Returns the manifest's
    ``fp16`` section. Raises ParityError (after converting all graphs) if any output is off.
    """
    import onnxruntime

    staging = Path(staging)
    blocked = op_block_list(options.fp32_ops)
    results: list[Comparison] = []
    for name, entry in graphs.items():
        if name in FP32_GRAPHS:
            entry["precision"] = "fp32"
            continue
        spec = GraphSpec.from_json(entry["spec"])
        src = staging / entry["file"]
        dst = staging / f"{name}.fp16.onnx"
        stats = convert_file(src, dst, options.fp32_ops)
        graph_results = []
        if options.check_parity:
            feeds = [spec.sample_inputs(dims, seed=11 + i) for i, dims in enumerate(parity_dims(spec))]
            graph_results = compare_fp16(spec, src, dst, feeds)
            results += graph_results
        for stale in (src, src.with_name(src.name + ".data")):
            stale.unlink(missing_ok=True)
        entry.update(file=dst.name, precision="fp16", fp16_conversion=dataclasses.asdict(stats),
                     fp16_parity=records_json(graph_results))
        log.info("fp16 %s: %s", name, stats)
    raise_failures(results, "fp16 graph output(s) differ from the fp32 graph beyond the fp16 tolerance",
                   "keep more op types in fp32 (maskst-export --fp32-op Softmax --fp32-op Erf ...) or build with --precision fp32")
    return {
        "converter": f"onnxruntime.transformers.float16 (onnxruntime {onnxruntime.__version__}), keep_io_types=True",
        "fp32_graphs": [name for name in FP32_GRAPHS if name in graphs],  # those this folder has
        "fp32_ops": blocked,
        "fp32_sinusoid_chains": True,
        "parity": {"reference": "fp32 ONNX graph on ONNX Runtime CPU", "atol": FP16_ATOL, "rtol": FP16_RTOL,
                   "checked": bool(options.check_parity)},
    }
