"""Backend checks done before any work, and ONNX Runtime IO binding with device-resident tensors.

:func:`require_backend` is what ``maskst-run`` calls first for any backend but ``ort-cpu``: it
answers from what is installed and visible (no engines folder is read, nothing is written) and
raises :class:`maskst.errors.BackendError` (exit code 6) with the fix.

Packaging trap (DESIGN section 6): ``onnxruntime`` (CPU) and ``onnxruntime-gpu`` install the
same ``onnxruntime`` module. Installed together, whichever was installed last silently wins, so
the CUDA provider may or may not be there. maskst's extras are exclusive: ``maskst[cpu]`` or
``maskst[gpu]``, never both.
"""

from __future__ import annotations

import warnings
from importlib import metadata

import numpy as np

from maskst.errors import BackendError, InputError
from maskst.runtime.runners import ORT_BACKENDS, OrtRunner

ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")
BACKENDS = tuple(ORT_BACKENDS) + ("trt",)


def installed_ort_distributions() -> list[str]:
    """Which of ``onnxruntime`` / ``onnxruntime-gpu`` are installed (both: the packaging trap)."""
    found = []
    for dist in ORT_DISTRIBUTIONS:
        try:
            metadata.version(dist)
            found.append(dist)
        except metadata.PackageNotFoundError:
            continue
    return found


def _require_ort_provider(backend: str, allow_fallback: bool) -> None:
    import onnxruntime as ort

    wanted = ORT_BACKENDS[backend][0]
    dists = installed_ort_distributions()
    if len(dists) > 1:
        raise BackendError(
            f"backend {backend}: both onnxruntime and onnxruntime-gpu are installed; they install the same module and "
            "the last one installed wins, so the GPU providers may be missing at random. Fix: pip uninstall -y "
            "onnxruntime onnxruntime-gpu && pip install 'maskst[gpu]' (or 'maskst[cpu]' for CPU only)"
        )
    available = ort.get_available_providers()
    if wanted in available:
        return
    build = dists[0] if dists else "an unknown onnxruntime build"
    explanation = (
        f"backend {backend} needs ONNX Runtime's {wanted}, but this onnxruntime {ort.__version__} ({build}) offers "
        f"only {available}. onnxruntime is the CPU build and onnxruntime-gpu the CUDA/TensorRT build; they install "
        "the same module, so have exactly one: pip uninstall -y onnxruntime && pip install 'maskst[gpu]'"
    )
    if wanted == "TensorrtExecutionProvider" and "CUDAExecutionProvider" in available:
        explanation = (f"backend {backend} needs ONNX Runtime's TensorrtExecutionProvider, which this onnxruntime-gpu "
                       f"{ort.__version__} does not offer (TensorRT libraries not found); install tensorrt "
                       "(pip install 'maskst[gpu]') or use --backend ort-cuda")
    if not allow_fallback:
        raise BackendError(explanation + "; or pass --allow-fallback to run on the CPU")
    warnings.warn(explanation + "; --allow-fallback given: running on the CPU", stacklevel=3)


def trt_runtime_problems() -> list[str]:
    """What keeps the native TensorRT backend from running here (empty: nothing)."""
    from maskst.engines.tensorrt import cuda_devices, trt_gpu_problems

    problems = trt_gpu_problems()
    gpus, _reason = cuda_devices()
    try:
        import torch
    except ImportError:
        problems.append("torch is not installed (the TensorRT runner keeps its device buffers in CUDA torch tensors)")
    else:
        if torch.version.cuda is None:
            problems.append(f"torch {torch.__version__} is a CPU build (the TensorRT runner keeps its device buffers "
                            "in CUDA torch tensors)")
        elif gpus and not torch.cuda.is_available():
            problems.append(f"torch {torch.__version__} (CUDA {torch.version.cuda}) cannot use the GPU "
                            "(driver too old for this torch build?)")
    return problems


def require_backend(backend: str, allow_fallback: bool = False) -> None:
    """Raise BackendError unless ``backend`` can run here; called before any engine is loaded.

    * ``ort-cpu``: always available.
    * ``ort-cuda`` / ``ort-trt``: the provider must be in ``onnxruntime.get_available_providers()``
      (with ``allow_fallback``: a warning instead, and the session runs on the CPU).
    * ``openvino[-f32|-bf16][:GRAPH=CHOICE...]``: the openvino package importable.
    * ``trt``: tensorrt 10.1+ importable, a CUDA device visible, torch with CUDA. There is no
      fallback for the native TensorRT backend (its engines are plans, not ONNX graphs), so
      ``allow_fallback`` does not apply.
    """
    if backend == "ort-cpu":
        return
    if backend in ORT_BACKENDS:
        _require_ort_provider(backend, allow_fallback)
        return
    if backend.split(":")[0].startswith("openvino"):
        from maskst.runtime.openvino_runner import parse_backend

        parse_backend(backend)  # InputError for a malformed per-graph choice
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise BackendError(f"--backend {backend} needs OpenVINO: pip install 'maskst[openvino]'") from None
        return
    if backend != "trt":
        raise InputError(f"backend={backend!r} is not known; choose one of {', '.join(BACKENDS)}")
    from maskst.engines.tensorrt import TRT_INSTALL_HINT

    problems = trt_runtime_problems()
    if problems:
        hint = "; --allow-fallback does not apply to --backend trt (use --backend ort-cpu for the CPU)" if allow_fallback else ""
        raise BackendError("--backend trt cannot run on this machine: " + "; ".join(problems)
                           + f". Fix: {TRT_INSTALL_HINT}{hint}")


# --------------------------------------------------------------------------- device-resident ORT IO binding


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(int32)": "int32", "tensor(bool)": "bool"}


class OrtDeviceRunner(OrtRunner):
    """OrtRunner whose inputs and outputs can stay on the session's device (ONNX Runtime OrtValues).

    ``infer_ortvalues`` binds OrtValue inputs as they are (``IOBinding.bind_ortvalue_input``) and
    lets ONNX Runtime allocate the outputs on the device of the session's first provider
    (``bind_output(name, "cuda", device_id)`` for CUDA/TensorRT EP, ``"cpu"`` on CPU), so the
    image conditioner's ``ip_tokens`` or the text encoder's embeddings go into the UNet without a
    host round trip. ``infer`` (numpy in/out) still works as in OrtRunner. Bring results to the
    host with ``OrtValue.numpy()``.
    """

    def __init__(self, *args, device_id: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.device_id = device_id
        self.device_type = "cpu"

    def _activate(self) -> None:
        super()._activate()
        active = self.session.get_providers()[0]
        self.device_type = "cuda" if active in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"

    def to_device(self, array: np.ndarray):
        """numpy -> OrtValue on this runner's device (one host-to-device copy)."""
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device_type, self.device_id)

    def infer_ortvalues(self, feed: dict, check_inputs: bool = True) -> dict:
        """feed: {input: OrtValue or numpy array}; returns {output: OrtValue on this runner's device}.

        The returned OrtValues are new allocations owned by the caller (not reused buffers).
        """
        if not self.is_active:
            raise BackendError(f"{self.spec.name}: runner used before activate()")
        values = {name: (v if not isinstance(v, np.ndarray) else self.to_device(v)) for name, v in feed.items()}
        if check_inputs:
            # zero-byte stand-ins with the right shape and dtype, for GraphSpec.check_feed
            self.spec.check_feed({name: np.broadcast_to(np.zeros((), _ORT_TYPES.get(v.data_type(), "float64")),
                                                        tuple(v.shape())) for name, v in values.items()})
        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, value in values.items():
            binding.bind_ortvalue_input(name, value)
        for t in self.spec.outputs:
            binding.bind_output(t.name, self.device_type, self.device_id)
        self.session.run_with_iobinding(binding)
        return dict(zip((t.name for t in self.spec.outputs), binding.get_outputs()))
