"""``maskst-export --int8``: OpenVINO IR files of the UNet and the VAE decoder quantized with NNCF (with
``--deepcache`` also of the DeepCache graphs ``unet_deep`` and ``unet_shallow``; with a calibrated scheme also of
the style image encoder, always with int8 activations: :data:`ACTIVATION_INT8_GRAPHS`).

The int8 graphs are *added* to an fp32 engines folder (``<graph>.int8.xml`` + ``.bin`` beside
``<graph>.onnx``); only the ``openvino-int8`` backend reads them, every other backend keeps running
the fp32 ONNX graphs. They are OpenVINO IR (not ONNX with QuantizeLinear) because NNCF's OpenVINO
backend writes the FakeQuantize / int8-weight patterns the CPU plugin turns into AMX-INT8 / VNNI kernels.

Schemes (:class:`Int8Scheme`):

* ``hybrid`` (default; the scheme optimum-intel uses for diffusion UNets): int8 weight-only
  compression of the MatMul / Gemm weights (``nncf.compress_weights``, INT8_ASYM, convolutions left
  out: at run time the MatMuls compute in bf16/f32 from int8 weights), then ``nncf.quantize`` of the
  rest (weights *and* activations: the convolutions run as int8 kernels), model type TRANSFORMER,
  SmoothQuant off for MatMuls, those MatMuls and the convolutions at the latent / pixel ends
  (:func:`_edge_convolutions`) in the ignored scope. Calibrated on recorded graph inputs.
* ``weights``: int8 weight-only compression of MatMuls *and* convolutions (NNCF's INT8 modes take
  convolutions); no calibration (the arithmetic stays bf16/f32; only weight bytes halve). The recorded
  inputs still measure its error against fp32.
* ``weights-matmul``: int8 weight-only compression of the MatMuls only.
* ``full``: ``nncf.quantize`` of MatMuls and convolutions alike (weights and activations; SmoothQuant on
  the MatMuls, NNCF's TRANSFORMER defaults), the edge convolutions left out. Calibrated.

The same scheme is applied to every graph (the VAE decoder has a few MatMuls: its mid-block attention), except
the image encoder (:func:`graph_scheme`): ``full`` under ``hybrid`` and ``full``, left in float by the weight-only
schemes.

Calibration data: the graph inputs recorded while the maskst pipeline generates images from the
calibration prompts (``maskst.runtime.calibration``, through ``PipelineCallback.on_infer_inputs``); the
DeepCache graphs' from generations with DeepCache on, so ``unet_shallow``'s ``deep_feature`` is what real
``unet_deep`` calls returned;
every other recorded call calibrates, the rest (at most :data:`HELD_OUT_CASES`) are held out for the
error against the fp32 ONNX graph on ONNX Runtime CPU, through the one comparator
(:mod:`maskst.contract.compare`) at :data:`INT8_TOLERANCE`.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
from pathlib import Path

import numpy as np

from maskst.contract.compare import Comparison, Tolerance, compare_outputs, raise_failures, records_json, run_onnx_cpu
from maskst.contract.spec import GraphSpec
from maskst.deepcache import DEEP_GRAPH, SHALLOW_GRAPH
from maskst.errors import EngineError

# the graphs maskst-export --int8 quantizes where the engines have them (what openvino-int8 runs in int8): the
# DeepCache graphs exist only in engines exported with --deepcache; the image encoder only under the calibrated
# schemes (ACTIVATION_INT8_GRAPHS)
INT8_GRAPHS = ("unet", "vae_decoder", DEEP_GRAPH, SHALLOW_GRAPH, "image_encoder")
# Graphs quantized with int8 weights *and* activations (the ``full`` scheme) whatever calibrated scheme is asked
# for, and left in float by the weight-only schemes. The style image encoder (a CLIP ViT: 257 tokens per image,
# MatMuls only) is compute-bound, so int8 weights alone only add their decompression: measured on the full-size
# ViT-H/14, 1 image, 2 threads, OpenVINO bf16 elsewhere: 316 ms bf16, 384 ms int8 weights, 173 ms int8 weights and
# activations (AMX); with oneDNN capped to AVX-512 BF16 / VNNI 1,883 / 1,997 / 391 ms
# (bench/issue15_image_encoder_int8.py; docs/benchmarks.md "The image encoder in int8").
# The content encoder is not among them: its embedding decides which elements the masking removes, and stays float.
ACTIVATION_INT8_GRAPHS = ("image_encoder",)
HELD_OUT_CASES = 4  # recorded calls kept out of calibration and compared with fp32 (per graph)
# int8 vs fp32 tolerance, element-wise, relative to each output's peak (Tolerance.atol_of_peak):
# |int8 - fp32| <= 0.4 * max|fp32|, on inputs recorded from generations (held out of calibration).
# Measured with the hybrid scheme: full-size random SD 1.5 UNet worst element 2.9-8.8% of the peak, VAE decoder
# 3.5-3.7% (full scheme: UNet 2.7-8.8%; docs/benchmarks.md "int8"); the tiny test models (32-64 channels, where per-tensor activation noise does
# not average out) up to 30% (UNet) and 21% (VAE). A broken quantization (a lost dequantization, a wrong scale,
# activation ranges clipped by a bad calibration) is off by the order of the output itself (tests/test_int8.py
# calibrates on latents 100x too small: 1.0-2.4x the peak, and must fail), which this still catches.
INT8_TOLERANCE = 0.4

log = logging.getLogger(__name__)


class Int8Scheme(str, enum.Enum):
    HYBRID = "hybrid"  # int8 weight-only MatMuls + int8 (weights and activations) convolutions, calibrated
    WEIGHTS = "weights"  # int8 weight-only MatMuls and convolutions, no calibration
    WEIGHTS_MATMUL = "weights-matmul"  # int8 weight-only MatMuls, convolutions untouched
    FULL = "full"  # int8 weights and activations on MatMuls and convolutions (SmoothQuant), calibrated

    @property
    def calibrated(self) -> bool:
        return self in (Int8Scheme.HYBRID, Int8Scheme.FULL)


def graph_scheme(name: str, scheme: Int8Scheme) -> Int8Scheme | None:
    """The scheme graph ``name`` is quantized with when the export asks for ``scheme`` (None: it stays float)."""
    if name in ACTIVATION_INT8_GRAPHS:
        return Int8Scheme.FULL if scheme.calibrated else None
    return scheme


def int8_graph_names(graphs, scheme: Int8Scheme) -> tuple[str, ...]:
    """The graphs of ``graphs`` (names) that ``--int8 --int8-scheme scheme`` quantizes, in :data:`INT8_GRAPHS` order."""
    return tuple(name for name in INT8_GRAPHS if name in graphs and graph_scheme(name, scheme) is not None)


def require_nncf() -> None:
    """EngineError naming the fix unless nncf and openvino are importable (before any export work)."""
    import importlib.util

    missing = [name for name in ("openvino", "nncf") if importlib.util.find_spec(name) is None]
    if missing:
        raise EngineError(f"--int8 needs {' and '.join(missing)}: pip install 'maskst[int8]'")


def _weight_matmuls(model) -> list[str]:
    """Friendly names of the MatMul nodes whose second input is a constant (a weight, maybe transposed/converted)."""
    names = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        source = op.input_value(1).get_node()
        while source.get_type_name() in ("Convert", "Transpose", "Reshape"):
            source = source.input_value(0).get_node()
        if source.get_type_name() == "Constant":
            names.append(op.get_friendly_name())
    return names


EDGE_CHANNELS = 8  # convolutions with at most this many input or output channels stay out of full int8


def _edge_convolutions(model) -> list[str]:
    """Friendly names of the convolutions at the graph's latent / pixel ends (<= EDGE_CHANNELS channels in or
    out: the UNet's conv_in / conv_out, the VAE's post_quant_conv / conv_out). Quantizing their activations
    (the noisy sample, the predicted noise, the pixels) costs the most accuracy for the fewest FLOPs: on the
    tiny test UNet leaving them out took the worst element from 45% to 30% of the peak, mean from 12% to 9%."""
    names = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Convolution":
            continue
        weight = op.input(1).get_partial_shape()
        if weight.rank.is_static and weight[0].is_static and weight[1].is_static and (
                weight[0].get_length() <= EDGE_CHANNELS or weight[1].get_length() <= EDGE_CHANNELS):
            names.append(op.get_friendly_name())
    return names


def quantize_model(model, scheme: Int8Scheme, calibration: list[dict[str, np.ndarray]]):
    """The NNCF-quantized copy of an OpenVINO model (``ov.Model``, fp32, shapes may be dynamic).

    ``calibration``: graph feeds (input name -> array as the graph takes it: float32 / int64); used by
    the ``hybrid`` scheme only (all of them: ``subset_size = len(calibration)``).
    """
    import nncf
    from nncf.parameters import CompressWeightsMode

    if scheme is Int8Scheme.WEIGHTS:
        return nncf.compress_weights(model, mode=CompressWeightsMode.INT8_ASYM)  # INT8 modes take convolutions too
    if scheme is Int8Scheme.WEIGHTS_MATMUL:
        return nncf.compress_weights(model, mode=CompressWeightsMode.INT8_ASYM,
                                     ignored_scope=nncf.IgnoredScope(types=["Convolution"], validate=False))
    if not calibration:
        raise EngineError(f"int8 {scheme.value} quantization needs calibration inputs, and none were recorded")
    if scheme is Int8Scheme.FULL:
        return nncf.quantize(model, nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER,
                             subset_size=len(calibration),
                             ignored_scope=nncf.IgnoredScope(names=_edge_convolutions(model), validate=False))
    keep = _weight_matmuls(model) + _edge_convolutions(model)  # names survive compress_weights
    compressed = nncf.compress_weights(model, mode=CompressWeightsMode.INT8_ASYM,
                                       ignored_scope=nncf.IgnoredScope(types=["Convolution"], validate=False))
    return nncf.quantize(
        compressed, nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration),
        ignored_scope=nncf.IgnoredScope(names=keep, validate=False),
        advanced_parameters=nncf.AdvancedQuantizationParameters(
            smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=-1)))


def quantize_file(src: Path, dst: Path, scheme: Int8Scheme, calibration: list[dict[str, np.ndarray]]) -> dict:
    """Quantize the fp32 graph ``src`` (ONNX or IR) into the IR ``dst`` (``.xml`` + ``.bin``).

    Returns what was done: scheme, calibration cases, seconds, int8 node counts.
    """
    import openvino as ov

    started = time.time()
    model = ov.Core().read_model(str(src))
    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    nncf_logger.setLevel(logging.WARNING)  # NNCF logs every node it leaves out at INFO
    try:
        quantized = quantize_model(model, scheme, calibration)
    finally:
        nncf_logger.setLevel(level)
    del model
    counts: dict[str, int] = {}
    for op in quantized.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "FakeQuantize":
            counts["FakeQuantize"] = counts.get("FakeQuantize", 0) + 1
        elif kind == "Constant" and op.get_output_element_type(0).get_type_name() in ("u8", "i8"):
            counts["int8_weight_constants"] = counts.get("int8_weight_constants", 0) + 1
    ov.save_model(quantized, str(dst), compress_to_fp16=False)
    return {"scheme": scheme.value, "calibration_cases": len(calibration) if scheme.calibrated else 0,
            "seconds": round(time.time() - started, 1), "nodes": counts}


def run_openvino(path: Path, feeds: list[dict[str, np.ndarray]], precision: str = "f32") -> list[dict[str, np.ndarray]]:
    """Outputs of the IR ``path`` on OpenVINO's CPU plugin (``INFERENCE_PRECISION_HINT=precision``), one
    static compile per feed shape, by output tensor name."""
    import openvino as ov

    core = ov.Core()
    results, compiled = [], {}
    for feed in feeds:
        key = tuple((k, v.shape) for k, v in sorted(feed.items()))
        if key not in compiled:
            model = core.read_model(str(path))
            model.reshape({k: list(v.shape) for k, v in feed.items()})
            compiled[key] = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision})
        model = compiled[key]
        out = model.create_infer_request().infer(feed)
        results.append({name: np.array(value, copy=True) for port, value in out.items() for name in port.get_names()})
    return results


def compare_int8(spec: GraphSpec, fp32_path: Path, int8_path: Path, feeds: list[dict[str, np.ndarray]],
                 precision: str = "f32", tolerance: float = INT8_TOLERANCE) -> tuple[list[Comparison], dict]:
    """The int8 IR on OpenVINO (``precision`` for what is not int8) against the fp32 graph on ONNX
    Runtime CPU, same feeds: (one record per output and feed, |err| <= tolerance * peak |fp32|;
    {output: {"max_err_of_peak": [per feed], "mean_err_of_mean": [per feed]}}, the error in relative terms)."""
    names = [t.name for t in spec.outputs]
    expected, got = run_onnx_cpu(fp32_path, feeds), run_openvino(int8_path, feeds, precision)
    records = compare_outputs(spec.name, names, expected, got, Tolerance(0.0, 0.0, atol_of_peak=tolerance),
                              reference="onnxruntime-cpu fp32", candidate=f"openvino int8 ({precision} elsewhere)")
    relative = {}
    for name in names:
        pairs = [(np.asarray(g[name], np.float64), np.asarray(e[name], np.float64)) for g, e in zip(got, expected)]
        relative[name] = {
            "max_err_of_peak": [round(float(np.abs(g - e).max() / max(np.abs(e).max(), 1e-30)), 5) for g, e in pairs],
            "mean_err_of_mean": [round(float(np.abs(g - e).mean() / max(np.abs(e).mean(), 1e-30)), 5) for g, e in pairs],
        }
    return records, relative


def split_calibration(feeds: list[dict[str, np.ndarray]], held_out: int = HELD_OUT_CASES, generations: int = 1):
    """(calibration feeds, held-out feeds): every other recorded call calibrates; of the others at
    most ``held_out``, spread over the recording (early and late denoising steps alike).

    ``generations``: how many generations recorded ``feeds`` (the same number of calls each). With an odd
    number of calls per generation (the UNet: 11 at 10 steps) "every other" already alternates the steps
    between generations; with an even number (``unet_deep`` with DeepCache every 3rd step: 4 calls) it would
    hold out the same steps of every generation (steps 3 and 9: the last step never calibrated), so the
    alternation flips at each generation: call ``i`` of generation ``g`` calibrates where ``i + g`` is even
    (for an odd count that is the plain every-other split)."""
    period = len(feeds) // generations if generations > 0 and len(feeds) % generations == 0 else 0
    if period < 1:  # not one count per generation: the plain alternation
        period = len(feeds) or 1
    calibration = [f for i, f in enumerate(feeds) if (i % period + i // period) % 2 == 0]
    rest = [f for i, f in enumerate(feeds) if (i % period + i // period) % 2 == 1]
    if len(rest) > held_out:
        rest = [rest[round(i * (len(rest) - 1) / max(1, held_out - 1))] for i in range(held_out)]
    return calibration, rest


def quantize_graphs(folder: Path, graphs: dict[str, dict], recorded: dict[str, list[dict[str, np.ndarray]]],
                    scheme: Int8Scheme, check: bool = True, precision: str = "f32", generations: int = 1) -> dict:
    """The exporter hook for ``--int8``: quantize the staged fp32 graphs of :data:`INT8_GRAPHS` in ``folder``
    (those ``graphs`` has: the DeepCache ones only in ``--deepcache`` engines).

    ``graphs``: the manifest's ``graphs`` section; each quantized graph's entry gets an ``int8`` record
    (``file`` = ``<name>.int8.xml``, ``weights``, what quantization did, ``parity``: records against the
    fp32 graph). ``recorded``: {graph: recorded feeds} (:mod:`maskst.runtime.calibration`); the weight-only
    schemes use them for the held-out check only; ``generations``: how many generations recorded them
    (:func:`split_calibration`). ``precision``:
    OpenVINO's inference precision for the parity run (what the non-int8 part computes in). Returns the
    manifest's ``int8`` section. Raises EngineError (before any work) if a graph has no recorded feeds,
    ParityError (after all graphs) if an output is off.
    """
    import nncf
    import openvino

    folder = Path(folder)
    names = int8_graph_names(graphs, scheme)
    # every graph's recording checked before any quantization (minutes per full-size UNet): one error naming all
    unrecorded = [name for name in names if not recorded.get(name)]
    if unrecorded:
        raise EngineError(f"int8: no {' / '.join(unrecorded)} inputs were recorded from the calibration prompts; "
                          "nothing to calibrate on or to check against")
    splits = {name: split_calibration(recorded[name], generations=generations) for name in names}
    unchecked = [name for name in names if check and not splits[name][1]]
    if unchecked:  # e.g. the image encoder: one call per generation, so one calibration prompt leaves none over
        raise EngineError(f"int8: {' / '.join(unchecked)} got too few recorded calls to hold one out of calibration "
                          "for the error check; give at least 2 calibration prompts (--calibration-prompts FILE)")
    results: list[Comparison] = []
    done = []
    for name in names:
        entry = graphs[name]
        spec = GraphSpec.from_json(entry["spec"])
        calibration, held = splits[name]
        src = folder / entry["file"]
        dst = folder / f"{name}.int8.xml"
        info = quantize_file(src, dst, graph_scheme(name, scheme), calibration)
        graph_results, relative = compare_int8(spec, src, dst, held, precision) if check and held else ([], {})
        results += graph_results
        entry["int8"] = {"file": dst.name, "weights": dst.with_suffix(".bin").name, **info,
                         "held_out_cases": len(held), "parity": records_json(graph_results), "error": relative}
        done.append(name)
        log.info("int8 %s: %s", name, info)
    raise_failures(results, "int8 graph output(s) differ from the fp32 graph beyond the int8 tolerance",
                   "calibrate on prompts closer to your use (maskst-export --calibration-prompts FILE) or use "
                   "--int8-scheme weights")
    return {
        "graphs": done,
        "scheme": scheme.value,
        "format": "OpenVINO IR (FakeQuantize / int8 weights), for --backend openvino-int8",
        "quantizer": f"nncf {nncf.__version__}, openvino {openvino.__version__}",
        "parity": {"reference": "fp32 graph on ONNX Runtime CPU", "candidate": f"OpenVINO CPU, {precision} outside int8",
                   "atol_of_peak": INT8_TOLERANCE, "checked": bool(check),
                   "cases": "recorded calls held out of calibration"},
    }


@dataclasses.dataclass(frozen=True)
class Int8Graph:
    """Where a graph's int8 IR is, as the manifest records it (read by the openvino-int8 backend)."""

    xml: Path
    weights: Path


def int8_graph(manifest_folder: Path, manifest_data: dict, name: str) -> Int8Graph | None:
    """The int8 IR of graph ``name`` of an engines folder, or None if the folder has none."""
    record = manifest_data.get("graphs", {}).get(name, {}).get("int8")
    if not record:
        return None
    return Int8Graph(Path(manifest_folder) / record["file"], Path(manifest_folder) / record["weights"])


def missing_int8_graphs(manifest_data: dict) -> tuple[str, ...]:
    """The graphs an engines folder with an int8 set (``maskst-export --int8``) has in fp32 and its scheme
    quantizes (:func:`int8_graph_names`) but that have no int8 IR: an int8 set from before ``--int8`` quantized
    the DeepCache graphs or the image encoder. Empty for a folder without an int8 set."""
    if "int8" not in manifest_data:
        return ()
    graphs = manifest_data.get("graphs", {})
    expected = int8_graph_names(graphs, Int8Scheme(manifest_data["int8"]["scheme"]))
    return tuple(name for name in expected if not graphs[name].get("int8"))
