"""The GPU path, as far as it runs on a CPU-only machine.

fp16 conversion and its parity run for real (ONNX Runtime CPU). TensorRT and CUDA cannot run
here, so what is tested of them is everything that does not need them: profile derivation,
plan naming and network mode, manifest compatibility against simulated foreign manifests,
buffer and activation-memory planning, the CUDA-graph re-capture logic on fakes, and the
fail-fast errors of the CLIs on this GPU-less machine.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import shutil
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from maskst.engines import fp16
from maskst import hardware
from maskst.engines import tensorrt as trt_engines
from maskst.errors import BackendError, EngineError, InputError, ParityError
from maskst.export.options import ExportOptions, Precision
from maskst.contract.spec import DimRange, GraphSpec, TensorSpec

SIZES = dict(min_size=64, opt_size=64, max_size=128, max_batch=2)


# --------------------------------------------------------------------------- session fixtures


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add contention (DESIGN section 10)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fixture_paths(tmp_path_factory):
    from maskst.fixtures import write_fixtures

    return write_fixtures(tmp_path_factory.mktemp("fixtures"), "tiny")


def _export(paths, out: Path, precision: Precision):
    from maskst.export.exporter import ExportRequest, export_engines

    return export_engines(ExportRequest(base=paths.base, ip_adapter=paths.ip_adapter, image_encoder=paths.image_encoder,
                                        content_encoder=paths.content_encoder, out=out,
                                        options=ExportOptions(precision=precision, **SIZES)), progress=False)


@pytest.fixture(scope="session")
def engines32(fixture_paths, tmp_path_factory):
    return _export(fixture_paths, tmp_path_factory.mktemp("eng") / "fp32", Precision.FP32)


@pytest.fixture(scope="session")
def engines16(fixture_paths, tmp_path_factory):
    return _export(fixture_paths, tmp_path_factory.mktemp("eng") / "fp16", Precision.FP16)


# --------------------------------------------------------------------------- profiles


def test_profile_derivation_with_derived_batch(engines32):
    # N in [1, 2], opt 1; h, w in [8, 16], opt 8; B = 2N with guidance, N without: [1, 4], opt 2
    unet = engines32.graph_spec("unet")
    profile = unet.profile()
    assert profile["sample"] == ((1, 4, 8, 8), (2, 4, 8, 8), (4, 4, 16, 16))
    assert profile["text_embeddings"][0][0] == 1 and profile["text_embeddings"][2][0] == 4
    assert profile["ip_tokens"] == ((1, 1, 4, 32), (2, 1, 4, 32), (4, 4, 4, 32))  # [B, R, k, C], R in [1, 4]
    assert profile["timestep"] == ((1,), (1,), (1,))  # fixed shapes: min = opt = max
    assert set(profile) == {t.name for t in unet.inputs}  # inputs only; outputs follow from them
    text = engines32.graph_spec("text_encoder")  # B is a free dim here: [1, 2 * max_batch], opt 2
    assert text.profile()["input_ids"] == ((1, 77), (2, 77), (4, 77))
    vae = engines32.graph_spec("vae_decoder")  # H = 8h in outputs: buffers at the max
    assert vae.max_shapes()["images"] == (2, 3, 128, 128)
    assert trt_engines.profile_shapes(unet)["sample"] == [[1, 4, 8, 8], [2, 4, 8, 8], [4, 4, 16, 16]]
    # the manifest stores the spec; the profile derived after a JSON round trip is identical
    assert GraphSpec.from_json(json.loads(json.dumps(unet.to_json()))).profile() == profile


def test_plan_names_and_network_mode():
    assert trt_engines.plan_file_name("unet", "10.8.0.43") == "unet.trt10.8.plan"
    assert trt_engines.plan_file_name("vae_decoder", "11.1.0") == "vae_decoder.trt11.1.plan"
    assert hardware.version_tuple("10.13.0.post1") == (10, 13, 0)
    assert trt_engines.network_mode("10.8.0.43", "fp16") == {"strongly_typed": False, "builder_fp16": True}
    assert trt_engines.network_mode("10.8.0.43", "fp32") == {"strongly_typed": False, "builder_fp16": False}
    # TensorRT 11: strongly typed only, no BuilderFlag.FP16; precision comes from the fp16 ONNX
    assert trt_engines.network_mode("11.1.0", "fp16") == {"strongly_typed": True, "builder_fp16": False}


# --------------------------------------------------------------------------- fp16 conversion


def _types(graph) -> dict[str, int]:
    return fp16._elem_types(graph)


def test_fp16_conversion_keeps_io_norms_and_timestep_chain_fp32(engines32):
    model = onnx.shape_inference.infer_shapes(onnx.load(str(engines32.graph_path("unet"))))
    converted, stats = fp16.convert_model(model)
    onnx.checker.check_model(converted)
    graph = converted.graph
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in list(graph.input) + list(graph.output))
    types_ = _types(graph)
    norms = [n for n in graph.node if n.op_type in ("LayerNormalization", "InstanceNormalization")]
    assert norms and stats.blocked_ops["LayerNormalization"] == len([n for n in norms if n.op_type == "LayerNormalization"])
    for node in norms:  # computed in fp32: fp32 data in, fp32 out
        assert types_[node.input[0]] == TensorProto.FLOAT and types_[node.output[0]] == TensorProto.FLOAT
    # the timestep projection t * freqs -> Sin/Cos stays fp32 end to end (no fp16 round trip)
    sins = [n for n in graph.node if n.op_type in ("Sin", "Cos")]
    producer = {o: n for n in graph.node for o in n.output}
    mul = producer[sins[0].input[0]]
    assert mul.op_type == "Mul" and all(types_[i] == TensorProto.FLOAT for i in mul.input)
    assert stats.sinusoid_nodes >= 4 and stats.round_trip_casts_folded > 0
    # matmuls and convolutions run in fp16 (that is the point)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(types_[n.input[1]] == TensorProto.FLOAT16 for n in convs)
    # topologically sorted, unique names: what TensorRT's ONNX parser needs
    seen = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    for node in graph.node:
        assert all(i in seen for i in node.input), node.name
        seen |= set(node.output)
    names = [n.name for n in graph.node]
    assert len(names) == len(set(names))


def test_fp32_ops_option_adds_op_types(engines32):
    model = onnx.shape_inference.infer_shapes(onnx.load(str(engines32.graph_path("text_encoder"))))
    converted, stats = fp16.convert_model(model, fp32_ops=("Softmax",))
    types_ = _types(converted.graph)
    softmax = [n for n in converted.graph.node if n.op_type == "Softmax"]
    assert softmax and all(types_[n.output[0]] == TensorProto.FLOAT for n in softmax)
    assert "Softmax" in fp16.op_block_list(("Softmax",)) and "Softmax" not in fp16.op_block_list()
    assert stats.blocked_ops["Softmax"] == len(softmax)


def test_repair_fixes_the_converters_duplicate_casts():
    """The three converter defects repair_graph claims to fix, built by hand (so this does not
    depend on which onnxruntime converter is installed): one fp32 tensor read by two blocked nodes
    behind two identical Cast nodes (one name, one output) plus a duplicate value_info; fp32 ->
    fp16 -> fp32 cast round trips between fp32 nodes; casts appended after their readers. The
    repaired graph is valid, has unique names and computes what the defect-free graph computes."""
    import onnxruntime as ort

    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    x = helper.make_tensor_value_info("x", f32, [4])
    y = helper.make_tensor_value_info("y", f32, [4])

    def cast(src, dst, to):
        return helper.make_node("Cast", [src], [dst], name=f"cast_{dst}", to=to)

    def build(defective: bool):
        # y = sqrt(relu(x)) + sqrt(relu(x)) + |x|; Relu in fp16, Sqrt / Add / Abs blocked (fp32)
        body = [helper.make_node("Relu", ["x16"], ["r16"], name="relu"),
                helper.make_node("Sqrt", ["r32"], ["s1"], name="sqrt1"),
                helper.make_node("Sqrt", ["r32"], ["s2"], name="sqrt2"),
                helper.make_node("Abs", ["x32" if defective else "x"], ["a"], name="abs"),
                helper.make_node("Add", ["s1_32" if defective else "s1", "s2"], ["t"], name="add"),
                helper.make_node("Add", ["t", "a"], ["y"], name="add2")]
        casts = [cast("x", "x16", f16), cast("r16", "r32", f32)]
        # value_info as shape inference leaves it (the round-trip fold reads dtypes from it)
        infos = [helper.make_tensor_value_info(name, f32, [4]) for name in ("r32", "s1", "s2", "a", "t")]
        if defective:
            casts += [cast("r16", "r32", f32),  # the duplicate: same name, same output
                      cast("x16", "x32", f32),  # round trip x -> fp16 -> fp32 (x16 has an fp16 reader)
                      cast("s1", "s1_16", f16), cast("s1_16", "s1_32", f32)]  # round trip, no other reader
            infos.append(helper.make_tensor_value_info("r32", f32, [4]))
            nodes = body + casts  # casts last: not topologically sorted
        else:
            nodes = casts[:1] + body[:1] + casts[1:] + body[1:]
        graph = helper.make_graph(nodes, "g", [x], [y], value_info=infos)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

    clean, broken = build(False), build(True)
    onnx.checker.check_model(clean)
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(broken)  # the defect is real: not SSA, not sorted

    duplicates, folded = fp16.repair_graph(broken)
    assert (duplicates, folded) == (1, 3)  # cast_x32, cast_s1_32 and the now unread cast_s1_16
    onnx.checker.check_model(broken)
    names = [n.name for n in broken.graph.node]
    outputs = [o for n in broken.graph.node for o in n.output]
    assert len(names) == len(set(names)) and len(outputs) == len(set(outputs))
    assert len({vi.name for vi in broken.graph.value_info}) == len(broken.graph.value_info)
    assert {n.name for n in broken.graph.node} == {n.name for n in clean.graph.node}

    # 1 + 2**-20 is not an fp16 number: a surviving round trip would change |x| and sqrt1
    feed = {"x": np.array([0.5, 1 + 2**-20, 4.0, -1 - 2**-20], np.float32)}
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    want, got = run(clean), run(broken)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, 2 * np.sqrt(np.maximum(feed["x"], 0)) + np.abs(feed["x"]), rtol=1e-3)

    # and whatever the installed converter emits, convert_model's result is valid with unique names
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Sqrt", ["r"], ["s1"], name="sqrt1"),
             helper.make_node("Sqrt", ["r"], ["s2"], name="sqrt2"),
             helper.make_node("Add", ["s1", "s2"], ["y"], name="add")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=8)
    fixed, _ = fp16.convert_model(onnx.shape_inference.infer_shapes(model))
    onnx.checker.check_model(fixed)
    names = [n.name for n in fixed.graph.node]
    assert len(names) == len(set(names))
    np.testing.assert_allclose(run(fixed), 2 * np.sqrt(np.maximum(feed["x"], 0)), rtol=1e-3)


def test_fp16_export_manifest_and_graph_parity(engines16):
    data = engines16.data
    assert data["precision"] == "fp16"
    section = data["fp16"]
    assert section["fp32_graphs"] == ["image_conditioner", "vae_decoder"]
    assert {"LayerNormalization", "InstanceNormalization", "ReduceMean", "Pow", "Sqrt"} <= set(section["fp32_ops"])
    assert section["parity"]["atol"] == fp16.FP16_ATOL and section["parity"]["checked"]
    files = set(data["files"])
    for name, graph in data["graphs"].items():
        if name in fp16.FP32_GRAPHS:
            assert graph["precision"] == "fp32" and graph["file"] == f"{name}.onnx"
            continue
        assert graph["precision"] == "fp16" and graph["file"] == f"{name}.fp16.onnx"
        assert f"{name}.onnx" not in files  # the fp32 graph is not shipped
        parity = graph["fp16_parity"]
        assert parity and all(r["passed"] and r["max_abs_err"] < fp16.FP16_ATOL for r in parity)
        model = onnx.load(str(engines16.graph_path(name)), load_external_data=False)
        assert any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
        assert all(v.type.tensor_type.elem_type != TensorProto.FLOAT16 for v in model.graph.input)


def test_fp16_parity_failure_raises(engines32, tmp_path, monkeypatch):
    staging = tmp_path / "staging"
    staging.mkdir()
    shutil.copy(engines32.graph_path("text_encoder"), staging / "text_encoder.onnx")
    graphs = {"text_encoder": copy.deepcopy(engines32.data["graphs"]["text_encoder"])}
    monkeypatch.setattr(fp16, "FP16_ATOL", 0.0)
    monkeypatch.setattr(fp16, "FP16_RTOL", 0.0)
    with pytest.raises(ParityError) as info:
        fp16.convert_staged_graphs(staging, graphs, ExportOptions(precision=Precision.FP16, **SIZES))
    assert "text_encoder.text_embeddings" in str(info.value) and "--fp32-op" in str(info.value)
    assert info.value.failures


def test_fp16_image_close_to_fp32(engines32, engines16):
    """End to end on ONNX Runtime CPU: same seed, fp16 engines vs fp32 engines (docs/gpu.md)."""
    from maskst.generation import GenerationConfig
    from maskst.generation import DEMO_STYLE as DEFAULT_STYLE
    from maskst.runtime.pipeline import MaskstPipeline

    config = GenerationConfig.create(prompt="a cat", style=(DEFAULT_STYLE,), content="a house", steps=4,
                                     height=64, width=64, seed=1)
    images = {}
    for name, manifest in (("fp32", engines32), ("fp16", engines16)):
        with MaskstPipeline(manifest.folder, threads=1) as pipeline:
            result = pipeline.generate(config)
        images[name] = result.images.astype(np.int16)
    diff = np.abs(images["fp32"] - images["fp16"])
    assert images["fp32"].std() > 10  # a real image, not a flat one that would hide differences
    assert diff.max() <= 3 and diff.mean() <= 0.5, (diff.max(), diff.mean())
    pytest.importorskip("openvino")
    # the same fp16 graphs compiled by OpenVINO at f32: their outputs carry the converter's extra tensor
    # names, which once made the runner fail to find them
    with MaskstPipeline(engines16.folder, backend="openvino-f32", threads=1, compile_cache=False) as pipeline:
        ov = pipeline.generate(config).images.astype(np.int16)
    ov_diff = np.abs(ov - images["fp16"])
    assert ov_diff.max() <= 3 and ov_diff.mean() <= 0.5, (ov_diff.max(), ov_diff.mean())


# --------------------------------------------------------------------------- manifest compatibility


def _built(version="10.8.0.43", gpu="NVIDIA H100 80GB HBM3", cc=(9, 0), **flags) -> dict:
    return {"version": version, "gpu": {"name": gpu, "compute_capability": list(cc)},
            "hardware_compatibility": "none", "version_compatible": False, **flags}


def _local(version="10.8.0.43", gpu="NVIDIA H100 80GB HBM3", cc=(9, 0)) -> dict:
    return {"version": version, "gpu": {"name": gpu, "compute_capability": list(cc)}}


def test_plan_compatibility_against_foreign_manifests():
    check = trt_engines.check_plan_compatibility
    assert check(_built(), _local()) == []
    [problem] = check(_built(), _local(version="10.9.0.34"))
    assert "10.8.0.43" in problem and "10.9.0.34" in problem
    assert check(_built(version="10.8.0.43"), _local(version="10.8.0.44")) == []  # same major.minor.patch
    [problem] = check(_built(), _local(gpu="NVIDIA A100-SXM4-80GB", cc=(8, 0)))
    assert "H100" in problem and "A100" in problem and "9.0" in problem and "8.0" in problem
    assert check(_built(), _local(gpu="NVIDIA H100 PCIe"))  # same compute capability, other model
    assert len(check(_built(), _local(version="11.1.0", gpu="NVIDIA L4", cc=(8, 9)))) == 2
    # version-compatible plans: later TensorRT of the same major only
    assert check(_built(version_compatible=True), _local(version="10.12.0")) == []
    assert check(_built(version_compatible=True), _local(version="10.7.0"))
    assert check(_built(version_compatible=True), _local(version="11.0.0"))
    # hardware compatibility levels
    assert check(_built(hardware_compatibility="ampere_plus"), _local(gpu="NVIDIA A10", cc=(8, 6))) == []
    assert check(_built(hardware_compatibility="ampere_plus"), _local(gpu="Tesla T4", cc=(7, 5)))
    assert check(_built(hardware_compatibility="same_compute_capability"), _local(gpu="NVIDIA H100 PCIe")) == []


def test_compatibility_error_names_both_sides_and_rebuild_command(engines32):
    data = copy.deepcopy(engines32.data)
    data["tensorrt"] = _built()
    assert trt_engines.compatibility_error(engines32.folder, data, _local()) is None
    error = trt_engines.compatibility_error(engines32.folder, data, _local(version="11.0.0", gpu="NVIDIA L4", cc=(8, 9)))
    text = str(error)
    assert isinstance(error, EngineError) and error.exit_code == 4
    for needle in ("10.8.0.43", "11.0.0", "H100", "NVIDIA L4", "maskst-export --base", "--target trt", "--force",
                   f"--out {engines32.folder}", "--max-size 128", "--max-batch 2"):
        assert needle in text, needle
    sources = data["sources"]
    assert str(Path(sources["unet"]["path"]).parent.parent) in text  # --base is the diffusers folder


def test_plan_hash_is_checked_before_deserialising(tmp_path):
    plan = tmp_path / "unet.trt10.8.plan"
    plan.write_bytes(b"plan bytes")
    record = {"bytes": 10, "sha256": hashlib.sha256(b"plan bytes").hexdigest()}
    trt_engines.verify_plan_file(plan, record)
    plan.write_bytes(b"plan bytez")  # same size, other content
    with pytest.raises(EngineError, match="SHA-256"):
        trt_engines.verify_plan_file(plan, record)
    plan.write_bytes(b"short")
    with pytest.raises(EngineError, match="5 bytes"):
        trt_engines.verify_plan_file(plan, record)
    plan.unlink()
    with pytest.raises(EngineError, match="missing"):
        trt_engines.verify_plan_file(plan, record)


@pytest.fixture
def no_gpu(monkeypatch):
    """This machine as one without an NVIDIA GPU or GPU providers, whatever it really has."""
    from maskst.runtime import backends

    monkeypatch.setattr(hardware, "cuda_devices", lambda: ([], "no CUDA driver (faked by the test)"))
    monkeypatch.setattr(backends, "ort_providers", lambda: ["CPUExecutionProvider"])


def test_trt_runner_from_manifest_refuses_without_plans_or_gpu(engines32, no_gpu):
    from maskst.runtime.trt_runner import TrtRunner

    with pytest.raises(EngineError, match="no TensorRT plans") as info:
        TrtRunner.from_manifest(engines32, "unet")
    assert "--target trt" in str(info.value)
    foreign = type(engines32)(engines32.folder, {**engines32.data, "tensorrt": {**_built(), "plans": {
        "unet": {"file": "unet.trt10.8.plan", "bytes": 1, "sha256": "0" * 64}}}})
    with pytest.raises(BackendError, match="no NVIDIA GPU"):
        TrtRunner.from_manifest(foreign, "unet")


# --------------------------------------------------------------------------- buffers and memory


def test_buffer_planning_from_max_shapes(engines32):
    unet = engines32.graph_spec("unet")
    buffers = {b.name: b for b in trt_engines.plan_io_buffers(unet)}
    assert buffers["sample"].max_shape == (4, 4, 16, 16) and buffers["sample"].is_input
    assert buffers["sample"].nbytes == 4 * 4 * 16 * 16 * 4
    assert buffers["noise_pred"].max_shape == (4, 4, 16, 16) and not buffers["noise_pred"].is_input
    cond = {b.name: b for b in trt_engines.plan_io_buffers(engines32.graph_spec("image_conditioner"))}
    assert cond["mask"].nbytes == 4 * 48 * 1 and cond["method"].nbytes == 8  # bool 1 byte, int64 8 bytes
    specs = {name: engines32.graph_spec(name) for name in engines32.data["graphs"]}
    plan = trt_engines.plan_memory(specs, {"text_encoder": 3 << 20, "unet": 40 << 20, "vae_decoder": 25 << 20})
    assert plan.shared_activation_bytes == 40 << 20  # one block: the largest engine's
    assert plan.separate_activation_bytes == 68 << 20
    assert plan.total_bytes == sum(plan.io_bytes.values()) + (40 << 20)
    assert plan.io_bytes["unet"] == sum(b.nbytes for b in buffers.values())


def test_out_of_profile_shapes_are_refused_before_launch(engines32):
    unet = engines32.graph_spec("unet")
    feed = unet.sample_inputs({"N": 1, "h": 8, "w": 8})
    assert trt_engines.shape_violations(unet, {k: v.shape for k, v in feed.items()}) == []
    big = {**{k: v.shape for k, v in feed.items()}, "sample": (2, 4, 32, 32)}
    [problem] = trt_engines.shape_violations(unet, big)
    assert "'sample'" in problem and "[2, 4, 32, 32]" in problem and "[1, 4, 8, 8]" in problem and "[4, 4, 16, 16]" in problem
    feed["sample"] = np.zeros((2, 4, 32, 32), np.float32)
    with pytest.raises(InputError, match=r"'sample'.*h=32.*\[8, 16\]"):
        unet.check_feed(feed)


class _FakeContext:
    def __init__(self):
        self.memory, self.shapes, self.launches = [], {}, 0

    def set_device_memory(self, ptr, size):
        self.memory.append((ptr, size))

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def execute_async_v3(self, stream):
        self.launches += 1
        return True


class _FakeTorch:
    """Just enough of torch.cuda for DeviceArena and the CUDA-graph logic of TrtRunner."""

    uint8 = "uint8"

    def __init__(self):
        self.allocations, self.captures, self.replays = [], 0, 0
        fake = self

        class Stream:
            cuda_stream = 7

            def __init__(self, device=None):
                pass

            def synchronize(self):
                pass

        class Graph:
            def replay(self):
                fake.replays += 1

        @contextlib.contextmanager
        def graph(g, stream=None):
            fake.captures += 1
            yield

        self.cuda = types.SimpleNamespace(Stream=Stream, CUDAGraph=Graph, graph=graph)

    def empty(self, n, dtype=None, device=None):
        self.allocations.append(n)
        return types.SimpleNamespace(data_ptr=lambda: 4096 * len(self.allocations))


def test_shared_activation_memory_is_one_block_sized_by_the_largest_engine():
    from maskst.runtime.trt_runner import DeviceArena

    torch = _FakeTorch()
    arena = DeviceArena(torch, 0)
    arena.reserve(100 << 20)  # the manifest's shared_activation_bytes, reserved up front
    small, large = _FakeContext(), _FakeContext()
    arena.attach(small, 10 << 20)
    arena.attach(large, 100 << 20)
    assert torch.allocations == [100 << 20]  # one allocation for every engine
    assert small.memory == large.memory == [(4096, 100 << 20)]
    generation = arena.generation
    arena.attach(_FakeContext(), 150 << 20)  # an engine larger than planned: grow and rebind all
    assert torch.allocations == [100 << 20, 150 << 20]
    assert small.memory[-1] == large.memory[-1] == (8192, 150 << 20)
    assert arena.generation == generation + 1  # captured CUDA graphs are now stale


def test_unet_cuda_graph_is_captured_per_shape_and_replayed():
    from maskst.runtime.trt_runner import DeviceArena, TrtRunner

    spec = GraphSpec("unet", (TensorSpec("sample", "float32", ("B", 4)),), (TensorSpec("out", "float32", ("B", 4)),),
                     dims={"N": DimRange(1, 1, 2)}, derived={"B": ("N", 2)})
    runner = TrtRunner(spec, Path("unet.plan"), {}, arena_key="test", use_cuda_graph=True)
    torch = _FakeTorch()
    runner._torch, runner._context = torch, _FakeContext()
    runner.arena = DeviceArena(torch, 0)
    runner._launch({"sample": (2, 4)})  # first step at this shape: plain enqueue, then capture
    assert (runner._context.launches, torch.captures, torch.replays) == (2, 1, 0)
    runner._launch({"sample": (2, 4)})
    runner._launch({"sample": (2, 4)})
    assert (runner._context.launches, torch.captures, torch.replays) == (2, 1, 2)
    runner._launch({"sample": (4, 4)})  # new shape: set_input_shape, enqueue, re-capture
    assert runner._context.shapes["sample"] == (4, 4) and torch.captures == 2 and runner._context.launches == 4
    runner.arena.generation += 1  # arena reallocated: the graph holds the old address
    runner._launch({"sample": (4, 4)})
    assert torch.captures == 3 and torch.replays == 2


# --------------------------------------------------------------------------- backends and CLIs


def test_require_backend_without_a_gpu(monkeypatch, no_gpu):
    from maskst.runtime import backends

    backends.require_backend("ort-cpu")
    with pytest.raises(InputError):
        backends.require_backend("cuda")
    with pytest.raises(BackendError) as info:
        backends.require_backend("ort-cuda")
    assert "CUDAExecutionProvider" in str(info.value) and "onnxruntime-gpu" in str(info.value)
    with pytest.warns(UserWarning, match="running on the CPU"):
        backends.require_backend("ort-trt", allow_fallback=True)
    monkeypatch.setattr(hardware, "cuda_devices", lambda: ([], "no driver (faked)"))  # no GPU, on any machine
    with pytest.warns(UserWarning, match="--allow-fallback has no effect"), \
            pytest.raises(BackendError, match="cannot run on this machine"):
        backends.require_backend("trt", allow_fallback=True)
    monkeypatch.setattr(backends, "installed_ort_distributions", lambda: ["onnxruntime", "onnxruntime-gpu"])
    with pytest.raises(BackendError, match="both onnxruntime and onnxruntime-gpu"):
        backends.require_backend("ort-cuda", allow_fallback=True)


def test_export_target_trt_fails_fast_and_writes_nothing(fixture_paths, tmp_path, no_gpu):
    from maskst.cli.export import main

    out = tmp_path / "engines"
    result = CliRunner().invoke(main, ["--base", str(fixture_paths.base), "--ip-adapter", str(fixture_paths.ip_adapter),
                                       "--content-encoder", str(fixture_paths.content_encoder), "--out", str(out),
                                       "--target", "trt", "--quiet"])
    assert result.exit_code == BackendError.exit_code == 6, result.output
    assert "--target trt" in result.output and "no NVIDIA GPU" in result.output
    assert list(tmp_path.iterdir()) == []  # no folder, no lock, no staging


def test_run_backend_trt_fails_fast(engines32, tmp_path, no_gpu):
    from maskst.cli.run import main

    out = tmp_path / "x.png"
    result = CliRunner().invoke(main, ["--engines", str(engines32.folder), "--prompt", "a cat", "--content", "a house",
                                       "--backend", "trt", "--out", str(out), "--quiet"])
    assert result.exit_code == 6, result.output
    assert "--backend trt" in result.output and not out.exists() and list(tmp_path.iterdir()) == []


def test_run_ort_cuda_needs_provider_unless_fallback(engines32, tmp_path, no_gpu):
    from maskst.cli.run import main
    from maskst.generation import DEMO_STYLE as DEFAULT_STYLE

    out = tmp_path / "x.png"
    args = ["--engines", str(engines32.folder), "--prompt", "a cat", "--content", "a house", "--style",
            str(DEFAULT_STYLE), "--backend", "ort-cuda", "--out", str(out), "--steps", "2", "--height", "64",
            "--width", "64", "--threads", "1", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 6 and "onnxruntime-gpu" in result.output and not out.exists()
    result = CliRunner().invoke(main, args + ["--allow-fallback"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "warning:" in result.output


# --------------------------------------------------------------------------- orchestration on a fake TensorRT
# A test double of the tensorrt module and of torch's CUDA surface: "plans" record the ONNX file
# and profile, and "execution" runs that ONNX graph with ONNX Runtime on the runner's (CPU) buffers.
# It checks maskst's own logic end to end (build -> manifest -> load checks -> buffers, shapes,
# shared arena, CUDA-graph capture/replay -> pipeline), not TensorRT; TensorRT API names are
# checked against TensorRT's sources (docs/gpu.md).


def _fake_tensorrt(version: str):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls, trt.buffers, trt.capturing, trt.replays = [], {}, None, 0

    def enum(cls, *names):
        return types.SimpleNamespace(**{n: _Enum(cls, n, i) for i, n in enumerate(names)})

    trt.NetworkDefinitionCreationFlag = enum("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH", "STRONGLY_TYPED")
    trt.BuilderFlag = enum("BuilderFlag", "FP16", "TF32", "VERSION_COMPATIBLE")
    trt.HardwareCompatibilityLevel = enum("HardwareCompatibilityLevel", "NONE", "AMPERE_PLUS")
    trt.TensorIOMode = enum("TensorIOMode", "NONE", "INPUT", "OUTPUT")
    trt.DataType = enum("DataType", "FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64")
    trt.ExecutionContextAllocationStrategy = enum("ExecutionContextAllocationStrategy", "STATIC", "ON_PROFILE_CHANGE",
                                                  "USER_MANAGED")
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity: None})
    onnx_types = {TensorProto.FLOAT: "FLOAT", TensorProto.FLOAT16: "HALF", TensorProto.INT64: "INT64",
                  TensorProto.BOOL: "BOOL"}

    class Network:
        def __init__(self, flags):
            self.flags, self.onnx, self.inputs = flags, None, []

        num_inputs = property(lambda self: len(self.inputs))

        def get_input(self, i):
            return types.SimpleNamespace(name=self.inputs[i], is_shape_tensor=False)

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            self.network.onnx = path
            self.network.inputs = [i.name for i in onnx.load(path, load_external_data=False).graph.input]
            return True

    class Config:
        def __init__(self):
            self.flags, self.profiles = {trt.BuilderFlag.TF32}, []
            self.hardware_compatibility_level = trt.HardwareCompatibilityLevel.NONE

        def set_flag(self, flag):
            trt.calls.append(str(flag))
            self.flags.add(flag)

        get_flag = lambda self, flag: flag in self.flags  # noqa: E731
        create_timing_cache = lambda self, data: types.SimpleNamespace(serialize=lambda: b"cache+" + bytes(data))  # noqa: E731
        set_timing_cache = lambda self, cache, ignore_mismatch: True  # noqa: E731
        add_optimization_profile = lambda self, profile: self.profiles.append(profile)  # noqa: E731

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            self.shapes[name] = [list(low), list(opt), list(high)]

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            trt.calls.append(f"create_network({flags})")
            return Network(flags)

        create_builder_config = lambda self: Config()  # noqa: E731
        create_optimization_profile = lambda self: Profile()  # noqa: E731

        def build_serialized_network(self, network, config):
            return json.dumps({"onnx": network.onnx, "profile": config.profiles[0].shapes}).encode()

    class Engine:
        def __init__(self, data):
            import onnxruntime as ort

            plan = json.loads(bytes(data))
            model = onnx.load(plan["onnx"], load_external_data=False)
            self.session = ort.InferenceSession(plan["onnx"], providers=["CPUExecutionProvider"])
            self.profile = plan["profile"]
            self.inputs = [i.name for i in model.graph.input]
            self.outputs = [o.name for o in model.graph.output]
            self.types = {v.name: onnx_types[v.type.tensor_type.elem_type] for v in list(model.graph.input) + list(model.graph.output)}
            self.device_memory_size_v2 = 1000 * len(self.inputs)

        num_io_tensors = property(lambda self: len(self.inputs) + len(self.outputs))
        get_tensor_name = lambda self, i: (self.inputs + self.outputs)[i]  # noqa: E731
        get_tensor_dtype = lambda self, name: getattr(trt.DataType, self.types[name])  # noqa: E731
        get_tensor_profile_shape = lambda self, name, index: self.profile[name]  # noqa: E731

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name in self.inputs else trt.TensorIOMode.OUTPUT

        def create_execution_context(self, strategy):
            assert strategy == trt.ExecutionContextAllocationStrategy.USER_MANAGED
            return Context(self)

    class Context:
        def __init__(self, engine):
            self.engine, self.addresses, self.shapes, self.memory = engine, {}, {}, None

        def set_device_memory(self, ptr, size):
            self.memory = (ptr, size)

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr
            return True

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)
            return True

        def execute_async_v3(self, stream):
            assert self.memory is not None and self.memory[1] >= self.engine.device_memory_size_v2
            if trt.capturing is not None:
                trt.capturing.append(self._run)
            else:
                self._run()
            return True

        def _run(self):
            import torch

            feed = {}
            for name in self.engine.inputs:
                size = int(np.prod(self.shapes[name]))
                feed[name] = trt.buffers[self.addresses[name]][:size].numpy().reshape(self.shapes[name])
            for name, out in zip(self.engine.outputs, self.engine.session.run(self.engine.outputs, feed)):
                trt.buffers[self.addresses[name]][:out.size].copy_(torch.from_numpy(np.ascontiguousarray(out).reshape(-1)))

    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    trt.Runtime = type("Runtime", (), {"__init__": lambda self, logger: None,
                                       "deserialize_cuda_engine": lambda self, data: Engine(data)})
    return trt


class _Enum:
    def __init__(self, cls, name, value):
        self.cls, self.name, self.value = cls, name, value

    def __int__(self):
        return self.value

    def __str__(self):
        return f"{self.cls}.{self.name}"

    def __eq__(self, other):
        return isinstance(other, _Enum) and (other.cls, other.name) == (self.cls, self.name)

    def __hash__(self):
        return hash((self.cls, self.name))


def _install_fake_gpu(monkeypatch, trt):
    import sys

    import torch

    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(hardware, "cuda_devices",
                        lambda: ([hardware.GpuInfo(0, "NVIDIA H100 80GB HBM3", (9, 0), 80 << 30)], ""))
    real_empty = torch.empty

    def empty(*args, device=None, pin_memory=False, **kwargs):  # "device" buffers live on the CPU here
        tensor = real_empty(*args, **kwargs)
        trt.buffers[tensor.data_ptr()] = tensor
        return tensor

    class Stream:
        cuda_stream = 1

        def __init__(self, device=None):
            pass

        synchronize = wait_stream = lambda self, *other: None  # noqa: E731

    class Graph:
        def __init__(self):
            self.launches = []

        def replay(self):
            trt.replays += 1
            for launch in self.launches:
                launch()

    @contextlib.contextmanager
    def graph(cuda_graph, stream=None):
        trt.capturing = cuda_graph.launches
        try:
            yield
        finally:
            trt.capturing = None

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    for name, value in {"is_available": lambda: True, "current_device": lambda: 0, "Stream": Stream,
                        "get_device_name": lambda device=0: "NVIDIA H100 80GB HBM3",
                        "get_device_capability": lambda device=0: (9, 0), "stream": lambda s: contextlib.nullcontext(),
                        "current_stream": lambda: Stream(), "CUDAGraph": Graph, "graph": graph}.items():
        monkeypatch.setattr(torch.cuda, name, value)


def _fake_plan_builder(trt):
    """Stands in for Polygraphy's TensorRT loaders (engines.tensorrt.build_plan): a "plan" names the
    ONNX file and the profile, which the fake runtime executes with ONNX Runtime."""

    def build(onnx_path, spec, precision, trt_version, timing_cache):
        timing_cache.write_bytes(b"fake timing cache")
        plan = json.dumps({"onnx": str(onnx_path),
                           "profile": {k: [list(s) for s in v] for k, v in spec.profile().items()}}).encode()
        return plan, trt.Runtime(None).deserialize_cuda_engine(plan).device_memory_size_v2

    return build


def _check_fake_plans(staging, graphs, section):
    """Stands in for engines.tensorrt.check_plans (Polygraphy's TrtRunner): maskst's own TrtRunner on the
    fake runtime, against ONNX Runtime CPU, through the one comparator."""
    from maskst.contract.compare import Tolerance, compare_outputs, records_json, run_onnx_cpu
    from maskst.contract.spec import GraphSpec
    from maskst.runtime.trt_runner import TrtRunner

    records = []
    for name, entry in graphs.items():
        spec = GraphSpec.from_json(entry["spec"])
        feed = spec.sample_inputs({k: r.opt for k, r in spec.dims.items()}, seed=21)
        plan = section["plans"][name]
        with TrtRunner(spec, staging / plan["file"], plan, arena_key=f"build:{staging}",
                       activation_bytes=section["memory"]["shared_activation_bytes"]) as runner:
            got = {k: v.copy() for k, v in runner.infer(feed).items()}
        records += compare_outputs(spec.name, [t.name for t in spec.outputs], run_onnx_cpu(staging / entry["file"], [feed]),
                                   [got], Tolerance(trt_engines.PLAN_ATOL, trt_engines.PLAN_RTOL),
                                   reference="onnxruntime-cpu", candidate="fake plan")
    return {"checked": True, "results": records_json(records)}


@pytest.mark.parametrize("version", ["10.8.0.43", "11.1.0"])
def test_trt_path_end_to_end_on_a_fake_tensorrt(engines16, tmp_path, monkeypatch, version):
    from maskst.engines.manifest import load_manifest, write_manifest
    from maskst.generation import GenerationConfig
    from maskst.generation import DEMO_STYLE as DEFAULT_STYLE
    from maskst.runtime.pipeline import MaskstPipeline

    trt = _fake_tensorrt(version)
    _install_fake_gpu(monkeypatch, trt)
    folder = tmp_path / "engines"
    shutil.copytree(engines16.folder, folder)
    (folder / "manifest.json").unlink()
    data = {k: v for k, v in engines16.data.items() if k not in ("format", "schema", "files")}
    options = ExportOptions(precision=Precision.FP16, **SIZES)
    section = trt_engines.build_plans(folder, data["graphs"], options, progress=False,
                                      plan_builder=_fake_plan_builder(trt), plan_checker=_check_fake_plans)
    major_minor = ".".join(version.split(".")[:2])
    assert (folder / f"unet.trt{major_minor}.plan").is_file() and (folder / "timing.cache").is_file()
    if version.startswith("10"):  # weakly typed + BuilderFlag.FP16
        assert section["builder_fp16"] and not section["strongly_typed"]
    else:  # strongly typed, precision from the fp16 ONNX
        assert section["strongly_typed"] and not section["builder_fp16"]
    assert section["gpu"] == {"name": "NVIDIA H100 80GB HBM3", "compute_capability": [9, 0], "total_memory": 80 << 30}
    assert section["hardware_compatibility"] == "none" and section["version_compatible"] is False
    assert section["plans"]["unet"]["profile"]["sample"] == [[1, 4, 8, 8], [2, 4, 8, 8], [4, 4, 16, 16]]
    assert section["parity"]["checked"] and all(r["passed"] for r in section["parity"]["results"])
    assert section["memory"]["shared_activation_bytes"] == max(p["activation_bytes"] for p in section["plans"].values())
    write_manifest(folder, {**data, "tensorrt": section})

    config = GenerationConfig.create(prompt="a cat", style=(DEFAULT_STYLE,), content="a house", steps=4,
                                     height=64, width=64, seed=1)
    unguided = GenerationConfig.create(prompt="a cat", style=(DEFAULT_STYLE,), content="a house", steps=4,
                                       height=64, width=64, seed=1, guidance=1.0)  # B = N: the profile's min
    with MaskstPipeline(folder, threads=1) as pipeline:
        expected = pipeline.generate(config).images
        expected_unguided = pipeline.generate(unguided).images
    with MaskstPipeline(folder, backend="trt") as pipeline:
        unet = pipeline.runners["unet"]
        assert all(r.arena is unet.arena for r in pipeline.runners.values())  # one stream, one activation block
        assert unet.arena.size == section["memory"]["shared_activation_bytes"] and unet.arena.generation == 1
        np.testing.assert_array_equal(pipeline.generate(config).images, expected)
        steps = trt.replays + 1  # PNDM: steps + 1 timesteps; the first one captures
        np.testing.assert_array_equal(pipeline.generate(config).images, expected)
        assert trt.replays == 2 * steps - 1  # second request: every step replays the captured graph
        np.testing.assert_array_equal(pipeline.generate(unguided).images, expected_unguided)
        feed = unet.spec.sample_inputs({"N": 1, "h": 8, "w": 8})
        feed["sample"] = np.zeros((2, 4, 40, 40), np.float32)
        with pytest.raises(InputError, match=r"'sample' has shape \[2, 4, 40, 40\].*max \[4, 4, 16, 16\]"):
            unet.infer(feed, check_inputs=False)  # refused before any launch even with checks off
    monkeypatch.setattr(trt, "__version__", "10.9.0")  # a foreign TensorRT: refused before deserialising
    with pytest.raises(EngineError, match=rf"built with {version}, this machine has 10.9.0[\s\S]*--target trt"):
        MaskstPipeline(folder, backend="trt")
    assert load_manifest(folder).data["tensorrt"]["plans"]["unet"]["file"] == f"unet.trt{major_minor}.plan"
