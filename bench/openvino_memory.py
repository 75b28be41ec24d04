"""Resident memory of one OpenVINO graph by how it is loaded (issue 15; what docs/benchmarks.md "Memory" quotes).

Each mode runs in a fresh process and prints one JSON line: RSS split into anonymous and file-backed
pages (``/proc/self/status``) after loading and the first inference, the peak (``VmHWM``), the time of
one call, and the maximum relative difference of the output against the ``onnx`` mode's (same input:
all ones) where that output exists.

Modes: ``onnx`` (read the ONNX graph, static reshape, compile: the issue-5 runner), ``onnx-nommap``
(the same without memory-mapping the weights), ``onnx-f16`` (weights to f16 in memory before
compiling), ``ir`` (an OpenVINO IR file given with ``--ir``, e.g. from ``python -m
maskst.bench.unet_variants maskst-ov``), ``runner`` (maskst's ``OpenVinoRunner`` with its
compiled-model cache in ``--cache``: run it twice for a miss and a hit), ``pinning`` (two compiles
with ``ENABLE_CPU_PINNING`` on and off, calls alternated, each call's other load recorded), and ``phases`` /
``phases-bytesio`` (a cache miss step by step, the runner's own calls: read, reshape, f16 weights, compile,
export the blob into ``--cache``, import it back, page out, first call; RSS after each phase and the peak within
it; ``phases`` streams the blob to its file as the runner does, ``phases-bytesio`` is the runner before that
change: the blob built in an ``io.BytesIO``, then written).

    python bench/openvino_memory.py --graph unet --precision bf16 --mode onnx --mode onnx-f16 \\
        --mode runner --mode runner --cache /tmp/ov-cache --json bench/results/issue15-unet-memory.json
    python bench/openvino_memory.py --engines ~/.cache/maskst/bench-full-0.1.0/engines-deepcache --graph unet \\
        --precision f32 --mode phases-bytesio --mode phases --cache /tmp/ovmem-cache --threads 2
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ENGINES = Path.home() / ".cache" / "maskst" / "bench-full-0.1.0" / "engines"
OUT_DIR = Path("/tmp/maskst-openvino-memory")


def _status() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS", "RssAnon", "RssFile", "VmHWM")):
            key, value = line.split(":")
            out[key] = int(value.split()[0]) // 1024
    return out


def _shapes(spec) -> dict:
    dims = {d: r.opt for d, r in spec.dims.items()}
    dims.update({k: v for k, v in {"N": 1, "h": 32, "w": 32, "R": 1}.items() if k in dims})
    shapes = spec.shapes(dims)
    return {t.name: list(shapes[t.name]) for t in spec.inputs}


def phases(mode: str, graph: str, precision: str, cache: str, threads: int | None, engines: Path) -> dict:
    """A cache miss of ``OpenVinoRunner`` phase by phase: RSS after each phase and the peak within it (VmHWM,
    reset between phases through /proc/self/clear_refs), the blob's size and SHA-256, the first call's output."""
    import hashlib
    import io

    from maskst.engines.manifest import load_manifest
    from maskst.runtime.openvino_runner import OpenVinoRunner, export_blob, openvino_core, release_pages

    manifest = load_manifest(engines, verify_hashes=False)
    spec = manifest.graph_spec(graph)
    shapes = _shapes(spec)
    runner = OpenVinoRunner(spec, manifest.graph_path(graph), precision=precision, cache_dir=Path(cache), threads=threads)
    runner.activate()
    rows = []
    started = [time.perf_counter()]

    def phase(name: str) -> None:
        status = _status()
        rows.append({"phase": name, "rss_mib": status["VmRSS"], "anon_mib": status["RssAnon"], "file_mib": status["RssFile"],
                     "peak_in_phase_mib": status["VmHWM"], "s": round(time.perf_counter() - started[0], 1)})
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the next row's peak is its own phase's
        started[0] = time.perf_counter()

    phase("start")
    model = runner._read_model()
    phase("read_model")
    names = {n for port in model.inputs for n in port.get_names()}
    shapes = {k: v for k, v in shapes.items() if k in names}
    model.reshape(shapes)
    phase("reshape")
    if runner.compress_weights:
        from openvino._offline_transformations import compress_model_transformation

        compress_model_transformation(model)
        phase("f16 weights")
    compiled = openvino_core().compile_model(model, "CPU", runner.config)
    del model
    phase("compile_model")
    blob = runner.blob_path(shapes)
    blob.unlink(missing_ok=True)
    if mode == "phases":
        export_blob(compiled, blob)
        phase("export_model to the file")
    else:  # the runner before: the whole blob in memory, then written
        stream = io.BytesIO()
        compiled.export_model(stream)
        phase("export_model to io.BytesIO")
        tmp = blob.with_suffix(".tmp")
        tmp.write_bytes(stream.getbuffer())
        tmp.replace(blob)
        del stream
        phase("write the blob, free the BytesIO")
    del compiled
    phase("drop the compiled model")
    compiled, mapped = runner._import_blob(blob)
    phase("import the blob")
    release_pages(mapped)
    phase("page the blob out")
    feed = {name: np.ones(shape, np.float32) for name, shape in shapes.items()}
    out = np.array(compiled.create_infer_request().infer(feed)[0], copy=True)
    phase("first call")
    digest = hashlib.sha256()
    with open(blob, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            digest.update(chunk)
    OUT_DIR.mkdir(exist_ok=True)
    np.save(OUT_DIR / f"{engines.name}-{graph}-{precision}-{mode}.npy", out)  # the engines' name: compared like with like
    record = {"mode": mode, "graph": graph, "precision": precision, "threads": threads, "shapes": shapes, "rows": rows,
              "peak_mib": max(r["peak_in_phase_mib"] for r in rows), "blob_mib": blob.stat().st_size >> 20,
              "blob_sha256": digest.hexdigest()}
    for other in ("phases", "phases-bytesio"):
        reference = OUT_DIR / f"{engines.name}-{graph}-{precision}-{other}.npy"
        if other != mode and reference.is_file():
            record[f"max_abs_vs_{other}"] = float(np.abs(out - np.load(reference)).max())
    return record


def one(mode: str, graph: str, precision: str, ir: str | None, cache: str | None, calls: int, engines: Path = ENGINES) -> dict:
    import openvino as ov

    from maskst.engines.manifest import load_manifest

    manifest = load_manifest(engines, verify_hashes=False)
    spec = manifest.graph_spec(graph)
    shapes = _shapes(spec)
    feed = {name: np.ones(shape, np.float32) for name, shape in shapes.items()}
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    record = {"mode": mode, "graph": graph, "precision": precision}
    if mode == "runner":
        from maskst.runtime.openvino_runner import OpenVinoRunner

        runner = OpenVinoRunner(spec, manifest.graph_path(graph), precision=precision, cache_dir=Path(cache))
        runner.activate()
        out = np.array(next(iter(runner.infer(feed).values())), copy=True)
        record["loaded_from"] = list(runner.loaded_from.values())
        infer = lambda: runner.infer(feed)  # noqa: E731
    elif mode == "pinning":
        return pinning(graph, precision, calls, engines)
    else:
        core = ov.Core()
        if mode == "onnx-nommap":
            core.set_property({"ENABLE_MMAP": False})
        model = core.read_model(ir if mode == "ir" else str(manifest.graph_path(graph)))
        names = {n for port in model.inputs for n in port.get_names()}
        model.reshape({k: v for k, v in shapes.items() if k in names})
        if mode == "onnx-f16":
            from openvino._offline_transformations import compress_model_transformation

            compress_model_transformation(model)
        compiled = core.compile_model(model, "CPU", config)
        del model
        gc.collect()
        request = compiled.create_infer_request()
        out = np.array(request.infer(feed)[0], copy=True)
        infer = lambda: request.infer(feed)  # noqa: E731
    record["after_first_call_mib"] = _status()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        infer()
        times.append((time.perf_counter() - t0) * 1e3)
    record["ms"] = [round(t, 1) for t in times]
    record["final_mib"] = _status()
    OUT_DIR.mkdir(exist_ok=True)
    np.save(OUT_DIR / f"{graph}-{precision}-{mode}.npy", out)
    reference = OUT_DIR / f"{graph}-{precision}-onnx.npy"
    if reference.is_file():
        base = np.load(reference)
        record["max_rel_vs_onnx_mode"] = float(np.abs(out - base).max() / max(np.abs(base).max(), 1e-30))
    fp32 = OUT_DIR / f"{graph}-f32-onnx.npy"
    if fp32.is_file():
        base = np.load(fp32)
        diff = np.abs(out - base)
        record["vs_fp32"] = {"max_rel": float(diff.max() / np.abs(base).max()), "mean_rel": float(diff.mean() / np.abs(base).mean())}
    return record


def pinning(graph: str, precision: str, calls: int, engines: Path = ENGINES) -> dict:
    """ENABLE_CPU_PINNING on vs off, alternated calls, each with the other processes' load."""
    import openvino as ov
    from openvino._offline_transformations import compress_model_transformation

    from maskst.bench.bench import CpuShare
    from maskst.engines.manifest import load_manifest

    manifest = load_manifest(engines, verify_hashes=False)
    spec = manifest.graph_spec(graph)
    shapes = _shapes(spec)
    feed = {name: np.random.default_rng(0).random(shape).astype(np.float32) for name, shape in shapes.items()}
    core = ov.Core()
    requests = {}
    for name, pin in (("pin", True), ("nopin", False)):
        model = core.read_model(str(manifest.graph_path(graph)))
        model.reshape(shapes)
        compress_model_transformation(model)
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                                                     "ENABLE_CPU_PINNING": pin})
        requests[name] = compiled.create_infer_request()
        requests[name].infer(feed)
    rows = []
    for _ in range(calls):
        for name, request in requests.items():
            share = CpuShare()
            share.start()
            t0 = time.perf_counter()
            request.infer(feed)
            rows.append({"variant": name, "ms": (time.perf_counter() - t0) * 1e3, "others": share.stop()["others_cores"]})
    summary = {}
    for name in requests:
        quiet = [r["ms"] for r in rows if r["variant"] == name and r["others"] < 0.1]
        busy = [r["ms"] for r in rows if r["variant"] == name and r["others"] >= 0.4]
        summary[name] = {"quiet_n": len(quiet), "quiet_median_ms": float(np.median(quiet)) if quiet else None,
                         "busy_n": len(busy), "busy_median_ms": float(np.median(busy)) if busy else None}
    return {"mode": "pinning", "graph": graph, "rows": rows, "summary": summary}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", default="unet")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "f32"))
    parser.add_argument("--mode", action="append", required=True,
                        choices=("onnx", "onnx-nommap", "onnx-f16", "ir", "runner", "pinning", "phases", "phases-bytesio"))
    parser.add_argument("--engines", type=Path, default=ENGINES, help=f"engines folder (default {ENGINES})")
    parser.add_argument("--threads", type=int, help="INFERENCE_NUM_THREADS (for --mode phases*; default OpenVINO's)")
    parser.add_argument("--ir", help="OpenVINO IR (.xml) for --mode ir")
    parser.add_argument("--cache", help="compiled-model cache folder for --mode runner")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        if args.mode[0].startswith("phases"):
            if not args.cache:
                parser.error("--mode phases needs --cache (a folder of its own, not ~/.cache/maskst/openvino)")
            record = phases(args.mode[0], args.graph, args.precision, args.cache, args.threads, args.engines)
        else:
            record = one(args.mode[0], args.graph, args.precision, args.ir, args.cache, args.calls, args.engines)
        print(json.dumps(record))
        return 0
    records = []
    for mode in args.mode:
        cmd = [sys.executable, __file__, "--one", "--graph", args.graph, "--precision", args.precision, "--mode", mode,
               "--calls", str(args.calls)]
        cmd += ["--ir", args.ir] if args.ir else []
        cmd += ["--cache", args.cache] if args.cache else []
        cmd += ["--engines", str(args.engines)] + (["--threads", str(args.threads)] if args.threads else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            records.append({"mode": mode, "error": f"exit {proc.returncode}"})
            continue
        record = json.loads(proc.stdout.strip().splitlines()[-1])
        records.append(record)
        print(json.dumps({k: v for k, v in record.items() if k != "rows" or mode.startswith("phases")}), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "records": records}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
