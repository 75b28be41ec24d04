"""Issue 15: the UNet's CFG batch as two OpenVINO streams of batch 1 (1 thread each) vs one request of batch 2
(LATENCY, 2 threads), alternated, with each call's other load. Run from the repository root:

    python bench/issue15_streams.py
"""
import time, json
from pathlib import Path
import numpy as np, openvino as ov
from openvino._offline_transformations import compress_model_transformation
from maskst.bench.bench import CpuShare
E = Path.home() / ".cache/maskst/bench-full-0.1.0/engines/unet.onnx"
def shapes(b): return {"sample": [b, 4, 32, 32], "timestep": [1], "text_embeddings": [b, 77, 768], "ip_tokens": [b, 1, 4, 768], "ip_scale": [16, 1], "region_mask_1": [1, 32, 32], "region_mask_2": [1, 16, 16], "region_mask_4": [1, 8, 8], "region_mask_8": [1, 4, 4]}
core = ov.Core()
def comp(b, cfg):
    m = core.read_model(str(E)); m.reshape(shapes(b)); compress_model_transformation(m)
    return core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "bf16", **cfg})
lat = comp(2, {"PERFORMANCE_HINT": "LATENCY"})
thr = comp(1, {"NUM_STREAMS": 2, "INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "THROUGHPUT"})
print("streams", thr.get_property("NUM_STREAMS"), thr.get_property("INFERENCE_NUM_THREADS"))
rng = np.random.default_rng(0)
f2 = {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes(2).items()}
f1 = [{k: (v[i:i+1] if shapes(2)[k][0] == 2 and k not in ("timestep",) and not k.startswith(("ip_scale", "region")) else v) for k, v in f2.items()} for i in range(2)]
rl = lat.create_infer_request(); r1 = [thr.create_infer_request() for _ in range(2)]
rl.infer(f2); [r.infer(f) for r, f in zip(r1, f1)]
res = {"latency": [], "streams": []}
for i in range(10):
    s = CpuShare(); s.start(); t = time.perf_counter(); rl.infer(f2); res["latency"].append(((time.perf_counter() - t) * 1e3, s.stop()["others_cores"]))
    s = CpuShare(); s.start(); t = time.perf_counter()
    for r, f in zip(r1, f1): r.start_async(f)
    for r in r1: r.wait()
    res["streams"].append(((time.perf_counter() - t) * 1e3, s.stop()["others_cores"]))
out_l = rl.get_output_tensor(0).data; out_s = np.concatenate([r.get_output_tensor(0).data for r in r1])
print("max diff", float(np.abs(out_l - out_s).max()), float(np.abs(out_l).max()))
for k, v in res.items(): print(k, round(float(np.median([a for a, _ in v])), 1), [round(a) for a, _ in v], "others", [round(o, 2) for _, o in v])
