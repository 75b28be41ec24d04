"""Whether bf16 pays on this CPU, measured: what OpenVINO's ``auto`` precision follows.

With AMX, bf16 tiles run several times fp32's rate (the AMX VM of docs/benchmarks.md: MatMul ~870 against
~300 GFLOP/s), so bf16 is taken without a measurement. Without AMX, AVX-512 BF16 alone says nothing about
the speed: on a Zen 4 issue 15 measured bf16 at ~2x fp32 (240-256 against 104-124 GFLOP/s), but on a Xeon
whose AMX the hypervisor hides, bf16 ran *slower* than fp32 (143 against 235 GFLOP/s; the UNet step 2,376
against 1,970 ms). No ISA flag tells the two apart, so one MatMul is timed in both precisions with the same
runtime, once per CPU (model, ISA flags as oneDNN's cap leaves them) and OpenVINO version, and the answer is
kept in a small JSON file beside the compiled-model cache.

bf16 costs accuracy (1-3% of the peak per graph), so it is chosen only when clearly faster:
:data:`BF16_MIN_GAIN`. The file records the timings, so a user can read why a precision was chosen and delete
the file to measure again (a measurement made while other jobs loaded the CPU is then replaced).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from maskst.contract.files import write_atomic
from maskst.hardware import CpuInfo, cpu_info

BF16_MIN_GAIN = 1.2  # f32 time / bf16 time at or above which bf16 is worth its 1-3% error
PROBE_SHAPE = (512, 1024, 1024)  # M, K, N: rows x a constant weight, like the UNet's projections (1.1 GFLOP)
PROBE_FILE = "bf16-probe.json"
AMX_BF16_FLAGS = ("amx_bf16",)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # bf16 dot products: AVX-512 BF16 or AMX


@dataclasses.dataclass(frozen=True)
class Bf16Verdict:
    """The answer and its grounds: ``pays`` (run ``auto`` graphs in bf16), ``reason`` (one line for a
    report), ``gain`` (f32 time / bf16 time of the probe MatMul; None where nothing was measured)."""

    pays: bool
    reason: str
    gain: float | None = None


def _identity(cpu: CpuInfo) -> str:
    """The key a measurement is valid for: CPU model, the flags oneDNN may use, the cap, OpenVINO's version."""
    import openvino as ov

    return json.dumps({"model": cpu.model, "flags": cpu.flags, "isa_cap": cpu.isa_cap,
                       "openvino": ov.get_version()}, sort_keys=True)


def measure_bf16_gain(repeats: int = 7) -> dict:
    """Time :data:`PROBE_SHAPE`'s MatMul compiled by OpenVINO's CPU plugin in f32 and in bf16 (latency hint,
    the plugin's default threads, as the runners compile), whole-call time, median of ``repeats`` after 2
    warm-up calls. Returns ``{"f32_ms", "bf16_ms", "gain"}`` with ``gain`` = f32 time / bf16 time."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    m, k, n = PROBE_SHAPE
    rng = np.random.default_rng(0)
    x = ops.parameter([m, k], np.float32, name="x")
    weights = ops.constant((rng.standard_normal((k, n)) * 0.05).astype(np.float32))
    model = ov.Model([ops.matmul(x, weights, False, False)], [x], "bf16_probe")
    feed = rng.uniform(-1, 1, (m, k)).astype(np.float32)
    core = ov.Core()
    times = {}
    for precision in ("f32", "bf16"):
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                     "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        samples = []
        for call in range(2 + repeats):
            start = time.perf_counter()
            request.infer({0: feed})
            if call >= 2:
                samples.append(time.perf_counter() - start)
        times[precision] = statistics.median(samples) * 1e3
    return {"f32_ms": round(times["f32"], 4), "bf16_ms": round(times["bf16"], 4),
            "gain": round(times["f32"] / times["bf16"], 4)}


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or damaged by a hand edit (writes are atomic): measure again
        return {}
    return data if isinstance(data, dict) else {}


def bf16_verdict(cpu: CpuInfo, openvino_bf16: bool, cache_dir: Path | None = None,
                 measure: Callable[[], dict] = measure_bf16_gain) -> Bf16Verdict:
    """Whether ``auto`` should run bf16 on ``cpu`` (:func:`maskst.hardware.cpu_info`, capped as oneDNN is).

    ``openvino_bf16``: OpenVINO reports native bf16 (``OPTIMIZATION_CAPABILITIES``). ``cache_dir``: where
    :data:`PROBE_FILE` keeps measurements (None: measure, keep nothing). ``measure``: the probe
    (:func:`measure_bf16_gain`; tests pass their own)."""
    if not openvino_bf16 or (cpu.flags and not cpu.has(*BF16_FLAGS)):  # flags unknown (not Linux): measure
        return Bf16Verdict(False, "no native bf16 on this CPU")
    if cpu.has(*AMX_BF16_FLAGS):
        return Bf16Verdict(True, "AMX bf16 tiles")
    key = _identity(cpu)
    path = Path(cache_dir) / PROBE_FILE if cache_dir else None
    known = _read(path).get(key) if path else None
    result = known if isinstance(known, dict) and isinstance(known.get("gain"), (int, float)) else None
    if result is None:
        result = {**measure(), "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps({**_read(path), key: result}, indent=1, sort_keys=True))
    pays = result["gain"] >= BF16_MIN_GAIN
    return Bf16Verdict(pays, f"AVX-512 BF16 without AMX: measured bf16 {result['gain']:.2f}x f32 "
                             f"({'>=' if pays else '<'} {BF16_MIN_GAIN}x)", result["gain"])


@functools.lru_cache(maxsize=None)
def bf16_pays(openvino_bf16: bool, cache_dir: Path | None = None) -> Bf16Verdict:
    """:func:`bf16_verdict` for this process's CPU, once per process and cache folder."""
    return bf16_verdict(cpu_info(), openvino_bf16, cache_dir)
