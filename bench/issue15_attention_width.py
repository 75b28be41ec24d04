"""Issue 15 (sixteenth session, 2026-12-04): what one self-attention costs on OpenVINO's CPU plugin beyond its two
products, measured by varying the head width at a fixed token count.

One ``ScaledDotProductAttention`` op (q, k, v: float32 ``[2, HEADS, TOKENS, WIDTH]``, as the UNet's CFG batch 2 at
one level; the CPU plugin compiles it into the same fused MHA subgraph as the exported MatMul / Softmax / MatMul
pattern) is compiled with ``INFERENCE_PRECISION_HINT`` bf16, 2 threads, latency hint, for each head width, and timed
beside OpenVINO's bf16 MatMul ceiling of :mod:`maskst.bench.ceilings`, all in one process. For each width:
the call's median time, the time its two products (QK^T and PV, 4 x 2 x HEADS x TOKENS^2 x WIDTH FLOP) would take
at that ceiling, and the rest. A rest that stays the same as the width grows is a cost per score (the softmax over
TOKENS^2 scores per head), which a wider or narrower head cannot remove.

    python bench/issue15_attention_width.py [TOKENS] [HEADS] [OUT.json]   # default 4096 8: 64x64 latents (512 px)
"""
import json
import statistics
import sys
import time

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from maskst.bench.ceilings import openvino_ceiling
from maskst.hardware import cpu_info

BATCH = 2  # the CFG batch of one image
WIDTHS = (40, 64, 80, 128)  # SD 1.5's heads are 40 / 80 / 160 wide (8 heads at 320 / 640 / 1280 channels)
CALLS = 8
CONFIG = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2,
          "NUM_STREAMS": 1}


def attention(tokens: int, heads: int, width: int) -> ov.Model:
    q, k, v = (ops.parameter([BATCH, heads, tokens, width], ov.Type.f32, name=name) for name in "qkv")
    return ov.Model([ops.scaled_dot_product_attention(q, k, v, causal=False)], [q, k, v], "attention")


def time_attention(core: ov.Core, tokens: int, heads: int, width: int) -> dict:
    compiled = core.compile_model(attention(tokens, heads, width), "CPU", CONFIG)
    request = compiled.create_infer_request()
    rng = np.random.default_rng(0)
    feed = {name: rng.standard_normal((BATCH, heads, tokens, width), dtype=np.float32) for name in "qkv"}
    request.infer(feed)  # warm-up
    samples = []
    for _ in range(CALLS):
        started = time.perf_counter()
        request.infer(feed)
        samples.append((time.perf_counter() - started) * 1e3)
    kinds = sorted({f"{op.get_rt_info()['layerType'].astype(str)}: {op.get_rt_info()['primitiveType'].astype(str)}"
                    for op in compiled.get_runtime_model().get_ordered_ops()
                    if op.get_rt_info()["layerType"].astype(str) not in ("Parameter", "Result", "Input", "Output")})
    return {"ms_median": statistics.median(samples), "ms_samples": [round(s, 2) for s in samples], "nodes": kinds}


def main(tokens: int, heads: int, out: str | None) -> None:
    core = ov.Core()
    ceiling = openvino_ceiling("matmul", "bf16", threads=2, warmup=2, repeats=8)
    gflops = ceiling["gflops"]
    rows = []
    for width in WIDTHS:
        measured = time_attention(core, tokens, heads, width)
        flop = 4 * BATCH * heads * tokens * tokens * width
        products_ms = flop / (gflops * 1e9) * 1e3
        row = {"width": width, "gflop": flop / 1e9, **measured, "gflops": flop / measured["ms_median"] / 1e6,
               "products_at_ceiling_ms": products_ms, "rest_ms": measured["ms_median"] - products_ms,
               "rest_ns_per_score": (measured["ms_median"] - products_ms) * 1e6 / (BATCH * heads * tokens * tokens)}
        rows.append(row)
        print(f"width {width:3d}: {row['ms_median']:7.1f} ms, {row['gflops']:5.0f} GFLOP/s "
              f"({100 * row['gflops'] / gflops:4.1f}% of the bf16 MatMul ceiling {gflops:.0f}); products at the "
              f"ceiling {products_ms:6.1f} ms, the rest {row['rest_ms']:6.1f} ms "
              f"({row['rest_ns_per_score']:.3f} ns per score); {row['nodes']}")
    if out:
        cpu = cpu_info()
        with open(out, "w") as f:
            json.dump({"command": " ".join(sys.argv), "cpu": cpu.model, "isa": cpu.flags.split(),
                       "openvino": ov.get_version(), "tokens": tokens, "heads": heads, "batch": BATCH,
                       "config": CONFIG, "bf16_matmul_ceiling": ceiling, "widths": rows}, f, indent=1)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 4096, int(args[1]) if len(args) > 1 else 8, args[2] if len(args) > 2 else None)
