"""maskst.runtime.openvino_rewrites: exact rewrites of a model reshaped to static shapes, before the CPU compile.

A reduction over axes of size 1 is the identity. It is dropped (a Squeeze) and the outputs stay bit for bit the
same. Reductions over other sizes stay. The OpenVINO runner applies it, so the UNet of a request without regions
(R = 1) runs no ReduceSum, and a request with 2 regions still sums them."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                reason="openvino is not installed (pip install 'maskst[openvino]')")

REDUCTIONS = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd")


def _model(kind: str, axes: list[int], keep_dims: bool):
    """x [2, R, 5, C] -> reduction over ``axes`` -> * 3 -> output "y"; -x -> the same reduction -> output "reduced"."""
    import openvino as ov
    from openvino import opset13 as ops

    x = ops.parameter([2, -1, 5, -1], np.float32, name="x")
    reduce = getattr(ops, {"ReduceSum": "reduce_sum", "ReduceMean": "reduce_mean", "ReduceMax": "reduce_max",
                           "ReduceMin": "reduce_min", "ReduceProd": "reduce_prod"}[kind])
    reduced = reduce(x, ops.constant(np.array(axes, dtype=np.int64)), keep_dims)
    y = ops.multiply(reduced, ops.constant(np.float32(3.0)))
    y.output(0).get_tensor().set_names({"y"})
    # a reduction that is a graph output (of another input: reshape merges identical nodes)
    second = reduce(ops.negative(x), ops.constant(np.array(axes, dtype=np.int64)), keep_dims)
    second.output(0).get_tensor().set_names({"reduced"})
    return ov.Model([y, second], [x], "reductions")


def _types(model) -> list[str]:
    return [op.get_type_name() for op in model.get_ordered_ops()]


def _run(model, x: np.ndarray) -> dict[str, np.ndarray]:
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
    results = compiled.create_infer_request().infer({"x": x})
    return {name: results[compiled.output(name)].copy() for name in ("y", "reduced")}


@pytest.mark.parametrize("kind", REDUCTIONS)
@pytest.mark.parametrize("axes, keep_dims", [([1], False), ([1], True), ([-3, 3], False), ([3, 1], True)])
def test_reductions_over_unit_axes_are_dropped_and_compute_the_same(kind, axes, keep_dims):
    from maskst.runtime.openvino_rewrites import drop_unit_reductions

    x = np.random.default_rng(0).standard_normal((2, 1, 5, 1)).astype(np.float32)
    reference = _model(kind, axes, keep_dims)
    reference.reshape({"x": list(x.shape)})
    expected = _run(reference, x)

    rewritten = _model(kind, axes, keep_dims)
    rewritten.reshape({"x": list(x.shape)})
    assert drop_unit_reductions(rewritten) == 2
    assert not set(REDUCTIONS) & set(_types(rewritten))
    got = _run(rewritten, x)
    for name in ("y", "reduced"):
        assert got[name].shape == expected[name].shape
        np.testing.assert_array_equal(got[name], expected[name])  # the identity, exactly


@pytest.mark.parametrize("shape", [(2, 3, 5, 1), (2, 1, 5, 4)])
def test_reductions_over_other_sizes_stay(shape):
    """[1, 3]: one of the reduced axes is not 1 -> the reduction stays and still sums."""
    from maskst.runtime.openvino_rewrites import drop_unit_reductions

    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    model = _model("ReduceSum", [1, 3], False)
    model.reshape({"x": list(shape)})
    assert drop_unit_reductions(model) == 0
    got = _run(model, x)
    np.testing.assert_allclose(got["reduced"], -x.sum(axis=(1, 3)), rtol=1e-6, atol=1e-6)


def test_dynamic_axes_stay():
    """Before the reshape to static shapes R is dynamic: nothing is dropped."""
    from maskst.runtime.openvino_rewrites import drop_unit_reductions

    model = _model("ReduceSum", [1], False)
    assert drop_unit_reductions(model) == 0
    assert _types(model).count("ReduceSum") == 2


@pytest.mark.parametrize("regions, sums", [(1, False), (2, True)])
def test_the_runner_drops_the_region_sum_of_a_request_without_regions(tiny_engines, regions, sums):
    """The UNet's regional IP-Adapter attention sums its R region outputs. With R = 1 the OpenVINO runner compiles
    no reduction (the sum over one element is dropped); with R = 2 the sums run. Both agree with ONNX Runtime fp32,
    the engines' parity reference, within the fp32 parity tolerance."""
    from maskst.engines.manifest import load_manifest
    from maskst.runtime.openvino_runner import PARITY_TOLERANCE, OpenVinoRunner
    from maskst.runtime.runners import OrtRunner

    manifest = load_manifest(tiny_engines)
    spec, path = manifest.graph_spec("unet"), manifest.graph_path("unet")
    feed = spec.sample_inputs({"N": 1, "h": 8, "w": 8, "R": regions}, seed=3)
    with OpenVinoRunner(spec, path, precision="f32", cache_dir=False, threads=1, profile=True) as runner:
        got = runner.infer(feed)["noise_pred"].copy()
        executed = {record["type"] for record in runner.profiling_info()}
    assert bool(executed & set(REDUCTIONS)) is sums, sorted(executed)
    with OrtRunner(spec, path, "ort-cpu") as reference:
        expected = reference.infer(feed)["noise_pred"]
    # the runner's parity check against ONNX Runtime fp32 (|err| <= PARITY_TOLERANCE x peak)
    assert np.abs(got - expected).max() <= PARITY_TOLERANCE["f32"] * np.abs(expected).max()
