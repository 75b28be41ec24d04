"""The ``gpu`` tier: the first thing to run on a machine with an NVIDIA GPU (``pytest -m gpu -rs``).

RUN ON A GPU ONCE, WITHOUT TENSORRT. On one H200 (2026-12-04, onnxruntime-gpu 1.31.1, no TensorRT on the
machine; docs/gpu.md "First GPU run") the two ONNX Runtime CUDA tests passed and the six TensorRT tests were
skipped with the probe's reason. The TensorRT tests have still never run: they were written on a CPU-only
machine against the documented APIs (docs/gpu.md, maskst.hardware, maskst.runtime.backends), and their
tolerances are reasoned from CPU measurements (below), not from GPU runs: the first run with TensorRT checks
them, and its numbers belong in docs/gpu.md. Once, outside the repository, their code paths were run on CPU
with tests/test_gpu_path.py's fake TensorRT (which executes the ONNX graphs with ONNX Runtime) and ONNX
Runtime's CPU provider presented as CUDA: all 8 tests passed, which checks this file's own logic (fixtures,
API calls, manifest fields, assertions) and nothing of TensorRT or CUDA.

What it runs, all on the tiny fixtures (conftest ``tiny``; sizes 32-128 px, max batch 2):

* TensorRT (skipped unless ``maskst.hardware.trt_runtime_problems()`` is empty: a visible GPU,
  tensorrt 10.1+, a CUDA build of torch): ``export_engines(... ExportOptions(target=Target.TRT,
  precision=fp32 | fp16))`` builds real plans with Polygraphy and checks each against its ONNX
  graph on ONNX Runtime CPU; the manifest must record that check (``tensorrt.parity.checked``,
  every result passed, every graph and output covered). Then one request (64x64, 4 steps, seed 1)
  runs on ``MaskstPipeline(folder, backend="trt")`` and on ``ort-cpu``, and the images are
  compared; the TensorRT image conditioner's masks are checked against ``maskst.masking`` on
  random embeddings (the float32 rules of tests/test_conditioner_fp32.py); and
  ``maskst-run --backend trt`` runs through click's CliRunner.
* ONNX Runtime CUDA (skipped unless ``"CUDAExecutionProvider" in maskst.hardware.ort_providers()``
  and the CUDA driver sees a GPU): the same request on ``--backend ort-cuda`` (ONNX-target
  folders, fp32 and fp16), every session active on the CUDA provider, image against ``ort-cpu``.

Image tolerances, in uint8 levels (of 255), against ``ort-cpu`` on the fp32 graphs:

* TensorRT fp32 (TF32 off: Polygraphy's ``CreateConfig(tf32=False)`` clears the flag TensorRT sets
  by default): **max 2, mean 0.05**. Another fp32 implementation of the same graphs differs only
  in summation order and fused-kernel rounding (per-graph errors ~1e-6, as the export parity
  measures). Measured on CPU for this request: OpenVINO f32 vs ONNX Runtime CPU identical
  (max 0); maskst vs diffusers max 1 (README). 2 allows one rounding flip with headroom; a mean of
  0.05 allows a few percent of pixels to flip by one level.
* fp16 plans, and ``ort-cuda`` in fp32 too: **max 3, mean 0.5**, the fp16 bound of docs/gpu.md
  (ORT CPU fp16 vs fp32 engines on these fixtures: max 1, mean 0.07 at 64x64, 4 steps). ONNX
  Runtime's CUDA provider runs fp32 GEMMs and convolutions in TF32 by default (``use_tf32``
  defaults to true in onnxruntime's CUDAExecutionProviderInfo; maskst passes no provider
  options), i.e. with fp16's 10 mantissa bits, so it gets the fp16 bound.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from maskst import hardware
from maskst.export.options import Precision, Target

pytestmark = pytest.mark.gpu

SIZES = dict(min_size=32, opt_size=64, max_size=128, max_batch=2)  # conftest's tiny engines
REQUEST = dict(prompt="a cat", content="a house", steps=4, height=64, width=64, seed=1)
FP32_BOUND = (2, 0.05)  # max, mean uint8 difference (see the module docstring)
FP16_BOUND = (3, 0.5)  # docs/gpu.md's fp16 bound; also ort-cuda fp32 (TF32 by default)


def _trt_problems() -> list[str]:
    return hardware.trt_runtime_problems()


def _ort_cuda_problems() -> list[str]:
    problems = []
    providers = hardware.ort_providers()
    if "CUDAExecutionProvider" not in providers:
        problems.append(f"onnxruntime offers {providers}, no CUDAExecutionProvider (the gpu extra installs "
                        "onnxruntime-gpu: pip uninstall onnxruntime && pip install 'maskst[gpu]')")
    gpus, reason = hardware.cuda_devices()
    if not gpus:
        problems.append(f"no NVIDIA GPU: {reason}")
    return problems


TRT_PROBLEMS = _trt_problems()
ORT_CUDA_PROBLEMS = _ort_cuda_problems()
needs_trt = pytest.mark.skipif(bool(TRT_PROBLEMS), reason="gpu tier, TensorRT: " + "; ".join(TRT_PROBLEMS))
needs_ort_cuda = pytest.mark.skipif(bool(ORT_CUDA_PROBLEMS), reason="gpu tier, ONNX Runtime CUDA: "
                                    + "; ".join(ORT_CUDA_PROBLEMS))
PRECISIONS = pytest.mark.parametrize("precision", [Precision.FP32, Precision.FP16], ids=["fp32", "fp16"])


# --------------------------------------------------------------------------- shared builds and runs


@pytest.fixture(scope="module")
def engines(tiny, tmp_path_factory):
    """engines(target, precision) -> Manifest of a folder exported from the tiny fixtures (built once)."""
    from maskst.export.exporter import ExportRequest, export_engines
    from maskst.export.options import ExportOptions

    built = {}

    def get(target: Target, precision: Precision):
        if (target, precision) not in built:
            out = tmp_path_factory.mktemp(f"gpu-{target.value}-{precision.value}") / "engines"
            request = ExportRequest(base=tiny.base, ip_adapter=tiny.ip_adapter, image_encoder=tiny.image_encoder,
                                    content_encoder=tiny.content_encoder, out=out,
                                    options=ExportOptions(target=target, precision=precision, **SIZES))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings of the TorchScript exporter
                built[target, precision] = export_engines(request, progress=False)
        return built[target, precision]

    return get


def _config():
    from maskst.generation import DEMO_STYLE, GenerationConfig

    return GenerationConfig.create(style=(DEMO_STYLE,), **REQUEST)


@pytest.fixture(scope="module")
def ort_cpu_result():
    """ort_cpu_result(folder) -> GenerationResult of the request on ONNX Runtime CPU (cached)."""
    from maskst.runtime.pipeline import MaskstPipeline

    results = {}

    def get(folder: Path):
        if folder not in results:
            with MaskstPipeline(folder, backend="ort-cpu") as pipeline:
                results[folder] = pipeline.generate(_config())
        return results[folder]

    return get


def _assert_images_close(got: np.ndarray, want: np.ndarray, bound: tuple[int, float], what: str) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype == np.uint8, (got.shape, want.shape)
    assert want.std() > 10  # a real image, not a flat one that would hide differences
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    max_abs, max_mean = bound
    assert diff.max() <= max_abs and diff.mean() <= max_mean, (
        f"{what}: max {diff.max()}/255, mean {diff.mean():.3f}/255 (allowed max {max_abs}, mean {max_mean})")


def _float32_rules():
    """tests/test_conditioner_fp32.py, for its float32 mask rules and embedding families (one definition)."""
    name = "_maskst_conditioner_fp32_rules"
    if name not in sys.modules:  # loaded by path: works whatever pytest's import mode
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("test_conditioner_fp32.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before exec: its dataclass looks its module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


def _own_mask_check(pipeline, result, exact: bool) -> None:
    """The request's mask against maskst.masking on the embeddings this backend computed itself.
    ``exact``: a float64 conditioner (ONNX target): bit-equal; else the float32 rules."""
    from maskst.masking import MaskMode, content_mask, content_product

    config = _config()
    e_i = pipeline.encode_style_files(config.style)
    e_c = pipeline.encode_content(config.content)
    want = np.atleast_2d(content_mask(e_i, e_c, mode=config.mask_mode))
    got = np.atleast_2d(result.mask)
    assert want.any() and not want.all()  # the request masks something
    if exact:
        np.testing.assert_array_equal(got, want)
    else:
        rules = _float32_rules()
        p = np.atleast_2d(content_product(e_i, e_c))
        assert not rules._unexplained(p, got, want, MaskMode(config.mask_mode), config.theta, rules.EPS32)


# --------------------------------------------------------------------------- TensorRT


@needs_trt
@PRECISIONS
def test_trt_export_builds_and_checks_plans(engines, precision):
    from maskst.engines import tensorrt as trt_engines

    manifest = engines(Target.TRT, precision)
    data, section = manifest.data, manifest.data["tensorrt"]
    trt = hardware.import_tensorrt()
    assert data["target"] == "trt" and data["precision"] == precision.value
    assert section["version"] == trt.__version__
    assert set(section["plans"]) == set(data["graphs"])  # one plan per graph
    for name, plan in section["plans"].items():
        assert plan["file"] == trt_engines.plan_file_name(name, trt.__version__)
        assert plan["onnx"] == data["graphs"][name]["file"]
        trt_engines.verify_plan_file(manifest.folder / plan["file"], plan)  # size and SHA-256 as recorded
        assert plan["activation_bytes"] >= 0
        assert plan["profile"] == trt_engines.profile_shapes(manifest.graph_spec(name))
    assert section["tf32"] is False and section["hardware_compatibility"] == "none"
    assert section["version_compatible"] is False
    mode = trt_engines.network_mode(trt.__version__, precision.value)
    assert (section["strongly_typed"], section["builder_fp16"]) == (mode["strongly_typed"], mode["builder_fp16"])
    gpu = hardware.cuda_devices()[0][0]
    assert section["gpu"]["name"] == gpu.name and tuple(section["gpu"]["compute_capability"]) == gpu.compute_capability
    assert (manifest.folder / section["timing_cache"]).is_file()
    assert section["memory"]["shared_activation_bytes"] == max(p["activation_bytes"] for p in section["plans"].values())

    parity = section["parity"]
    assert parity["checked"] is True, parity
    results = parity["results"]
    failed = [r for r in results if not r["passed"]]
    assert results and not failed, failed
    covered = {(r["graph"], r["output"]) for r in results}
    expected = {(name, t.name) for name in data["graphs"] for t in manifest.graph_spec(name).outputs}
    assert covered == expected  # every output of every plan was compared
    for r in results:  # the recorded tolerance is the documented plan tolerance
        if r["output"] != "mask":
            assert (r["atol"], r["rtol"]) == (trt_engines.PLAN_ATOL, trt_engines.PLAN_RTOL), r
    print("\n".join(f"{r['graph']}.{r['output']}: max abs err {r['max_abs_err']:.3g}" for r in results))


@needs_trt
@PRECISIONS
def test_trt_backend_image_matches_ort_cpu(engines, ort_cpu_result, precision):
    from maskst.runtime.pipeline import MaskstPipeline

    manifest = engines(Target.TRT, precision)
    exact = ort_cpu_result(engines(Target.TRT, Precision.FP32).folder)  # fp32 graphs on ORT CPU
    with MaskstPipeline(manifest.folder, backend="trt") as pipeline:
        assert {type(r).__name__ for r in pipeline.runners.values()} == {"TrtRunner"}
        first = pipeline.generate(_config())
        second = pipeline.generate(_config())  # the UNet steps replay their captured CUDA graph now
        _own_mask_check(pipeline, first, exact=False)  # TensorRT conditioners are float32
    # same plan, same tactics, same launches: identical images are expected; one level allows a
    # tactic with a non-deterministic (atomic) reduction
    assert np.abs(first.images.astype(np.int16) - second.images.astype(np.int16)).max() <= 1
    if precision is Precision.FP32:
        _assert_images_close(first.images, exact.images, FP32_BOUND, "trt fp32 vs ort-cpu fp32")
        # embeddings within ~1e-6 of ORT CPU's: a flipped element would need a tie that close
        np.testing.assert_array_equal(first.mask, exact.mask)
    else:
        _assert_images_close(first.images, exact.images, FP16_BOUND, "trt fp16 vs ort-cpu fp32")
        same_graphs = ort_cpu_result(manifest.folder)  # the fp16 ONNX graphs the plans were built from
        _assert_images_close(first.images, same_graphs.images, FP16_BOUND, "trt fp16 vs ort-cpu fp16")


@needs_trt
def test_trt_image_conditioner_masks_follow_the_numpy_definition(engines):
    """The graph docs/gpu.md names most likely to trip TensorRT (TopK, CumSum, GatherElements on int64):
    thousands of random rows through the plan, masks against maskst.masking by the float32 rules of
    tests/test_conditioner_fp32.py, ip_tokens against the same ONNX graph on ORT CPU."""
    from maskst.masking import MaskMode, Method, content_mask, content_product
    from maskst.runtime.pipeline import MaskstPipeline

    rules = _float32_rules()
    folder = engines(Target.TRT, Precision.FP32).folder
    rng = np.random.default_rng(2024)
    with MaskstPipeline(folder, backend="trt") as gpu, MaskstPipeline(folder, backend="ort-cpu") as cpu:
        spec = gpu.runners["image_conditioner"].spec
        n, d = spec.dims["N"].max, spec.inputs[0].shape[1]

        def run(pipeline, e_i, e_c, mode, theta):
            tokens, masks = [], []
            for start in range(0, len(e_i), n):
                out = pipeline.run_graph("image_conditioner", {
                    "image_embeds": e_i[start:start + n], "content_embeds": e_c[start:start + n],
                    "method": np.array([Method.MASKST.index]), "mask_mode": np.array([mode.index]),
                    "theta": np.array([theta], np.float32), "content_scale": np.array([1.0], np.float32)})
                tokens.append(out["ip_tokens"].copy())  # runner buffers are reused by the next call
                masks.append(out["mask"].copy())
            return np.concatenate(tokens), np.concatenate(masks)

        for kind in ("normal", "heavy-tailed", "content-concentrated", "exact-ties"):
            e_i, e_c = rules._embeddings(kind, 512, d, rng)
            p = content_product(e_i, e_c)
            for mode, theta in ((MaskMode.KMEANS, 0.7), (MaskMode.QUANTILE, 0.3), (MaskMode.QUANTILE, 0.95)):
                case = f"{kind} {mode.value} theta={theta}"
                ref = content_mask(e_i, e_c, mode=mode, theta=theta)
                tokens, mask = run(gpu, e_i, e_c, mode, theta)
                assert not (problems := rules._unexplained(p, mask, ref, mode, theta, rules.EPS32)), (case, problems[:5])
                assert (mask != ref).any(axis=1).mean() <= rules.MAX_DIFFERING_ROWS, case
                cpu_tokens, cpu_mask = run(cpu, e_i, e_c, mode, theta)
                same = ~(mask != cpu_mask).any(axis=1)
                error = np.abs(tokens[same] - cpu_tokens[same])
                # fp32 plan (TF32 off) vs ORT CPU fp32: the export parity tolerance of this graph
                assert np.all(error <= spec.atol + spec.rtol * np.abs(cpu_tokens[same])), (case, float(error.max()))


@needs_trt
def test_cli_run_backend_trt(engines, ort_cpu_result, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from maskst.cli.run import main
    from maskst.generation import DEMO_STYLE

    manifest = engines(Target.TRT, Precision.FP32)
    out = tmp_path / "cat.png"
    args = ["--engines", str(manifest.folder), "--style", str(DEMO_STYLE), "--backend", "trt", "--out", str(out),
            "--json", "--quiet"]
    for key, value in REQUEST.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads([line for line in result.output.splitlines() if line.startswith("{")][-1])
    assert summary["status"] == "ok" and summary["images"] == [str(out)], summary
    exact = ort_cpu_result(manifest.folder)
    assert summary["masked_elements"] == int(exact.mask.sum())
    written = np.asarray(Image.open(out).convert("RGB"))
    _assert_images_close(written[None], exact.images, FP32_BOUND, "maskst-run --backend trt vs ort-cpu fp32")


# --------------------------------------------------------------------------- ONNX Runtime CUDA


@needs_ort_cuda
@PRECISIONS
def test_ort_cuda_image_matches_ort_cpu(engines, ort_cpu_result, precision):
    from maskst.runtime.pipeline import MaskstPipeline

    manifest = engines(Target.ONNX, precision)  # ONNX target: needs no TensorRT
    exact = ort_cpu_result(engines(Target.ONNX, Precision.FP32).folder)
    with MaskstPipeline(manifest.folder, backend="ort-cuda") as pipeline:
        active = {name: runner.session.get_providers()[0] for name, runner in pipeline.runners.items()}
        assert set(active.values()) == {"CUDAExecutionProvider"}, active  # no silent CPU fallback
        result = pipeline.generate(_config())
        _own_mask_check(pipeline, result, exact=True)  # the ONNX-target conditioner is float64
    _assert_images_close(result.images, exact.images, FP16_BOUND, f"ort-cuda {precision.value} vs ort-cpu fp32")
