"""What OpenVINO made of a graph: runtime node types, the kernels that ran and where the time went.

``python -m maskst.bench.ov_inspect MODEL [MODEL ...] --shapes JSON --precision bf16 --calls 6 --json out.json``

For each model file (ONNX or OpenVINO IR), in its own process one after the other (peak RSS is each
model's own): read, reshape to the static ``--shapes`` ({input name: shape}; inputs not named keep
their shapes), compile for the CPU with ``INFERENCE_PRECISION_HINT``, ``PERFORMANCE_HINT=LATENCY`` and
``INFERENCE_NUM_THREADS``, then time ``--calls`` inferences after ``--warmup`` with the same random
inputs. ``--rounds`` > 1 repeats that over all models in turn (interleaved: a busy machine slows
every contender alike), each round a fresh process per model, so the spread is visible.

``--paired A B``: two graphs of one function (an export change and its baseline) compiled in one
process and called alternately (A B, B A, ...) on the same inputs, so a difference of a few ms is not
lost in the spread between processes and minutes (on shared VMs the same call drifts by 10-25% over an
hour; both graphs drift together here). Reported: each one's times, the median of the per-pair
differences B - A, and the largest element difference of each output between the two.

``--paired-config JSON MODEL``: the same pairing for one graph compiled twice, with the settings above and with
those plus the CPU plugin properties in JSON (e.g. ``{"SNIPPETS_MODE": "DISABLE"}``); ``{}`` pairs the graph with
itself, the A/A control that shows how large a difference the pairing calls noise.

``--paired-rewrites MODEL``: the same pairing for one graph compiled without (A) and with (B) the graph rewrites
the OpenVINO runner applies before compiling (:mod:`maskst.runtime.openvino_rewrites`); every other mode applies
them, as the runner does.

Reported per model: compile time, per-call times (median, min, max), the runtime model's node types
(``layerType`` counts: are the attention blocks one ``MHA`` / ``ScaledDotProductAttention`` node, or
``MatMul`` + ``Softmax`` + ``MatMul``?), the time per ``layerType`` and per kernel (``exec_type`` from
``PERF_COUNT``, measured on one extra call with counters on), the FLOPs at these shapes and the achieved
GFLOP/s, and the peak RSS of the process.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from maskst.bench.bench import peak_rss_mib
from maskst.contract.files import write_atomic
from maskst.errors import InputError
from maskst.runtime.openvino_rewrites import rewrite_for_static_shapes
from maskst.runtime.output import check_writable

ATTENTION_TYPES = ("MHA", "ScaledDotProductAttention", "ScaledAttn", "SDPA")
PROPERTIES_EXAMPLE = '{"SNIPPETS_MODE": "DISABLE"}'  # --paired-config's example, in its help and its errors


def random_feed(model, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed = {}
    for port in model.inputs:
        shape = [int(d) for d in port.get_partial_shape().to_shape()]
        dtype = port.get_element_type().to_dtype()
        name = port.get_any_name()
        if np.issubdtype(dtype, np.floating):
            array = rng.standard_normal(shape).astype(dtype)
            if name == "timestep":
                array = np.full(shape, 500.0, dtype)
            elif name.startswith(("region_mask", "ip_scale")):
                array = np.ones(shape, dtype)
        else:
            array = rng.integers(0, 100, shape).astype(dtype)
        feed[name] = array
    return feed


def read_reshaped(core, path: Path, shapes: dict, rewrite: bool = True):
    """The model at ``path`` reshaped to ``shapes`` ({input name: shape}) and, unless ``rewrite`` is false,
    rewritten as the runner rewrites it before compiling
    (:func:`maskst.runtime.openvino_rewrites.rewrite_for_static_shapes`).

    Names the model lacks are skipped, so that one ``--shapes`` serves several graphs (UNet and VAE). Every
    input must end static: an input left dynamic raises ``ValueError`` naming it and the names that matched
    nothing (a misspelt name would otherwise surface as OpenVINO's ``to_shape`` traceback at the first call)."""
    model = core.read_model(str(path))
    names = {n for port in model.inputs for n in port.get_names()}
    if shapes:
        model.reshape({k: v for k, v in shapes.items() if k in names})
    dynamic = {port.get_any_name(): str(port.get_partial_shape()) for port in model.inputs
               if port.get_partial_shape().is_dynamic}
    if dynamic:
        unmatched = sorted(set(shapes) - names)
        raise ValueError(
            f"--shapes leaves inputs of {path.name} dynamic: {dynamic}; give each a static shape, "
            f'e.g. --shapes \'{{"{next(iter(dynamic))}": [...]}}\''
            + (f" (names {unmatched} are not inputs of this graph)" if unmatched else ""))
    if rewrite:
        rewrite_for_static_shapes(model)
    return model


def parse_shapes(text: str) -> dict[str, list[int]]:
    """``--shapes`` JSON as {input name: [int, ...]}; ``ValueError`` naming the value otherwise."""
    try:
        shapes = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--shapes {text!r} is not JSON ({exc}); give {{input name: [dims]}}, "
                         'e.g. \'{"sample": [2, 4, 32, 32]}\'') from None
    bad = (not isinstance(shapes, dict)
           or any(not isinstance(v, list) or not all(isinstance(d, int) and d > 0 for d in v) for v in shapes.values()))
    if bad:
        raise ValueError(f"--shapes {text!r} is not {{input name: [positive ints]}}; "
                         'e.g. \'{"sample": [2, 4, 32, 32]}\'')
    return shapes


def compile_config(precision: str, threads: int | None) -> dict:
    """The CPU plugin settings every measurement here compiles with."""
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def runtime_summary(compiled) -> dict:
    """Node-type counts of the compiled (runtime) model and its kernels per layer type."""
    types = collections.Counter()
    kernels = collections.Counter()
    fused_attention = 0  # Snippets "Subgraph" nodes that swallowed a MatMul -> Softmax -> MatMul chain (MHA)
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        layer = rt["layerType"].astype(str)
        types[layer] += 1
        kernels[f"{layer}: {rt['primitiveType'].astype(str)} ({rt['runtimePrecision'].astype(str)})"] += 1
        original = rt["originalLayersNames"].astype(str)
        # ONNX graphs: the decomposed MatMul -> Softmax -> MatMul; PyTorch-frontend IR: the SDPA op's own name
        if layer == "Subgraph" and (("Softmax" in original and "MatMul" in original)
                                    or "scaled_dot_product_attention" in original):
            fused_attention += 1
    return {"layer_types": dict(types.most_common()), "kernels": dict(kernels.most_common()),
            "attention_nodes": sum(types[t] for t in ATTENTION_TYPES) + fused_attention,
            "mha_subgraphs": fused_attention, "softmax_nodes": types["Softmax"]}


def perf_breakdown(request) -> dict:
    """Time of one call per layerType and per exec_type (PERF_COUNT), in ms."""
    by_type, by_kernel = collections.Counter(), collections.Counter()
    for info in request.profiling_info:
        if info.status.name != "EXECUTED":
            continue
        ms = info.real_time.total_seconds() * 1e3
        by_type[info.node_type] += ms
        by_kernel[f"{info.node_type}: {info.exec_type}"] += ms
    total = sum(by_type.values())
    return {"total_ms": total, "by_layer_type": {k: round(v, 3) for k, v in by_type.most_common()},
            "by_kernel": {k: round(v, 3) for k, v in by_kernel.most_common(25)}}


def inspect_model(path: Path, shapes: dict, precision: str, threads: int | None, calls: int, warmup: int,
                  count_flops: bool = True, perf: bool = True) -> dict:
    import openvino as ov

    from maskst.bench.bench import CpuShare
    from maskst.bench.flops import count_model

    core = ov.Core()
    t0 = time.perf_counter()
    model = read_reshaped(core, path, shapes)
    read_ms = (time.perf_counter() - t0) * 1e3
    flops = count_model(model, path.stem, shapes).to_json() if count_flops else None
    feed = random_feed(model)
    config = compile_config(precision, threads)
    t0 = time.perf_counter()
    compiled = core.compile_model(model, "CPU", config)
    compile_ms = (time.perf_counter() - t0) * 1e3
    del model
    request = compiled.create_infer_request()
    times = []
    share = CpuShare()
    for i in range(warmup + calls):
        if i == warmup:
            share.start()
        t0 = time.perf_counter()
        request.infer(feed)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    load = share.stop()
    summary = runtime_summary(compiled)
    del request, compiled
    result = {"model": str(path), "precision": precision, "threads": threads, "shapes": shapes,
              "read_ms": read_ms, "compile_ms": compile_ms, "ms_median": statistics.median(times), "ms_min": min(times),
              "ms_max": max(times), "ms_samples": [round(t, 2) for t in times],
              "gflop": flops["gflop"] if flops else None,
              "gflops": flops["flops"] / statistics.median(times) / 1e6 if flops else None,
              **summary, "cpu_share": load}
    if perf:
        result["perf"] = _profiled_call(core, path, shapes, config, feed)
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def paired_calls(paths: list[Path], shapes: dict, precision: str, threads: int | None, calls: int,
                 warmup: int, extra_configs: list[dict] | None = None,
                 rewrites: tuple[bool, bool] = (True, True)) -> dict:
    """Two graphs with the same inputs, compiled in this process, called alternately ``calls`` times each (pair i
    runs A then B for even i, B then A for odd i) on one random feed: {"models", "configs" (each one's compile
    properties), "ms_samples" [per model], "ms_median", "ms_min", "paired_diff_ms" (B - A per pair),
    "paired_diff_median_ms", "max_abs_diff" {output: largest |B - A| after the warm-up}, "cpu_share"}.

    ``extra_configs``: per graph, CPU plugin properties on top of :func:`compile_config` (one graph under two
    settings: the same path twice, ``[{}, {...}]``). An OpenVINO that refuses a property raises ``ValueError``
    naming it. ``rewrites``: per graph, whether the runner's graph rewrites are applied (one graph without and
    with them: the same path twice, ``(False, True)``)."""
    import openvino as ov

    from maskst.bench.bench import CpuShare

    core = ov.Core()
    configs = [{**compile_config(precision, threads), **extra} for extra in (extra_configs or [{}, {}])]
    requests, feed = [], None
    for path, config, rewrite in zip(paths, configs, rewrites):
        model = read_reshaped(core, path, shapes, rewrite)
        feed = feed if feed is not None else random_feed(model)
        try:
            requests.append(core.compile_model(model, "CPU", config).create_infer_request())
        except RuntimeError as exc:  # an unknown property or value: OpenVINO's own words name it
            raise ValueError(f"OpenVINO refused the CPU properties {config} for {path}: {exc}") from None
        del model
    outputs = []
    for request in requests:
        for _ in range(max(warmup, 1)):
            request.infer(feed)
        outputs.append({port.get_any_name(): request.get_tensor(port).data.copy()
                        for port in request.model_outputs})
    diff = {name: float(np.abs(outputs[1][name].astype(np.float64) - value).max())
            for name, value in outputs[0].items() if name in outputs[1]}
    samples: list[list[float]] = [[], []]
    share = CpuShare()
    share.start()
    for i in range(calls):
        for j in ((0, 1) if i % 2 == 0 else (1, 0)):
            t0 = time.perf_counter()
            requests[j].infer(feed)
            samples[j].append((time.perf_counter() - t0) * 1e3)
    load = share.stop()
    pairs = [b - a for a, b in zip(*samples)]
    return {"models": [str(p) for p in paths], "configs": configs, "rewrites": list(rewrites),
            "precision": precision, "threads": threads,
            "shapes": shapes,
            "ms_samples": [[round(t, 2) for t in one] for one in samples],
            "ms_median": [statistics.median(one) for one in samples], "ms_min": [min(one) for one in samples],
            "paired_diff_ms": [round(d, 2) for d in pairs], "paired_diff_median_ms": statistics.median(pairs),
            "max_abs_diff": diff, "cpu_share": load}


def _profiled_call(core, path: Path, shapes: dict, config: dict, feed: dict) -> dict:
    """One more compile with counters on (PERF_COUNT adds per-node bookkeeping: kept out of the timed calls)."""
    from maskst.bench.flops import op_flops

    model = read_reshaped(core, path, shapes)
    flops_of = {op.get_friendly_name(): f for op in model.get_ordered_ops() if (f := op_flops(op)) is not None}
    profiled = core.compile_model(model, "CPU", {**config, "PERF_COUNT": True})
    del model
    request = profiled.create_infer_request()
    request.infer(feed)
    request.infer(feed)
    result = perf_breakdown(request)
    result["by_shape"] = kernel_efficiency(profiled, request, flops_of)
    return result


def kernel_efficiency(compiled, request, flops_of: dict[str, int]) -> list[dict]:
    """Time, FLOPs and GFLOP/s of the Convolution / FullyConnected / MHA nodes grouped by layer type and
    output shape (one profiled call): which shapes run far below the ceiling."""
    nodes = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        # int8 graphs: OpenVINO's low-precision passes rename a quantized MatMul "<name>/DequantizationMultiply"
        original = {n.split("/Dequantization")[0] for n in rt["originalLayersNames"].astype(str).split(",")}
        shape = str(op.get_output_partial_shape(0)) if op.get_output_size() else "-"
        nodes[op.get_friendly_name()] = (rt["layerType"].astype(str), shape, sum(flops_of.get(n, 0) for n in original))
    groups: dict[tuple, list] = {}
    for info in request.profiling_info:
        if info.status.name != "EXECUTED" or info.node_name not in nodes:
            continue
        layer, shape, flops = nodes[info.node_name]
        if not flops:
            continue
        slot = groups.setdefault((layer, shape, info.exec_type), [0, 0.0, 0])
        slot[0] += flops
        slot[1] += info.real_time.total_seconds()
        slot[2] += 1
    rows = [{"layer": k[0], "output_shape": k[1], "kernel": k[2], "nodes": v[2], "gflop": v[0] / 1e9,
             "ms": v[1] * 1e3, "gflops": v[0] / v[1] / 1e9 if v[1] else None} for k, v in groups.items()]
    return sorted(rows, key=lambda r: -r["ms"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--shapes", default="{}", help='JSON {input name: shape}, e.g. {"sample": [2, 4, 32, 32]}')
    parser.add_argument("--precision", default="bf16", choices=("bf16", "f32"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--calls", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds over the models")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--quiet-below", type=float, default=0.1,
                        help="summaries over the rounds whose other processes' load was below this many cores")
    parser.add_argument("--no-perf", action="store_true", help="skip the PERF_COUNT breakdown (rounds after the first always do)")
    parser.add_argument("--paired", action="store_true",
                        help="two models (baseline first) in one process, calls alternated: paired differences")
    parser.add_argument("--paired-config", metavar="JSON", default=None,
                        help="one model compiled twice, as usual and with these CPU properties added, calls "
                             f"alternated: paired differences (e.g. '{PROPERTIES_EXAMPLE}'; {{}} is the A/A control)")
    parser.add_argument("--paired-rewrites", action="store_true",
                        help="one model compiled twice, without and with the runner's graph rewrites "
                             "(maskst.runtime.openvino_rewrites), calls alternated: paired differences")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # worker: one model, JSON to stdout
    args = parser.parse_args(argv)
    try:
        shapes = parse_shapes(args.shapes)
    except ValueError as exc:
        parser.error(str(exc))
    if args.json is not None:  # before the calls, which take minutes
        try:
            check_writable(args.json, "--json")
        except InputError as exc:
            parser.error(str(exc))
    missing = [str(m) for m in args.models if not m.is_file()]
    if missing:
        parser.error(f"no graph file at {', '.join(missing)}; give OpenVINO IR (.xml) or ONNX files, "
                     "e.g. the engines folder's unet.int8.xml")
    extra_configs, rewrites = None, (True, True)
    if args.paired_rewrites:
        if args.paired or args.paired_config is not None or len(args.models) != 1:
            parser.error(f"--paired-rewrites compiles one model twice; got {len(args.models)} model(s)"
                         + (" and --paired" if args.paired else "")
                         + (" and --paired-config" if args.paired_config is not None else ""))
        args.models, rewrites = [args.models[0]] * 2, (False, True)
    elif args.paired_config is not None:
        if args.paired or len(args.models) != 1:
            parser.error(f"--paired-config compiles one model twice; got {len(args.models)} model(s)"
                         + (" and --paired" if args.paired else ""))
        try:
            extra = json.loads(args.paired_config)
        except json.JSONDecodeError as exc:
            parser.error(f"--paired-config {args.paired_config!r} is not JSON ({exc}); "
                         f"give an object of CPU properties, e.g. '{PROPERTIES_EXAMPLE}'")
        if not isinstance(extra, dict):
            parser.error(f"--paired-config {args.paired_config!r} is not a JSON object; "
                         f"give {{property: value}}, e.g. '{PROPERTIES_EXAMPLE}'")
        args.models, extra_configs = [args.models[0]] * 2, [{}, extra]
    if args.paired or args.paired_config is not None or args.paired_rewrites:
        if len(args.models) != 2:
            parser.error(f"--paired compares two models (a baseline, then the change); got {len(args.models)}")
        try:
            result = paired_calls(args.models, shapes, args.precision, args.threads, args.calls, args.warmup,
                                  extra_configs, rewrites)
        except ValueError as exc:
            parser.error(str(exc))
        for path, median, low in zip(args.models, result["ms_median"], result["ms_min"]):
            print(f"{path}: median {median:.1f} ms, min {low:.1f} ms", file=sys.stderr)
        print(f"paired difference (second - first), median of {args.calls}: {result['paired_diff_median_ms']:+.1f} ms; "
              f"largest output difference {max(result['max_abs_diff'].values(), default=0.0):.3g}; "
              f"other load {result['cpu_share']['others_cores']} cores", file=sys.stderr)
        if args.json:
            command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if argv is None else None
            write_atomic(args.json, json.dumps({"command": command, "paired": result}, indent=2), "--json")
        return 0
    if args.one:
        try:
            result = inspect_model(args.models[0], shapes, args.precision, args.threads, args.calls, args.warmup,
                                   perf=not args.no_perf)
        except ValueError as exc:
            parser.error(str(exc))
        print(json.dumps(result))
        return 0
    results: dict[str, list[dict]] = {str(m): [] for m in args.models}
    for round_index in range(args.rounds):
        for model in args.models:
            cmd = [sys.executable, "-m", "maskst.bench.ov_inspect", str(model), "--one", "--shapes", args.shapes,
                   "--precision", args.precision, "--calls", str(args.calls), "--warmup", str(args.warmup)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            if args.no_perf or round_index > 0:
                cmd.append("--no-perf")
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode == 2:  # the worker refused its input (argparse's code): every round would too
                print(proc.stderr[-3000:], file=sys.stderr)
                return 2
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                results[str(model)].append({"error": f"exit {proc.returncode}"})
                continue
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            results[str(model)].append(result)
            print(f"round {round_index + 1} {model.name}: {result['ms_median']:.1f} ms "
                  f"[{result['ms_min']:.1f}-{result['ms_max']:.1f}], {result['gflops'] or 0:.0f} GFLOP/s, "
                  f"attention nodes {result['attention_nodes']}, compile {result['compile_ms'] / 1e3:.1f} s, "
                  f"peak RSS {result['peak_rss_mib']:,.0f} MiB, other load {result['cpu_share']['others_cores']} cores",
                  file=sys.stderr, flush=True)
    report = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if argv is None else None,
              "results": results}
    summary = {}
    for model, rounds in results.items():
        ok = [r for r in rounds if "error" not in r]
        quiet = [r for r in ok if (r["cpu_share"].get("others_cores") or 0.0) < args.quiet_below]
        if ok:
            medians = [r["ms_median"] for r in ok]
            quiet_medians = [r["ms_median"] for r in quiet]
            summary[model] = {"rounds": len(ok), "median_ms": statistics.median(medians),
                              "quiet_rounds": len(quiet),
                              "quiet_median_ms": statistics.median(quiet_medians) if quiet else None,
                              "quiet_min_ms": min(r["ms_min"] for r in quiet) if quiet else None,
                              "quiet_max_ms": max(r["ms_max"] for r in quiet) if quiet else None}
            print(f"{Path(model).name}: median over rounds {statistics.median(medians):.1f} ms "
                  f"(round medians {', '.join(f'{m:.1f}' for m in medians)}); quiet rounds ({len(quiet)}): "
                  + (f"median {statistics.median(quiet_medians):.1f} ms" if quiet else "none"))
    report["summary"] = summary
    report["quiet_below_cores"] = args.quiet_below
    if args.json:
        write_atomic(args.json, json.dumps(report, indent=2), "--json")
    failed = [m for m, rounds in results.items() if any("error" in r for r in rounds)]
    if failed:
        print(f"rounds failed for {', '.join(failed)} (their errors above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
