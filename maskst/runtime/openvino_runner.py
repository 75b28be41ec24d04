"""OpenVINO CPU backend behind the runner interface: bf16 on AMX / AVX-512-BF16 CPUs, fp32 elsewhere.

Backend names (what ``make_runner`` and the CLIs take):

- ``openvino``: the fast CPU path. The UNet and the three encoders run in bf16 where the CPU has
  native bf16 (``INFERENCE_PRECISION_HINT=bf16``; fp32 elsewhere); the VAE decoder runs in fp32
  (pixels are what users look at, and it is one call per image); the image conditioner (masking +
  projection) stays on ONNX Runtime, whose float64 split arithmetic gives bit-for-bit the numpy
  mask decision: OpenVINO's CPU plugin runs float64 as float32, so a near-tie in the 2-means split
  could flip an element. It costs about a millisecond either way (the projection's 12 MB of fp32
  weights are most of it).
- ``openvino-f32``: the same split with every OpenVINO graph in fp32, for parity checks.
- ``openvino-bf16``: every OpenVINO graph in bf16 (the VAE too).
- per graph: ``openvino:GRAPH=VALUE:GRAPH=VALUE...`` on top of ``openvino``, where VALUE is
  ``bf16``, ``f32``, ``auto`` or an ONNX Runtime backend name (``ort-cpu``) to keep that graph on
  ONNX Runtime, e.g. ``openvino:vae_decoder=bf16:text_encoder=f32``.

Parity against ONNX Runtime fp32 (:func:`parity_vs_ort`, measured on the full-size random models,
docs/benchmarks.md): fp32 agrees to < 1e-5 relative on every graph; bf16 is 1-3% max relative error
(UNet 2.6%, encoders 0.9-1.7%, VAE 1.8%), within the 10% tolerance of :data:`PARITY_TOLERANCE`.

Compiled models are cached (``CACHE_DIR``) under ``~/.cache/maskst/openvino`` or the folder given
as ``compile_cache`` (maskst-run ``--compile-cache DIR``; ``--no-compile-cache`` disables it). Measured on 2 cores (full size, 256 px): cold start to the first UNet
step 24 s with the cache, 31 s without, but 18 GB instead of 14 GB peak RSS, because for a cache
hit OpenVINO still reads the ONNX graph (to reshape it and hash it) and then imports the blob.
OpenVINO keys its cache by the model and the device but not by the inference precision (a bf16
request loaded an fp32 blob and returned NaN), so each precision gets its own subfolder (``f32/``,
``bf16/``). The cache takes ~3.4 GB per precision and input shape for the UNet: delete the folder
to reclaim the space.

Shapes: each graph is compiled for the concrete shapes it is first called with (reshaped to
static), and recompiled (and cached) for new shapes; static shapes ran the UNet step at ~1.0 s
against 1.2-2.4 s with dynamic shapes here. The fp32 graph is read for each compile and dropped
afterwards. Outputs are OpenVINO's own output tensors, shared: like the ONNX Runtime runner's
buffers they stay valid until the next ``infer`` of the same runner.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np

from maskst.contract.compare import Comparison, Tolerance, compare_outputs
from maskst.errors import BackendError, EngineError, InputError
from maskst.contract.spec import GraphSpec
from maskst.runtime.runners import ORT_PROVIDERS, Runner

PRECISIONS = ("auto", "bf16", "f32")
# The default split of the ``openvino`` backend (see the module docstring for why).
DEFAULT_GRAPH_CHOICES = {
    "text_encoder": "auto", "text_encoder_2": "auto", "image_encoder": "auto", "content_encoder": "auto",
    "image_conditioner": "ort-cpu", "unet": "auto", "vae_decoder": "f32",
    # ControlNet engines: every controlnet_<i> graph follows "controlnet"; the lineart annotator stays f32 (its
    # output is quantised to uint8 like an image: bf16 would move pixels across steps, for a once-per-request cost)
    "controlnet": "auto", "lineart": "f32",
    # StyleShot engines: the style-aware encoder and the content-fusion ControlNet
    "style_encoder": "auto", "content_fusion": "auto",
}


def graph_choice(choices: dict[str, str], graph: str) -> str:
    """The choice of one graph of an engines folder (``controlnet_<i>`` graphs share ``controlnet``'s)."""
    if graph in choices:
        return choices[graph]
    return choices[graph.rsplit("_", 1)[0]]


def _import_openvino():
    try:
        import openvino
    except ImportError:
        raise BackendError("backend openvino needs the openvino package: pip install 'maskst[openvino]'") from None
    return openvino


@functools.lru_cache(maxsize=1)
def _core():
    """One OpenVINO Core per process (it owns the plugin and its thread pools)."""
    return _import_openvino().Core()


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether this CPU runs bf16 natively (AMX or AVX-512-BF16), as OpenVINO reports it."""
    return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``bf16`` on CPUs with native bf16, else ``f32``; anything else is checked."""
    if precision not in PRECISIONS:
        raise InputError(f"OpenVINO precision {precision!r} is not known; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16() else "f32"
    return precision


def default_cache_dir() -> Path:
    """Where compiled models are cached unless the caller names another folder (or disables it)."""
    return Path.home() / ".cache" / "maskst" / "openvino"


def graph_choices(precision: str, variant: str, backend: str) -> dict[str, str]:
    """{graph: choice} of an OpenVINO backend: ``precision`` ("auto", "f32", "bf16") for the graphs
    that follow the backend's precision, then the ``GRAPH=VALUE`` items of ``variant``
    (``vae_decoder=bf16:unet=f32``); a choice is an OpenVINO precision or an ONNX Runtime backend name."""
    choices = {g: (c if c in ORT_PROVIDERS or precision == "auto" else precision) for g, c in DEFAULT_GRAPH_CHOICES.items()}
    for item in filter(None, variant.split(":")):
        graph, eq, value = item.partition("=")
        if not eq or graph not in DEFAULT_GRAPH_CHOICES or value not in PRECISIONS + tuple(ORT_PROVIDERS):
            raise InputError(
                f"backend={backend!r}: {item!r} must be GRAPH=VALUE with GRAPH one of {', '.join(DEFAULT_GRAPH_CHOICES)} "
                f"and VALUE one of {', '.join(PRECISIONS + tuple(ORT_PROVIDERS))}"
            )
        choices[graph] = value
    return choices


class OpenVinoRunner(Runner):
    """One graph compiled by OpenVINO for the CPU.

    ``precision``: ``auto`` / ``bf16`` / ``f32`` (``INFERENCE_PRECISION_HINT``). ``cache_dir``:
    compiled-model cache (default :func:`default_cache_dir`; ``False`` disables it). ``threads``:
    ``INFERENCE_NUM_THREADS`` (default: OpenVINO's, all physical cores). ``profile``: collect
    per-node timings (``PERF_COUNT``) for :meth:`profiling_info`.
    """

    backend = "openvino"

    def __init__(self, spec: GraphSpec, path: Path, precision: str = "auto", cache_dir: Path | bool | None = None,
                 threads: int | None = None, profile: bool = False):
        super().__init__(spec, path)
        self.precision = resolve_precision(precision)
        self.cache_dir = default_cache_dir() if cache_dir is None else cache_dir
        self.threads = threads
        self.profile = profile
        self._compiled: dict[tuple, tuple] = {}  # shape key -> (compiled model, infer request, output names)
        self.compile_ms: dict[tuple, float] = {}

    @property
    def config(self) -> dict:
        """The OpenVINO compile properties of this runner."""
        config = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY"}
        if self.cache_dir:
            # One subfolder per precision: OpenVINO 2026.4's cache key leaves INFERENCE_PRECISION_HINT
            # out, so an fp32 blob was loaded for a bf16 request (and gave NaN) in one shared folder.
            config["CACHE_DIR"] = str(Path(self.cache_dir) / self.precision)
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        if self.profile:
            config["PERF_COUNT"] = True
        return config

    def _activate(self) -> None:
        # Nothing is read here: the graph is read and compiled for the shapes of its first call
        # (see _compiled_for); a missing file is still an error now, not at the first request.
        _import_openvino()
        if not self.path.is_file():
            raise EngineError(f"{self.path} is missing; rebuild the engines with maskst-export --force")
        if self.cache_dir:
            (Path(self.cache_dir) / self.precision).mkdir(parents=True, exist_ok=True)

    def _deactivate(self) -> None:
        self._compiled.clear()

    def _read_model(self):
        try:
            return _core().read_model(str(self.path))
        except RuntimeError as exc:  # OpenVINO reports every read/convert failure as RuntimeError
            raise EngineError(f"{self.path} could not be read by OpenVINO ({exc}); rebuild it with maskst-export --force") from None

    def _compiled_for(self, feed: dict[str, np.ndarray]):
        key = tuple((name, feed[name].shape) for name in sorted(feed))
        entry = self._compiled.get(key)
        if entry is None:
            started = time.perf_counter()
            # Read afresh and dropped after compiling: the compiled model holds its own (possibly
            # bf16) weights, and keeping the fp32 graph too would add its whole size to the RSS.
            model = self._read_model()
            # Static shapes for this call: no per-shape kernel preparation on the first inference.
            model.reshape({name: list(array.shape) for name, array in feed.items()})
            try:
                compiled = _core().compile_model(model, "CPU", self.config)
            except RuntimeError as exc:
                raise BackendError(f"{self.spec.name}: OpenVINO could not compile {self.path} for the CPU ({exc})") from None
            del model
            # by tensor name, not get_any_name(): an output may carry several names (the fp16
            # converter's output Casts add one), and the spec's is only one of them
            names = []
            for index, output in enumerate(compiled.outputs):
                known = [t.name for t in self.spec.outputs if t.name in output.get_names()]
                names.append(known[0] if known else self.spec.outputs[index].name)
            entry = (compiled, compiled.create_infer_request(), names)
            self._compiled[key] = entry
            self.compile_ms[key] = (time.perf_counter() - started) * 1e3
        return entry

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: np.ascontiguousarray(array) for name, array in feed.items()}
        _, request, names = self._compiled_for(feed)
        # share_inputs: no copy of the inputs; share_outputs: the results are views of the request's
        # output tensors, valid until the next infer (the runner contract).
        results = request.infer(feed, share_inputs=True, share_outputs=True)
        out = {}
        for name, tensor in zip(names, results.to_tuple()):
            want = next(t.dtype for t in self.spec.outputs if t.name == name)
            out[name] = tensor if str(tensor.dtype) == want else tensor.astype(want)
        return out

    def profiling_info(self) -> list[dict]:
        """Per-node timings of the last inference of every compiled shape (needs ``profile=True``).

        Each record: node name, node type, the kernel OpenVINO ran (``exec_type``, e.g.
        ``brgemm_avx512_amx_bf16``) and the real time in microseconds.
        """
        if not self.profile:
            return []
        records = []
        for _compiled, request, _ in self._compiled.values():
            for info in request.profiling_info:
                if info.status.name != "EXECUTED":
                    continue
                records.append({"name": info.node_name, "type": info.node_type, "exec_type": info.exec_type,
                                "us": info.real_time.total_seconds() * 1e6})
        return records


# Parity with ONNX Runtime fp32 (the engines' own parity reference), relative to each output's scale:
# |openvino - ort| <= PARITY_TOLERANCE * max |ort| element-wise (Tolerance.atol_of_peak). fp32 is expected
# to agree to float rounding; bf16 (8-bit mantissa) a few percent off (docs/benchmarks.md has the numbers).
PARITY_TOLERANCE = {"f32": 1e-4, "bf16": 0.1}


def parity_vs_ort(manifest, name: str, precision: str = "f32", dims: dict[str, int] | None = None,
                  seed: int = 0, cache_dir: Path | bool | None = False) -> list[Comparison]:
    """Run graph ``name`` on OpenVINO at ``precision`` and on ONNX Runtime (CPU, fp32) with the same
    random inputs; one comparison record per output (the one comparator, :mod:`maskst.contract.compare`).

    ``dims``: values of the graph's symbolic dimensions (default: each range's ``opt``).
    """
    from maskst.runtime.runners import OrtRunner

    precision = resolve_precision(precision)
    spec = manifest.graph_spec(name)
    feed = spec.sample_inputs(dims or {d: r.opt for d, r in spec.dims.items()}, seed=seed)
    with OrtRunner(spec, manifest.graph_path(name)) as ort_runner:
        expected = {k: v.copy() for k, v in ort_runner.infer(feed).items()}
    with OpenVinoRunner(spec, manifest.graph_path(name), precision=precision, cache_dir=cache_dir) as ov_runner:
        got = {k: v.copy() for k, v in ov_runner.infer(feed).items()}
    return compare_outputs(spec.name, [t.name for t in spec.outputs], [expected], [got],
                           Tolerance(0.0, 0.0, atol_of_peak=PARITY_TOLERANCE[precision]),
                           reference="onnxruntime-cpu fp32", candidate=f"openvino {precision}")
