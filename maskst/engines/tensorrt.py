"""``--target trt``: TensorRT plans built from the exported ONNX graphs, and the facts around them.

Nothing here imports ``tensorrt`` or CUDA at module level: the pure parts (profile derivation,
plan names, compatibility of a built set with this machine, rebuild command, buffer planning) run
and are tested on any machine; :func:`build_plans` and the probes need an NVIDIA GPU.

Build (one plan per graph, :func:`build_plans`):

* ``trt.OnnxParser.parse_from_file`` on the staged graph, so external weight files resolve
  relative to the ONNX file.
* One optimisation profile per plan: (min, opt, max) of every input from
  :meth:`GraphSpec.profile` (the same spec that named the ONNX axes, so B = 2N, H = 8h follow).
* TensorRT 10: a weakly typed network; ``--precision fp16`` sets ``BuilderFlag.FP16`` (the graph
  is already the fp16 ONNX, so fp16 kernels are the natural choice; TensorRT may still pick
  fp32 kernels where they are faster). TensorRT 11 builds strongly typed networks only
  (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``) and has no ``BuilderFlag.FP16``: precision
  comes from the fp16 ONNX and its fp32 block list (maskst/engines/fp16.py).
* One timing cache, shared by the six builds, seeded from the previous engines folder's
  ``timing.cache`` (a ``--force`` rebuild re-times nothing already timed on this GPU) and written
  into the new folder.
* Plan files carry the TensorRT version: ``unet.trt10.8.plan``. A plan is only valid for the
  TensorRT version and GPU that built it (no version or hardware compatibility is requested;
  both flags are recorded as built), which :func:`check_plan_compatibility` enforces at load.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import logging
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from maskst.errors import BackendError, EngineError
from maskst.contract.spec import GraphSpec

MIN_TENSORRT = (10, 1)  # ICudaEngine.device_memory_size_v2 and IExecutionContext.set_device_memory
TIMING_CACHE = "timing.cache"
TRT_INSTALL_HINT = ("install the GPU extra on a machine with an NVIDIA GPU and driver: pip install 'maskst[gpu]' "
                    "(after pip uninstall onnxruntime), plus a CUDA build of torch for the runtime's device buffers "
                    "(pip install torch --index-url https://download.pytorch.org/whl/cu128)")
# Plans vs the ONNX graph on ONNX Runtime CPU: TF32 (TensorRT's fp32 default) and fp16 both keep 10
# mantissa bits, so the fp16 tolerance of maskst/engines/fp16.py applies to either precision.
PLAN_ATOL = 2e-2
PLAN_RTOL = 2e-2

log = logging.getLogger(__name__)

DTYPE_BYTES = {"float32": 4, "float16": 2, "int64": 8, "int32": 4, "bool": 1, "uint8": 1}


# --------------------------------------------------------------------------- versions, names, probes


def version_tuple(version: str) -> tuple[int, ...]:
    """'10.8.0.43' -> (10, 8, 0, 43); non-numeric tails ('10.8.0.post1') are dropped."""
    out = []
    for part in str(version).split("."):
        digits = "".join(ch for ch in part if ch.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def plan_file_name(graph: str, trt_version: str) -> str:
    """``unet.trt10.8.plan``: the TensorRT major.minor that built it is part of the name."""
    v = version_tuple(trt_version)
    return f"{graph}.trt{v[0]}.{v[1] if len(v) > 1 else 0}.plan"


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


def require_gpu() -> GpuInfo:
    gpus, reason = cuda_devices()
    if not gpus:
        raise BackendError(f"TensorRT needs an NVIDIA GPU: {reason}; {TRT_INSTALL_HINT}")
    return gpus[0]


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


# --------------------------------------------------------------------------- profiles and buffers


def profile_shapes(spec: GraphSpec) -> dict[str, list[list[int]]]:
    """JSON form of :meth:`GraphSpec.profile`: {input: [min shape, opt shape, max shape]}."""
    return {name: [list(s) for s in shapes] for name, shapes in spec.profile().items()}


@dataclasses.dataclass(frozen=True)
class TensorBuffer:
    """One preallocated device buffer: sized for the largest shape the profile admits."""

    name: str
    is_input: bool
    dtype: str
    max_shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.max_shape, dtype=np.int64)) * DTYPE_BYTES[self.dtype]


def plan_io_buffers(spec: GraphSpec) -> list[TensorBuffer]:
    """Device buffers of one engine: every input and output at its profile-max shape."""
    shapes = spec.max_shapes()
    return ([TensorBuffer(t.name, True, t.dtype, shapes[t.name]) for t in spec.inputs]
            + [TensorBuffer(t.name, False, t.dtype, shapes[t.name]) for t in spec.outputs])


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Device memory of a TensorRT engines set: IO buffers per engine plus ONE activation block.

    The engines run one after another on one stream, so a single block of the largest engine's
    activation size serves them all (``shared_activation_bytes``) instead of one per engine
    (``separate_activation_bytes``, TensorRT's default ``STATIC`` allocation).
    """

    io_bytes: dict[str, int]
    activation_bytes: dict[str, int]

    @property
    def shared_activation_bytes(self) -> int:
        return max(self.activation_bytes.values(), default=0)

    @property
    def separate_activation_bytes(self) -> int:
        return sum(self.activation_bytes.values())

    @property
    def total_bytes(self) -> int:
        return sum(self.io_bytes.values()) + self.shared_activation_bytes


def plan_memory(specs: dict[str, GraphSpec], activation_bytes: dict[str, int]) -> MemoryPlan:
    return MemoryPlan({name: sum(b.nbytes for b in plan_io_buffers(spec)) for name, spec in specs.items()},
                      dict(activation_bytes))


def shape_violations(spec: GraphSpec, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Inputs whose shape lies outside the engine profile, as messages naming input, requested
    shape and profile min/max. Cheap enough for every launch: a TensorRT runner must never copy
    a tensor larger than its max-shape buffer."""
    problems = []
    for name, (low, _opt, high) in spec.profile().items():
        shape = tuple(shapes.get(name, ()))
        if len(shape) != len(low) or any(not lo <= s <= hi for s, lo, hi in zip(shape, low, high)):
            problems.append(f"{spec.name}: input {name!r} has shape {list(shape)}; the TensorRT profile admits "
                            f"min {list(low)} to max {list(high)}")
    return problems


# --------------------------------------------------------------------------- compatibility of a built set


def _gpu_text(gpu: dict) -> str:
    cc = gpu.get("compute_capability") or ["?", "?"]
    return f"{gpu.get('name', '?')} (compute capability {cc[0]}.{cc[1]})"


def check_plan_compatibility(built: dict, local: dict) -> list[str]:
    """Why plans built as ``built`` cannot run here (empty list: they can). Pure function.

    ``built``: the manifest's ``tensorrt`` section (``version``, ``gpu`` {name, compute_capability},
    ``version_compatible``, ``hardware_compatibility``). ``local``: the same keys for this machine
    (``version``, ``gpu``). Rules, from TensorRT's documentation on engine compatibility:

    * TensorRT version: a plan deserialises only in the TensorRT version that built it (major,
      minor and patch), unless built version-compatible: then any later version of the same major.
    * GPU: hardware compatibility ``none`` (the default) ties a plan to the GPU model it was tuned
      on: same compute capability and same device name (TensorRT's tactic choices are per model).
      ``same_compute_capability``: same compute capability. ``ampere_plus``: compute capability 8.0+.
    """
    problems = []
    b_ver, l_ver = version_tuple(built.get("version", "")), version_tuple(local.get("version", ""))
    if built.get("version_compatible"):
        if not l_ver or l_ver[0] != b_ver[0] or l_ver[:3] < b_ver[:3]:
            problems.append(f"TensorRT: built version-compatible with {built.get('version')}, which runs on "
                            f"{b_ver[0]}.x from that version on; this machine has {local.get('version')}")
    elif l_ver[:3] != b_ver[:3]:
        problems.append(f"TensorRT: built with {built.get('version')}, this machine has {local.get('version')}")
    b_gpu, l_gpu = built.get("gpu") or {}, local.get("gpu") or {}
    b_cc, l_cc = tuple(b_gpu.get("compute_capability") or ()), tuple(l_gpu.get("compute_capability") or ())
    level = str(built.get("hardware_compatibility", "none")).lower()
    if level == "ampere_plus":
        if l_cc < (8, 0):
            problems.append(f"GPU: built for Ampere and newer (compute capability 8.0+); this machine has {_gpu_text(l_gpu)}")
    elif b_cc != l_cc or (level != "same_compute_capability" and b_gpu.get("name") != l_gpu.get("name")):
        problems.append(f"GPU: built on {_gpu_text(b_gpu)}, this machine has {_gpu_text(l_gpu)}")
    return problems


def rebuild_command(data: dict, folder: Path) -> str:
    """The maskst-export command that rebuilds an engines folder on this machine (from its manifest)."""
    sources = {k: Path(v["path"]) for k, v in data.get("sources", {}).items()}
    opts = data.get("options", {})
    parts = ["maskst-export"]
    if "unet" in sources:
        parts += ["--base", str(sources["unet"].parent.parent)]
    if "ip_adapter" in sources:
        parts += ["--ip-adapter", str(sources["ip_adapter"])]
    if "image_encoder" in sources:
        parts += ["--image-encoder", str(sources["image_encoder"].parent)]
    if "content_encoder" in sources:
        parts += ["--content-encoder", str(sources["content_encoder"].parent)]
    parts += ["--out", str(folder), "--precision", str(opts.get("precision", data.get("precision", "fp32"))),
              "--target", "trt"]
    for flag, key in (("--min-size", "min_size"), ("--opt-size", "opt_size"), ("--max-size", "max_size"),
                      ("--max-batch", "max_batch")):
        if key in opts:
            parts += [flag, str(opts[key])]
    for op in opts.get("fp32_ops", []):
        parts += ["--fp32-op", op]
    return " ".join(parts + ["--force"])


def compatibility_error(folder: Path, data: dict, local: dict) -> EngineError | None:
    """EngineError naming both sides and the rebuild command, or None if the plans fit this machine."""
    built = data.get("tensorrt") or {}
    problems = check_plan_compatibility(built, local)
    if not problems:
        return None
    return EngineError(f"the TensorRT plans in {folder} were not built for this machine:\n  " + "\n  ".join(problems)
                       + f"\nrebuild them here: {rebuild_command(data, folder)}")


def verify_plan_file(path: Path, record: dict) -> None:
    """Size and SHA-256 of a plan against its manifest record, before TensorRT reads a byte of it."""
    if not path.is_file():
        raise EngineError(f"TensorRT plan {path} is missing; rebuild with maskst-export --target trt --force")
    size = path.stat().st_size
    if size != record["bytes"]:
        raise EngineError(f"TensorRT plan {path} has {size} bytes; the manifest records {record['bytes']} "
                          "(truncated or replaced); rebuild with maskst-export --target trt --force")
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != record["sha256"]:
        raise EngineError(f"TensorRT plan {path} differs from the one the manifest records (SHA-256 "
                          f"{digest[:12]}... != {record['sha256'][:12]}...); rebuild with maskst-export --target trt --force")


def local_environment(trt, gpu: GpuInfo) -> dict:
    """This machine's side of :func:`check_plan_compatibility`."""
    return {"version": trt.__version__,
            "gpu": {"name": gpu.name, "compute_capability": list(gpu.compute_capability)}}


# --------------------------------------------------------------------------- build


def network_mode(trt_version: str, precision: str) -> dict[str, bool]:
    """How a network is created for a TensorRT version and precision (pure; see module docstring)."""
    strongly_typed = version_tuple(trt_version)[0] >= 11
    return {"strongly_typed": strongly_typed, "builder_fp16": precision == "fp16" and not strongly_typed}


class _Builder:
    """One tensorrt.Builder, one timing cache; builds one plan per ONNX graph."""

    def __init__(self, trt, precision: str, timing_cache: bytes):
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.builder = trt.Builder(self.logger)
        self.mode = network_mode(trt.__version__, precision)
        self.cache = None
        self.cache_reused = False
        self._seed = timing_cache

    def _config(self):
        trt = self.trt
        config = self.builder.create_builder_config()
        if self.mode["builder_fp16"]:
            config.set_flag(trt.BuilderFlag.FP16)
        if self.cache is None:
            self.cache = config.create_timing_cache(self._seed)
            self.cache_reused = bool(self._seed)
            if not config.set_timing_cache(self.cache, False):  # a cache from another GPU/TensorRT
                log.warning("previous timing cache does not fit this GPU/TensorRT; starting a new one")
                self.cache = config.create_timing_cache(b"")
                self.cache_reused = False
                config.set_timing_cache(self.cache, False)
        else:
            config.set_timing_cache(self.cache, False)
        return config

    def build(self, onnx_path: Path, spec: GraphSpec):
        """Serialised plan (tensorrt.IHostMemory) and the config facts to record."""
        trt = self.trt
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if self.mode["strongly_typed"] else 0
        network = self.builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
            raise EngineError(f"TensorRT could not parse {onnx_path.name}: {errors}")
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            if tensor.is_shape_tensor:  # would need set_shape_input values in the profile
                raise EngineError(f"{spec.name}: input {tensor.name!r} is a TensorRT shape tensor; maskst graphs must "
                                  "feed sizes through tensor shapes, not values")
        config = self._config()
        profile = self.builder.create_optimization_profile()
        for name, (low, opt, high) in spec.profile().items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
        plan = self.builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineError(f"TensorRT failed to build {spec.name} (see the TensorRT log above); "
                              "out of GPU memory, or an unsupported layer")
        facts = {"hardware_compatibility": str(config.hardware_compatibility_level).rsplit(".", 1)[-1].lower(),
                 "version_compatible": bool(config.get_flag(trt.BuilderFlag.VERSION_COMPATIBLE)),
                 "tf32": bool(config.get_flag(trt.BuilderFlag.TF32))}
        return plan, facts

    def activation_bytes(self, plan) -> int:
        """Device (activation) memory the engine needs: ICudaEngine.device_memory_size_v2."""
        runtime = self.trt.Runtime(self.logger)
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise EngineError("TensorRT could not deserialise the plan it just built")
        return int(engine.device_memory_size_v2)


def build_plans(staging: Path, graphs: dict[str, dict], options, previous: Path | None = None,
                progress: bool = True) -> dict:
    """The exporter hook for ``--target trt``: one plan per staged graph; returns the manifest's
    ``tensorrt`` section. ``previous``: the engines folder being replaced (its timing cache seeds
    this build). Plans are checked against the ONNX graph on ONNX Runtime CPU when a CUDA build of
    torch is available (recorded as ``parity``; failures raise ParityError)."""
    from tqdm.auto import tqdm

    trt, gpu = require_trt_build_support()
    staging = Path(staging)
    seed_file = Path(previous) / TIMING_CACHE if previous is not None else None
    seed = seed_file.read_bytes() if seed_file is not None and seed_file.is_file() else b""
    builder = _Builder(trt, options.precision.value, seed)
    plans, facts = {}, {}
    bar = tqdm(list(graphs.items()), desc="tensorrt", unit="plan", disable=not progress)
    for name, entry in bar:
        bar.set_postfix_str(name)
        spec = GraphSpec.from_json(entry["spec"])
        started = time.time()
        plan, facts = builder.build(staging / entry["file"], spec)
        path = staging / plan_file_name(name, trt.__version__)
        with open(path, "wb") as f:
            f.write(plan)
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        plans[name] = {"file": path.name, "onnx": entry["file"], "bytes": path.stat().st_size, "sha256": digest,
                       "profile": profile_shapes(spec), "activation_bytes": builder.activation_bytes(plan),
                       "build_seconds": round(time.time() - started, 1)}
        del plan
    (staging / TIMING_CACHE).write_bytes(memoryview(builder.cache.serialize()).tobytes())
    section = {
        "version": trt.__version__,
        "wheel": tensorrt_wheel(),
        "gpu": {"name": gpu.name, "compute_capability": list(gpu.compute_capability), "total_memory": gpu.total_memory},
        **driver_versions(),
        "cuda_runtime_torch": _torch_cuda_version(),
        **facts,
        **{k: v for k, v in builder.mode.items()},
        "timing_cache": TIMING_CACHE,
        "timing_cache_reused": builder.cache_reused,
        "plans": plans,
    }
    section["memory"] = {"shared_activation_bytes": max(p["activation_bytes"] for p in plans.values()),
                         "separate_activation_bytes": sum(p["activation_bytes"] for p in plans.values())}
    section["parity"] = check_plans(staging, graphs, section)
    return section


def _torch_cuda_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.version.cuda


def check_plans(staging: Path, graphs: dict[str, dict], section: dict) -> dict:
    """Run every plan (TrtRunner) and its ONNX graph (ONNX Runtime CPU) on the same random feed."""
    from maskst.errors import ParityError
    from maskst.contract.compare import compare
    from maskst.runtime.trt_runner import TrtRunner, torch_cuda_or_none

    if torch_cuda_or_none() is None:
        return {"checked": False, "reason": "no CUDA build of torch (the TensorRT runner's device buffers)"}
    import onnxruntime as ort

    results, failures = [], []
    for name, entry in graphs.items():
        spec = GraphSpec.from_json(entry["spec"])
        feed = spec.sample_inputs({k: r.opt for k, r in spec.dims.items()}, seed=21)
        session = ort.InferenceSession(str(staging / entry["file"]), providers=["CPUExecutionProvider"])
        names = [t.name for t in spec.outputs]
        want = dict(zip(names, session.run(names, feed)))
        plan = section["plans"][name]
        with TrtRunner(spec, staging / plan["file"], plan, arena_key=f"build:{staging}",
                       activation_bytes=section["memory"]["shared_activation_bytes"]) as runner:
            got = {k: v.copy() for k, v in runner.infer(feed).items()}
        for r in compare(spec, 0, want, got, atol=PLAN_ATOL, rtol=PLAN_RTOL):
            results.append(dataclasses.asdict(r))
            if not r.passed:
                failures.append(r)
    if failures:
        lines = "\n  ".join(r.describe() for r in failures)
        raise ParityError(f"{len(failures)} TensorRT plan output(s) differ from the ONNX graph on ONNX Runtime CPU:\n  "
                          f"{lines}\nbuild with --precision fp32, or keep more ops fp32 (--fp32-op)", failures)
    return {"checked": True, "reference": "ONNX graph on ONNX Runtime CPU", "atol": PLAN_ATOL, "rtol": PLAN_RTOL,
            "results": results}
