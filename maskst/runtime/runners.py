"""One runner interface for every backend (DESIGN section 6), after Polygraphy's runners.

A runner wraps one exported graph: ``activate()`` creates the session once, ``infer(feed)`` runs
it, ``deactivate()`` frees it; runners are context managers. ``infer`` checks the feed against the
graph's IO spec (names, dtypes, ranks, profile ranges) unless ``check_inputs=False`` (the
denoising hot path, whose shapes were checked once before the loop). Outputs are written into
preallocated buffers reused across calls with the same shapes: the returned arrays are views that
stay valid until the next ``infer`` of the same runner; copy what must outlive that.
"""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np

from maskst.errors import BackendError, EngineError
from maskst.contract.spec import GraphSpec


class Runner(abc.ABC):
    """Base runner: spec-checked inference on one graph."""

    backend = "abstract"

    def __init__(self, spec: GraphSpec, path: Path):
        self.spec = spec
        self.path = Path(path)
        self.is_active = False

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc):
        self.deactivate()

    def activate(self) -> None:
        if not self.is_active:
            self._activate()
            self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def infer(self, feed: dict[str, np.ndarray], check_inputs: bool = True) -> dict[str, np.ndarray]:
        """Run the graph. feed: {input name: array}; returns {output name: array view}."""
        if not self.is_active:
            raise BackendError(f"{self.spec.name}: runner used before activate()")
        if check_inputs:
            self.spec.check_feed(feed)
        return self._infer(feed)

    def prepare(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Get ready for calls with these input shapes ({input name: shape}) without running the graph.

        Backends that compile per input shape (OpenVINO) compile or load from their cache now, so the
        caller decides when that memory-hungry moment comes (the pipeline loads its largest graph
        first); the others have nothing to do.
        """
        if not self.is_active:
            raise BackendError(f"{self.spec.name}: runner used before activate()")
        self._prepare({name: tuple(shape) for name, shape in shapes.items()})

    def _prepare(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Backend part of :meth:`prepare` (default: nothing to prepare)."""

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _deactivate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


ORT_PROVIDERS = {
    "ort-cpu": ["CPUExecutionProvider"],
    "ort-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "ort-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


# fp32 graphs compute in fp32: the CUDA provider's TF32 default (on Ampere and newer) would round
# matmul inputs to 10 mantissa bits (as TensorRT plans are built with TF32 off)
PROVIDER_OPTIONS = {"CUDAExecutionProvider": {"use_tf32": "0"}}


class OrtRunner(Runner):
    """ONNX Runtime runner with IO binding into preallocated host output buffers.

    The first provider in the list is the one asked for; if ONNX Runtime activates the session
    without it (it silently falls back to CPU when CUDA or TensorRT cannot load), that is a
    :class:`BackendError` unless ``allow_fallback`` is set.

    ``cache_dir`` (``ort-cpu`` only): where the optimized graph is cached (:mod:`maskst.runtime.ort_cache`;
    default :func:`~maskst.runtime.ort_cache.default_ort_cache_dir`, ``False`` disables it). ``loaded_from`` says
    what the session was made from: ``"optimized"`` (the graph, optimized now) or ``"cache"``.
    ``cache_limit_bytes``: the most the cache's entries may take (the least recently used go after a new one is
    stored; None: no limit).
    """

    def __init__(self, spec: GraphSpec, path: Path, backend: str = "ort-cpu", threads: int | None = None,
                 allow_fallback: bool = False, profile_prefix: str | None = None, cache_dir: Path | bool | None = None,
                 cache_limit_bytes: int | None = None):
        super().__init__(spec, path)
        if backend not in ORT_PROVIDERS:
            raise BackendError(f"backend={backend!r} is not an ONNX Runtime backend; choose one of {', '.join(ORT_PROVIDERS)}")
        self.backend = backend
        self.providers = ORT_PROVIDERS[backend]
        self.threads = threads
        self.allow_fallback = allow_fallback
        self.profile_prefix = profile_prefix
        self.session = None
        self._buffers: dict[tuple, dict[str, np.ndarray]] = {}
        if backend != "ort-cpu" or cache_dir is False:
            self.cache_dir = None  # GPU providers' sessions are not cached
        else:
            from maskst.runtime.ort_cache import default_ort_cache_dir

            self.cache_dir = default_ort_cache_dir() if cache_dir is None or cache_dir is True else Path(cache_dir)
        self.cache_limit_bytes = cache_limit_bytes
        self.loaded_from: str | None = None

    def _activate(self) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        wanted = self.providers[0]
        if wanted not in available and not self.allow_fallback:
            raise BackendError(
                f"backend {self.backend} needs ONNX Runtime's {wanted}, but this onnxruntime offers {available}; "
                "install the GPU build (pip install 'maskst[gpu]', after uninstalling onnxruntime) or pass "
                "--allow-fallback to run on CPU"
            )
        providers = [(p, PROVIDER_OPTIONS.get(p, {})) for p in self.providers if p in available]
        self.session, self.loaded_from = self._cached_session(providers)
        if self.session is None:
            self.loaded_from = "optimized"
            try:
                self.session = ort.InferenceSession(str(self.path), self._session_options(), providers=providers)
            except Exception as exc:  # onnxruntime raises its own pybind exception types (Fail, InvalidGraph, ...)
                raise EngineError(f"{self.path} could not be loaded by ONNX Runtime ({exc}); rebuild it with "
                                  "maskst-export --force") from None
        active = self.session.get_providers()
        if active[0] != wanted and not self.allow_fallback:
            raise BackendError(f"{self.spec.name}: asked for {wanted} but ONNX Runtime activated {active}; pass --allow-fallback to accept")
        self._binding = self.session.io_binding()

    def _session_options(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        if self.profile_prefix:
            options.enable_profiling = True
            options.profile_file_prefix = self.profile_prefix
        return options

    def _cached_session(self, providers) -> tuple[object | None, str | None]:
        """(session, "cache") from the cache, or (session, "optimized") optimized now and stored there; (None, None)
        without a cache or when storing failed (then the caller optimizes without it)."""
        if self.cache_dir is None or not self.path.is_file():
            return None, None  # a missing graph is reported by the plain session
        from maskst.runtime.ort_cache import cached_session

        return cached_session(self.cache_dir, self.spec.name, self.path, self._session_options, providers,
                              self.cache_limit_bytes)

    def _deactivate(self) -> None:
        self.session = None
        self._buffers.clear()

    def end_profiling(self) -> str | None:
        """Stop ONNX Runtime's per-operator profiling; returns the JSON trace file it wrote."""
        return self.session.end_profiling() if self.session is not None and self.profile_prefix else None

    def _outputs_for(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        dims = self.spec.dims_of(feed)
        key = tuple(sorted(dims.items()))
        if key not in self._buffers:
            shapes = self.spec.shapes(dims)
            self._buffers[key] = {t.name: np.empty(shapes[t.name], dtype=t.dtype) for t in self.spec.outputs}
        return self._buffers[key]

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, array in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        outputs = self._outputs_for(feed)
        for name, buffer in outputs.items():
            binding.bind_output(name, "cpu", element_type=buffer.dtype.type, shape=buffer.shape,
                                buffer_ptr=buffer.ctypes.data)
        self.session.run_with_iobinding(binding)
        return outputs
