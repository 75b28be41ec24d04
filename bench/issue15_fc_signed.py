"""Issue 15 (sixth session of 2026-12-02): int8 FullyConnected chains with unsigned ([0, a]) against signed ([-a, a])
FakeQuantize'd activations, same shapes and weights, compiled bf16 with 2 threads, calls alternated in one process.

    python bench/issue15_fc_signed.py PAIRS        # e.g. 10; prints one JSON line per shape"""
import sys, time, json, statistics
import numpy as np, openvino as ov
from openvino import opset13 as ops
rng = np.random.default_rng(0)
def fq(node, lo, hi, levels=256):
    l, h = ops.constant(np.float32(lo)), ops.constant(np.float32(hi)); return ops.fake_quantize(node, l, h, l, h, levels)
def model(m, k, n, signed, chain=8):
    x = ops.parameter([m, k], np.float32, name="x"); h = x
    for i in range(chain):  # a chain of square-ish FCs so one call is a few ms
        w = fq(ops.constant(rng.standard_normal((k, k)).astype(np.float32)), -4, 4, 255)
        a = fq(h if signed else ops.relu(h), -4.0 if signed else 0.0, 4.0)
        h = ops.matmul(a, w, False, True)
    return ov.Model([h], [x])
core = ov.Core()
cfg = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2, "NUM_STREAMS": 1}
out = []
for m, k in [(2048, 320), (512, 640), (128, 1280), (2048, 1280)]:
    cms = {s: core.compile_model(model(m, k, k, s), "CPU", cfg) for s in (False, True)}
    kinds = {s: sorted({op.get_rt_info()["primitiveType"].astype(str) for op in cm.get_runtime_model().get_ordered_ops()
                        if op.get_rt_info()["layerType"].astype(str).startswith("FullyConnected")}) for s, cm in cms.items()}
    reqs = {s: cm.create_infer_request() for s, cm in cms.items()}
    x = rng.standard_normal((m, k)).astype(np.float32)
    for r in reqs.values():
        for _ in range(3): r.infer({"x": x})
    t = {False: [], True: []}; d = []
    for i in range(int(sys.argv[1])):
        order = (False, True) if i % 2 == 0 else (True, False)
        for s in order:
            a = time.perf_counter(); reqs[s].infer({"x": x}); t[s].append((time.perf_counter() - a) * 1e3)
        d.append(t[True][-1] - t[False][-1])
    gflop = 8 * 2 * m * k * k / 1e9
    row = {"m": m, "k": k, "u8_ms": statistics.median(t[False]), "i8_ms": statistics.median(t[True]),
           "paired_i8_minus_u8_ms": statistics.median(d), "u8_gflops": gflop / statistics.median(t[False]) * 1e3,
           "i8_gflops": gflop / statistics.median(t[True]) * 1e3, "kernels": {str(s): v for s, v in kinds.items()}}
    print(json.dumps(row)); out.append(row)
