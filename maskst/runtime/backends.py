"""The backend registry: every backend is one class registered under its name (``@register``).

A backend declares what it is (device, precisions, profiling, whether ``--allow-fallback``
applies), checks before any engine loads that it can run here (:meth:`Backend.require`, from what
is installed and visible; nothing is read or written), and makes the runner of one graph with one
constructor signature (:meth:`Backend.runner`). Backend names are parsed and validated here and
nowhere else (:func:`parse_backend`); the CLIs, the pipeline and the benchmarks all ask this module.

Adding a backend: one class below (or in its runner's module) plus its ``@register`` line.

Packaging trap (DESIGN section 6): ``onnxruntime`` (CPU) and ``onnxruntime-gpu`` install the same
``onnxruntime`` module; installed together, whichever was installed last silently wins. maskst's
extras are exclusive: ``maskst[cpu]`` or ``maskst[gpu]``, never both.
"""

from __future__ import annotations

import abc
import dataclasses
import warnings
from pathlib import Path
from typing import ClassVar

from maskst.engines.manifest import Manifest
from maskst.errors import BackendError, EngineError, InputError
from maskst.hardware import TRT_INSTALL_HINT, installed_ort_distributions, ort_providers, trt_runtime_problems
from maskst.runtime.runners import ORT_PROVIDERS, OrtRunner, Runner


@dataclasses.dataclass(frozen=True)
class RunnerOptions:
    """What every backend's runners are made with (one signature for all)."""

    threads: int | None = None  # intra-op threads per session (None: the library's default)
    allow_fallback: bool = False  # accept a GPU provider silently falling back to the CPU
    profile_prefix: str | None = None  # per-operator profiling (ONNX Runtime file prefix / OpenVINO counters)
    # compiled-model caches: None = the defaults (~/.cache/maskst/openvino, ~/.cache/maskst/onnxruntime), False = off,
    # a folder = OpenVINO's blobs there and ort-cpu's optimized graphs in its onnxruntime/ subfolder
    compile_cache: Path | bool | None = None
    # the most each of those caches may take on disk, in GB (1e9 bytes): the least recently used entries are removed
    # after a new one is written; None = no limit (OpenVINO writes one blob per input shape: ~1.7 GB for a
    # full-size bf16 UNet, 3.5 GB in f32)
    compile_cache_limit_gb: float | None = None

    def __post_init__(self):
        limit = self.compile_cache_limit_gb
        if limit is not None and not limit > 0:
            raise InputError(f"compile cache limit {limit!r} GB: give a size above 0 (GB), or none for no limit")
        if limit is not None and self.compile_cache is False:
            raise InputError(f"--compile-cache-limit {limit:g} (compile_cache_limit_gb) limits a cache that "
                             f"--no-compile-cache (compile_cache=False) turns off; give one of the two")

    @property
    def cache_limit_bytes(self) -> int | None:
        """:attr:`compile_cache_limit_gb` in bytes (None: no limit)."""
        return None if self.compile_cache_limit_gb is None else int(self.compile_cache_limit_gb * 1e9)


class Backend(abc.ABC):
    """One way of running the exported graphs. Subclasses set the class attributes and :meth:`runner`."""

    name: ClassVar[str]
    device: ClassVar[str]  # "cpu" or "cuda"
    precisions: ClassVar[tuple[str, ...]]  # what its kernels compute in
    profiling: ClassVar[str | None]  # what per-operator profiling it offers (None: none)
    fallback: ClassVar[bool]  # whether --allow-fallback applies (a GPU provider that may fall back)
    summary: ClassVar[str]  # one line for --help

    def __init__(self, variant: str = ""):
        """``variant``: what follows ``NAME:`` in a backend name (per-graph choices); most take none."""
        if variant:
            raise InputError(f"backend {self.name!r} takes no ':' options (got {variant!r})")
        self.variant = variant

    @property
    def spec(self) -> str:
        """The backend name as written by the user (with its variant)."""
        return f"{self.name}:{self.variant}" if self.variant else self.name

    def require(self, allow_fallback: bool = False) -> None:
        """BackendError (exit 6) naming what is missing and the fix, unless this backend can run here."""
        if allow_fallback and not self.fallback:
            warnings.warn(f"--allow-fallback has no effect with backend {self.spec} (it has no fallback)", stacklevel=3)

    @abc.abstractmethod
    def runner(self, manifest: Manifest, graph: str, options: RunnerOptions) -> Runner:
        """The (inactive) runner of ``graph`` of an engines folder."""


BACKENDS: dict[str, type[Backend]] = {}


def register(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make a backend known under ``cls.name``."""
    if cls.name in BACKENDS:
        raise ValueError(f"backend {cls.name!r} registered twice")
    BACKENDS[cls.name] = cls
    return cls


def backend_names() -> tuple[str, ...]:
    return tuple(BACKENDS)


def backends_help() -> str:
    return "; ".join(f"{name}: {cls.summary}" for name, cls in BACKENDS.items())


def parse_backend(text: str) -> Backend:
    """The backend of a name such as ``ort-cpu`` or ``openvino:vae_decoder=bf16``; InputError otherwise."""
    base, _, variant = str(text).partition(":")
    if base not in BACKENDS:
        raise InputError(f"backend={text!r} is not known; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[base](variant)


def require_backend(text: str, allow_fallback: bool = False) -> Backend:
    """Parse and check a backend before any engine is loaded (what every CLI calls first)."""
    backend = parse_backend(text)
    backend.require(allow_fallback)
    return backend


# --------------------------------------------------------------------------- ONNX Runtime


class _OrtBackend(Backend):
    device = "cpu"
    precisions = ("fp32", "fp16")  # whatever the ONNX graphs hold
    profiling = "onnxruntime per-operator JSON trace"

    def runner(self, manifest: Manifest, graph: str, options: RunnerOptions) -> Runner:
        cache = options.compile_cache
        return OrtRunner(manifest.graph_spec(graph), manifest.graph_path(graph), backend=self.name,
                         threads=options.threads, allow_fallback=options.allow_fallback,
                         profile_prefix=options.profile_prefix,
                         cache_dir=Path(cache) / "onnxruntime" if isinstance(cache, (str, Path)) else cache,
                         cache_limit_bytes=options.cache_limit_bytes)

    def require(self, allow_fallback: bool = False) -> None:
        super().require(allow_fallback)
        wanted = ORT_PROVIDERS[self.name][0]
        dists = installed_ort_distributions()
        if len(dists) > 1:
            raise BackendError(
                f"backend {self.name}: both onnxruntime and onnxruntime-gpu are installed; they install the same module "
                "and the last one installed wins, so the GPU providers may be missing at random. Fix: pip uninstall -y "
                "onnxruntime onnxruntime-gpu && pip install 'maskst[gpu]' (or 'maskst[cpu]' for CPU only)"
            )
        available = ort_providers()
        if wanted in available:
            return
        import onnxruntime as ort

        build = dists[0] if dists else "an unknown onnxruntime build"
        explanation = (
            f"backend {self.name} needs ONNX Runtime's {wanted}, but this onnxruntime {ort.__version__} ({build}) offers "
            f"only {available}. onnxruntime is the CPU build and onnxruntime-gpu the CUDA/TensorRT build; they install "
            "the same module, so have exactly one: pip uninstall -y onnxruntime && pip install 'maskst[gpu]'"
        )
        if wanted == "TensorrtExecutionProvider" and "CUDAExecutionProvider" in available:
            explanation = (f"backend {self.name} needs ONNX Runtime's TensorrtExecutionProvider, which this "
                           f"onnxruntime-gpu {ort.__version__} does not offer (TensorRT libraries not found); install "
                           "tensorrt (pip install 'maskst[gpu]') or use --backend ort-cuda")
        if not allow_fallback:
            raise BackendError(explanation + "; or pass --allow-fallback to run on the CPU")
        warnings.warn(explanation + "; --allow-fallback given: running on the CPU", stacklevel=3)


@register
class OrtCpuBackend(_OrtBackend):
    name = "ort-cpu"
    fallback = False
    summary = "ONNX Runtime on the CPU (the exact default)"

    def require(self, allow_fallback: bool = False) -> None:
        Backend.require(self, allow_fallback)  # the CPU provider is always there


@register
class OrtCudaBackend(_OrtBackend):
    name = "ort-cuda"
    device = "cuda"
    fallback = True
    summary = "ONNX Runtime's CUDA provider (onnxruntime-gpu)"


@register
class OrtTensorrtBackend(_OrtBackend):
    name = "ort-trt"
    device = "cuda"
    fallback = True
    summary = "ONNX Runtime's TensorRT provider (onnxruntime-gpu + tensorrt)"


# --------------------------------------------------------------------------- native TensorRT


@register
class TensorrtBackend(Backend):
    name = "trt"
    device = "cuda"
    precisions = ("fp32", "fp16")
    profiling = None
    fallback = False  # its engines are plans, not ONNX graphs: there is nothing to fall back to
    summary = "native TensorRT plans (maskst-export --target trt)"

    def require(self, allow_fallback: bool = False) -> None:
        super().require(allow_fallback)
        problems = trt_runtime_problems()
        if problems:
            raise BackendError("--backend trt cannot run on this machine: " + "; ".join(problems)
                               + f". Fix: {TRT_INSTALL_HINT}; or use --backend ort-cpu for the CPU")

    def runner(self, manifest: Manifest, graph: str, options: RunnerOptions) -> Runner:
        from maskst.runtime.trt_runner import TrtRunner

        return TrtRunner.from_manifest(manifest, graph)


# --------------------------------------------------------------------------- OpenVINO


class _OpenVinoBackend(Backend):
    device = "cpu"
    precisions = ("f32", "bf16")
    profiling = "OpenVINO per-node counters (PERF_COUNT)"
    fallback = False  # runs on the CPU already
    precision: ClassVar[str]  # what "auto" graphs run in: auto (bf16 where it pays on the CPU: bf16_probe), f32, bf16

    def __init__(self, variant: str = ""):
        from maskst.runtime.openvino_runner import graph_choices

        self.variant = variant
        self.choices = graph_choices(self.precision, variant, self.spec)  # InputError for a malformed choice

    def require(self, allow_fallback: bool = False) -> None:
        super().require(allow_fallback)
        import importlib.util

        if importlib.util.find_spec("openvino") is None:
            raise BackendError(f"backend {self.spec} needs the openvino package: pip install 'maskst[openvino]'")

    def runner(self, manifest: Manifest, graph: str, options: RunnerOptions) -> Runner:
        from maskst.runtime.openvino_runner import OpenVinoRunner, graph_choice

        choice = graph_choice(self.choices, graph)
        if choice in ORT_PROVIDERS:  # a graph kept on ONNX Runtime (the exact masking)
            return BACKENDS[choice]().runner(manifest, graph, options)
        return OpenVinoRunner(manifest.graph_spec(graph), manifest.graph_path(graph), precision=choice,
                              cache_dir=options.compile_cache, threads=options.threads,
                              profile=options.profile_prefix is not None, cache_limit_bytes=options.cache_limit_bytes)


@register
class OpenVinoBackend(_OpenVinoBackend):
    name = "openvino"
    precision = "auto"
    summary = ("OpenVINO on the CPU: bf16 where it pays on the CPU (AMX, or measured), VAE f32, masking on ONNX Runtime; "
               "per graph: openvino:vae_decoder=bf16")


@register
class OpenVinoF32Backend(_OpenVinoBackend):
    name = "openvino-f32"
    precision = "f32"
    summary = "OpenVINO, every graph f32 (masking on ONNX Runtime)"


@register
class OpenVinoBf16Backend(_OpenVinoBackend):
    name = "openvino-bf16"
    precision = "bf16"
    summary = "OpenVINO, every graph bf16 (masking on ONNX Runtime)"


@register
class OpenVinoInt8Backend(_OpenVinoBackend):
    """The int8 IRs of ``maskst-export --int8`` for the UNet and the VAE decoder, for the DeepCache graphs
    ``unet_deep`` / ``unet_shallow`` where the engines have them, and for the image encoder where the set's
    scheme quantizes it (the calibrated ones; a weight-only set leaves it float by design: it then runs as
    ``openvino`` runs it). Their FakeQuantize'd convolutions and MatMuls run as AMX-INT8 / VNNI kernels; what is
    not int8 in them computes in bf16 wherever the CPU has native bf16 (memory-bound work:
    :func:`~maskst.runtime.openvino_runner.int8_float_precision`). Every other graph runs as ``openvino`` runs
    it (``auto``: bf16 where it pays). A graph the variant names (``openvino-int8:unet=bf16``; the DeepCache
    graphs follow ``unet`` unless named) runs its fp32 graph as ``openvino`` would.

    Engines whose int8 set lacks a graph it should hold (an int8 set exported before ``--int8`` quantized the
    DeepCache graphs or the image encoder) are refused with the fix, not run in bf16 unseen: the user asked for
    int8, and ``openvino-int8:unet_deep=auto:unet_shallow=auto`` (``:image_encoder=auto``) says the float graphs
    out loud (in the backend name every report and PNG records)."""

    name = "openvino-int8"
    precision = "auto"
    precisions = ("int8", "f32", "bf16")
    summary = ("OpenVINO with the int8 UNet, VAE decoder and image encoder of maskst-export --int8 (NNCF; with "
               "--deepcache the int8 unet_deep / unet_shallow too), the rest as openvino (bf16 where it pays); per graph as "
               "openvino, e.g. openvino-int8:unet=bf16 (int8 VAE only)")

    def runner(self, manifest: Manifest, graph: str, options: RunnerOptions) -> Runner:
        from maskst.deepcache import DEEP_GRAPH, EXPORT_FLAG, SHALLOW_GRAPH
        from maskst.engines.int8 import INT8_GRAPHS, Int8Scheme, graph_scheme, int8_graph
        from maskst.runtime.openvino_runner import OpenVinoRunner, int8_float_precision, named_graphs

        if graph not in INT8_GRAPHS or graph in named_graphs(self.variant):  # e.g. openvino-int8:unet=bf16
            return super().runner(manifest, graph, options)
        located = int8_graph(manifest.folder, manifest.data, graph)
        if located is None and "int8" not in manifest.data:
            raise EngineError(f"backend {self.spec}: the engines folder {manifest.folder} has no int8 {graph} graph; "
                              "re-export with maskst-export --int8 (or use --backend openvino)")
        set_scheme = Int8Scheme(manifest.data["int8"]["scheme"])
        if located is None and graph_scheme(graph, set_scheme) is None:
            return super().runner(manifest, graph, options)  # a graph the set's scheme leaves in float, by design
        if located is None and graph in (DEEP_GRAPH, SHALLOW_GRAPH):
            raise EngineError(
                f"backend {self.spec}: the int8 set of the engines folder {manifest.folder} has no int8 {graph} "
                "(it was exported before maskst-export --int8 quantized the DeepCache graphs); re-export with "
                f"maskst-export --int8 {EXPORT_FLAG} --force, or run the DeepCache graphs from their fp32 graphs "
                f"(bf16 where it pays) explicitly: --backend {self.spec}:{DEEP_GRAPH}=auto:{SHALLOW_GRAPH}=auto")
        if located is None:
            raise EngineError(
                f"backend {self.spec}: the int8 set of the engines folder {manifest.folder} has no int8 {graph} "
                f"(it was exported before maskst-export --int8 quantized the {graph}); re-export with "
                f"maskst-export --int8 --force, or run it from its fp32 graph (bf16 where it pays) "
                f"explicitly: --backend {self.spec}:{graph}=auto")
        # the IR's int8 weights are what it computes from: no f16 weight compression on top
        return OpenVinoRunner(manifest.graph_spec(graph), located.xml, precision=int8_float_precision(),
                              cache_dir=options.compile_cache, cache_limit_bytes=options.cache_limit_bytes,
                              threads=options.threads, profile=options.profile_prefix is not None,
                              compress_weights=False, int8_scheme=graph_scheme(graph, set_scheme).value)


def engines_have_int8(manifest_data: dict) -> bool:
    """Whether an engines manifest lists int8 graphs (``maskst-export --int8``)."""
    return bool(manifest_data.get("int8", {}).get("graphs"))


def default_cpu_backends(int8_engines: bool = False, isa_cap: str | None = None) -> list[str]:
    """Every CPU backend and precision that applies to this machine (what maskst-bench runs by default):
    ``ort-cpu``; with openvino installed ``openvino-f32`` and, where the CPU has native bf16 (AMX or
    AVX-512-BF16), ``openvino`` (``auto``: bf16 where it pays, measured without AMX; VAE fp32) and
    ``openvino-bf16`` (every graph bf16). On a CPU without native bf16 ``openvino`` would run what
    ``openvino-f32`` runs, so it is left out; where bf16 is native but measured slower it stays, and its report
    shows the f32 it chose (the bench's workers may run under an ISA cap this process does not measure under).
    ``openvino-int8`` where the engines have int8 graphs (``int8_engines``) and OpenVINO has int8 kernels for
    the CPU (AVX2 and up; VNNI and AMX-INT8 faster). ``isa_cap``: decide for the CPU as oneDNN's kernels see it
    under that cap (:meth:`maskst.hardware.CpuInfo.capped`; ``maskst-bench --cpu-isa-cap``)."""
    import importlib.util

    names = ["ort-cpu"]
    if importlib.util.find_spec("openvino") is None:
        return names
    from maskst.runtime.openvino_runner import native_bf16, native_int8

    names.append("openvino-f32")
    if native_bf16(isa_cap):
        names += ["openvino", "openvino-bf16"]
    if int8_engines and native_int8(isa_cap):
        names.append("openvino-int8")
    return names
