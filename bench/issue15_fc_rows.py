"""How OpenVINO's MatMul kernel fares with few rows: one [M, 8192] x [8192, 8192] MatMul (constant weights, as in
the UNet's projections), its kernel node's time (PERF_COUNT) for each M, as GFLOP/s and as the GB/s at which it
reads its weights (in the precision it runs). At 256 px the UNet's deep levels have 32-128 rows per image pair.

    python bench/issue15_fc_rows.py --precision bf16 --rows 2 32 128 2048 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np

SIZE = 8192
WEIGHT_BYTES = {"f32": 4, "bf16": 2}


def measure(rows: int, precision: str, threads: int, calls: int) -> dict:
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([rows, SIZE], np.float32, name="x")
    weights = ops.constant(((rng.random((SIZE, SIZE), dtype=np.float32) - 0.5) * 0.05))
    model = ov.Model([ops.matmul(x, weights, False, True)], [x])
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision, "PERF_COUNT": True,
                                                      "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    feed = {0: rng.random((rows, SIZE), dtype=np.float32)}
    seconds, kernel = [], None
    for i in range(5 + calls):
        request.infer(feed)
        nodes = [p for p in request.profiling_info if p.node_type == "FullyConnected"]
        kernel = nodes[0].exec_type if nodes else None
        if i >= 5:
            seconds.append(sum(p.real_time.total_seconds() for p in nodes))
    median = statistics.median(seconds)
    return {"rows": rows, "precision": precision, "kernel": kernel, "ms": median * 1e3,
            "gflops": 2 * rows * SIZE * SIZE / median / 1e9, "weights_gbps": SIZE * SIZE * WEIGHT_BYTES[precision] / median / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", choices=sorted(WEIGHT_BYTES), default="bf16")
    parser.add_argument("--rows", type=int, nargs="+", default=[2, 32, 128, 2048])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    results = [measure(rows, args.precision, args.threads, args.calls) for rows in args.rows]
    for r in results:
        print(f"M={r['rows']:>5} {r['kernel']}: {r['ms']:.2f} ms, {r['gflops']:.0f} GFLOP/s, weights read at "
              f"{r['weights_gbps']:.1f} GB/s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
