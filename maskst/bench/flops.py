"""FLOPs of one graph at concrete input shapes: tensor-op arithmetic, counted once per shape set.

What is counted (2 FLOPs per multiply-add), from OpenVINO's view of the graph after a static reshape
(the ONNX file or an OpenVINO IR; OpenVINO propagates every shape, including the ``Shape`` ->
``Gather`` -> ``Reshape`` chains of the TorchScript exporter that ONNX's own shape inference leaves
unknown):

- ``MatMul`` (ONNX ``MatMul`` and ``Gemm``): 2 * |output| * K.
- ``Convolution`` / ``GroupConvolution``: 2 * |output| * (input channels per group) * kernel area,
  i.e. the **direct algorithm**. A kernel that uses Winograd or an FFT does fewer multiplications
  and can exceed 100% of a matmul ceiling by this count.
- ``ConvolutionBackpropData`` / ``GroupConvolutionBackpropData`` (ONNX ``ConvTranspose``):
  2 * |input| * (output channels per group) * kernel area.
- ``ScaledDotProductAttention`` (OpenVINO's PyTorch frontend): 2 * B * L * S * (E + Ev).

Weights: each counted node also records how many elements of constant weights it reads (a ``Constant``
reached through ``Convert`` / ``Reshape`` / ``Transpose`` / decompression or ``FakeQuantize`` nodes; an
activation x activation product such as attention reads none), so that the time the runtime needs to stream
them from memory can be set beside the time of their arithmetic (``per_node``; the roofline of
:func:`maskst.bench.ceilings.roofline`).

Element-wise work (normalisations, activations, softmax, additions) is left out: it is memory bound
and a few percent of the arithmetic of the graphs here; ``other_ops`` in the result counts those
nodes. An op type that does tensor arithmetic but has no rule here (``Einsum``, ``DeformableConvolution``)
is listed in ``uncounted`` instead of being guessed.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from maskst.errors import BackendError, EngineError

CONVOLUTIONS = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData")
COUNTED = ("MatMul", *CONVOLUTIONS, "ScaledDotProductAttention")
NOT_COUNTABLE = ("Einsum", "DeformableConvolution", "BinaryConvolution")


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """FLOPs of one graph at one set of input shapes."""

    graph: str
    shapes: dict[str, list[int]]
    flops: int  # total of the counted ops
    by_op: dict[str, int]  # op type -> FLOPs
    nodes: dict[str, int]  # op type -> number of counted nodes
    uncounted: dict[str, int]  # op types with tensor arithmetic but no rule here -> node count
    per_node: list[list] = dataclasses.field(default_factory=list)  # [op type, FLOPs, weight elements] per counted node
    method: str = "direct algorithm for convolutions; 2 FLOPs per multiply-add; MatMul/Gemm/Conv/ConvTranspose/SDPA only"

    @property
    def gflop(self) -> float:
        return self.flops / 1e9

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "gflop": self.gflop}


def _static(shape, what: str) -> list[int]:
    if not shape.is_static:
        raise EngineError(f"{what}: shape {shape} is not static after the reshape; cannot count its FLOPs")
    return [int(d) for d in shape.to_shape()]


def op_flops(op) -> int | None:
    """FLOPs of one OpenVINO node (static shapes), or None if it is not a counted op type."""
    kind = op.get_type_name()
    name = op.get_friendly_name()
    if kind == "MatMul":
        a = _static(op.input(0).get_partial_shape(), name)
        out = _static(op.output(0).get_partial_shape(), name)
        attrs = op.get_attributes()
        if len(a) == 1:  # a vector: K is its length
            k = a[0]
        else:
            k = a[-2] if attrs.get("transpose_a") else a[-1]
        return 2 * math.prod(out) * k
    if kind in ("Convolution", "GroupConvolution"):
        w = _static(op.input(1).get_partial_shape(), name)
        out = _static(op.output(0).get_partial_shape(), name)
        # Convolution weights [C_out, C_in, *k]; GroupConvolution [G, C_out/G, C_in/G, *k]
        per_output = w[1] * math.prod(w[2:]) if kind == "Convolution" else w[2] * math.prod(w[3:])
        return 2 * math.prod(out) * per_output
    if kind in ("ConvolutionBackpropData", "GroupConvolutionBackpropData"):
        x = _static(op.input(0).get_partial_shape(), name)
        w = _static(op.input(1).get_partial_shape(), name)
        # weights [C_in, C_out, *k] / [G, C_in/G, C_out/G, *k]: each input element feeds C_out/G * k outputs
        per_input = w[1] * math.prod(w[2:]) if kind == "ConvolutionBackpropData" else w[2] * math.prod(w[3:])
        return 2 * math.prod(x) * per_input
    if kind == "ScaledDotProductAttention":
        q = _static(op.input(0).get_partial_shape(), name)
        k = _static(op.input(1).get_partial_shape(), name)
        v = _static(op.input(2).get_partial_shape(), name)
        out = _static(op.output(0).get_partial_shape(), name)
        # Q [..., L, E], K [..., S, E], V [..., S, Ev]: Q K^T is |out|/Ev * S * E, P V is |out| * S
        length_s = k[-2]
        return 2 * (math.prod(out) // v[-1]) * length_s * q[-1] + 2 * math.prod(out) * length_s
    return None


# nodes between a weight Constant and the op that reads it: casts, layout changes, int8 decompression
# (Convert -> Subtract zero point -> Multiply scale) and FakeQuantize; their first input leads to the Constant
WEIGHT_PATH = ("Convert", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Subtract", "Multiply", "FakeQuantize")


def _weight_elements(port) -> int:
    """Elements of the constant weights an input port reads (0: the input is an activation)."""
    node = port.get_source_output().get_node()
    for _ in range(8):  # the chains above are short; a longer one is not a weight path
        kind = node.get_type_name()
        if kind == "Constant":
            return math.prod(int(d) for d in node.get_output_shape(0))
        if kind not in WEIGHT_PATH:
            return 0
        node = node.input(0).get_source_output().get_node()
    return 0


def op_weight_elements(op) -> int:
    """Constant weight elements a counted node reads: a MatMul's constant operand, a convolution's kernel."""
    if op.get_type_name() == "MatMul":
        return sum(_weight_elements(op.input(i)) for i in range(2))
    if op.get_type_name() in CONVOLUTIONS:  # the kernel is input 1
        return _weight_elements(op.input(1))
    return 0


def count_model(model, graph: str, shapes: dict[str, list[int]]) -> FlopCount:
    """Count an ``openvino.Model`` already reshaped to ``shapes``."""
    by_op: dict[str, int] = {}
    nodes: dict[str, int] = {}
    uncounted: dict[str, int] = {}
    per_node: list[list] = []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        flops = op_flops(op)
        if flops is not None:
            by_op[kind] = by_op.get(kind, 0) + flops
            nodes[kind] = nodes.get(kind, 0) + 1
            per_node.append([kind, flops, op_weight_elements(op)])
        elif kind in NOT_COUNTABLE:
            uncounted[kind] = uncounted.get(kind, 0) + 1
    return FlopCount(graph, {k: list(v) for k, v in shapes.items()}, sum(by_op.values()), by_op, nodes, uncounted,
                     per_node)


def graph_flops(path: Path, graph: str, shapes: dict[str, list[int]]) -> FlopCount:
    """FLOPs of the graph file ``path`` (ONNX or OpenVINO IR) with inputs of ``shapes`` ({input name: shape}).

    Reads the graph with OpenVINO (external weights are memory-mapped, not copied), reshapes it to the
    shapes and counts; nothing is compiled. Needs the openvino package.
    """
    try:
        import openvino as ov
    except ImportError:
        raise BackendError("counting FLOPs needs the openvino package (its shape propagation): "
                           "pip install 'maskst[openvino]'") from None
    core = ov.Core()
    try:
        model = core.read_model(str(path))
    except RuntimeError as exc:  # OpenVINO reports every read failure as RuntimeError
        raise EngineError(f"{path} could not be read by OpenVINO to count its FLOPs ({exc})") from None
    names = {name for port in model.inputs for name in port.get_names()}
    missing = sorted(set(shapes) - names)
    if missing:
        raise EngineError(f"{path}: no input named {', '.join(missing)} (inputs: {', '.join(sorted(names))})")
    model.reshape({name: list(shape) for name, shape in shapes.items()})
    return count_model(model, graph, shapes)
