"""Why the style image encoder is quantized with int8 activations (maskst.engines.int8.ACTIVATION_INT8_GRAPHS):
its fp32 graph against NNCF's int8 weight-only compression and its full (weights and activations) quantization,
one image, OpenVINO CPU, each timed in a fresh process, optionally with oneDNN capped to an ISA level
(``ONEDNN_MAX_CPU_ISA``, as ``maskst-bench --cpu-isa-cap``). Error: max |err| / peak |fp32| and cosine against the
fp32 graph compiled in f32. Calibration: ``--calibration`` random pixel tensors in the CLIP-normalised range.

    python bench/issue15_image_encoder_int8.py ~/.cache/maskst/bench-full-0.1.0/engines/image_encoder.onnx \
        --work /tmp/ie-int8 --isa-cap none --isa-cap AVX512_CORE_BF16 --json bench/results/issue15-image-encoder-int8.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHAPE = [1, 3, 224, 224]


def quantize(src: Path, work: Path, calibration: int) -> dict[str, Path]:
    import nncf
    import openvino as ov

    work.mkdir(parents=True, exist_ok=True)
    paths = {"int8 weights": work / "weights.xml", "int8 weights+activations": work / "full.xml"}
    rng = np.random.default_rng(0)
    data = [{"pixel_values": np.clip(rng.standard_normal(SHAPE), -2, 2).astype(np.float32)} for _ in range(calibration)]
    for label, dst in paths.items():
        if dst.is_file():
            continue
        model = ov.Core().read_model(str(src))
        model.reshape({"pixel_values": SHAPE})
        if label == "int8 weights":
            quantized = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        else:
            quantized = nncf.quantize(model, nncf.Dataset(data), model_type=nncf.ModelType.TRANSFORMER,
                                      subset_size=calibration)
        ov.save_model(quantized, str(dst), compress_to_fp16=False)
    return {"fp32 graph": src, **paths}


def time_one(path: str, precision: str, calls: int, out: str) -> None:
    """Child process: compile, warm up, time ``calls`` inferences; print JSON, save the output to ``out``."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(path)
    model.reshape({model.inputs[0].get_any_name(): SHAPE})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                                                 "INFERENCE_NUM_THREADS": 2})
    request = compiled.create_infer_request()
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    for _ in range(3):
        request.infer({0: x})
    ms = []
    for _ in range(calls):
        started = time.perf_counter()
        request.infer({0: x})
        ms.append((time.perf_counter() - started) * 1e3)
    np.save(out, request.get_output_tensor(0).data.copy())
    print(json.dumps({"ms_median": statistics.median(ms), "ms_samples": [round(m, 1) for m in ms]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image_encoder", type=Path, help="the fp32 image_encoder.onnx of an engines folder")
    parser.add_argument("--work", type=Path, required=True, help="folder for the quantized IRs and outputs")
    parser.add_argument("--isa-cap", action="append", default=None, help="none, or a ONEDNN_MAX_CPU_ISA value")
    parser.add_argument("--calibration", type=int, default=8)
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--json")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        time_one(args.child[0], args.child[1], int(args.child[2]), args.child[3])
        return
    graphs = quantize(args.image_encoder, args.work, args.calibration)
    rows = []
    for cap in args.isa_cap or ["none"]:
        env = dict(os.environ)
        if cap != "none":
            env["ONEDNN_MAX_CPU_ISA"] = cap
        for label, path in graphs.items():
            for precision in (("f32", "bf16") if label == "fp32 graph" else ("bf16",)):
                out = args.work / f"out-{cap}-{path.stem}-{precision}.npy"
                done = subprocess.run([sys.executable, __file__, str(args.image_encoder), "--work", str(args.work),
                                       "--child", str(path), precision, str(args.calls), str(out)],
                                      env=env, capture_output=True, text=True, check=True)
                rows.append({"isa_cap": cap, "graph": label, "precision": precision, "output": str(out),
                             **json.loads(done.stdout.strip().splitlines()[-1])})
    for row in rows:
        reference = np.load(args.work / f"out-{row['isa_cap']}-{graphs['fp32 graph'].stem}-f32.npy").ravel()
        got = np.load(row.pop("output")).ravel()
        row["max_err_of_peak"] = float(np.abs(got - reference).max() / np.abs(reference).max())
        row["cosine"] = float(got @ reference / np.linalg.norm(got) / np.linalg.norm(reference))
        print(f"cap {row['isa_cap']:>16}  {row['graph']:<26} {row['precision']:>5}: {row['ms_median']:8.1f} ms  "
              f"max err {100 * row['max_err_of_peak']:.2f}% of peak, cosine {row['cosine']:.5f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
