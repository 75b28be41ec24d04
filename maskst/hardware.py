"""What this machine offers: its CPU (model, ISA flags, cores), NVIDIA GPUs, TensorRT, a CUDA build of torch,
ONNX Runtime's providers.

Every probe lives here once; the engine builders (``maskst.engines``) and the runtime backends
both ask these functions and never probe on their own. Nothing here imports ``tensorrt``, torch
or CUDA at module level, and every probe answers (with a reason) instead of raising on a machine
without a GPU.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
from importlib import metadata
from pathlib import Path

from maskst.errors import BackendError

MIN_TENSORRT = (10, 1)  # ICudaEngine.device_memory_size_v2 and IExecutionContext.set_device_memory
TRT_INSTALL_HINT = ("install the GPU extra on a machine with an NVIDIA GPU and driver: pip install 'maskst[gpu]' "
                    "(after pip uninstall onnxruntime), plus a CUDA build of torch for the runtime's device buffers "
                    "(pip install torch --index-url https://download.pytorch.org/whl/cu128)")
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")


# oneDNN's CPU dispatcher levels that model CPUs without AMX (oneDNN "CPU dispatcher control":
# ONEDNN_MAX_CPU_ISA, read by oneDNN itself in torch and in OpenVINO's CPU plugin), lowest first, each with the
# /proc/cpuinfo flags whose kernels it adds. A cap hides every flag of the levels above it.
ISA_CAP_LEVELS = (
    ("avx2", ("avx2", "fma")),
    ("avx2_vnni", ("avx_vnni",)),
    ("avx512_core", ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd")),
    ("avx512_core_vnni", ("avx512_vnni",)),
    ("avx512_core_bf16", ("avx512_bf16",)),
    ("avx512_core_fp16", ("avx512_fp16",)),
    ("avx512_core_amx", ("amx_tile", "amx_bf16", "amx_int8", "amx_fp16")),
)
ISA_CAPS = tuple(name for name, _flags in ISA_CAP_LEVELS[:5])  # the caps maskst-bench offers (CPUs without AMX/FP16)
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")  # oneDNN's names for it (the second: older releases)


@dataclasses.dataclass(frozen=True)
class CpuInfo:
    """The CPU as ``/proc/cpuinfo`` describes it (Linux; empty elsewhere): ``model`` (model name),
    ``flags`` (ISA flags, space separated, as listed, less those above ``isa_cap``), ``physical_cores``
    (distinct physical/core id pairs; None where unknown), ``isa_cap`` (the oneDNN dispatcher cap in effect
    for this process, lower case, e.g. ``avx512_core_bf16``; None: the kernels may use every listed flag)."""

    model: str | None
    flags: str
    physical_cores: int | None
    isa_cap: str | None = None

    def has(self, *flags: str) -> bool:
        """Whether the CPU lists any of ``flags`` (e.g. ``"avx512_vnni", "amx_int8"``) and the cap allows it."""
        listed = set(self.flags.split())
        return any(flag in listed for flag in flags)

    def capped(self, cap: str | None) -> "CpuInfo":
        """This CPU as oneDNN's kernels see it under ``ONEDNN_MAX_CPU_ISA=cap`` (one of :data:`ISA_CAPS`,
        any case; None or ``default``: uncapped). Flags keep their order, so the uncapped string is unchanged."""
        if cap is None or cap.lower() == "default":
            return self
        names = [name for name, _flags in ISA_CAP_LEVELS]
        if cap.lower() not in names:  # a level maskst does not model (sse41, avx10_*): recorded, nothing hidden
            return dataclasses.replace(self, isa_cap=cap.lower())
        hidden = {flag for _name, flags in ISA_CAP_LEVELS[names.index(cap.lower()) + 1:] for flag in flags}
        return dataclasses.replace(self, flags=" ".join(f for f in self.flags.split() if f not in hidden),
                                   isa_cap=cap.lower())


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's :class:`CpuInfo`, read once per process, capped as oneDNN is in this process.

    The cap is oneDNN's own setting (its environment variable, read by oneDNN at its first kernel), not
    maskst configuration: it is read here only so that what depends on the kernels (the default precision,
    the compiled-model cache key, the machine in a bench report) describes the kernels that really run.
    ``maskst-bench --cpu-isa-cap`` is what sets it, for its worker processes.
    """
    import os

    cap = next((os.environ[name] for name in ISA_CAP_VARIABLES if os.environ.get(name)), None)
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return CpuInfo(None, "", None)  # not Linux
    model, flags, cores, physical, core_id = None, None, set(), None, None
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name" and model is None:
            model = value
        elif key == "flags" and flags is None:
            flags = value
        elif key == "physical id":
            physical = value
        elif key == "core id":
            core_id = value
        elif not line.strip() and core_id is not None:
            cores.add((physical, core_id))
            physical = core_id = None
    if core_id is not None:
        cores.add((physical, core_id))
    return CpuInfo(model, flags or "", len(cores) or None).capped(cap)


def version_tuple(version: str) -> tuple[int, ...]:
    """'10.8.0.43' -> (10, 8, 0, 43); non-numeric tails ('10.8.0.post1') are dropped."""
    out = []
    for part in str(version).split("."):
        digits = "".join(ch for ch in part if ch.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: tuple[int, int]
    total_memory: int | None = None

    def describe(self) -> str:
        return f"{self.name} (compute capability {self.compute_capability[0]}.{self.compute_capability[1]})"


def _load_library(names: tuple[str, ...]):
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def cuda_devices() -> tuple[list[GpuInfo], str]:
    """GPUs the CUDA driver sees (honours CUDA_VISIBLE_DEVICES) and a reason if there are none.

    Uses the driver API through ctypes (``cuInit``, ``cuDeviceGetCount``, ``cuDeviceGet``,
    ``cuDeviceGetName``, ``cuDeviceGetAttribute``, ``cuDeviceTotalMem_v2``): no torch and no
    cuda-python needed, and it answers on a machine without any CUDA library (no devices).
    """
    lib = _load_library(("libcuda.so.1", "libcuda.so", "nvcuda.dll"))
    if lib is None:
        return [], "no NVIDIA driver library (libcuda) on this machine"
    rc = lib.cuInit(0)
    if rc != 0:
        return [], f"the CUDA driver failed to initialise (cuInit error {rc}: no usable GPU, or driver/GPU mismatch)"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return [], "the CUDA driver sees no GPU (check CUDA_VISIBLE_DEVICES and nvidia-smi)"
    gpus = []
    for index in range(count.value):
        dev = ctypes.c_int(0)
        lib.cuDeviceGet(ctypes.byref(dev), index)
        name = ctypes.create_string_buffer(256)
        lib.cuDeviceGetName(name, 256, dev)
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        lib.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
        lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR
        total = ctypes.c_size_t(0)
        has_total = hasattr(lib, "cuDeviceTotalMem_v2") and lib.cuDeviceTotalMem_v2(ctypes.byref(total), dev) == 0
        gpus.append(GpuInfo(index, name.value.decode(errors="replace"), (major.value, minor.value),
                            total.value if has_total else None))
    return gpus, ""


def driver_versions() -> dict[str, str | None]:
    """{'driver': '570.86.15' (NVML), 'driver_cuda': '12.8' (newest CUDA the driver supports)}."""
    out: dict[str, str | None] = {"driver": None, "driver_cuda": None}
    cuda = _load_library(("libcuda.so.1", "libcuda.so", "nvcuda.dll"))
    if cuda is not None:
        v = ctypes.c_int(0)
        if cuda.cuDriverGetVersion(ctypes.byref(v)) == 0 and v.value:
            out["driver_cuda"] = f"{v.value // 1000}.{v.value % 1000 // 10}"
    nvml = _load_library(("libnvidia-ml.so.1", "libnvidia-ml.so", "nvml.dll"))
    if nvml is not None and nvml.nvmlInit_v2() == 0:
        buf = ctypes.create_string_buffer(96)
        if nvml.nvmlSystemGetDriverVersion(buf, 96) == 0:
            out["driver"] = buf.value.decode(errors="replace")
        nvml.nvmlShutdown()
    return out


def tensorrt_or_problem():
    """(tensorrt module, None) or (None, what is wrong with the TensorRT install)."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        return None, f"TensorRT is not installed (import tensorrt failed: {exc})"
    if version_tuple(trt.__version__)[:2] < MIN_TENSORRT:
        return None, (f"TensorRT {trt.__version__} is installed; maskst needs TensorRT "
                      f"{MIN_TENSORRT[0]}.{MIN_TENSORRT[1]} or newer (10.x or 11.x): pip install -U tensorrt")
    return trt, None


def import_tensorrt():
    """The ``tensorrt`` module (10.1+), or BackendError naming what is missing and how to install it."""
    trt, problem = tensorrt_or_problem()
    if trt is None:
        raise BackendError(f"{problem}; {TRT_INSTALL_HINT}")
    return trt


def require_trt_build_support():
    """Check, before any export work, that this machine can build TensorRT plans.

    Returns (tensorrt module, GpuInfo of device 0). Raises one BackendError (exit code 6) naming
    every missing piece: tensorrt not importable or older than 10.1, no GPU visible. Plans are
    built for the GPU they will run on, so there is no CPU-only build path.
    """
    problems = trt_gpu_problems()
    if problems:
        raise BackendError("--target trt cannot build TensorRT plans on this machine: " + "; ".join(problems)
                           + f". Nothing was written. Fix: {TRT_INSTALL_HINT}; or build ONNX graphs only with --target onnx")
    return tensorrt_or_problem()[0], cuda_devices()[0][0]


def trt_gpu_problems() -> list[str]:
    """What keeps TensorRT from running here: no visible NVIDIA GPU, tensorrt missing or too old."""
    problems = []
    gpus, reason = cuda_devices()
    if not gpus:
        problems.append(f"no NVIDIA GPU: {reason}")
    _trt, problem = tensorrt_or_problem()
    if problem:
        problems.append(problem)
    return problems


def tensorrt_wheel() -> str | None:
    """The installed TensorRT distribution (names the CUDA major it was built for)."""
    for dist in ("tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11", "tensorrt"):
        try:
            return f"{dist}=={metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return None


# --------------------------------------------------------------------------- torch with CUDA


def torch_cuda_or_none():
    """The torch module if it can use a CUDA device, else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.version.cuda is not None and torch.cuda.is_available() else None


def torch_cuda_version() -> str | None:
    """The CUDA version the installed torch was built for (None: no torch, or a CPU build)."""
    try:
        import torch
    except ImportError:
        return None
    return torch.version.cuda


def trt_runtime_problems() -> list[str]:
    """What keeps the native TensorRT backend from running here (empty: nothing): GPU, TensorRT,
    and a CUDA build of torch (the runner keeps its device buffers in CUDA torch tensors)."""
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


# --------------------------------------------------------------------------- ONNX Runtime


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


def ort_providers() -> list[str]:
    """ONNX Runtime's available execution providers in this environment."""
    import onnxruntime as ort

    return list(ort.get_available_providers())
