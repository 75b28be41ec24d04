"""FLOP counting (maskst.bench.flops) against hand counts, and the ceilings' report structure (no timing asserts)."""

from __future__ import annotations

import math

import numpy as np
import pytest

try:
    import openvino  # noqa: F401

    HAVE_OPENVINO = True
except ImportError:
    HAVE_OPENVINO = False

needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino is not installed (pip install 'maskst[openvino]')")


def _small_graph(path):
    """A graph with a dynamic batch: MatMul, Gemm, Conv (plain and grouped, strided) and ConvTranspose."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = lambda name, *shape: numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)  # noqa: E731
    nodes = [
        # x [N, 3, 4] @ w1 [4, 5] -> [N, 3, 5]
        helper.make_node("MatMul", ["x", "w1"], ["m"]),
        # flatten to [N, 15], Gemm with B^T [6, 15] -> [N, 6]
        helper.make_node("Flatten", ["m"], ["mf"], axis=1),
        helper.make_node("Gemm", ["mf", "w2", "b2"], ["g"], transB=1),
        # image [N, 2, 5, 5]: Conv 2 -> 4, 3x3, pad 1 -> [N, 4, 5, 5]
        helper.make_node("Conv", ["img", "w3"], ["c1"], pads=[1, 1, 1, 1]),
        # grouped Conv (2 groups) 4 -> 6, 3x3, stride 2, pad 1 -> [N, 6, 3, 3]
        helper.make_node("Conv", ["c1", "w4"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], group=2),
        # ConvTranspose 6 -> 2, 2x2, stride 2 -> [N, 2, 6, 6]
        helper.make_node("ConvTranspose", ["c2", "w5"], ["c3"], strides=[2, 2]),
        helper.make_node("Relu", ["c3"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4]),
         helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 2, 5, 5])],
        [helper.make_tensor_value_info("g", TensorProto.FLOAT, ["N", 6]),
         helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 2, 6, 6])],
        [w("w1", 4, 5), w("w2", 6, 15), w("b2", 6), w("w3", 4, 2, 3, 3), w("w4", 6, 2, 3, 3), w("w5", 6, 2, 2, 2)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _hand_count(n: int) -> dict[str, int]:
    matmul = 2 * (n * 3 * 5) * 4  # [N, 3, 5] outputs, K = 4
    gemm = 2 * (n * 6) * 15  # [N, 6] outputs, K = 15
    conv = 2 * (n * 4 * 5 * 5) * (2 * 3 * 3)  # direct: each output reads C_in x 3 x 3
    grouped = 2 * (n * 6 * 3 * 3) * (2 * 3 * 3)  # per group C_in / G = 2
    transposed = 2 * (n * 6 * 3 * 3) * (2 * 2 * 2)  # each input element feeds C_out x 2 x 2 outputs
    return {"matmul": matmul + gemm, "conv": conv + grouped, "transposed": transposed}


@needs_openvino
@pytest.mark.parametrize("n", [1, 3])
def test_flop_count_matches_hand_count(tmp_path, n):
    from maskst.bench.flops import graph_flops

    path = tmp_path / "small.onnx"
    _small_graph(path)
    count = graph_flops(path, "small", {"x": [n, 3, 4], "img": [n, 2, 5, 5]})
    hand = _hand_count(n)
    assert count.by_op["MatMul"] == hand["matmul"]
    assert count.by_op["Convolution"] + count.by_op.get("GroupConvolution", 0) == hand["conv"]
    assert count.by_op["ConvolutionBackpropData"] == hand["transposed"]
    assert count.flops == sum(hand.values())
    assert count.nodes["MatMul"] == 2 and not count.uncounted
    # weights read per node (whatever Transpose / Reshape OpenVINO puts between them and their op): w1 [4, 5],
    # w2 [6, 15] (Gemm), w3 [4, 2, 3, 3], w4 [6, 2, 3, 3] (grouped), w5 [6, 2, 2, 2] (transposed); the batch does
    # not change them
    weights = sorted(elements for _kind, _flops, elements in count.per_node)
    assert weights == sorted([20, 90, 72, 108, 48])
    assert sum(flops for _kind, flops, _elements in count.per_node) == count.flops
    assert count.to_json()["gflop"] == pytest.approx(count.flops / 1e9)


@needs_openvino
def test_flop_count_of_attention_op():
    """OpenVINO's ScaledDotProductAttention (what its PyTorch frontend makes of F.scaled_dot_product_attention)."""
    import openvino as ov
    import openvino.opset13 as ops

    from maskst.bench.flops import count_model

    q = ops.parameter([2, 8, 64, 40], np.float32)
    k = ops.parameter([2, 8, 77, 40], np.float32)
    v = ops.parameter([2, 8, 77, 24], np.float32)
    model = ov.Model([ops.scaled_dot_product_attention(q, k, v, causal=False)], [q, k, v])
    count = count_model(model, "sdpa", {})
    assert count.flops == 2 * 2 * 8 * 64 * 77 * 40 + 2 * 2 * 8 * 64 * 77 * 24
    assert count.per_node == [["ScaledDotProductAttention", count.flops, 0]]  # activations only: no weights


@needs_openvino
def test_flop_count_refuses_unknown_inputs(tmp_path):
    from maskst.bench.flops import graph_flops
    from maskst.errors import EngineError

    path = tmp_path / "small.onnx"
    _small_graph(path)
    with pytest.raises(EngineError, match="no input named"):
        graph_flops(path, "small", {"x": [1, 3, 4], "image": [1, 2, 5, 5]})


@needs_openvino
def test_flop_count_of_tiny_unet_scales_with_batch(tiny_engines):
    """The UNet at batch 4 does exactly twice the arithmetic of batch 2 (same latent size, one region)."""
    from maskst.bench.flops import graph_flops
    from maskst.engines.manifest import load_manifest

    manifest = load_manifest(tiny_engines)
    spec = manifest.graph_spec("unet")
    counts = {}
    for n in (1, 2):
        shapes = spec.shapes({"N": n, "h": 8, "w": 8, "R": 1})
        counts[n] = graph_flops(manifest.graph_path("unet"), "unet", {t.name: list(shapes[t.name]) for t in spec.inputs})
    assert counts[1].flops > 0 and set(counts[1].by_op) >= {"MatMul", "Convolution"}
    # everything but the timestep embedding (batch-independent rows) scales with B
    assert math.isclose(counts[2].flops / counts[1].flops, 2.0, rel_tol=0.01)


def test_effective_ceiling_weights_matmul_and_conv():
    from maskst.bench.ceilings import effective_ceiling

    ceilings = {"openvino": {"bf16": {"matmul": {"gflops": 100.0}, "conv": {"gflops": 50.0}}}}
    # 1 GFLOP of MatMul at 100 GFLOP/s (10 ms) + 1 GFLOP of convolution at 50 (20 ms): 2 GFLOP in 30 ms
    got = effective_ceiling(ceilings, "openvino", "bf16", {"MatMul": 10**9, "Convolution": 10**9})
    assert got["gflops"] == pytest.approx(2 / 0.03)
    assert got["matmul_share"] == pytest.approx(0.5)
    assert effective_ceiling(ceilings, "openvino", "int8", {"MatMul": 1}) is None


@pytest.mark.parametrize("kind", ["matmul", "conv"])
def test_ceiling_graphs_declare_the_oldest_ir_version_of_their_opset(kind):
    """onnx writes its newest IR version unless told; onnxruntime-gpu 1.31.1 refused onnx 1.23's IR 14 on the first
    GPU machine (2026-12-04). Opset 17 came with IR version 8 (ONNX 1.12), which every runtime of opset 17 reads."""
    import onnx

    from maskst.bench.ceilings import _onnx_graph

    model = onnx.load_from_string(_onnx_graph(kind)[0])
    onnx.checker.check_model(model)
    assert model.ir_version == 8


def test_merge_samples_takes_the_fastest_pass():
    """A pass the host slowed (fp32 2x slower, bf16 not) must not pull the ceiling down: per kernel, the pass
    with the highest median wins, every pass's median is kept."""
    from maskst.bench.ceilings import _summary, merge_samples

    one = {"torch": {"f32": {"matmul": _summary(10**9, [0.010, 0.012, 0.011], timed="call")},
                     "bf16": {"matmul": _summary(10**9, [0.005, 0.005, 0.006])}}}
    two = {"torch": {"f32": {"matmul": _summary(10**9, [0.020, 0.021, 0.030], timed="call")},
                     "bf16": {"matmul": _summary(10**9, [0.004, 0.004, 0.009])}}}
    merged = merge_samples([one, two])["torch"]
    f32, bf16 = merged["f32"]["matmul"], merged["bf16"]["matmul"]
    assert f32["ms_samples"] == [10.0, 12.0, 11.0] and f32["gflops"] == pytest.approx(1e9 / 0.011 / 1e9)
    assert f32["pass_gflops"] == pytest.approx([1e9 / 0.011 / 1e9, 1e9 / 0.021 / 1e9]) and f32["timed"] == "call"
    assert bf16["ms_median"] == pytest.approx(4.0)  # the second pass, for this kernel
    assert merge_samples([one])["torch"]["f32"]["matmul"]["gflops"] == f32["gflops"]


def test_roofline_takes_the_longer_of_arithmetic_and_weights_per_node():
    from maskst.bench.ceilings import _bandwidth_summary, merge_memory, roofline

    ceilings = {"openvino": {"bf16": {"matmul": {"gflops": 100.0}, "conv": {"gflops": 50.0}},
                             "f32": {"matmul": {"gflops": 100.0}, "conv": {"gflops": 50.0}}}}
    memory = {"gbps": 10.0}
    per_node = [["MatMul", 10**9, 0],  # attention-like: 10 ms of arithmetic, no weights
                ["Convolution", 10**8, 50 * 10**6],  # 2 ms of arithmetic, 100 MB of bf16 weights: 10 ms at 10 GB/s
                ["MatMul", 10**8, 10**6]]  # 1 ms of arithmetic, 2 MB: 0.2 ms
    got = roofline(ceilings, memory, "openvino", "bf16", per_node)
    assert got["ms"] == pytest.approx(10 + 10 + 1)
    assert got["compute_ms"] == pytest.approx(13) and got["weights_ms"] == pytest.approx(10.2)
    assert got["weight_bytes"] == 2 * (50 * 10**6 + 10**6)
    assert got["attainable_pct_of_ceiling"] == pytest.approx(100 * 13 / 21)
    # f32 weights are twice the bytes: the convolution now takes 20 ms
    assert roofline(ceilings, memory, "openvino", "f32", per_node)["ms"] == pytest.approx(10 + 20 + 1)
    assert roofline(ceilings, None, "openvino", "bf16", per_node) is None  # no memory ceiling measured
    assert roofline(ceilings, memory, "openvino", "int8", per_node) is None  # no int8 ceilings measured
    fast = _bandwidth_summary(10**9, [0.010, 0.030], kernel="k")  # median 20 ms: 50 GB/s
    slow = _bandwidth_summary(10**9, [0.040], kernel="k")
    best = merge_memory([slow, None, fast])
    assert best["ms_median"] == pytest.approx(20.0) and best["gbps"] == pytest.approx(50.0)
    assert best["pass_gbps"] == pytest.approx([25.0, 50.0])
    assert merge_memory([None]) is None
