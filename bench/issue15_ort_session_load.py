"""Issue 15 (thirteenth session, 2026-12-03): what ONNX Runtime's graph optimization costs at load, and what loading
its stored optimized graph costs instead (the measurement behind maskst.runtime.ort_cache).

Fresh process per case, one graph of an engines folder, CPU provider, 2 threads; seconds to make the session and the process's peak RSS:
``disable`` / ``basic`` / ``all`` (the graph at each optimization level), ``store`` (``all``, writing the optimized
graph with external weights), ``load`` (that graph, optimizations off). Then, in one process, the ``all`` session
and the ``load`` session called alternately on the same random feed: per-call medians and the largest output
difference.

    python bench/issue15_ort_session_load.py [GRAPH.onnx] [OUT.json] [CALLS]   # default: the full-size bench UNet, 5
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

GRAPH = Path.home() / ".cache/maskst/bench-full-0.1.0/engines/unet.onnx"
CASE = r"""
import json, resource, sys, time
import onnxruntime as ort
case, graph, stored = sys.argv[1:4]
options = ort.SessionOptions()
options.intra_op_num_threads = 2
options.log_severity_level = 3
levels = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "all": "ORT_ENABLE_ALL", "store": "ORT_ENABLE_ALL",
          "load": "ORT_DISABLE_ALL"}
options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, levels[case])
if case == "store":
    options.optimized_model_filepath = stored
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", stored.rsplit("/", 1)[1] + ".data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
started = time.perf_counter()
ort.InferenceSession(stored if case == "load" else graph, options, providers=["CPUExecutionProvider"])
print(json.dumps({"session_s": time.perf_counter() - started,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_case(case: str, graph: Path, stored: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", CASE, case, str(graph), str(stored)], check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def alternated(graph: Path, stored: Path, calls: int) -> dict:
    import time

    import numpy as np
    import onnxruntime as ort

    def session(path: Path, level):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        options.graph_optimization_level = level
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    fresh = session(graph, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    loaded = session(stored, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    # the graph's own IO spec from its engines folder: one 256 px image (latent 32 x 32), CFG batch 2 for the UNet
    from maskst.engines.manifest import load_manifest

    spec = load_manifest(graph.parent, verify_hashes=False).graph_spec(graph.stem)
    feed = spec.sample_inputs(spec.resolve({"N": 1, "h": 32, "w": 32}))
    outputs = [fresh.run(None, feed)[0], loaded.run(None, feed)[0]]  # warm-up, and the outputs compared
    times = {"all": [], "load": []}
    for _ in range(calls):
        for name, s in (("all", fresh), ("load", loaded)):
            started = time.perf_counter()
            s.run(None, feed)
            times[name].append(time.perf_counter() - started)
    return {"median_s": {k: float(np.median(v)) for k, v in times.items()}, "calls": calls,
            "max_abs_output_difference": float(np.max(np.abs(outputs[0] - outputs[1])))}


def main(graph: Path, out: Path | None, calls: int) -> None:
    results = {}
    with tempfile.TemporaryDirectory(prefix="ort-load-") as folder:
        stored = Path(folder) / f"{graph.stem}.opt.onnx"
        for case in ("disable", "basic", "all", "store", "load"):
            results[case] = run_case(case, graph, stored)
            print(f"{case}: session {results[case]['session_s']:.1f} s, peak RSS {results[case]['peak_rss_mib']:,.0f} MiB")
        results["alternated"] = alternated(graph, stored, calls)
        print(f"alternated calls: {results['alternated']}")
    if out is not None:
        out.write_text(json.dumps({"command": " ".join(sys.argv), "graph": str(graph), "results": results}, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else GRAPH, Path(sys.argv[2]) if len(sys.argv) > 2 else None,
         int(sys.argv[3]) if len(sys.argv) > 3 else 5)
