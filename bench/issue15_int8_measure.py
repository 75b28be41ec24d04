"""Issue 15, int8: the maskst int8 path on the full-size random SD 1.5 engines, error and speed vs bf16.

Uses the code of ``maskst-export --int8`` and ``--backend openvino-int8`` on an existing engines folder,
which it only reads (the IRs go to OUT):

1. ``record``: calibration feeds recorded by ``maskst.runtime.calibration.record_feeds`` (the default
   calibration prompts, 256 px, 10 steps, OpenVINO) -> OUT/feeds.pkl
2. ``quantize SCHEME``: ``maskst.engines.int8.quantize_file`` of unet and vae_decoder -> OUT/SCHEME/<graph>.int8.xml
3. ``eval SCHEME GRAPH``: error of the held-out feeds against ONNX Runtime fp32 (max |err| / peak, mean
   |err| / mean |ref|) for int8 (as openvino-int8 runs it: bf16 outside int8) and bf16 (as openvino-bf16
   runs it), then per-call time int8 vs bf16 alternated in one process through ``OpenVinoRunner``, with
   the other load on the machine (``CpuShare``) -> bench/results/issue15-int8-SCHEME-GRAPH.json

    python bench/issue15_int8_measure.py record ~/.cache/maskst/bench-full-0.1.0/engines /tmp/cpu/int8m
    python bench/issue15_int8_measure.py quantize ~/.cache/maskst/bench-full-0.1.0/engines /tmp/cpu/int8m hybrid
    python bench/issue15_int8_measure.py eval ~/.cache/maskst/bench-full-0.1.0/engines /tmp/cpu/int8m hybrid unet
"""

from __future__ import annotations

import gc
import json
import pickle
import resource
import sys
import time
from pathlib import Path

import numpy as np

stage, engines, out = sys.argv[1], Path(sys.argv[2]).expanduser(), Path(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
RESULTS = Path(__file__).resolve().parent / "results"

if stage == "record":
    from maskst.engines.int8 import INT8_GRAPHS
    from maskst.export.options import DEFAULT_CALIBRATION_PROMPTS
    from maskst.runtime.calibration import record_feeds

    t = time.time()
    feeds = record_feeds(engines, DEFAULT_CALIBRATION_PROMPTS, INT8_GRAPHS, size=256)
    pickle.dump(feeds, open(out / "feeds.pkl", "wb"))
    print({g: len(f) for g, f in feeds.items()}, f"{time.time() - t:.0f} s")

elif stage == "quantize":
    from maskst.engines.int8 import INT8_GRAPHS, Int8Scheme, quantize_file, split_calibration
    from maskst.engines.manifest import load_manifest
    from maskst.export.options import DEFAULT_CALIBRATION_PROMPTS

    scheme = Int8Scheme(sys.argv[4])
    manifest = load_manifest(engines, verify_hashes=False)
    feeds = pickle.load(open(out / "feeds.pkl", "rb"))
    # the DeepCache graphs only where the engines have them (recorded)
    graphs = sys.argv[5].split(",") if len(sys.argv) > 5 else [g for g in INT8_GRAPHS if feeds.get(g)]
    (out / scheme.value).mkdir(exist_ok=True)
    for graph in graphs:
        calibration, _held = split_calibration(feeds[graph], generations=len(DEFAULT_CALIBRATION_PROMPTS))
        info = quantize_file(manifest.graph_path(graph), out / scheme.value / f"{graph}.int8.xml", scheme, calibration)
        info["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(graph, info, flush=True)
        (out / scheme.value / f"{graph}.info.json").write_text(json.dumps(info, indent=1))
        gc.collect()

elif stage == "eval":
    from maskst.bench.bench import CpuShare
    from maskst.contract.compare import run_onnx_cpu
    from maskst.engines.int8 import split_calibration
    from maskst.engines.manifest import load_manifest
    from maskst.export.options import DEFAULT_CALIBRATION_PROMPTS
    from maskst.runtime.openvino_runner import OpenVinoRunner

    scheme, graph = sys.argv[4], sys.argv[5]
    rounds = int(sys.argv[6]) if len(sys.argv) > 6 else 8
    manifest = load_manifest(engines, verify_hashes=False)
    spec = manifest.graph_spec(graph)
    _calibration, held = split_calibration(pickle.load(open(out / "feeds.pkl", "rb"))[graph],
                                           generations=len(DEFAULT_CALIBRATION_PROMPTS))
    name = spec.outputs[0].name
    reference = [r[name] for r in run_onnx_cpu(manifest.graph_path(graph), held)]
    gc.collect()
    runners = {"int8": OpenVinoRunner(spec, out / scheme / f"{graph}.int8.xml", precision="auto", cache_dir=False,
                                      compress_weights=False, int8_scheme=scheme),
               "bf16": OpenVinoRunner(spec, manifest.graph_path(graph), precision="bf16", cache_dir=False)}
    result: dict = {"scheme": scheme, "graph": graph, "engines": str(engines), "held_out_cases": len(held),
                    "shapes": {k: list(v.shape) for k, v in held[0].items()},
                    "info": json.loads((out / scheme / f"{graph}.info.json").read_text())}
    for label, runner in runners.items():
        runner.activate()
        outs = [np.array(runner.infer(f)[name], copy=True) for f in held]
        result[label] = {
            "max_err_of_peak": [float(np.abs(o - e).max() / np.abs(e).max()) for o, e in zip(outs, reference)],
            "mean_err_of_mean": [float(np.abs(o - e).mean() / np.abs(e).mean()) for o, e in zip(outs, reference)],
            "kernels": {},
        }
        compiled = next(iter(runner._compiled.values()))[0]
        for op in compiled.get_runtime_model().get_ordered_ops():
            rt = op.get_rt_info()
            layer = rt["layerType"].astype(str)
            if layer in ("Convolution", "FullyConnected", "MatMul"):
                kind = f"{layer}:{rt['primitiveType'].astype(str)}"
                result[label]["kernels"][kind] = result[label]["kernels"].get(kind, 0) + 1
    times: dict = {label: [] for label in runners}
    share = CpuShare()
    share.start()
    for _ in range(rounds):
        for label, runner in runners.items():
            t = time.perf_counter()
            runner.infer(held[0], check_inputs=False)
            times[label].append(round((time.perf_counter() - t) * 1e3, 2))
    result["cpu_share"] = share.stop()
    for label in runners:
        result[label]["ms"] = times[label]
        result[label]["ms_median"] = float(np.median(times[label]))
        runners[label].deactivate()
    result["speedup_median"] = result["bf16"]["ms_median"] / result["int8"]["ms_median"]
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"issue15-int8-{scheme}-{graph}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("int8", "bf16")}, indent=1))
    for label in runners:
        print(label, {k: v for k, v in result[label].items() if k != "ms"})
