"""The machine's measured arithmetic ceilings: one large MatMul and one large convolution per runtime
and precision, timed in the same run as the graphs they are compared with.

A ceiling is what the runtime's best kernel reaches on a shape that keeps it busy, on this machine, now
(other jobs on the same cores lower it as they lower the graphs' speed). Per runtime:

- OpenVINO (CPU plugin): fp32, bf16 (where the CPU has native bf16: AMX or AVX-512-BF16) and int8
  (the graph quantised with ``FakeQuantize`` on activations and weights, which OpenVINO's low-precision
  transformations turn into int8 kernels: AMX-INT8, VNNI, or AVX2's vpmaddubsw). The time is the main node's
  own time (``PERF_COUNT``: the FullyConnected / Convolution kernel, without the fp32 -> bf16 / int8 reorder of
  the input), and the kernel OpenVINO chose is recorded (``exec_type``, e.g. ``brgemm_avx512_amx_bf16``).
- ONNX Runtime (CPU provider): fp32 (what ``ort-cpu`` runs), whole-session time.
- torch (the reference): fp32 and, where the CPU has native bf16, bf16; call time.

Memory (:func:`memory_ceiling`): the rate at which OpenVINO's CPU plugin reads a 512 MiB f32 tensor whose rows it
sums (``ReduceSum``, kernel node time), in GB/s. It bounds how fast a graph can stream weights that do not stay in the
caches (the UNet's 1.7 GB of bf16 weights per call do not); :func:`roofline` sets it beside the arithmetic.

Shapes: MatMul [2048, 2048] x [2048, 2048] (weights constant, as in the UNet's projections) and a
3x3 convolution 640 -> 640 channels on [2, 640, 32, 32] (a UNet level at 256 px), counted by
:mod:`maskst.bench.flops` (direct algorithm). Each is run ``warmup`` times, then timed ``repeats``
times; the report keeps every sample and the median. Over several passes (before the first and after the last
contender) the ceiling is the fastest pass's median (:func:`merge_samples`).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

MATMUL = (2048, 2048, 2048)  # M, K, N
CONV = dict(batch=2, channels=640, out_channels=640, size=32, kernel=3)


def matmul_flops() -> int:
    m, k, n = MATMUL
    return 2 * m * k * n


def conv_flops() -> int:
    c = CONV
    return 2 * c["batch"] * c["out_channels"] * c["size"] ** 2 * c["channels"] * c["kernel"] ** 2


def _summary(flops: int, seconds: list[float], **extra) -> dict:
    """GFLOP/s from the median time, with the spread of the samples."""
    median = statistics.median(seconds)
    return {"gflops": flops / median / 1e9, "gflops_min": flops / max(seconds) / 1e9,
            "gflops_max": flops / min(seconds) / 1e9, "ms_median": median * 1e3,
            "ms_samples": [round(s * 1e3, 3) for s in seconds], "flops": flops, **extra}


def _rng():
    return np.random.default_rng(0)


# --------------------------------------------------------------------------- OpenVINO


def _ov_graph(kind: str, quantized: bool):
    """(openvino.Model, input array) for the MatMul or convolution ceiling."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = _rng()

    def fq(node, bound: float, levels: int):
        lo, hi = ops.constant(np.array(-bound, np.float32)), ops.constant(np.array(bound, np.float32))
        return ops.fake_quantize(node, lo, hi, lo, hi, levels)

    if kind == "matmul":
        m, k, n = MATMUL
        x_value = rng.uniform(-4, 4, (m, k)).astype(np.float32)
        weights = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    else:
        c = CONV
        x_value = rng.uniform(-4, 4, (c["batch"], c["channels"], c["size"], c["size"])).astype(np.float32)
        weights = (rng.standard_normal((c["out_channels"], c["channels"], c["kernel"], c["kernel"])) * 0.05).astype(np.float32)
    x = ops.parameter(list(x_value.shape), np.float32, name="x")
    w = ops.constant(weights)
    a, b = (fq(x, 4.0, 256), fq(w, float(np.abs(weights).max()), 255)) if quantized else (x, w)
    if kind == "matmul":
        y = ops.matmul(a, b, False, False)
    else:
        pad = CONV["kernel"] // 2
        y = ops.convolution(a, b, [1, 1], [pad, pad], [pad, pad], [1, 1])
    return ov.Model([y], [x], f"ceiling_{kind}"), x_value


MAIN_LAYERS = {"matmul": ("FullyConnected", "MatMul"), "conv": ("Convolution",)}


def openvino_ceiling(kind: str, precision: str, threads: int | None, warmup: int, repeats: int) -> dict:
    """``precision``: f32, bf16 or int8 (int8: the quantised graph, compiled with the f32 hint)."""
    import openvino as ov

    core = ov.Core()
    model, x_value = _ov_graph(kind, quantized=precision == "int8")
    config = {"INFERENCE_PRECISION_HINT": "f32" if precision == "int8" else precision,
              "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    tensor = ov.Tensor(x_value)
    main = MAIN_LAYERS[kind]
    kernel_names = set()
    kernels = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if rt["layerType"].astype(str) in main:
            kernel_names.add(op.get_friendly_name())
            kernels.append(f"{rt['primitiveType'].astype(str)} ({rt['runtimePrecision'].astype(str)})")
    node_seconds, wall = [], []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        request.infer({0: tensor})
        elapsed = time.perf_counter() - t0
        if i < warmup:
            continue
        wall.append(elapsed)
        node_seconds.append(sum(info.real_time.total_seconds() for info in request.profiling_info
                                if info.node_name in kernel_names))
    flops = matmul_flops() if kind == "matmul" else conv_flops()
    wall_gflops = flops / statistics.median(wall) / 1e9
    return _summary(flops, node_seconds, kernel=", ".join(kernels), timed="kernel node (PERF_COUNT)",
                    whole_graph_gflops=wall_gflops)


# --------------------------------------------------------------------------- ONNX Runtime


def _onnx_graph(kind: str):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = _rng()
    if kind == "matmul":
        m, k, n = MATMUL
        x_shape, weights = [m, k], (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        y_shape = [m, n]
    else:
        c = CONV
        x_shape = [c["batch"], c["channels"], c["size"], c["size"]]
        weights = (rng.standard_normal((c["out_channels"], c["channels"], c["kernel"], c["kernel"])) * 0.05).astype(np.float32)
        pad = c["kernel"] // 2
        node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[pad] * 4)
        y_shape = [c["batch"], c["out_channels"], c["size"], c["size"]]
    graph = helper.make_graph([node], f"ceiling_{kind}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(weights, "w")])
    opsets = [helper.make_opsetid("", 17)]
    # onnx writes its own newest IR version by default, which an older runtime refuses (onnx 1.23 writes IR 14;
    # onnxruntime 1.31 reads up to 13): declare the oldest IR version that can carry these opsets instead
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    return model.SerializeToString(), rng.uniform(-4, 4, x_shape).astype(np.float32)


def onnxruntime_ceiling(kind: str, threads: int | None, warmup: int, repeats: int) -> dict:
    import onnxruntime as ort

    model, x_value = _onnx_graph(kind)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    seconds = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        session.run(None, {"x": x_value})
        if i >= warmup:
            seconds.append(time.perf_counter() - t0)
    return _summary(matmul_flops() if kind == "matmul" else conv_flops(), seconds, timed="session.run")


# --------------------------------------------------------------------------- torch


def torch_ceiling(kind: str, precision: str, warmup: int, repeats: int) -> dict:
    import torch

    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[precision]
    gen = torch.Generator().manual_seed(0)
    if kind == "matmul":
        m, k, n = MATMUL
        a, b = torch.randn(m, k, generator=gen).to(dtype), torch.randn(k, n, generator=gen).to(dtype)

        def call():
            return a @ b
    else:
        c = CONV
        x = torch.randn(c["batch"], c["channels"], c["size"], c["size"], generator=gen).to(dtype)
        conv = torch.nn.Conv2d(c["channels"], c["out_channels"], c["kernel"], padding=c["kernel"] // 2, bias=False).to(dtype)

        def call():
            return conv(x)
    seconds = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            call()
            if i >= warmup:
                seconds.append(time.perf_counter() - t0)
    return _summary(matmul_flops() if kind == "matmul" else conv_flops(), seconds, timed="call")


# --------------------------------------------------------------------------- all of them


def cpu_capabilities() -> dict:
    """{"bf16": bool, "int8": bool}: whether this CPU runs bf16 / int8 natively, as the OpenVINO backends decide it
    (under the oneDNN ISA cap of this process; False without openvino)."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return {"bf16": False, "int8": False}
    from maskst.runtime.openvino_runner import native_bf16, native_int8

    return {"bf16": native_bf16(), "int8": native_int8()}


def measure_ceilings(threads: int | None = None, warmup: int = 2, repeats: int = 8,
                     runtimes: tuple[str, ...] = ("openvino", "onnxruntime", "torch")) -> dict:
    """{runtime: {precision: {"matmul": summary, "conv": summary}}} for what applies to this machine.

    ``threads``: the same setting the contenders get (None: each library's default).
    """
    import importlib.util

    caps = cpu_capabilities()
    out: dict[str, dict] = {}
    if "openvino" in runtimes and importlib.util.find_spec("openvino") is not None:
        precisions = ["f32"] + (["bf16"] if caps["bf16"] else []) + (["int8"] if caps["int8"] else [])
        out["openvino"] = {p: {k: openvino_ceiling(k, p, threads, warmup, repeats) for k in ("matmul", "conv")}
                           for p in precisions}
    if "onnxruntime" in runtimes and importlib.util.find_spec("onnxruntime") is not None:
        out["onnxruntime"] = {"f32": {k: onnxruntime_ceiling(k, threads, warmup, repeats) for k in ("matmul", "conv")}}
    if "torch" in runtimes and importlib.util.find_spec("torch") is not None:
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        precisions = ["f32"] + (["bf16"] if caps["bf16"] else [])
        out["torch"] = {p: {k: torch_ceiling(k, p, warmup, repeats) for k in ("matmul", "conv")} for p in precisions}
    return out


MEMORY_ELEMENTS = 2**27  # f32 elements read by the memory ceiling (512 MiB: far beyond any cache)
MEMORY_ROWS = 4096  # summed row by row, each row 128 KiB
WEIGHT_BYTES = {"f32": 4, "bf16": 2, "int8": 1}  # bytes per weight element a graph streams in each precision


def _bandwidth_summary(nbytes: int, seconds: list[float], **extra) -> dict:
    median = statistics.median(seconds)
    return {"gbps": nbytes / median / 1e9, "gbps_min": nbytes / max(seconds) / 1e9, "gbps_max": nbytes / min(seconds) / 1e9,
            "ms_median": median * 1e3, "ms_samples": [round(s * 1e3, 3) for s in seconds], "bytes": nbytes, **extra}


def memory_ceiling(threads: int | None, warmup: int, repeats: int) -> dict | None:
    """GB/s at which OpenVINO reads memory: ReduceSum of the rows of a 512 MiB f32 tensor (its node time), or None without
    openvino. A bandwidth-bound kernel with the same threads as the graphs: the rate weights stream at best."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return None
    import openvino as ov
    import openvino.opset13 as ops

    # rows summed in parallel (one sum over the whole tensor runs on one thread: 1.4 GB/s against 11 here)
    shape = [MEMORY_ROWS, MEMORY_ELEMENTS // MEMORY_ROWS]
    x = ops.parameter(shape, np.float32, name="x")
    model = ov.Model([ops.reduce_sum(x, ops.constant(np.array([1], np.int64)), False)], [x], "ceiling_memory")
    config = {"PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True, "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    tensor = ov.Tensor(_rng().standard_normal(shape, dtype=np.float32))
    seconds = []
    for i in range(warmup + repeats):
        request.infer({0: tensor})
        if i >= warmup:
            seconds.append(sum(info.real_time.total_seconds() for info in request.profiling_info
                               if info.node_type == "Reduce" or info.node_type == "ReduceSum"))
    return _bandwidth_summary(MEMORY_ELEMENTS * 4, seconds, kernel="ReduceSum f32 (OpenVINO)",
                              timed="kernel node (PERF_COUNT)")


def _fastest_pass(passes: list[dict], rate: str) -> dict:
    """The pass with the highest ``rate`` (its median), with every pass's in ``pass_<rate>``."""
    return {**max(passes, key=lambda one: one[rate]), f"pass_{rate}": [one[rate] for one in passes]}


def merge_memory(passes: list[dict]) -> dict | None:
    """One memory ceiling from several passes': the fastest pass's (as :func:`merge_samples`, for the same reason)."""
    measured = [p for p in passes if p]
    if not measured:
        return None
    return _fastest_pass(measured, "gbps")


def roofline(ceilings: dict, memory: dict | None, runtime: str, precision: str, per_node: list[list],
             matmul_precision: str | None = None) -> dict | None:
    """The least time a graph's counted nodes can take on this machine: per node, the longer of its arithmetic at
    the ceiling (MatMul / convolution of the precision it runs in) and its weights streamed at the memory ceiling
    (:data:`WEIGHT_BYTES` per element of that precision; the weights of a whole UNet call do not stay in the caches).
    Element-wise work and activations are left out, so a graph can only be slower than this.

    Returns ``ms`` (that least time), ``compute_ms`` (arithmetic alone: what % of ceiling compares with) and
    ``weights_ms`` (weights alone), ``weight_bytes``, and ``attainable_pct_of_ceiling`` = 100 * compute_ms / ms: the
    highest % of the arithmetic ceiling the graph can reach here. None without the ceilings it needs."""
    rates = _op_ceilings(ceilings, runtime, precision, matmul_precision)
    if rates is None or not memory or not memory.get("gbps") or precision not in WEIGHT_BYTES:
        return None
    matmul_rate, conv_rate = rates
    per_byte = 1 / (memory["gbps"] * 1e9)
    total = compute = weights = 0.0
    weight_bytes = 0
    for kind, flops, elements in per_node:
        rate = conv_rate if "Convolution" in kind else matmul_rate
        # int8 hybrid graphs: the MatMuls compute in bf16/f32 from int8 weights; the weights are int8 everywhere
        nbytes = elements * WEIGHT_BYTES[precision]
        arithmetic, streaming = flops / (rate * 1e9), nbytes * per_byte
        total += max(arithmetic, streaming)
        compute += arithmetic
        weights += streaming
        weight_bytes += nbytes
    if not total:
        return None
    return {"ms": total * 1e3, "compute_ms": compute * 1e3, "weights_ms": weights * 1e3, "weight_bytes": weight_bytes,
            "memory_gbps": memory["gbps"], "attainable_pct_of_ceiling": 100 * compute / total}


def merge_samples(passes: list[dict]) -> dict:
    """One ceilings dict from several passes of :func:`measure_ceilings`: per runtime, precision and kernel, the
    fastest pass (highest median GFLOP/s), with every pass's median in ``pass_gflops``.

    Why not the pooled median: a pass can run while the host slows these cores without the guest seeing any load
    (an AMD EPYC VM measured the same fp32 MatMul at 151 GFLOP/s before the contenders and 79 after, its bf16
    and int8 kernels unchanged; the graphs in between ran at 190). Pooled, the median lands between the two
    modes and the graphs exceed their "ceiling"; the median within a pass still guards against single spikes."""
    grouped: dict = {}
    for one in passes:
        for runtime, by_precision in one.items():
            for precision, by_kind in by_precision.items():
                for kind, summary in by_kind.items():
                    grouped.setdefault(runtime, {}).setdefault(precision, {}).setdefault(kind, []).append(summary)
    return {runtime: {precision: {kind: _fastest_pass(found, "gflops") for kind, found in by_kind.items()}
                      for precision, by_kind in by_precision.items()}
            for runtime, by_precision in grouped.items()}


def effective_ceiling(ceilings: dict, runtime: str, precision: str, by_op: dict[str, int],
                      matmul_precision: str | None = None) -> dict | None:
    """The ceiling of a graph whose FLOPs split as ``by_op`` (FlopCount.by_op): the time its MatMul FLOPs take
    at the MatMul ceiling plus its convolution FLOPs at the convolution ceiling, as one GFLOP/s figure.

    ``matmul_precision``: the MatMuls' precision where it differs from the convolutions' (the int8 hybrid
    graphs of ``maskst-export --int8``: int8 convolutions, MatMuls in bf16/f32 from int8 weights)."""
    rates = _op_ceilings(ceilings, runtime, precision, matmul_precision)
    if rates is None:
        return None
    matmul_rate, conv_rate = rates
    conv = sum(v for k, v in by_op.items() if "Convolution" in k)
    matmul = sum(by_op.values()) - conv
    seconds = matmul / (matmul_rate * 1e9) + conv / (conv_rate * 1e9)
    total = matmul + conv
    return {"gflops": total / seconds / 1e9 if seconds else None, "matmul_gflops": matmul_rate,
            "conv_gflops": conv_rate, "matmul_share": matmul / total if total else None,
            **({"matmul_precision": matmul_precision} if matmul_precision else {})}


def _op_ceilings(ceilings: dict, runtime: str, precision: str, matmul_precision: str | None) -> tuple | None:
    """(MatMul GFLOP/s, convolution GFLOP/s) a graph running in ``precision`` (its MatMuls in ``matmul_precision``
    where that differs) meets with ``runtime``; None where either was not measured."""
    table = ceilings.get(runtime, {}).get(precision)
    matmul_table = ceilings.get(runtime, {}).get(matmul_precision) if matmul_precision else table
    if not table or not matmul_table or "matmul" not in matmul_table or "conv" not in table:
        return None
    return matmul_table["matmul"]["gflops"], table["conv"]["gflops"]
