"""OpenVINO CPU backend behind the runner interface: bf16 where it pays on the CPU (AMX, or measured), fp32 elsewhere.

Backend names (what ``make_runner`` and the CLIs take):

- ``openvino``: the fast CPU path. The UNet and the three encoders run in bf16 where bf16 pays on the CPU
  (``INFERENCE_PRECISION_HINT=bf16``; fp32 elsewhere): with AMX, or without it where a bf16 MatMul was measured
  clearly faster than fp32 (:mod:`maskst.runtime.bf16_probe`: a Zen 4 yes, a Xeon without AMX no); the VAE decoder runs in fp32
  (pixels are what users look at, and it is one call per image); the image conditioner (masking +
  projection) stays on ONNX Runtime, whose float64 split arithmetic gives bit-for-bit the numpy
  mask decision: OpenVINO's CPU plugin runs float64 as float32, so a near-tie in the 2-means split
  could flip an element. It costs about a millisecond either way (the projection's 12 MB of fp32
  weights are most of it).
- ``openvino-f32``: the same split with every OpenVINO graph in fp32, for parity checks.
- ``openvino-bf16``: every OpenVINO graph in bf16 (the VAE too).
- per graph: ``openvino:GRAPH=VALUE:GRAPH=VALUE...`` on top of ``openvino``, where VALUE is
  ``bf16``, ``f32``, ``auto`` or an ONNX Runtime backend name (``ort-cpu``) to keep that graph on
  ONNX Runtime, e.g. ``openvino:vae_decoder=bf16:text_encoder=f32``. The DeepCache graphs ``unet_deep`` /
  ``unet_shallow`` follow ``unet``'s choice unless named themselves.

Parity against ONNX Runtime fp32 (:func:`parity_vs_ort`, measured on the full-size random models,
docs/benchmarks.md): fp32 agrees to < 1e-5 relative on every graph; bf16 is 1-3% max relative error
(UNet 2.6%, encoders 0.9-1.7%, VAE 1.8%), within the 10% tolerance of :data:`PARITY_TOLERANCE`.

Memory (measured on the full-size SD 1.5 UNet, bf16, 256 px; docs/benchmarks.md): OpenVINO's CPU plugin
keeps the model it compiled (its constants) besides its own repacked kernel weights. Compiled straight
from the fp32 ONNX graph that is the memory-mapped fp32 file (3.4 GB) plus the bf16 weights (2.4 GB):
5.8 GB resident for a 3.4 GB model. So graphs that run in bf16 get their weights converted to f16 in
memory first (OpenVINO's own ``compress_model_transformation``: the fp32 mapping is released, and the
plugin turns f16 weights into bf16 as it would fp32 ones): 3.6 GB resident. The UNet's output moves by
3.3% of its peak against fp32 with f16 weights, 3.2% without (the bf16 arithmetic dominates both).

Compiled models are cached by maskst (``CACHE_DIR`` is not used) under ``~/.cache/maskst/openvino`` or
the folder given as ``compile_cache`` (maskst-run ``--compile-cache DIR``; ``--no-compile-cache``
disables it): one blob per graph file (path, size, modification time of the graph and its external
data), input shapes, precision, compile properties, OpenVINO version and CPU (model and ISA flags),
written by ``export_model`` after the first compile and imported through a memory map afterwards (the
imported model replaces the compiled one, so a first compile also ends with file-backed weights), so a
cache hit never reads the ONNX graph (OpenVINO's own cache read and hashed the whole graph first: 18 GB
instead of 14 GB peak for the pipeline) and the model's weights stay file-backed. A blob OpenVINO refuses
(another version wrote it, a damaged file) is compiled again and replaced. The UNet's blob is ~1.7 GB per
precision and input shape in bf16: each blob is recorded with the graph files it came from, and writing a blob
removes those of files since re-exported or deleted (:mod:`maskst.runtime.blob_cache`). The blobs of other shapes
add up (the development VM's bf16 folder reached 22 GB): ``maskst-run --compile-cache-limit GB`` removes the least
recently used after each write (:func:`~maskst.runtime.blob_cache.trim_to_limit`); without it, delete the folder to
reclaim them. A blob that cannot be written (a full disk) costs only the cache: the compiled model runs.
After a model's first import the blob's pages are handed back to the kernel (:func:`release_pages`; OpenVINO
repacks the weights while importing, so nothing reads the blob after that): the process keeps only OpenVINO's
repacked weights (UNet bf16: 1.9 GB resident; f32: 3.5 GB). The import itself still holds the blob and the
repacked copy at once (UNet f32: 6.9 GB for a moment), which is why the pipeline loads its largest graph first
(:meth:`Runner.prepare`), before the other graphs' weights are resident. Without the cache a compiled model
keeps the weights it was compiled from (UNet: 3.6 GB bf16, 7.0 GB f32).

A cache miss never holds the blob in memory: it is streamed into its file as OpenVINO serializes it
(:func:`export_blob`). Measured on the full UNet, 256 px, phase by phase
(``bench/openvino_memory.py --mode phases``, docs/benchmarks.md): compiling holds the fp32 graph's mapped weights
and the repacked ones (f32: 3.4 + 3.5 GB), and exporting into an ``io.BytesIO`` added the whole 3.4 GB blob on
top: 10.3 GB peak for f32 (bf16: 5.3 GB), against 6.9 GB (3.6 GB) for the import of a cache hit. Streamed to the
file, the export adds ~0.1 GB (one constant at a time), the blob the same byte for byte: f32 peaks at 7.1 GB;
bf16 at 5.1 GB, now in the f16 conversion before the compile (the mapped fp32 file and the f16 copies).
OpenVINO's weightless blobs (``CACHE_MODE=OPTIMIZE_SIZE``, 3 MB) were not taken: the CPU plugin could not import
one with the ONNX weights as ``WEIGHTS_PATH``, and a hit would need the ONNX graph read and its weights mapped.

Shapes: each graph is compiled for the concrete shapes it is first called with (reshaped to
static), and recompiled (and cached) for new shapes; static shapes ran the UNet step at ~1.0 s
against 1.2-2.4 s with dynamic shapes here. Once static, the model gets the exact rewrites of
:mod:`maskst.runtime.openvino_rewrites` (the region sum of a request without regions is dropped).
Outputs are OpenVINO's own output tensors, shared: like the ONNX Runtime runner's buffers they stay
valid until the next ``infer`` of the same runner.
"""

from __future__ import annotations

import functools
import io
import logging
import mmap
import os
import time
from pathlib import Path

import numpy as np

from maskst.contract.compare import Comparison, Tolerance, compare_outputs
from maskst.deepcache import DEEP_GRAPH, SHALLOW_GRAPH
from maskst.errors import BackendError, EngineError, InputError
from maskst.contract.spec import GraphSpec
from maskst.runtime.blob_cache import (cpu_identity, forget_blob, graph_files, key_digest, mark_used, record_blob,
                                       tidy_after_write)
from maskst.runtime.openvino_rewrites import GRAPH_REWRITES, rewrite_for_static_shapes
from maskst.runtime.runners import ORT_PROVIDERS, Runner

log = logging.getLogger(__name__)

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


# Graphs that take another graph's choice unless a variant names them: the DeepCache graphs (maskst-export
# --deepcache) follow the UNet (openvino:unet=f32 runs all three in f32; openvino:unet_deep=f32 that one only)
FOLLOWING_GRAPHS = {DEEP_GRAPH: "unet", SHALLOW_GRAPH: "unet"}


def graph_choice(choices: dict[str, str], graph: str) -> str:
    """The choice of one graph of an engines folder (``controlnet_<i>`` graphs share ``controlnet``'s, the
    DeepCache graphs the UNet's unless named: :data:`FOLLOWING_GRAPHS`)."""
    if graph in choices:
        return choices[graph]
    if graph in FOLLOWING_GRAPHS:
        return choices[FOLLOWING_GRAPHS[graph]]
    return choices[graph.rsplit("_", 1)[0]]


def named_graphs(variant: str) -> frozenset[str]:
    """The graphs whose choice a backend variant sets (``vae_decoder=bf16:unet=f32`` -> {vae_decoder, unet,
    unet_deep, unet_shallow}): those it names, and the :data:`FOLLOWING_GRAPHS` of those (they take that choice)."""
    named = {item.partition("=")[0] for item in variant.split(":") if item}
    return frozenset(named | {g for g, leader in FOLLOWING_GRAPHS.items() if leader in named})


def _import_openvino():
    try:
        import openvino
    except ImportError:
        raise BackendError("backend openvino needs the openvino package: pip install 'maskst[openvino]'") from None
    return openvino


@functools.lru_cache(maxsize=1)
def openvino_core():
    """One OpenVINO Core per process (it owns the plugin and its thread pools)."""
    return _import_openvino().Core()


# OpenVINO's int8 kernels: from AVX2 up (vpmaddubsw + vpmaddwd); VNNI (AVX-512 or AVX) and AMX-INT8 fuse those steps.
# Without VNNI they still pay for convolutions: 203 vs 103 GOP/s int8 vs f32 on a Zen 3 (AVX2 only, 2 cores,
# maskst.bench.ceilings, 2026-12-04), while int8 MatMuls ran at the f32 rate there.
INT8_CPU_FLAGS = ("avx2", "avx512_vnni", "avx_vnni", "amx_int8")


@functools.lru_cache(maxsize=None)
def native_bf16(isa_cap: str | None = None) -> bool:
    """Whether this CPU runs bf16 natively (AMX or AVX-512-BF16), as OpenVINO reports it, under oneDNN's ISA cap
    (``isa_cap``, or the one in effect for this process: OpenVINO reports BF16 from CPUID whatever the cap)."""
    from maskst.hardware import cpu_info
    from maskst.runtime.bf16_probe import BF16_FLAGS

    cpu = cpu_info().capped(isa_cap)
    allowed = cpu.isa_cap is None or cpu.has(*BF16_FLAGS)
    return allowed and "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@functools.lru_cache(maxsize=None)
def native_int8(isa_cap: str | None = None) -> bool:
    """Whether OpenVINO runs int8 kernels on this CPU (AVX2 and up: :data:`INT8_CPU_FLAGS`), from its ISA flags
    under oneDNN's ISA cap (``isa_cap``, or the one in effect for this process)."""
    from maskst.hardware import cpu_info

    return cpu_info().capped(isa_cap).has(*INT8_CPU_FLAGS)


def resolve_precision(precision: str, cache_dir: Path | bool | None = None) -> str:
    """``auto`` -> ``bf16`` where bf16 pays on this CPU, else ``f32``; anything else is checked.

    "Pays" (:mod:`maskst.runtime.bf16_probe`): AMX, or without AMX a bf16 MatMul measured >= 1.2x faster than
    f32 on this CPU (AVX-512 BF16 is ~2x fp32 on a Zen 4 but slower than fp32 on a Xeon without AMX). The
    measurement is kept in ``cache_dir`` (the compiled-model cache: None the default one, False none)."""
    from maskst.runtime.bf16_probe import bf16_pays

    if precision not in PRECISIONS:
        raise InputError(f"OpenVINO precision {precision!r} is not known; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        folder = default_cache_dir() if cache_dir is None else (Path(cache_dir) if cache_dir else None)
        return "bf16" if bf16_pays(native_bf16(), folder).pays else "f32"
    return precision


def int8_float_precision() -> str:
    """What the float remainder of an int8 IR (``maskst-export --int8``) computes in: bf16 wherever the CPU runs
    bf16 natively, even where :mod:`maskst.runtime.bf16_probe` finds bf16 MatMuls slower than f32. In an int8 IR
    the MatMuls and convolutions are int8; what is left (normalizations, activations, the dequantized tensors
    between int8 nodes) moves data more than it computes, and bf16 halves those bytes. Measured on a Xeon without
    AMX (bf16 MatMul 0.6x f32), int8 IRs compiled with each hint, same process, 2 rounds x 4 calls (``python -m
    maskst.bench.ov_inspect ... --precision bf16|f32``, docs/benchmarks.md): VAE decoder 834 ms bf16 vs 1,201 ms
    f32, UNet 708 vs 890, image encoder 604 vs 620."""
    return "bf16" if native_bf16() else "f32"


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
        if not eq or graph not in (*DEFAULT_GRAPH_CHOICES, *FOLLOWING_GRAPHS) or value not in PRECISIONS + tuple(ORT_PROVIDERS):
            raise InputError(
                f"backend={backend!r}: {item!r} must be GRAPH=VALUE with GRAPH one of "
                f"{', '.join((*DEFAULT_GRAPH_CHOICES, *FOLLOWING_GRAPHS))} "
                f"and VALUE one of {', '.join(PRECISIONS + tuple(ORT_PROVIDERS))}"
            )
        choices[graph] = value
    return choices


MADV_PAGEOUT = getattr(mmap, "MADV_PAGEOUT", 21)  # Linux >= 5.4; Python 3.11 does not export the name


def release_pages(mapped: mmap.mmap) -> bool:
    """Hand the resident pages of a blob map back to the kernel (``madvise(MADV_PAGEOUT)``).

    OpenVINO's CPU plugin repacks the weights while importing and computes from its own copies; the model
    weights in the blob are only read again by a re-compile (they are then faulted in from the file:
    the map is copy-on-write and clean, so nothing is lost). Measured on the full UNet right after the
    import, before any inference: bf16 3.6 -> 1.9 GB resident, f32 6.9 -> 3.5 GB, the first and later
    outputs bit for bit those of a model whose pages stayed, no page read back over further calls. False where the
    kernel or platform does not offer it (the pages then stay until memory pressure reclaims them).
    """
    if not hasattr(mapped, "madvise"):
        return False
    try:
        mapped.madvise(MADV_PAGEOUT)
    except OSError:  # EINVAL: a kernel before 5.4
        return False
    return True


class _FileSink(io.BytesIO):
    """The ``io.BytesIO`` that ``CompiledModel.export_model`` insists on, writing to a file instead of memory.

    OpenVINO's Python binding takes only an ``io.BytesIO`` (or returns one) and drives it through its Python
    methods: 2026.4 streams the blob in pieces (``write`` per constant, ``seek`` / ``tell`` to patch the header,
    ``flush``), older bindings make one ``write`` of the whole blob. Every byte passes through these overrides,
    so the blob goes to the file and never exists in memory: a real ``io.BytesIO`` held the whole blob next to
    the compiled model's weights (UNet f32, 256 px: 10.3 GB peak at the export instead of 7.1 GB).
    """

    def __init__(self, handle):
        super().__init__()
        self._handle = handle

    def write(self, data) -> int:
        return self._handle.write(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()

    def flush(self) -> None:
        self._handle.flush()


def export_blob(compiled, blob: Path) -> None:
    """Write ``compiled.export_model()`` to ``blob`` through a file, atomically (a reader sees the old blob or
    the whole new one; no partial ``.tmp`` file is left behind when the export or the write fails)."""
    tmp = blob.with_suffix(f".{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            sink = _FileSink(handle)
            compiled.export_model(sink)
            # a binding that wrote through a method not overridden above would leave (part of) the blob in the
            # BytesIO's own buffer and a wrong file: refused rather than cached
            if sink.getbuffer().nbytes:
                raise BackendError("OpenVINO's export_model bypassed the file sink; the compiled model is not cached")
        tmp.replace(blob)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class OpenVinoRunner(Runner):
    """One graph compiled by OpenVINO for the CPU.

    ``precision``: ``auto`` / ``bf16`` / ``f32`` (``INFERENCE_PRECISION_HINT``). ``cache_dir``:
    compiled-model cache (default :func:`default_cache_dir`; ``False`` disables it). ``threads``:
    ``INFERENCE_NUM_THREADS`` (default: OpenVINO's, all physical cores). ``profile``: collect
    per-node timings (``PERF_COUNT``) for :meth:`profiling_info`. ``compress_weights``: f16 weights
    for graphs that run in bf16 (see the module docstring; default on). ``int8_scheme``: ``path`` is an int8 IR
    of that scheme (``maskst-export --int8``: ``hybrid``, ``weights``, ``weights-matmul``): its quantized
    parts run in int8, the rest in ``precision``. ``cache_limit_bytes``: the most the cache's blobs may take
    (the least recently used go after a new one is written; None: no limit).
    """

    backend = "openvino"

    def __init__(self, spec: GraphSpec, path: Path, precision: str = "auto", cache_dir: Path | bool | None = None,
                 threads: int | None = None, profile: bool = False, compress_weights: bool = True, int8_scheme: str | None = None,
                 cache_limit_bytes: int | None = None):
        super().__init__(spec, path)
        self.int8_scheme = int8_scheme
        self.cache_dir = default_cache_dir() if cache_dir is None else cache_dir
        self.cache_limit_bytes = cache_limit_bytes
        self.precision = resolve_precision(precision, self.cache_dir)
        self.threads = threads
        self.profile = profile
        self.compress_weights = compress_weights and self.precision == "bf16"
        self._compiled: dict[tuple, tuple] = {}  # shape key -> (compiled model, infer request, output names, blob map)
        self.compile_ms: dict[tuple, float] = {}
        self.loaded_from: dict[tuple, str] = {}  # shape key -> "compiled" or "cache"

    @property
    def config(self) -> dict:
        """The OpenVINO compile properties of this runner."""
        config = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY"}
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
        # compiled models first: a model imported from a blob points into the blob's memory map
        blobs = [entry[3] for entry in self._compiled.values() if entry[3] is not None]
        self._compiled.clear()
        del blobs  # each map is unmapped when the last OpenVINO tensor viewing it goes

    def _read_model(self):
        try:
            return openvino_core().read_model(str(self.path))
        except RuntimeError as exc:  # OpenVINO reports every read/convert failure as RuntimeError
            raise EngineError(f"{self.path} could not be read by OpenVINO ({exc}); rebuild it with maskst-export --force") from None

    def blob_path(self, shapes: dict[str, list[int]]) -> Path | None:
        """The cache file of this graph compiled for ``shapes`` (None without a cache)."""
        if not self.cache_dir:
            return None
        key = {"files": graph_files(self.path), "shapes": {k: list(v) for k, v in sorted(shapes.items())},
               "config": self.config, "f16_weights": self.compress_weights, "int8": self.int8_scheme,
               "rewrites": list(GRAPH_REWRITES),
               "openvino": _import_openvino().__version__, "cpu": cpu_identity()}
        return (Path(self.cache_dir) / self.precision
                / f"{self.spec.name}{'-int8' if self.int8_scheme else ''}-{key_digest(key)}.blob")

    def _import_blob(self, blob: Path):
        """(compiled model, memory map of the blob) or None if OpenVINO refuses the blob (it is removed)."""
        ov = _import_openvino()
        # copy-on-write map: OpenVINO reads the weights in place (file-backed pages, not a copy); nothing
        # written through it reaches the file
        with open(blob, "rb") as handle:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        try:
            compiled = openvino_core().import_model(ov.Tensor(np.frombuffer(mapped, dtype=np.uint8), shared_memory=True),
                                            "CPU", self.config)
        except RuntimeError:  # another OpenVINO build or a truncated file: compiled again below (the map is
            forget_blob(blob)  # unmapped when the last view of it goes; unlinking a mapped file is fine)
            return None
        return compiled, mapped

    def _compile(self, shapes: dict[str, list[int]], blob: Path | None):
        """Read, reshape to static ``shapes``, (f16 weights,) compile; write the blob if caching.

        Returns (compiled model, whether ``blob`` now holds it). A blob that cannot be written (a full disk, a
        read-only folder) costs only the cache: the compiled model runs, nothing partial is left."""
        model = self._read_model()
        # Static shapes for this call: no per-shape kernel preparation on the first inference.
        model.reshape(shapes)
        rewrite_for_static_shapes(model)  # exact; what the static shapes make trivial (openvino_rewrites)
        if self.compress_weights:
            from openvino._offline_transformations import compress_model_transformation

            compress_model_transformation(model)  # releases the fp32 weights (see the module docstring)
        try:
            compiled = openvino_core().compile_model(model, "CPU", self.config)
        except RuntimeError as exc:
            raise BackendError(f"{self.spec.name}: OpenVINO could not compile {self.path} for the CPU ({exc})") from None
        del model
        if blob is None:
            return compiled, False
        try:
            export_blob(compiled, blob)  # nothing is left of a failed export (export_blob)
        except OSError as exc:
            log.warning("compiled-model cache: %s could not be written (%s); %s runs without the cache",
                        blob, exc, self.spec.name)
            return compiled, False
        try:
            record_blob(blob, graph_files(self.path))
        except OSError as exc:
            log.warning("compiled-model cache: the record of %s could not be written (%s); %s runs without the cache",
                        blob, exc, self.spec.name)
            blob.unlink(missing_ok=True)  # a blob without its record would never be evicted
            return compiled, False
        tidy_after_write(blob.parent.parent, blob, self.cache_limit_bytes)  # stale blobs are never hit again
        return compiled, True

    def _compiled_for(self, feed: dict[str, np.ndarray]):
        key = tuple((name, feed[name].shape) for name in sorted(feed))
        entry = self._compiled.get(key)
        if entry is None:
            started = time.perf_counter()
            shapes = {name: list(array.shape) for name, array in feed.items()}
            blob = self.blob_path(shapes)
            imported = self._import_blob(blob) if blob is not None and blob.is_file() else None
            if imported is not None:
                (compiled, mapped), source = imported, "cache"
                mark_used(blob)
            else:
                (compiled, stored), mapped, source = self._compile(shapes, blob), None, "compiled"
                if stored:
                    # the compiled model holds the weights it was compiled from (f16 copies, or the fp32 graph's
                    # mapping); imported from the blob just written they are file pages that can be released
                    del compiled
                    imported = self._import_blob(blob)
                    if imported is None:  # refused right after export: run compiled, without the cache
                        (compiled, _), mapped = self._compile(shapes, None), None
                    else:
                        compiled, mapped = imported
            if mapped is not None:
                release_pages(mapped)  # the import repacked the weights: the blob's pages are not read again
            # by tensor name, not get_any_name(): an output may carry several names (the fp16
            # converter's output Casts add one), and the spec's is only one of them
            names = []
            for index, output in enumerate(compiled.outputs):
                known = [t.name for t in self.spec.outputs if t.name in output.get_names()]
                names.append(known[0] if known else self.spec.outputs[index].name)
            entry = (compiled, compiled.create_infer_request(), names, mapped)
            self._compiled[key] = entry
            self.compile_ms[key] = (time.perf_counter() - started) * 1e3
            self.loaded_from[key] = source
        return entry

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: np.ascontiguousarray(array) for name, array in feed.items()}
        _, request, names, _ = self._compiled_for(feed)
        # share_inputs: no copy of the inputs; share_outputs: the results are views of the request's
        # output tensors, valid until the next infer (the runner contract).
        results = request.infer(feed, share_inputs=True, share_outputs=True)
        out = {}
        for name, tensor in zip(names, results.to_tuple()):
            want = next(t.dtype for t in self.spec.outputs if t.name == name)
            out[name] = tensor if str(tensor.dtype) == want else tensor.astype(want)
        return out

    def _prepare(self, shapes: dict[str, tuple[int, ...]]) -> None:
        # compiled (or imported) for exactly the shapes of the coming calls: the cache key is the feed's shapes
        names = {t.name for t in self.spec.inputs}
        self._compiled_for({name: np.broadcast_to(np.float32(0), shape) for name, shape in shapes.items() if name in names})

    def profiling_info(self) -> list[dict]:
        """Per-node timings of the last inference of every compiled shape (needs ``profile=True``).

        Each record: node name, node type, the kernel OpenVINO ran (``exec_type``, e.g.
        ``brgemm_avx512_amx_bf16``) and the real time in microseconds.
        """
        if not self.profile:
            return []
        records = []
        for _compiled, request, _names, _blob in self._compiled.values():
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

    precision = resolve_precision(precision, cache_dir)
    spec = manifest.graph_spec(name)
    feed = spec.sample_inputs(dims or {d: r.opt for d, r in spec.dims.items()}, seed=seed)
    with OrtRunner(spec, manifest.graph_path(name)) as ort_runner:
        expected = {k: v.copy() for k, v in ort_runner.infer(feed).items()}
    with OpenVinoRunner(spec, manifest.graph_path(name), precision=precision, cache_dir=cache_dir) as ov_runner:
        got = {k: v.copy() for k, v in ov_runner.infer(feed).items()}
    return compare_outputs(spec.name, [t.name for t in spec.outputs], [expected], [got],
                           Tolerance(0.0, 0.0, atol_of_peak=PARITY_TOLERANCE[precision]),
                           reference="onnxruntime-cpu fp32", candidate=f"openvino {precision}")
