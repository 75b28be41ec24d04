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

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from maskst.contract.compare import Tolerance, compare_outputs, raise_failures, records_json, run_onnx_cpu
from maskst.contract.files import sha256
from maskst.contract.spec import GraphSpec
from maskst.errors import EngineError
from maskst.hardware import (driver_versions, require_trt_build_support, tensorrt_wheel, torch_cuda_version,
                             version_tuple)

TIMING_CACHE = "timing.cache"
# Plans vs the ONNX graph on ONNX Runtime CPU: fp16 keeps 10 mantissa bits, so the fp16 tolerance of
# maskst/engines/fp16.py applies (fp32 plans, TF32 off, are far inside it).
PLAN_ATOL = 2e-2
PLAN_RTOL = 2e-2
# Builder flags, requested explicitly and recorded as built: plans tied to this TensorRT version and GPU
# model (no version or hardware compatibility); TF32 off so fp32 plans compute fp32 (Polygraphy's default).
BUILD_FLAGS = {"hardware_compatibility": "none", "version_compatible": False, "tf32": False}

log = logging.getLogger(__name__)

DTYPE_BYTES = {"float32": 4, "float16": 2, "int64": 8, "int32": 4, "bool": 1, "uint8": 1}


# --------------------------------------------------------------------------- versions, names, probes


def plan_file_name(graph: str, trt_version: str) -> str:
    """``unet.trt10.8.plan``: the TensorRT major.minor that built it is part of the name."""
    v = version_tuple(trt_version)
    return f"{graph}.trt{v[0]}.{v[1] if len(v) > 1 else 0}.plan"



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
    if "style_aware_encoder" in sources:  # StyleShot: FOLDER/pretrained_weight/style_aware_encoder.bin
        parts += ["--styleshot", str(sources["style_aware_encoder"].parent.parent)]
    elif "ip_adapter" in sources:
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
    digest = sha256(path)
    if digest != record["sha256"]:
        raise EngineError(f"TensorRT plan {path} differs from the one the manifest records (SHA-256 "
                          f"{digest[:12]}... != {record['sha256'][:12]}...); rebuild with maskst-export --target trt --force")


# --------------------------------------------------------------------------- build


def network_mode(trt_version: str, precision: str) -> dict[str, bool]:
    """How a network is created for a TensorRT version and precision (pure; see module docstring)."""
    strongly_typed = version_tuple(trt_version)[0] >= 11
    return {"strongly_typed": strongly_typed, "builder_fp16": precision == "fp16" and not strongly_typed}


def build_plan(onnx_path: Path, spec: GraphSpec, precision: str, trt_version: str,
               timing_cache: Path) -> tuple[bytes, int]:
    """(serialised plan, activation bytes) of one graph, built with Polygraphy's TensorRT loaders (as NVIDIA's
    diffusion demo does): ``NetworkFromOnnxPath`` (strongly typed on TensorRT 11), one profile from
    the spec, ``CreateConfig`` reading and ``EngineBytesFromNetwork`` extending the shared timing cache."""
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, EngineFromBytes, NetworkFromOnnxPath, Profile

    mode = network_mode(trt_version, precision)
    profile = Profile()
    for name, (low, opt, high) in spec.profile().items():
        profile.add(name, low, opt, high)
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=mode["strongly_typed"])
    config = CreateConfig(profiles=[profile], fp16=mode["builder_fp16"], tf32=BUILD_FLAGS["tf32"],
                          load_timing_cache=str(timing_cache) if timing_cache.is_file() else None)
    plan = EngineBytesFromNetwork(network, config=config, save_timing_cache=str(timing_cache))()
    if plan is None:
        raise EngineError(f"TensorRT failed to build {spec.name} (see the TensorRT log above); "
                          "out of GPU memory, or an unsupported layer")
    engine = EngineFromBytes(plan)()  # its activation memory: ICudaEngine.device_memory_size_v2
    if engine is None:
        raise EngineError("TensorRT could not deserialise the plan it just built")
    return bytes(plan), int(engine.device_memory_size_v2)


def build_plans(staging: Path, graphs: dict[str, dict], options, previous: Path | None = None,
                progress: bool = True, plan_builder=None, plan_checker=None) -> dict:
    """The exporter hook for ``--target trt``: one plan per staged graph; returns the manifest's
    ``tensorrt`` section. ``previous``: the engines folder being replaced (its timing cache seeds
    this build). Every plan is then checked against its ONNX graph on ONNX Runtime CPU
    (:func:`check_plans`, recorded as ``parity``; failures raise ParityError).
    ``plan_builder`` / ``plan_checker``: :func:`build_plan` / :func:`check_plans` unless given (test doubles)."""
    plan_builder = plan_builder or build_plan
    plan_checker = plan_checker or check_plans
    import shutil

    from tqdm.auto import tqdm

    trt, gpu = require_trt_build_support()
    staging = Path(staging)
    cache = staging / TIMING_CACHE
    seed_file = Path(previous) / TIMING_CACHE if previous is not None else None
    cache_reused = seed_file is not None and seed_file.is_file()
    if cache_reused:
        shutil.copyfile(seed_file, cache)
    plans, specs = {}, {}
    bar = tqdm(list(graphs.items()), desc="tensorrt", unit="plan", disable=not progress)
    for name, entry in bar:
        bar.set_postfix_str(name)
        specs[name] = spec = GraphSpec.from_json(entry["spec"])
        started = time.time()
        plan, activation_bytes = plan_builder(staging / entry["file"], spec, options.precision.value, trt.__version__,
                                              cache)
        path = staging / plan_file_name(name, trt.__version__)
        path.write_bytes(plan)
        plans[name] = {"file": path.name, "onnx": entry["file"], "bytes": path.stat().st_size, "sha256": sha256(path),
                       "profile": profile_shapes(spec), "activation_bytes": activation_bytes,
                       "build_seconds": round(time.time() - started, 1)}
        del plan
    memory = plan_memory(specs, {name: p["activation_bytes"] for name, p in plans.items()})
    section = {
        "version": trt.__version__,
        "wheel": tensorrt_wheel(),
        "gpu": {"name": gpu.name, "compute_capability": list(gpu.compute_capability), "total_memory": gpu.total_memory},
        **driver_versions(),
        "cuda_runtime_torch": torch_cuda_version(),
        **BUILD_FLAGS,
        **network_mode(trt.__version__, options.precision.value),
        "timing_cache": TIMING_CACHE,
        "timing_cache_reused": cache_reused,
        "plans": plans,
        "memory": {"shared_activation_bytes": memory.shared_activation_bytes,
                   "separate_activation_bytes": memory.separate_activation_bytes, "io_bytes": memory.io_bytes},
    }
    section["parity"] = plan_checker(staging, graphs, section)
    return section


def check_plans(staging: Path, graphs: dict[str, dict], section: dict) -> dict:
    """Run every plan (Polygraphy's ``TrtRunner``) and its ONNX graph (ONNX Runtime CPU) on the same
    random feed at the profile's opt shapes; compare with the one comparator; raise on any failure."""
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    records = []
    for name, entry in graphs.items():
        spec = GraphSpec.from_json(entry["spec"])
        feed = spec.sample_inputs({k: r.opt for k, r in spec.dims.items()}, seed=21)
        plan = (staging / section["plans"][name]["file"]).read_bytes()
        with G_LOGGER.verbosity(G_LOGGER.WARNING):
            run = Comparator.run([TrtRunner(EngineFromBytes(plan), name="tensorrt-plan")], data_loader=[feed])
        got = [{k: np.asarray(v) for k, v in run[0][1][0].items()}]
        records += compare_outputs(spec.name, [t.name for t in spec.outputs], run_onnx_cpu(staging / entry["file"], [feed]),
                                   got, Tolerance(PLAN_ATOL, PLAN_RTOL), reference="onnxruntime-cpu",
                                   candidate="tensorrt plan")
    raise_failures(records, "TensorRT plan output(s) differ from the ONNX graph on ONNX Runtime CPU",
                   "build with --precision fp32, or keep more ops fp32 (--fp32-op)")
    return {"checked": True, "reference": "ONNX graph on ONNX Runtime CPU", "atol": PLAN_ATOL, "rtol": PLAN_RTOL,
            "results": records_json(records)}
