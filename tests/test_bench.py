"""maskst-bench, maskst-profile and the OpenVINO runner, on the tiny engines (CPU only, no timing asserts).

Speed is never asserted here: these tests check that the tools run, that their outputs have the
documented structure and sane values, and that OpenVINO at fp32 matches ONNX Runtime.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from maskst.bench.bench import STAGES, evaluate_targets, format_table
from maskst.bench.cli import bench_main, profile_main

try:
    import openvino  # noqa: F401

    HAVE_OPENVINO = True
except ImportError:
    HAVE_OPENVINO = False

needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino is not installed (pip install 'maskst[openvino]')")


def _checkpoint_args(tiny, tiny_engines) -> list[str]:
    return ["--engines", str(tiny_engines), "--base", str(tiny.base), "--ip-adapter", str(tiny.ip_adapter),
            "--image-encoder", str(tiny.image_encoder), "--content-encoder", str(tiny.content_encoder)]


def _finite_nonneg(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


@pytest.mark.slow  # a whole maskst-bench CLI run (ceilings, FLOP counts, worker processes)
def test_bench_writes_report_with_required_keys(tiny, tiny_engines, tmp_path):
    out = tmp_path / "bench.json"
    args = _checkpoint_args(tiny, tiny_engines) + [
        "--height", "64", "--width", "64", "--steps", "2", "--repeats", "1", "--warmup", "0", "--threads", "1",
        "--backends", "ort-cpu", "--ceiling-repeats", "1", "--json", str(out), "--quiet"]
    result = CliRunner().invoke(bench_main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    for key in ("end_to_end_ms", "speedup_vs_reference", "stages_ms", "peak_rss_mib", "cold_start_ms",
                "machine", "versions", "command", "settings", "targets"):
        assert key in report, key
    assert set(report["end_to_end_ms"]) == {"reference", "ort-cpu"}
    assert all(_finite_nonneg(v) and v > 0 for v in report["end_to_end_ms"].values())
    assert report["speedup_vs_reference"]["ort-cpu"] > 0
    for name in ("reference", "ort-cpu"):
        assert set(report["stages_ms"][name]) == set(STAGES)
        assert all(_finite_nonneg(v) for v in report["stages_ms"][name].values()), report["stages_ms"][name]
        # the stages of one generation cannot add up to more than the generation
        stage_sum = sum(report["stages_ms"][name].values()) - report["stages_ms"][name]["unet_step"]
        assert stage_sum < report["end_to_end_ms"][name]
        assert report["peak_rss_mib"][name] > 10
    assert _finite_nonneg(report["cold_start_ms"]["ort-cpu"])  # measured and recorded (no speed bound)
    assert report["command"].startswith("maskst-bench ") and f"--json {out}" in report["command"]
    assert report["settings"]["steps"] == 2 and report["settings"]["height"] == 64
    assert report["unet_rows_per_image"] == {"reference": 2, "ort-cpu": 2}  # the default guidance: both halves
    assert report["versions"]["onnxruntime"]
    # the fp32 ONNX Runtime path draws the reference's image (DESIGN section 7)
    assert report["image_diff_vs_reference"]["ort-cpu"]["max_abs"] <= 2
    assert "masking + projection" in result.output and "end to end" in result.output
    _check_limits(report, result.output)
    # the saved report prints the same table again, and its chart is drawn from it
    chart = tmp_path / "bench.png"
    again = CliRunner().invoke(bench_main, ["--from-json", str(out), "--plot", str(chart)], catch_exceptions=False)
    assert again.exit_code == 0 and again.output.startswith(format_table(report))
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # a whole maskst-bench CLI run (worker processes)
def test_bench_without_guidance_runs_every_contender_unguided(tiny, tiny_engines, tmp_path, two_row_copy):
    """--guidance 1: guidance off for the reference and maskst alike (one UNet row per image), the same image."""
    out = tmp_path / "bench.json"
    args = _checkpoint_args(tiny, tiny_engines) + [
        "--height", "64", "--width", "64", "--steps", "2", "--repeats", "1", "--warmup", "0", "--threads", "1",
        "--backends", "ort-cpu", "--ceiling-repeats", "0", "--no-cold-start", "--guidance", "1", "--json", str(out),
        "--quiet"]
    result = CliRunner().invoke(bench_main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["settings"]["guidance"] == 1.0 and "1 image(s), guidance 1, median" in result.output
    assert report["image_diff_vs_reference"]["ort-cpu"]["max_abs"] <= 2
    assert report["unet_rows_per_image"] == {"reference": 1, "ort-cpu": 1} and "ran both guidance halves" not in result.output
    if HAVE_OPENVINO:  # the UNet shapes the FLOP worker counted: the contender's calls
        unet = [c["shapes"]["sample"] for c in report["flop_counts"] if c["graph"] == "unet"]
        assert unet == [[1, 4, 8, 8]]
    # engines exported before the UNet took B = N run both halves: the report says so
    older = two_row_copy(tiny_engines, tmp_path / "older")
    args = ["--engines", str(older), "--height", "64", "--width", "64", "--steps", "2", "--repeats", "1", "--warmup",
            "0", "--threads", "1", "--backends", "ort-cpu", "--ceiling-repeats", "0", "--no-cold-start", "--no-reference",
            "--guidance", "1", "--json", str(out), "--quiet"]
    result = CliRunner().invoke(bench_main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["unet_rows_per_image"] == {"ort-cpu": 2}
    assert "note: ort-cpu ran both guidance halves of a request without guidance" in result.output


def _check_limits(report: dict, output: str) -> None:
    """The machine, its ceilings, the FLOP counts and the per-graph efficiency (structure and sanity only)."""
    machine = report["machine"]
    assert machine["cpu_count"] >= 1 and isinstance(machine["isa_flags"], list) and machine["physical_cores"] >= 1
    ceilings = report["ceilings"]
    assert report["ceiling_passes"] == 2  # before the first and after the last contender
    assert set(ceilings["onnxruntime"]) == {"f32"} and set(ceilings["torch"]) >= {"f32"}
    for runtime, by_precision in ceilings.items():
        for precision, kinds in by_precision.items():
            assert set(kinds) == {"matmul", "conv"}, (runtime, precision)
            for summary in kinds.values():
                assert summary["gflops"] > 0 and summary["gflops_min"] <= summary["gflops"] <= summary["gflops_max"]
                # the fastest of the quiet passes (all of them when none was quiet), one sample each at --ceiling-repeats 1
                assert len(summary["ms_samples"]) == 1
                assert summary["gflops"] == max(summary["pass_gflops"])
                assert len(summary["pass_gflops"]) == (report["ceiling_quiet_passes"] or 2)
    assert "ceiling (GFLOP/s" in output
    if not HAVE_OPENVINO:  # FLOPs are counted with OpenVINO's shape propagation
        assert report["machine_limits_errors"]
        return
    assert set(ceilings["openvino"]) >= {"f32"}
    assert not report["machine_limits_errors"]
    counted = {c["graph"] for c in report["flop_counts"]}
    assert {"text_encoder", "image_encoder", "unet", "vae_decoder"} <= counted
    for name in ("reference", "ort-cpu"):
        unet = report["graph_efficiency"][name]["unet"][0]
        assert unet["runtime"] == ("torch" if name == "reference" else "onnxruntime") and unet["precision"] == "f32"
        assert unet["gflop"] > 0 and unet["gflops"] > 0 and unet["pct_of_ceiling"] > 0
        assert unet["calls_per_generation"] == 3  # PNDM: 2 steps make 3 UNet calls
    memory = report["memory_ceiling"]
    assert memory["gbps"] > 0 and memory["bytes"] == 2**29
    ort_unet = report["graph_efficiency"]["ort-cpu"]["unet"][0]
    bound = ort_unet["roofline"]  # f32 weights read at the memory ceiling beside the arithmetic at the f32 ceiling
    count = next(c for c in report["flop_counts"] if c["graph"] == "unet" and c["shapes"] == ort_unet["shapes"])
    assert bound["weight_bytes"] == 4 * sum(elements for _kind, _flops, elements in count["per_node"]) > 0
    assert bound["weights_ms"] == pytest.approx(bound["weight_bytes"] / memory["gbps"] / 1e6)
    assert ort_unet["pct_of_roofline"] == pytest.approx(100 * bound["ms"] / ort_unet["ms_median"])
    assert ort_unet["shapes"]["sample"] == [2, 4, 8, 8]  # CFG batch of one 64 px image
    assert "% of ceiling" in output


def test_bench_refuses_bad_options(tiny_engines):
    runner = CliRunner()
    result = runner.invoke(bench_main, ["--engines", str(tiny_engines), "--backends", "ort-cpu,warp-drive", "--no-reference"])
    assert result.exit_code == 2 and "warp-drive" in result.output
    result = runner.invoke(bench_main, ["--steps", "2"])
    assert result.exit_code == 2 and "--random-full-size" in result.output
    result = runner.invoke(bench_main, ["--engines", str(tiny_engines), "--backends", "openvino:unet=fp8"])
    assert result.exit_code == 2 and "GRAPH=VALUE" in result.output


def test_targets_are_reported_not_asserted():
    report = {"speedup_vs_reference": {"ort-cpu": 3.0, "openvino": 7.5},
              "stages_ms": {"reference": {"unet_step": 900.0}, "ort-cpu": {"unet_step": 300.0},
                            "openvino": {"unet_step": 100.0}},
              "masking_projection_ms": {"reference": 2.0, "ort-cpu": 0.2, "openvino": 0.3},
              "cold_start_ms": {"ort-cpu": 2000.0}}
    amx = evaluate_targets({**report, "machine": {"isa_flags": ["avx512f", "avx512_bf16", "amx_bf16", "amx_int8"]}})
    assert amx["end_to_end_speedup_at_least_6x"] == {"backend": "openvino", "speedup": 7.5, "machine_class": "AMX",
                                                     "met": True}
    # the same speedups on a CPU with AVX-512 BF16 but no AMX are held to issue 15's 3x
    no_amx = evaluate_targets({**report, "speedup_vs_reference": {"ort-cpu": 2.9, "openvino": 3.6},
                       "machine": {"isa_flags": ["avx512f", "avx512_vnni", "avx512_bf16"]}})
    assert no_amx["end_to_end_speedup_at_least_3x"]["met"] and "end_to_end_speedup_at_least_6x" not in no_amx
    avx2 = evaluate_targets({**report, "machine": {"isa_flags": ["avx2"]}})
    assert avx2["end_to_end_speedup_no_goal_for_this_cpu"]["met"] is None  # reported, no goal to meet
    targets = evaluate_targets(report)  # no machine recorded: no goal either
    assert targets["end_to_end_speedup_no_goal_for_this_cpu"]["machine_class"] == "CPU flags unknown"
    assert "unet_step_no_slower_than_openvino_bf16" not in targets  # could not fail: removed
    assert targets["masking_projection_under_1ms"]["backend"] == "ort-cpu"
    assert targets["cold_start_ms"] == {"ort-cpu": 2000.0}


def test_gpu_contenders_are_in_the_report_but_not_judged_by_the_cpu_targets():
    """Issue 15's targets are the CPU path's. First seen on an H200 host (2026-12-04): ort-cuda was held to the AMX
    Xeon's 6x and its CUDA-context RSS to the reference's; and an ort-cuda UNet would be put against the CPU's
    onnxruntime ceiling."""
    from maskst.bench.bench import runner_precision

    report = {"speedup_vs_reference": {"ort-cpu": 2.7, "ort-cuda": 9.0, "ort-cpu+deepcache3": 5.0},
              "stages_ms": {}, "masking_projection_ms": {"ort-cpu": 0.2, "ort-cuda": 0.5},
              "deepcache_speedup_vs_full": {"ort-cpu+deepcache3": 1.85},
              "peak_rss_mib": {"reference": 900.0, "ort-cpu": 590.0, "ort-cuda": 1359.0},
              "graph_efficiency": {"ort-cuda": {"unet": [{"ms_median": 1.0, "pct_of_ceiling": 900.0}]},
                                   "ort-cpu": {"unet": [{"ms_median": 4.0, "pct_of_ceiling": 13.0}]}},
              "cold_start_ms": {}, "machine": {"isa_flags": ["amx_bf16", "amx_int8"]}}
    targets = evaluate_targets(report)
    assert targets["end_to_end_speedup_at_least_6x"] == {"backend": "ort-cpu", "speedup": 2.7, "machine_class": "AMX",
                                                         "met": False}
    assert targets["peak_rss_not_above_reference"] == {"reference_mib": 900.0, "ort-cpu": 590.0, "met": True}
    assert targets["unet_step_at_least_70pct_of_ceiling"]["backend"] == "ort-cpu"
    assert targets["deepcache_speedup_at_least_1.8x"]["backend"] == "ort-cpu+deepcache3"
    # the ceilings are measured on the CPU: a GPU provider's graphs get a runtime no ceiling is recorded for
    runner = type("OrtRunner", (), {})
    cuda, cpu = runner(), runner()
    cuda.backend, cpu.backend = "ort-cuda", "ort-cpu"
    assert runner_precision(cuda)["runtime"] == "onnxruntime-cuda"
    assert runner_precision(cpu) == {"runtime": "onnxruntime", "precision": "f32", "provider": "ort-cpu"}


def test_profile_writes_table_trace_and_chart(tiny_engines, tmp_path):
    out = tmp_path / "prof"
    args = ["--engines", str(tiny_engines), "--height", "64", "--width", "64", "--steps", "2", "--threads", "1",
            "--top", "5", "--out-dir", str(out), "--quiet"]
    result = CliRunner().invoke(profile_main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "op type" in result.output and "unet" in result.output

    table = (out / "profile.txt").read_text()
    assert "MatMul" in table or "Conv" in table

    summary = json.loads((out / "profile.json").read_text())
    assert len(summary["ops_by_type"]) == 5
    stages = {row["stage"] for row in summary["stages"]}
    assert {"text_encoder", "image_encoder", "content_encoder", "image_conditioner", "unet", "vae_decoder"} <= stages
    assert abs(sum(r["share"] for r in summary["stages"]) - 1.0) < 1e-6

    trace = json.loads((out / "trace.json").read_text())  # Chrome trace-event format (JSON object form)
    events = trace["traceEvents"]
    assert isinstance(events, list) and events
    for event in events:
        assert event["ph"] in ("X", "M") and isinstance(event["pid"], int) and isinstance(event["name"], str)
        if event["ph"] == "X":
            assert _finite_nonneg(event["ts"]) and _finite_nonneg(event["dur"])
    names = {e["name"] for e in events if e["ph"] == "X"}
    assert {"generate", "text_encoder", "unet step 1", "vae_decoder"} <= names
    assert any(e["ph"] == "X" and e["pid"] == 2 for e in events), "no ONNX Runtime operator events"

    assert (out / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_openvino_backend_names_parse():
    from maskst.errors import InputError
    from maskst.runtime.backends import parse_backend

    default = parse_backend("openvino").choices
    assert default["image_conditioner"] == "ort-cpu" and default["vae_decoder"] == "f32" and default["unet"] == "auto"
    assert set(parse_backend("openvino-f32").choices.values()) == {"f32", "ort-cpu"}
    custom = parse_backend("openvino:vae_decoder=bf16:image_conditioner=f32:text_encoder=ort-cpu").choices
    assert custom["vae_decoder"] == "bf16" and custom["image_conditioner"] == "f32" and custom["text_encoder"] == "ort-cpu"
    for bad in ("openvino:unet", "openvino:vae=f32", "openvino:unet=int4", "openvino-fast", "ort-cpu:x=1"):
        with pytest.raises(InputError):
            parse_backend(bad)


def test_default_backends_are_this_machines_cpu_backends():
    from maskst.runtime.backends import BACKENDS, default_cpu_backends

    names = default_cpu_backends()
    assert names[0] == "ort-cpu" and all(BACKENDS[n].device == "cpu" for n in names)
    if HAVE_OPENVINO:
        from maskst.runtime.openvino_runner import native_bf16

        assert "openvino-f32" in names
        assert ("openvino-bf16" in names) == ("openvino" in names) == native_bf16()
    else:
        assert names == ["ort-cpu"]


def test_backend_registry_is_the_one_list_of_names():
    from maskst.runtime.backends import BACKENDS, Backend, parse_backend

    assert set(BACKENDS) == {"ort-cpu", "ort-cuda", "ort-trt", "trt", "openvino", "openvino-f32", "openvino-bf16",
                             "openvino-int8"}
    for name, cls in BACKENDS.items():
        assert issubclass(cls, Backend) and cls.name == name and cls.device in ("cpu", "cuda")
        assert parse_backend(name).spec == name
    assert [n for n, c in BACKENDS.items() if c.fallback] == ["ort-cuda", "ort-trt"]


@needs_openvino
def test_openvino_fp32_matches_onnxruntime(tiny_engines, style_image, tmp_path, monkeypatch):
    from maskst.engines.manifest import load_manifest
    from maskst.generation import GenerationConfig
    from maskst.runtime.openvino_runner import OpenVinoRunner, parity_vs_ort
    from maskst.runtime.pipeline import MaskstPipeline, PipelineCallback

    manifest = load_manifest(tiny_engines)
    for name in manifest.data["graphs"]:
        dims = {"unet": {"N": 1, "h": 4, "w": 8}, "vae_decoder": {"N": 1, "h": 4, "w": 8}}.get(name)
        records = parity_vs_ort(manifest, name, "f32", dims=dims, cache_dir=tmp_path / "ov-cache")
        assert records and all(r.passed for r in records), [r.describe() for r in records]

    config = GenerationConfig.create(prompt="a photo of a cat", style=(style_image,), content="a house", steps=2,
                                     height=64, width=64, seed=3)
    unguided = dataclasses.replace(config, guidance=1.0)  # the UNet at B = N: a shape of its own
    with MaskstPipeline(tiny_engines, backend="ort-cpu", threads=1) as ort_pipeline:
        expected = ort_pipeline.generate(config)
        expected_unguided = ort_pipeline.generate(unguided)

    class UnetLoadedFirst(PipelineCallback):  # the pipeline loads the UNet before any encoder runs (memory)
        seen: dict = {}

        def on_infer_start(self, graph):
            self.seen.setdefault(graph, len(ov_pipeline.runners["unet"].compile_ms))

    with MaskstPipeline(tiny_engines, backend="openvino-f32", threads=1, compile_cache=tmp_path / "ov-cache",
                        callbacks=[UnetLoadedFirst()]) as ov_pipeline:
        assert isinstance(ov_pipeline.runners["unet"], OpenVinoRunner)
        assert ov_pipeline.runners["unet"].precision == "f32"
        got = ov_pipeline.generate(config)
        again = ov_pipeline.generate(config)  # compiled models reused for the same shapes
        # prepared for exactly the shapes of its calls: one compiled model, loaded before the first encoder call
        assert len(ov_pipeline.runners["unet"].compile_ms) == 1
        assert UnetLoadedFirst.seen["text_encoder"] == 1 and UnetLoadedFirst.seen["image_encoder"] == 1
        got_unguided = ov_pipeline.generate(unguided)
        assert len(ov_pipeline.runners["unet"].compile_ms) == 2  # compiled for [1, ...] as well as [2, ...]
    assert np.abs(got_unguided.images.astype(int) - expected_unguided.images).max() <= 1
    assert np.abs(got_unguided.images.astype(int) - got.images).max() > 10  # guidance mattered here
    np.testing.assert_array_equal(got.mask, expected.mask)
    assert np.abs(got.images.astype(int) - expected.images).max() <= 1
    np.testing.assert_array_equal(again.images, got.images)
    assert any((tmp_path / "ov-cache" / "f32").iterdir()), "compiled-model cache not written"


@needs_openvino
def test_openvino_runner_reports_a_broken_graph(tmp_path):
    from maskst.errors import EngineError
    from maskst.contract.spec import DimRange, GraphSpec, TensorSpec
    from maskst.runtime.openvino_runner import OpenVinoRunner

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    spec = GraphSpec("broken", (TensorSpec("x", "float32", ("N", 2)),), (TensorSpec("y", "float32", ("N", 2)),),
                     {"N": DimRange(1, 1, 2)})
    with OpenVinoRunner(spec, broken, precision="f32", cache_dir=False) as runner:
        with pytest.raises(EngineError, match="could not be read by OpenVINO"):
            runner.infer({"x": np.zeros((1, 2), np.float32)})
    with pytest.raises(EngineError, match="missing"):
        OpenVinoRunner(spec, tmp_path / "absent.onnx", precision="f32", cache_dir=False).activate()


@needs_openvino
def test_openvino_compiled_cache_is_keyed_and_imported(tiny_engines, tmp_path):
    """maskst's own compiled-model cache: one blob per shapes and precision, imported on the next use with the
    same outputs; a damaged blob is compiled again; bf16 graphs run on f16 weights within the bf16 tolerance."""
    from maskst.engines.manifest import load_manifest
    from maskst.runtime.openvino_runner import PARITY_TOLERANCE, OpenVinoRunner, parity_vs_ort

    manifest = load_manifest(tiny_engines)
    spec, path = manifest.graph_spec("vae_decoder"), manifest.graph_path("vae_decoder")
    cache = tmp_path / "cache"
    feeds = [spec.sample_inputs({"N": 1, "h": h, "w": 8}, seed=2) for h in (4, 8)]

    def run(precision: str, feed) -> tuple[np.ndarray, str]:
        with OpenVinoRunner(spec, path, precision=precision, cache_dir=cache, threads=1) as runner:
            out = runner.infer(feed)["images"].copy()
            return out, next(iter(runner.loaded_from.values()))

    first, source = run("f32", feeds[0])
    assert source == "compiled"
    again, source = run("f32", feeds[0])
    assert source == "cache"
    np.testing.assert_array_equal(again, first)
    _, source = run("f32", feeds[1])  # other shapes: another blob
    assert source == "compiled"
    _, source = run("bf16", feeds[0])  # other precision: another blob, in its own folder
    assert source == "compiled"
    blobs = sorted(p.relative_to(cache).parts[0] for p in cache.rglob("*.blob"))
    assert blobs == ["bf16", "f32", "f32"]
    for blob in (cache / "f32").glob("*.blob"):
        blob.write_bytes(b"damaged")
    recompiled, source = run("f32", feeds[0])
    assert source == "compiled"
    np.testing.assert_array_equal(recompiled, first)
    # bf16 with f16 weights against ONNX Runtime fp32, per graph of the tiny engines
    for name in ("unet", "text_encoder"):
        dims = {"unet": {"N": 1, "h": 4, "w": 8, "R": 1}}.get(name)
        records = parity_vs_ort(manifest, name, "bf16", dims=dims)
        assert all(r.passed for r in records), [r.describe() for r in records]
    assert PARITY_TOLERANCE["bf16"] == 0.1


def test_rounds_are_pooled():
    from maskst.bench.bench import merge_rounds

    def result(ms, rss, unet):
        return {"runs": [{"end_to_end": ms}], "peak_rss_mib": rss, "masking_projection_ms": 1.0, "load_ms": ms / 10,
                "first_request_ms": ms * 2, "graph_precision": {"unet": {"runtime": "openvino", "precision": "bf16"}},
                "graph_calls": {"unet": [{"shapes": {"sample": [2, 4, 8, 8]}, "calls_per_generation": 3,
                                          "ms_median": unet[1], "ms_samples": unet}]}}

    merged = merge_rounds([result(100.0, 50.0, [1.0, 2.0, 3.0]), {"error": "worker exited"},
                           result(300.0, 70.0, [4.0, 5.0, 6.0])])
    assert [r["end_to_end"] for r in merged["runs"]] == [100.0, 300.0]
    assert merged["peak_rss_mib"] == 70.0 and merged["rounds"] == 3 and merged["round_errors"] == ["worker exited"]
    assert merged["first_request_ms"] == 200.0  # the first round's (later rounds start from warm caches)
    unet = merged["graph_calls"]["unet"][0]
    assert unet["ms_samples"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] and unet["ms_median"] == 3.5
    assert unet["calls_per_generation"] == 3.0
    assert merge_rounds([{"error": "x"}]) == {"error": "x"}


@pytest.fixture(scope="module")
def tiny_deepcache_engines(tiny, export_fn, tmp_path_factory):
    return export_fn(tiny, tmp_path_factory.mktemp("engines") / "tiny_deepcache", deepcache=True).folder


@pytest.mark.slow
def test_bench_deepcache_contender_reports_its_deviation(tiny, tiny_deepcache_engines, tmp_path):
    """--deepcache-interval 3: one more contender per backend, its image against the same backend's full
    computation and the reference, its UNet graphs' calls and FLOPs (structure and sanity; no timing bound)."""
    out = tmp_path / "bench.json"
    args = _checkpoint_args(tiny, tiny_deepcache_engines) + [
        "--height", "64", "--width", "64", "--steps", "5", "--scheduler", "ddim", "--repeats", "1", "--warmup", "0",
        "--threads", "1", "--backends", "ort-cpu", "--deepcache-interval", "3", "--deepcache-backends", "ort-cpu",
        "--ceiling-repeats", "0", "--no-cold-start", "--json", str(out), "--plot", str(tmp_path / "bench.png"),
        "--quiet"]
    result = CliRunner().invoke(bench_main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"  # the run draws its chart (no ceilings: that panel says so)
    report = json.loads(out.read_text())
    name = "ort-cpu+deepcache3"
    assert set(report["end_to_end_ms"]) == {"reference", "ort-cpu", name}
    assert report["image_diff_vs_reference"]["ort-cpu"]["max_abs"] <= 2
    full = report["image_diff_vs_full"][name]
    assert set(report["image_diff_vs_full"]) == {name}
    assert 0 < full["mean_abs"] <= full["max_abs"] <= 255  # random weights: caching shows in the image
    assert report["image_diff_vs_reference"][name]["max_abs"] >= full["max_abs"] - 2  # the reference is full
    assert report["deepcache_speedup_vs_full"][name] > 0
    assert report["targets"]["deepcache_speedup_at_least_1.8x"]["backend"] == name
    speedup = next(v for k, v in report["targets"].items() if k.startswith("end_to_end_speedup") and "quiet" not in k)
    assert speedup["backend"] == "ort-cpu"  # without step caching
    calls = report["runs"][name][0]
    assert calls["unet_calls"] == 5  # DDIM: one UNet-graph call per step, deep on steps 0 and 3
    graphs = report["graph_efficiency"][name]
    assert graphs["unet_deep"][0]["calls_per_generation"] == 2 and graphs["unet_shallow"][0]["calls_per_generation"] == 3
    assert "unet" not in graphs
    if HAVE_OPENVINO:  # FLOPs per graph: the shallow graph is a small part of the full one
        deep, shallow = graphs["unet_deep"][0]["gflop"], graphs["unet_shallow"][0]["gflop"]
        assert 0 < shallow < 0.5 * deep
    assert "image vs same backend, full computation" in result.output and name in result.output


def test_bench_deepcache_refusals(tiny_engines):
    runner = CliRunner()
    result = runner.invoke(bench_main, ["--engines", str(tiny_engines), "--backends", "ort-cpu", "--no-reference",
                                        "--deepcache-interval", "3"])
    assert result.exit_code != 0 and "maskst-export --deepcache" in result.output
    result = runner.invoke(bench_main, ["--engines", str(tiny_engines), "--backends", "ort-cpu", "--no-reference",
                                        "--deepcache-interval", "1"])
    assert result.exit_code == 2 and "--deepcache-interval 1" in result.output
    result = runner.invoke(bench_main, ["--engines", str(tiny_engines), "--backends", "ort-cpu", "--no-reference",
                                        "--deepcache-backends", "ort-cpu"])
    assert result.exit_code == 2 and "give --deepcache-interval N too" in result.output
    result = runner.invoke(bench_main, ["--engines", str(tiny_engines), "--backends", "ort-cpu", "--no-reference",
                                        "--deepcache-interval", "3", "--deepcache-backends", "ort-cpu,openvino-bf16"])
    assert result.exit_code == 2 \
        and "each must be one of the benchmarked backends (ort-cpu)" in result.output


def test_contender_names_round_trip():
    from maskst.bench.bench import deepcache_contender, split_contender

    assert split_contender(deepcache_contender("openvino:vae_decoder=bf16", 3)) == ("openvino:vae_decoder=bf16", 3)
    assert split_contender("openvino-bf16") == ("openvino-bf16", 1)


@pytest.mark.slow
def test_random_models_keep_deepcache_engines_apart(tmp_path):
    """The preset's DeepCache engines live beside the plain ones (engines-deepcache/, own cache marker), from
    the same fixtures, and are reused on the next call."""
    from maskst.bench.bench import random_models
    from maskst.engines.manifest import load_manifest

    models = random_models(tmp_path, "tiny", progress=False, deepcache=True)
    assert models.engines.name == "engines-deepcache"
    manifest = load_manifest(models.engines, verify_hashes=False)
    assert manifest.data["options"]["deepcache"] is True and "unet_shallow" in manifest.data["graphs"]
    stamp = (models.engines / "manifest.json").stat().st_mtime_ns
    again = random_models(tmp_path, "tiny", progress=False, deepcache=True)
    assert again.engines == models.engines and (models.engines / "manifest.json").stat().st_mtime_ns == stamp
    assert not (models.engines.parent / "engines").exists()  # the plain engines are built only when asked for
    assert models.base.parent == models.engines.parent / "fixtures"
    # what maskst-bench does: the same, in a worker process (its memory goes back before the contenders run)
    from maskst.bench.bench import build_in_worker

    built = build_in_worker("random", {"cache_dir": str(tmp_path), "preset": "tiny", "image_driven": False,
                                       "deepcache": True}, progress=False)
    assert built == models and (models.engines / "manifest.json").stat().st_mtime_ns == stamp


def test_build_worker_raises_the_typed_error(tmp_path):
    from maskst.bench.bench import build_in_worker
    from maskst.errors import CheckpointError

    with pytest.raises(CheckpointError, match="model_index.json"):
        build_in_worker("checkpoints", {"cache_dir": str(tmp_path), "deepcache": False,
                                        "checkpoints": [str(tmp_path / "no-base"), str(tmp_path / "no-adapter"), None, None]},
                        progress=False)


def test_isa_cap_hides_the_flags_above_it():
    from maskst.hardware import ISA_CAPS, CpuInfo

    amx = CpuInfo("Xeon", "fpu avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8", 2)
    assert amx.capped(None) is amx and amx.capped("default") is amx
    zen4 = amx.capped("AVX512_CORE_BF16")  # oneDNN's spelling is upper case
    assert zen4.isa_cap == "avx512_core_bf16" and zen4.model == "Xeon" and zen4.physical_cores == 2
    assert zen4.flags == "fpu avx2 fma avx512f avx512bw avx512_vnni avx512_bf16"  # order kept, AMX and FP16 gone
    assert zen4.has("avx512_bf16") and zen4.has("avx512_vnni") and not zen4.has("amx_bf16", "amx_int8", "avx512_fp16")
    skylake = amx.capped("avx512_core")
    assert skylake.has("avx512f") and not skylake.has("avx512_vnni", "avx512_bf16")
    assert not amx.capped("avx2").has("avx512f") and amx.capped("avx2").has("avx2")
    # a level maskst does not model is recorded (it changes the kernels, so the cache key) and hides nothing
    other = amx.capped("avx10_1_512")
    assert other.isa_cap == "avx10_1_512" and other.flags == amx.flags
    assert set(ISA_CAPS) == {"avx2", "avx2_vnni", "avx512_core", "avx512_core_vnni", "avx512_core_bf16"}


@pytest.mark.slow  # a whole maskst-bench CLI run (ceilings, FLOP counts, worker processes)
@needs_openvino
def test_bench_isa_cap_reaches_every_worker(tiny, tiny_engines, tmp_path):
    """--cpu-isa-cap runs the ceilings (and contenders) under oneDNN's cap: no AMX kernel is picked, and the report
    says the run was emulated and on which real CPU."""
    out = tmp_path / "capped.json"
    args = ["--engines", str(tiny_engines), "--height", "64", "--width", "64", "--steps", "1", "--repeats", "1",
            "--warmup", "0", "--threads", "1", "--backends", "ort-cpu", "--no-reference", "--no-cold-start",
            "--ceiling-repeats", "1", "--cpu-isa-cap", "avx512_core_bf16", "--json", str(out), "--quiet"]
    result = CliRunner().invoke(bench_main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    machine = report["machine"]
    assert machine["cpu_isa_cap"] == "avx512_core_bf16"
    assert not {"amx_bf16", "amx_int8", "amx_tile", "avx512_fp16"} & set(machine["isa_flags"])
    assert set(machine["isa_flags"]) <= set(machine["hardware_isa_flags"])
    assert "EMULATED" in result.output and "avx512_core_bf16" in result.output
    kernels = [summary["kernel"] for precision in report["ceilings"]["openvino"].values() for summary in precision.values()]
    assert kernels and not [k for k in kernels if "amx" in k.lower()], kernels
    if "bf16" in report["ceilings"]["openvino"]:  # a CPU with AVX-512 BF16: bf16 kernels without AMX
        assert "bf16" in report["ceilings"]["openvino"]["bf16"]["matmul"]["kernel"]


def test_peak_rss_is_the_workers_own_not_its_parents(tmp_path):
    """A worker forked from a parent holding much memory reports its own peak (ru_maxrss would carry the parent's
    across exec on Linux: every contender of one run reported the same 10 GB)."""
    import subprocess
    import sys

    from maskst.bench.bench import peak_rss_mib

    held = np.ones(400 * 2**20 // 8)  # 400 MiB resident in this process
    assert peak_rss_mib() >= 400
    code = "from maskst.bench.bench import peak_rss_mib; print(peak_rss_mib())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 10 < child < 350, child  # the interpreter, maskst.bench and its imports: well under the parent's 400 MiB
    del held
