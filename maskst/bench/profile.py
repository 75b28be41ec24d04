"""maskst-profile: where the time of one generation goes.

One generation (after ``warmup`` untimed ones, with maskst's prompt and content caches emptied so
every encoder runs) is recorded three ways:

- **stage timeline**: every runner call (text encoder, image encoder, content encoder, masking +
  projection, each UNet step, VAE) as a host-timed span, and "host" for what lies between (CLIP
  preprocessing, scheduler steps, guidance arithmetic). Host timers are exact here because every
  runner returns host arrays, i.e. ``infer`` returns when the device work is done; on a GPU backend
  CUDA events (via torch, if installed with CUDA) additionally time each call on the device.
- **per operator**: ONNX Runtime's own profiler (``SessionOptions.enable_profiling``) for graphs on
  ONNX Runtime, restricted to the profiled generation by its timestamps; OpenVINO's per-node
  performance counters (``PERF_COUNT``; they hold the last call of each graph, counted once per
  call) for graphs on OpenVINO.
  Aggregated into top-N tables by op type and by node.
- **trace**: ``trace.json`` in the Chrome trace-event format (open it in https://ui.perfetto.dev or
  chrome://tracing): the stages on one track and the ORT operators of each graph on their own.

Files written to the output folder: ``profile.txt`` (the tables), ``profile.json`` (everything),
``trace.json``, ``profile.png`` (matplotlib chart) and ``ort/`` (ONNX Runtime's raw profiles).
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path

from maskst.contract.files import agg_pyplot, save_figure, write_atomic
from maskst.runtime.backends import parse_backend
from maskst.runtime.pipeline import PipelineCallback
from maskst.bench.bench import BenchSettings, request_inputs, peak_rss_mib, say, clear_request_caches

STAGE_OF_GRAPH = {"text_encoder": "text_encoder", "text_encoder_2": "text_encoder_2", "image_encoder": "image_encoder",
                  "content_encoder": "content_encoder",
                  "image_conditioner": "image_conditioner", "unet": "unet", "vae_decoder": "vae_decoder"}


class _CudaTimer:
    """Device time of each runner call via CUDA events (GPU backends, torch with CUDA only)."""

    def __init__(self, enabled: bool):
        self.torch = None
        if enabled:
            try:
                import torch
            except ImportError:
                return  # no torch: host timers only (they are exact for synchronous runners)
            if torch.cuda.is_available():
                self.torch = torch

    def start(self):
        if self.torch is None:
            return None
        begin, end = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
        begin.record()
        return begin, end

    def stop(self, events) -> float | None:
        if events is None:
            return None
        begin, end = events
        end.record()
        end.synchronize()
        return begin.elapsed_time(end)


class _SpanRecorder(PipelineCallback):
    """Pipeline callback: every graph call appends {graph, start_ns, end_ns, device_ms} to ``spans``."""

    def __init__(self, spans: list, cuda: _CudaTimer):
        self.spans, self.cuda = spans, cuda
        self._open: tuple | None = None

    def on_infer_start(self, graph: str) -> None:
        self._open = (self.cuda.start(), time.time_ns())

    def on_infer_end(self, graph: str) -> None:
        events, start = self._open
        end = time.time_ns()
        self.spans.append({"graph": graph, "start_ns": start, "end_ns": end, "device_ms": self.cuda.stop(events)})


def _ort_events(pipeline, window: tuple[int, int]) -> tuple[list[dict], dict[str, str]]:
    """ONNX Runtime node events of the profiled window, with absolute times; {graph: raw file}."""
    events, files = [], {}
    for name, runner in pipeline.runners.items():
        end_profiling = getattr(runner, "end_profiling", None)
        if end_profiling is None or getattr(runner, "session", None) is None:
            continue
        start_ns = runner.session.get_profiling_start_time_ns()  # epoch ns, the clock of time.time_ns
        path = end_profiling()
        if not path:
            continue
        files[name] = path
        for event in json.loads(Path(path).read_text()):
            if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
                continue
            begin = start_ns + int(event["ts"]) * 1000
            if not window[0] <= begin <= window[1]:
                continue  # warm-up calls and session initialisation
            args = event.get("args", {})
            events.append({"graph": name, "node": event["name"][: -len("_kernel_time")],
                           "op_type": args.get("op_name", "?"), "provider": args.get("provider", ""),
                           "start_ns": begin, "dur_us": float(event["dur"])})
    return events, files


def _openvino_nodes(pipeline, spans: list[dict]) -> list[dict]:
    """OpenVINO per-node records of the profiled generation.

    OpenVINO's counters hold the last call of each compiled graph only; every call of a graph in
    one generation has the same shapes (the UNet steps differ only in values), so the last call's
    node times are counted once per call of that graph.
    """
    calls = collections.Counter(span["graph"] for span in spans)
    records = []
    for name, runner in pipeline.runners.items():
        info = getattr(runner, "profiling_info", None)
        if info is None or not calls[name]:
            continue
        for record in info():
            for _ in range(calls[name]):
                records.append({"graph": name, "node": record["name"], "provider": "OpenVINO",
                                "op_type": f"{record['type']} ({record['exec_type']})", "dur_us": record["us"]})
    return records


def aggregate(ops: list[dict], key: str, top: int, total_us: float) -> list[dict]:
    """Top-``top`` rows of ops grouped by ``key`` ("op_type" or "node"): total ms, calls, share."""
    groups: dict[tuple, list[float]] = collections.defaultdict(list)
    for op in ops:
        group = (op["graph"], op[key]) if key == "node" else (op[key],)
        groups[group].append(op["dur_us"])
    rows = [{"name": group[-1], "graph": group[0] if key == "node" else None, "total_ms": sum(d) / 1e3,
             "calls": len(d), "mean_us": sum(d) / len(d), "share": sum(d) / total_us if total_us else 0.0}
            for group, d in groups.items()]
    rows.sort(key=lambda r: -r["total_ms"])
    return rows[:top]


def stage_table(spans: list[dict], window: tuple[int, int]) -> list[dict]:
    """Per stage: calls, total and mean ms; plus "host" = the generation minus every runner call."""
    total_ms = (window[1] - window[0]) / 1e6
    stages: dict[str, list[float]] = collections.OrderedDict()
    for span in spans:
        stages.setdefault(STAGE_OF_GRAPH[span["graph"]], []).append((span["end_ns"] - span["start_ns"]) / 1e6)
    rows = [{"stage": s, "calls": len(d), "total_ms": sum(d), "mean_ms": sum(d) / len(d), "share": sum(d) / total_ms}
            for s, d in stages.items()]
    host = total_ms - sum(r["total_ms"] for r in rows)
    rows.append({"stage": "host (preprocessing, scheduler, guidance)", "calls": None, "total_ms": host,
                 "mean_ms": None, "share": host / total_ms})
    return rows


def chrome_trace(spans: list[dict], ops: list[dict], window: tuple[int, int], backend: str) -> dict:
    """Chrome trace-event JSON: process 1 = maskst stages, process 2 = ONNX Runtime operators per graph."""
    t0 = window[0]
    events = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": f"maskst ({backend})"}},
        {"ph": "M", "pid": 1, "tid": 1, "name": "thread_name", "args": {"name": "stages"}},
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "onnxruntime operators"}},
        {"ph": "X", "pid": 1, "tid": 0, "name": "generate", "cat": "request", "ts": 0.0,
         "dur": (window[1] - window[0]) / 1e3},
    ]
    counters = collections.Counter()
    for span in spans:
        counters[span["graph"]] += 1
        label = f"unet step {counters['unet']}" if span["graph"] == "unet" else span["graph"]
        args = {"device_ms": span["device_ms"]} if span["device_ms"] is not None else {}
        events.append({"ph": "X", "pid": 1, "tid": 1, "name": label, "cat": "stage", "args": args,
                       "ts": (span["start_ns"] - t0) / 1e3, "dur": (span["end_ns"] - span["start_ns"]) / 1e3})
    tids = {}
    for op in ops:
        if "start_ns" not in op:
            continue
        tid = tids.setdefault(op["graph"], len(tids) + 1)
        events.append({"ph": "X", "pid": 2, "tid": tid, "name": op["node"], "cat": op["op_type"],
                       "ts": (op["start_ns"] - t0) / 1e3, "dur": op["dur_us"], "args": {"op_type": op["op_type"]}})
    for graph, tid in tids.items():
        events.append({"ph": "M", "pid": 2, "tid": tid, "name": "thread_name", "args": {"name": graph}})
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"backend": backend}}


def chart(summary: dict, path: Path) -> None:
    """PNG: stage totals (left) and the top op types (right)."""
    plt = agg_pyplot()

    stages = summary["stages"]
    by_type = summary["ops_by_type"]
    fig, axes = plt.subplots(1, 2, figsize=(14, max(4, 0.35 * max(len(stages), len(by_type)) + 1.5)))
    axes[0].barh([r["stage"] for r in stages][::-1], [r["total_ms"] for r in stages][::-1], color="#4c72b0")
    axes[0].set_xlabel("ms in the generation")
    axes[0].set_title(f"stages: {summary['end_to_end_ms']:.1f} ms end to end ({summary['backend']})")
    if by_type:
        axes[1].barh([r["name"] for r in by_type][::-1], [r["total_ms"] for r in by_type][::-1], color="#dd8452")
        axes[1].set_xlabel(f"ms, sum over calls ({summary['ops_source']})")
        axes[1].set_title(f"top {len(by_type)} operator types")
    else:
        axes[1].text(0.5, 0.5, "no per-operator profile for this backend", ha="center", va="center")
        axes[1].set_axis_off()
    fig.tight_layout()
    save_figure(fig, path, "profile chart")


def profile_generation(engines: Path, backend: str, settings: BenchSettings, out_dir: Path, top: int = 15,
                       progress: bool = True, command: str | None = None) -> dict:
    """Profile one generation on ``engines`` with ``backend``; write the files; return the summary."""
    from maskst.runtime.pipeline import MaskstPipeline

    out_dir = Path(out_dir)
    (out_dir / "ort").mkdir(parents=True, exist_ok=True)
    say(progress, f"loading {engines} ({backend}, profiling on)")
    pipeline = MaskstPipeline(Path(engines), backend=backend, verify_hashes=False, threads=settings.threads,
                              profile_prefix=str(out_dir / "ort" / "ort"))
    config, images, latents = request_inputs(settings, pipeline.latent_channels, pipeline.vae_scale_factor)
    with pipeline:
        for i in range(settings.warmup):
            say(progress, f"warm-up generation {i + 1}/{settings.warmup}")
            clear_request_caches(pipeline)
            pipeline.generate(config, images, latents)
        spans: list[dict] = []
        pipeline.add_callback(_SpanRecorder(spans, _CudaTimer(parse_backend(backend).device == "cuda")))
        clear_request_caches(pipeline)
        say(progress, "profiled generation")
        start = time.time_ns()
        result = pipeline.generate(config, images, latents)
        window = (start, time.time_ns())
        ort_ops, raw_files = _ort_events(pipeline, window)
        ov_ops = _openvino_nodes(pipeline, spans)
    ops = ort_ops + ov_ops
    total_us = sum(op["dur_us"] for op in ops)
    sources = [s for s, o in (("ONNX Runtime", ort_ops), ("OpenVINO counters", ov_ops)) if o]
    summary = {
        "command": command, "backend": backend, "engines": str(engines),
        "settings": {"height": config.height, "width": config.width, "steps": config.steps,
                     "num_images": config.num_images, "warmup": settings.warmup},
        "end_to_end_ms": (window[1] - window[0]) / 1e6,
        "timings_ms": result.timings_ms,
        "stages": stage_table(spans, window),
        "ops_source": " + ".join(sources) or "none",
        "ops_total_ms": total_us / 1e3,
        "ops_by_type": aggregate(ops, "op_type", top, total_us),
        "ops_by_node": aggregate(ops, "node", top, total_us),
        "ort_profiles": raw_files,
        "peak_rss_mib": peak_rss_mib(),  # this process, loading and profiling included
        "files": {"table": "profile.txt", "summary": "profile.json", "trace": "trace.json", "chart": "profile.png"},
    }
    # each file whole or the previous one (a rerun into the same folder), a failed write an InputError naming it
    write_atomic(out_dir / "trace.json", json.dumps(chrome_trace(spans, ort_ops, window, backend)), "profile trace")
    chart(summary, out_dir / "profile.png")
    write_atomic(out_dir / "profile.txt", format_profile(summary) + "\n", "profile table")
    write_atomic(out_dir / "profile.json", json.dumps(summary, indent=2), "profile summary")
    return summary


def _table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join("-" if v is None else v for v in row) + " |" for row in rows]
    return "\n".join(lines)


def format_profile(summary: dict) -> str:
    """The summary as Markdown tables: stages, top op types, top nodes."""
    s = summary["settings"]
    head = (f"one generation, {s['height']}x{s['width']}, {s['steps']} steps, {s['num_images']} image(s), "
            f"backend {summary['backend']}: {summary['end_to_end_ms']:.1f} ms; peak RSS {summary['peak_rss_mib']:,.0f} MiB")
    stages = _table(["stage", "calls", "total ms", "mean ms", "share"],
                    [[r["stage"], None if r["calls"] is None else str(r["calls"]), f"{r['total_ms']:.2f}",
                      None if r["mean_ms"] is None else f"{r['mean_ms']:.3f}", f"{100 * r['share']:.1f}%"]
                     for r in summary["stages"]])
    out = [head, stages]
    if summary["ops_by_type"]:
        out.append(f"operators ({summary['ops_source']}; {summary['ops_total_ms']:.1f} ms in kernels):")
        out.append(_table(["op type", "total ms", "calls", "mean us", "share"],
                          [[r["name"], f"{r['total_ms']:.2f}", str(r["calls"]), f"{r['mean_us']:.1f}",
                            f"{100 * r['share']:.1f}%"] for r in summary["ops_by_type"]]))
        out.append(_table(["node", "graph", "total ms", "calls", "share"],
                          [[r["name"], r["graph"], f"{r['total_ms']:.2f}", str(r["calls"]), f"{100 * r['share']:.1f}%"]
                           for r in summary["ops_by_node"]]))
    else:
        out.append("no per-operator profile for this backend")
    return "\n\n".join(out)
