"""Native TensorRT runner: one plan per graph, behind the same Runner interface as ONNX Runtime.

Load (:meth:`TrtRunner.from_manifest`), before a byte of the plan is deserialised:

1. the engines folder has TensorRT plans at all (else: built with ``--target onnx``);
2. this machine can run them: tensorrt 10.1+, a GPU, torch with CUDA (:func:`require_trt_runtime`);
3. they were built for this machine: same TensorRT version and GPU model / compute capability,
   per the manifest's compatibility flags (:func:`maskst.engines.tensorrt.check_plan_compatibility`,
   a pure function); a mismatch names both sides and the exact ``maskst-export`` command that
   rebuilds the folder here;
4. the plan's size and SHA-256 match the manifest.

Run (:meth:`TrtRunner.infer`, numpy in and out like every runner):

* Every IO tensor has one preallocated device buffer sized for the profile max
  (``GraphSpec.max_shapes()``); a request uses a contiguous prefix of it, so tensor addresses are
  set once (``set_tensor_address``) and only ``set_input_shape`` changes between shapes. Output
  host copies go to preallocated pinned buffers.
* Every engine of a folder runs on ONE CUDA stream (``execute_async_v3``) and shares ONE
  activation-memory block (:class:`DeviceArena`): contexts are created with
  ``ExecutionContextAllocationStrategy.USER_MANAGED`` and given the block with
  ``set_device_memory``, sized by the largest engine's ``device_memory_size_v2`` instead of the
  sum (the engines run one after another, never concurrently).
* The UNet step is captured into a CUDA graph (``torch.cuda.CUDAGraph``) the first time a shape
  is seen and replayed on later steps; a new shape (or a reallocated arena) re-captures. The
  first launch at a new shape is a plain enqueue, because TensorRT may do deferred setup on the
  first enqueue after ``set_input_shape`` that must not be baked into a graph.
* Shapes outside the profile raise InputError naming input, requested shape and profile
  min/max before anything is launched (``GraphSpec.check_feed`` with ``check_inputs``, and an
  always-on cheap bound check, because a larger tensor would overrun the max-shape buffers).

Device buffers are torch CUDA tensors (torch's caching allocator returns 512-byte aligned
blocks; TensorRT needs 256). Nothing here runs without an NVIDIA GPU; it has not been run on one
(see docs/gpu.md).
"""

from __future__ import annotations

import logging
import weakref
from pathlib import Path

import numpy as np

from maskst.engines.manifest import Manifest
from maskst.engines.tensorrt import (compatibility_error, plan_io_buffers, rebuild_command, shape_violations,
                                     verify_plan_file)
from maskst.errors import BackendError, EngineError, InputError
from maskst.hardware import TRT_INSTALL_HINT, import_tensorrt, trt_runtime_problems
from maskst.contract.spec import GraphSpec
from maskst.runtime.runners import Runner

log = logging.getLogger(__name__)

# the graphs run once per denoising step (DeepCache: its two UNet graphs); the others run once per request
CUDA_GRAPH_GRAPHS = ("unet", "unet_deep", "unet_shallow")


def require_trt_runtime():
    """(tensorrt, torch) for the native TensorRT backend, or BackendError naming what is missing."""
    problems = trt_runtime_problems()
    if problems:
        raise BackendError("the TensorRT backend cannot run on this machine: " + "; ".join(problems)
                           + f". Fix: {TRT_INSTALL_HINT}")
    import torch

    return import_tensorrt(), torch


def local_trt_environment(trt, torch) -> dict:
    """This machine's TensorRT version and current GPU, in the manifest's terms."""
    device = torch.cuda.current_device()
    return {"version": trt.__version__,
            "gpu": {"name": torch.cuda.get_device_name(device),
                    "compute_capability": list(torch.cuda.get_device_capability(device))}}


def _torch_dtype(torch, name: str):
    return {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32,
            "bool": torch.bool, "uint8": torch.uint8}[name]


def _trt_dtype_name(trt, dtype) -> str:
    names = {trt.DataType.FLOAT: "float32", trt.DataType.HALF: "float16", trt.DataType.INT64: "int64",
             trt.DataType.INT32: "int32", trt.DataType.BOOL: "bool"}
    return names.get(dtype, str(dtype))


class DeviceArena:
    """One CUDA stream and one activation-memory block shared by the TensorRT runners of a folder.

    ``reserve`` only grows the block; growing rebinds every attached context and bumps
    ``generation`` (captured CUDA graphs hold the old address and must be re-captured).
    """

    def __init__(self, torch, device: int):
        self.torch = torch
        self.device = device
        self.stream = torch.cuda.Stream(device=device)
        self.block = None
        self.size = 0
        self.generation = 0
        self._contexts: dict[int, object] = {}

    def reserve(self, nbytes: int) -> None:
        nbytes = max(int(nbytes), 256)
        if nbytes <= self.size:
            return
        self.stream.synchronize()  # nothing may still run in the old block
        self.block = None
        self.block = self.torch.empty(nbytes, dtype=self.torch.uint8, device=f"cuda:{self.device}")
        self.size = nbytes
        self.generation += 1
        for context in self._contexts.values():
            context.set_device_memory(self.block.data_ptr(), self.size)

    def attach(self, context, required: int) -> None:
        self.reserve(required)
        context.set_device_memory(self.block.data_ptr(), self.size)
        self._contexts[id(context)] = context

    def detach(self, context) -> None:
        self._contexts.pop(id(context), None)


_ARENAS: "weakref.WeakValueDictionary[str, DeviceArena]" = weakref.WeakValueDictionary()


def arena_for(key: str, torch) -> DeviceArena:
    """The arena of an engines folder (created on first use, freed with its last runner)."""
    arena = _ARENAS.get(key)
    if arena is None:
        arena = DeviceArena(torch, torch.cuda.current_device())
        _ARENAS[key] = arena
    return arena


class TrtRunner(Runner):
    """TensorRT runner of one plan. See the module docstring for the memory and launch design.

    ``record``: the plan's manifest entry (file, bytes, sha256, profile, activation_bytes).
    ``activation_bytes``: the shared block to reserve up front (largest engine of the folder), so
    the arena is allocated once rather than grown engine by engine.
    """

    backend = "trt"

    def __init__(self, spec: GraphSpec, path: Path, record: dict, arena_key: str, activation_bytes: int = 0,
                 use_cuda_graph: bool = False):
        super().__init__(spec, path)
        self.record = record
        self.arena_key = arena_key
        self.activation_bytes = activation_bytes
        self.use_cuda_graph = use_cuda_graph
        self.arena: DeviceArena | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self._runtime = self._engine = self._context = None
        self._device: dict = {}
        self._host: dict = {}
        self._shapes: dict | None = None
        self._graph = None
        self._graph_key = None

    @classmethod
    def from_manifest(cls, manifest: Manifest, name: str, use_cuda_graph: bool | None = None) -> "TrtRunner":
        """Check everything that can be checked without deserialising, then return an inactive runner."""
        folder = manifest.folder
        section = manifest.data.get("tensorrt")
        if not section:
            raise EngineError(f"{folder} has no TensorRT plans (built with --target {manifest.data.get('target', 'onnx')}); "
                              f"build them on this machine: {rebuild_command(manifest.data, folder)}")
        record = section.get("plans", {}).get(name)
        if record is None:
            raise EngineError(f"{folder}: the manifest lists no TensorRT plan for {name}; "
                              f"rebuild: {rebuild_command(manifest.data, folder)}")
        trt, torch = require_trt_runtime()
        error = compatibility_error(folder, manifest.data, local_trt_environment(trt, torch))
        if error is not None:
            raise error
        path = folder / record["file"]
        verify_plan_file(path, record)
        shared = int(section.get("memory", {}).get("shared_activation_bytes", 0))
        return cls(manifest.graph_spec(name), path, record, arena_key=str(folder.resolve()), activation_bytes=shared,
                   use_cuda_graph=(name in CUDA_GRAPH_GRAPHS) if use_cuda_graph is None else use_cuda_graph)

    # ------------------------------------------------------------------ lifecycle

    def _activate(self) -> None:
        trt, torch = require_trt_runtime()
        self._trt, self._torch = trt, torch
        self.arena = arena_for(self.arena_key, torch)
        self.arena.reserve(self.activation_bytes)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise EngineError(f"TensorRT could not deserialise {self.path} (see the TensorRT log); "
                              "rebuild with maskst-export --target trt --force")
        self._check_engine()
        self._context = self._engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if self._context is None:
            raise BackendError(f"TensorRT could not create an execution context for {self.spec.name} (GPU out of memory?)")
        self.arena.attach(self._context, int(self._engine.device_memory_size_v2))
        device = f"cuda:{self.arena.device}"
        for buf in plan_io_buffers(self.spec):
            numel = int(np.prod(buf.max_shape, dtype=np.int64))
            dtype = _torch_dtype(torch, buf.dtype)
            self._device[buf.name] = torch.empty(numel, dtype=dtype, device=device)
            if not self._context.set_tensor_address(buf.name, self._device[buf.name].data_ptr()):
                raise EngineError(f"{self.spec.name}: TensorRT refused the buffer of {buf.name!r}")
            if not buf.is_input:
                self._host[buf.name] = torch.empty(numel, dtype=dtype, pin_memory=True)

    def _check_engine(self) -> None:
        """The deserialised engine's IO names, directions, dtypes and profile match the spec."""
        trt, engine = self._trt, self._engine
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        want = {t.name for t in self.spec.inputs + self.spec.outputs}
        if names != want:
            raise EngineError(f"{self.path}: plan tensors {sorted(names)} differ from the manifest's {sorted(want)}; "
                              "rebuild with maskst-export --target trt --force")
        profile = self.spec.profile()
        for t in self.spec.inputs + self.spec.outputs:
            is_input = engine.get_tensor_mode(t.name) == trt.TensorIOMode.INPUT
            dtype = _trt_dtype_name(trt, engine.get_tensor_dtype(t.name))
            if is_input != (t in self.spec.inputs) or dtype != t.dtype:
                raise EngineError(f"{self.path}: tensor {t.name!r} is a {dtype} {'input' if is_input else 'output'} in the "
                                  f"plan; the manifest says {t.dtype}; rebuild with maskst-export --target trt --force")
            if is_input:
                got = tuple(tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(t.name, 0))
                if got != tuple(tuple(s) for s in profile[t.name]):
                    raise EngineError(f"{self.path}: profile of {t.name!r} is {got}; the manifest says {profile[t.name]}")

    def _deactivate(self) -> None:
        if self.arena is not None:
            self.arena.stream.synchronize()
            if self._context is not None:
                self.arena.detach(self._context)
        # release in dependency order: graph, context, engine, runtime; then the buffers
        self._graph = None
        self._context = None
        self._engine = None
        self._runtime = None
        self._reset_state()
        self.arena = None

    # ------------------------------------------------------------------ inference

    @property
    def stream(self):
        """The CUDA stream (torch.cuda.Stream) every engine of this folder runs on."""
        return self.arena.stream

    def input_view(self, name: str, shape: tuple[int, ...]):
        """The device buffer of input ``name`` viewed at ``shape``: a producer can write into it
        directly (zero copy), e.g. ``torch.matmul(..., out=unet.input_view("ip_tokens", shape))``."""
        numel = int(np.prod(shape, dtype=np.int64))
        return self._device[name][:numel].view(shape)

    def _check_shapes(self, shapes: dict[str, tuple[int, ...]]) -> None:
        problems = shape_violations(self.spec, shapes)
        if problems:
            raise InputError("; ".join(problems) + "; rebuild the engines with a wider range or change the request")

    def _set_shapes(self, shapes: dict[str, tuple[int, ...]]) -> None:
        if shapes == self._shapes:
            return
        for name, shape in shapes.items():
            if not self._context.set_input_shape(name, shape):
                raise InputError(f"{self.spec.name}: TensorRT rejected shape {list(shape)} for {name!r}")
        self._shapes = dict(shapes)

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self.arena.stream.cuda_stream):
            raise BackendError(f"TensorRT execution of {self.spec.name} failed (see the TensorRT log)")

    def _launch(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Enqueue on the arena stream (the caller holds ``torch.cuda.stream(arena.stream)``)."""
        self._set_shapes(shapes)
        if not self.use_cuda_graph:
            self._enqueue()
            return
        key = (tuple(sorted(shapes.items())), self.arena.generation)
        if key == self._graph_key:
            self._graph.replay()
            return
        self._enqueue()  # this call's result; also flushes TensorRT's deferred per-shape setup
        self._capture(key)

    def _capture(self, key) -> None:
        torch = self._torch
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.arena.stream):
                captured = self._context.execute_async_v3(self.arena.stream.cuda_stream)
        except RuntimeError as exc:  # capture not possible for this engine (e.g. a layer that synchronises)
            log.warning("%s: CUDA graph capture failed (%s); running without CUDA graphs", self.spec.name, exc)
            self.use_cuda_graph, self._graph, self._graph_key = False, None, None
            return
        if not captured:
            log.warning("%s: TensorRT enqueue failed during CUDA graph capture; running without CUDA graphs", self.spec.name)
            self.use_cuda_graph, self._graph, self._graph_key = False, None, None
            return
        self._graph, self._graph_key = graph, key

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        shapes = {t.name: tuple(feed[t.name].shape) for t in self.spec.inputs}
        self._check_shapes(shapes)
        out_shapes = self.spec.shapes(self.spec.dims_of(feed))
        stream = self.arena.stream
        result = {}
        with torch.cuda.stream(stream):
            for t in self.spec.inputs:
                array = np.ascontiguousarray(feed[t.name], dtype=t.dtype)
                if not array.flags.writeable:
                    array = array.copy()
                self.input_view(t.name, shapes[t.name]).copy_(torch.from_numpy(array), non_blocking=True)
            self._launch(shapes)
            for t in self.spec.outputs:
                numel = int(np.prod(out_shapes[t.name], dtype=np.int64))
                host = self._host[t.name][:numel].view(out_shapes[t.name])
                host.copy_(self._device[t.name][:numel].view(out_shapes[t.name]), non_blocking=True)
                result[t.name] = host.numpy()
        stream.synchronize()
        return result
