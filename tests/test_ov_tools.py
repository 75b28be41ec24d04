"""The OpenVINO diagnosis tools of issue 15 on the tiny engines: report structure only, no timing asserts."""

from __future__ import annotations

import json

import pytest

try:
    import openvino  # noqa: F401

    HAVE_OPENVINO = True
except ImportError:
    HAVE_OPENVINO = False

pytestmark = pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino is not installed (pip install 'maskst[openvino]')")


def _unet_shapes(manifest) -> dict:
    spec = manifest.graph_spec("unet")
    shapes = spec.shapes({"N": 1, "h": 8, "w": 8, "R": 1})
    return {t.name: list(shapes[t.name]) for t in spec.inputs}


def test_ov_inspect_reports_fused_attention_and_kernels(tiny_engines, tmp_path):
    from maskst.bench.ov_inspect import main
    from maskst.engines.manifest import load_manifest

    manifest = load_manifest(tiny_engines)
    out = tmp_path / "inspect.json"
    assert main([str(manifest.graph_path("unet")), "--shapes", json.dumps(_unet_shapes(manifest)), "--threads", "1",
                 "--calls", "2", "--warmup", "1", "--rounds", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    (rounds,) = report["results"].values()
    assert len(rounds) == 2
    first = rounds[0]
    # the tiny UNet has 4 transformer blocks: self, text-cross and image-cross attention each one MHA subgraph
    assert first["mha_subgraphs"] == 12 and first["softmax_nodes"] == 0
    assert first["gflop"] > 0 and first["ms_median"] > 0 and first["peak_rss_mib"] > 0
    assert first["layer_types"]["Convolution"] > 0 and first["perf"]["by_layer_type"]
    assert {"layer", "output_shape", "kernel", "gflop", "ms"} <= set(first["perf"]["by_shape"][0])
    assert "perf" not in rounds[1]  # counters once, in the first round
    assert first["cpu_share"]["wall_s"] > 0
    (summary,) = report["summary"].values()
    assert summary["rounds"] == 2


def test_unet_variants_pytorch_frontend_matches_the_onnx_graph(tiny, tiny_engines, tmp_path):
    """maskst's UNet module through OpenVINO's PyTorch frontend: same inputs, same FLOPs as the exported graph."""
    from maskst.bench.flops import graph_flops
    from maskst.bench.unet_variants import build
    from maskst.engines.manifest import load_manifest
    from maskst.families import resolve_checkpoints

    _family, ckpt = resolve_checkpoints(tiny.base, tiny.ip_adapter, tiny.image_encoder, tiny.content_encoder)
    path = build("maskst-ov", ckpt, tmp_path, 64, 64)
    manifest = load_manifest(tiny_engines)
    shapes = _unet_shapes(manifest)
    ir = graph_flops(path, "unet", shapes)
    onnx = graph_flops(manifest.graph_path("unet"), "unet", shapes)
    assert ir.flops == onnx.flops  # the same arithmetic, SDPA ops counted like the decomposed MatMuls


def test_ov_inspect_paired_alternates_two_graphs(tiny_engines, tmp_path):
    """--paired: both graphs timed alternately in one process; the same graph twice differs by nothing."""
    from maskst.bench.ov_inspect import main
    from maskst.engines.manifest import load_manifest

    manifest = load_manifest(tiny_engines)
    unet = str(manifest.graph_path("unet"))
    out = tmp_path / "paired.json"
    assert main([unet, unet, "--paired", "--shapes", json.dumps(_unet_shapes(manifest)), "--threads", "1",
                 "--calls", "3", "--warmup", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())["paired"]
    assert [len(one) for one in result["ms_samples"]] == [3, 3] and len(result["paired_diff_ms"]) == 3
    assert result["max_abs_diff"] == {"noise_pred": 0.0}
    with pytest.raises(SystemExit) as refused:
        main([unet, "--paired"])
    assert refused.value.code == 2


def test_ov_inspect_paired_config_compiles_one_graph_twice(tiny_engines, tmp_path):
    """--paired-config: one graph under the usual settings and with CPU properties added, alternated; a property
    that does not change the arithmetic (thread pinning) leaves the outputs bit for bit; bad input is refused."""
    from maskst.bench.ov_inspect import main
    from maskst.engines.manifest import load_manifest

    manifest = load_manifest(tiny_engines)
    unet = str(manifest.graph_path("unet"))
    shapes = json.dumps(_unet_shapes(manifest))
    out = tmp_path / "paired-config.json"
    assert main([unet, "--paired-config", '{"ENABLE_CPU_PINNING": false}', "--shapes", shapes, "--threads", "1",
                 "--calls", "2", "--warmup", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())["paired"]
    assert result["models"] == [unet, unet] and [len(one) for one in result["ms_samples"]] == [2, 2]
    baseline, changed = result["configs"]
    assert "ENABLE_CPU_PINNING" not in baseline and changed == {**baseline, "ENABLE_CPU_PINNING": False}
    assert baseline["INFERENCE_NUM_THREADS"] == 1
    assert result["max_abs_diff"] == {"noise_pred": 0.0}
    for bad in (["--paired-config", "{SNIPPETS"],  # not JSON
                ["--paired-config", '["SNIPPETS_MODE"]'],  # not an object
                ["--paired-config", '{"NO_SUCH_PROPERTY": 1}'],  # refused by OpenVINO
                [unet, "--paired-config", "{}"]):  # two models
        with pytest.raises(SystemExit) as refused:
            main([unet, *bad, "--shapes", shapes, "--calls", "1", "--warmup", "1"])
        assert refused.value.code == 2


def test_ov_inspect_paired_rewrites_compiles_one_graph_without_and_with_them(tiny_engines, tmp_path):
    """--paired-rewrites: one graph without (A) and with (B) the runner's graph rewrites, alternated. With R = 1
    the UNet's region sums are dropped; in f32 the outputs are bit for bit the same. Bad input is refused."""
    from maskst.bench.ov_inspect import main
    from maskst.engines.manifest import load_manifest

    manifest = load_manifest(tiny_engines)
    unet = str(manifest.graph_path("unet"))
    shapes = json.dumps(_unet_shapes(manifest))
    out = tmp_path / "paired-rewrites.json"
    assert main([unet, "--paired-rewrites", "--shapes", shapes, "--precision", "f32", "--threads", "1",
                 "--calls", "2", "--warmup", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())["paired"]
    assert result["models"] == [unet, unet] and result["rewrites"] == [False, True]
    assert result["configs"][0] == result["configs"][1]
    assert result["max_abs_diff"] == {"noise_pred": 0.0}
    for bad in ([unet, "--paired-rewrites"], ["--paired-rewrites", "--paired-config", "{}"]):
        with pytest.raises(SystemExit) as refused:
            main([unet, *bad, "--shapes", shapes, "--calls", "1", "--warmup", "1"])
        assert refused.value.code == 2


def test_kernel_efficiency_counts_the_flops_of_int8_matmuls(tmp_path):
    """OpenVINO's low-precision passes rename a quantized MatMul "<name>/DequantizationMultiply"; the per-shape
    table still gives it its FLOPs. Two MatMuls on FakeQuantize'd activations, one unsigned (u8) and one signed (i8),
    both with int8 weights: every FullyConnected node is counted, at 2 * M * K * N each."""
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    from maskst.bench.flops import op_flops
    from maskst.bench.ov_inspect import kernel_efficiency

    rng = np.random.default_rng(0)
    m, k, n = 64, 128, 96

    def fake_quantize(node, low, high, levels=256):
        lo, hi = ops.constant(np.float32(low)), ops.constant(np.float32(high))
        return ops.fake_quantize(node, lo, hi, lo, hi, levels)

    def quantized_matmul(x, low, name):
        weight = fake_quantize(ops.constant(rng.standard_normal((n, k)).astype(np.float32)), -4.0, 4.0, 255)
        out = ops.matmul(fake_quantize(x, low, 4.0), weight, False, True)
        out.set_friendly_name(name)
        return out

    x = ops.parameter([m, k], np.float32, name="x")
    unsigned = quantized_matmul(ops.relu(x), 0.0, "unsigned")
    signed = quantized_matmul(x, -4.0, "signed")
    model = ov.Model([ops.add(unsigned, signed)], [x])
    flops_of = {op.get_friendly_name(): f for op in model.get_ordered_ops() if (f := op_flops(op)) is not None}
    assert flops_of == {"unsigned": 2 * m * k * n, "signed": 2 * m * k * n}
    core = ov.Core()
    compiled = core.compile_model(model, "CPU", {"PERF_COUNT": True, "INFERENCE_NUM_THREADS": 1})
    request = compiled.create_infer_request()
    request.infer({"x": rng.standard_normal((m, k)).astype(np.float32)})
    fully_connected = [op for op in compiled.get_runtime_model().get_ordered_ops()
                       if op.get_rt_info()["layerType"].astype(str).startswith("FullyConnected")]
    assert len(fully_connected) == 2  # both MatMuls became int8 FullyConnected nodes
    rows = [r for r in kernel_efficiency(compiled, request, flops_of) if r["layer"].startswith("FullyConnected")]
    assert sum(r["nodes"] for r in rows) == 2
    assert sum(r["gflop"] for r in rows) == pytest.approx(2 * 2 * m * k * n / 1e9)


def test_ov_inspect_refuses_shapes_that_leave_an_input_dynamic(tiny_engines, capsys):
    """A misspelt or missing --shapes name is exit 2 naming the input left dynamic and the name that matched
    nothing (not OpenVINO's to_shape traceback at the first call); malformed --shapes is refused the same way."""
    from maskst.bench.ov_inspect import main
    from maskst.engines.manifest import load_manifest

    manifest = load_manifest(tiny_engines)
    vae = str(manifest.graph_path("vae_decoder"))
    misspelt = ["--shapes", '{"latent": [1, 4, 8, 8]}', "--calls", "1", "--warmup", "0", "--no-perf"]
    with pytest.raises(SystemExit) as refused:  # in this process
        main([vae, "--one", *misspelt])
    assert refused.value.code == 2
    assert main([vae, *misspelt]) == 2  # through the per-round worker: stops at once
    messages = capsys.readouterr().err.split("usage:")[1:]
    assert len(messages) == 2
    for message in messages:
        assert "latents" in message and "'latent'" in message and "dynamic" in message
    with pytest.raises(SystemExit) as refused:
        main([vae, vae.replace("vae_decoder", "no_such_graph")])
    assert refused.value.code == 2 and "no_such_graph" in capsys.readouterr().err
    for bad in ("{latents", "[[1, 4, 8, 8]]", '{"latents": [1, 4, "8", 8]}', '{"latents": [1, 4, 0, 8]}'):
        with pytest.raises(SystemExit) as refused:
            main([vae, "--one", "--shapes", bad])
        assert refused.value.code == 2 and "--shapes" in capsys.readouterr().err
