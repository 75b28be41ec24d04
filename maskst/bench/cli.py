"""maskst-bench and maskst-profile: click front ends of :mod:`maskst.bench.bench` and :mod:`maskst.bench.profile`."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from maskst.cli.common import EXIT_CODES_HELP, run_cli, threads_option
from maskst.errors import InputError
from maskst.families import FAMILIES, IP_ADAPTER_LAYOUT
from maskst.generation import DEMO_CONTENT, DEMO_PROMPT, request_default
from maskst.hardware import ISA_CAPS

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
PRESETS = ("tiny", "tiny-wide", "full")
# the IP-Adapter families: the benchmark's presets and reference have no StyleShot models (docs/styleshot.md)
FAMILY_NAMES = tuple(name for name, family in FAMILIES.items() if family.adapter_layout == IP_ADAPTER_LAYOUT)


def fixture_preset(family: str, preset: str) -> str:
    """The maskst-fixtures preset of a bench preset for a model family (sdxl + full -> sdxl-full; SD 1.5's
    presets carry no prefix)."""
    return preset if family == "sd15" else f"{family}-{preset}"


def _model_options(func):
    """Where the models come from: checkpoints, a prebuilt engines folder, or random weights."""
    options = [
        click.option("--base", type=click.Path(path_type=Path),
                     help="diffusers SD 1.5 or SDXL folder (as for maskst-export)."),
        click.option("--ip-adapter", type=click.Path(path_type=Path),
                     help="IP-Adapter file (ip-adapter_sd15.safetensors, sdxl_models/ip-adapter_sdxl.safetensors)."),
        click.option("--image-encoder", type=click.Path(path_type=Path),
                     help="CLIP image encoder folder. Default: image_encoder/ beside the adapter file."),
        click.option("--content-encoder", type=click.Path(path_type=Path),
                     help="CLIP ViT-H/14 folder for the content text (as for maskst-export: not needed for "
                          "ip-adapter_sdxl, whose content encoder is the base's text_encoder_2)."),
        click.option("--engines", type=click.Path(path_type=Path, file_okay=False),
                     help="Prebuilt engines folder. Without checkpoints, the reference uses the checkpoint paths "
                          "its manifest records (if they exist here)."),
        click.option("--random-full-size", is_flag=True,
                     help="Real architectures of --family with random weights, built once into --cache-dir "
                          "(SD 1.5 / ViT-H, first time: 7 min on a 2-core machine, 8 GB peak RSS, 17 GB on disk; "
                          "SDXL / ViT-bigG: about 3x that; compute cost does not depend on the weights)."),
        click.option("--preset", type=click.Choice(PRESETS),
                     help="Random-weight preset instead of --random-full-size: tiny is a smoke run of about a minute."),
        click.option("--family", type=click.Choice(FAMILY_NAMES), default="sd15", show_default=True,
                     help="Model family of --random-full-size / --preset: sd15 (SD 1.5 + ViT-H) or sdxl (SDXL base "
                          "1.0 + ip-adapter_sdxl, ViT-bigG). Checkpoints and engines carry their own family."),
        click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False),
                     help="Where random models and exported engines are cached. Default: ~/.cache/maskst."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _request_options(func):
    options = [
        click.option("--height", type=int, default=256, show_default=True, help="Image height (px)."),
        click.option("--width", type=int, default=256, show_default=True, help="Image width (px)."),
        click.option("--steps", type=int, default=10, show_default=True, help="Denoising steps."),
        click.option("--num-images", type=int, default=1, show_default=True,
                     help="Images per request (with guidance the UNet runs twice as many rows)."),
        click.option("--guidance", type=float, default=request_default("guidance"), show_default=True,
                     help="Classifier-free guidance scale; at or below 1 guidance is off and every contender runs "
                          "the prompt's half alone (as diffusers)."),
        click.option("--prompt", default=DEMO_PROMPT, show_default=True),
        click.option("--content", default=DEMO_CONTENT, show_default=True, help="Content text that is masked out."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--scheduler", default=None, help="Scheduler name (default: the base model's)."),
        threads_option("Threads per contender (torch threads, ORT intra-op, OpenVINO). Default: each library's own."),
        click.option("--quiet", is_flag=True, help="No progress output."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def resolve_models(base, ip_adapter, image_encoder, content_encoder, engines, random_full_size, preset, cache_dir,
                   progress: bool, family: str = "sd15", image_driven: bool = False, deepcache_interval: int = 1):
    """BenchModels from the model options (building random models or engines into the cache once).
    ``deepcache_interval`` > 1: engines with the DeepCache graphs (built with them; a given folder must have them)."""
    deepcache = deepcache_interval > 1
    from maskst.bench.bench import BenchModels, build_in_worker, engines_sources
    from maskst.cli.embedded import default_cache_dir

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if image_driven and family != "sd15":
        raise InputError(f"--image-driven with --family {family}: maskst's ControlNet path is SD 1.5's; drop one")
    given = [base, ip_adapter, content_encoder]
    if random_full_size and preset not in (None, "full"):
        raise InputError(f"--random-full-size and --preset {preset} contradict each other; pass one of them")
    preset = "full" if random_full_size else preset
    if preset:
        if any(given) or engines:
            raise InputError("--random-full-size / --preset build their own models: drop --base, --ip-adapter, "
                             "--content-encoder and --engines, or drop the preset")
        # built in a worker process: the export and calibration memory goes back before the contenders run
        return build_in_worker("random", {"cache_dir": str(cache), "preset": fixture_preset(family, preset),
                                          "image_driven": image_driven, "deepcache": deepcache}, progress=progress)
    if family != "sd15":
        raise InputError(f"--family {family} selects the random-weight models of --random-full-size / --preset; "
                         "checkpoints and engines folders carry their own family: drop --family")
    if any(given) and not (base and ip_adapter):
        raise InputError("checkpoints need --base and --ip-adapter, and --content-encoder where maskst-export needs it")
    if base and ip_adapter:
        if image_driven and engines is None:
            raise InputError("--image-driven with checkpoints: pass --engines exported from them with "
                             "maskst-export --controlnet (or use --preset / --random-full-size)")
        if engines is None:
            checkpoints = [str(p) if p else None for p in (base, ip_adapter, image_encoder, content_encoder)]
            engines = build_in_worker("checkpoints", {"cache_dir": str(cache), "checkpoints": checkpoints,
                                                      "deepcache": deepcache}, progress=progress).engines
        return BenchModels(Path(engines), base, ip_adapter, image_encoder, content_encoder, source="checkpoints")
    if engines is None:
        raise InputError("no models given: pass --engines, the checkpoints (--base --ip-adapter --content-encoder), "
                         "--random-full-size, or --preset tiny for a smoke run")
    if deepcache:  # a prebuilt folder without the DeepCache graphs: the export hint now, before any contender
        from maskst.engines.manifest import load_manifest
        from maskst.runtime.pipeline import check_deepcache_request

        check_deepcache_request(load_manifest(Path(engines), verify_hashes=False), deepcache_interval)
    sources = engines_sources(Path(engines))
    if image_driven and sources["controlnet"] is None:
        from maskst.engines.manifest import load_manifest

        if not (load_manifest(Path(engines), verify_hashes=False).data.get("control") or {}).get("controlnets"):
            raise InputError(f"--image-driven: the engines {engines} have no ControlNet; export them with "
                             "maskst-export ... --controlnet CONTROLNET_FOLDER")
    return BenchModels(Path(engines), sources["base"], sources["ip_adapter"], sources["image_encoder"],
                       sources["content_encoder"], source="engines", controlnet=sources["controlnet"])


def _command(program: str) -> str:
    """The invocation, rebuilt from the options given on the command line (defaults left out)."""
    ctx = click.get_current_context()
    words = [program]
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name) is not click.core.ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[param.name]
        if getattr(param, "is_flag", False):
            words.append(param.opts[0])
        else:
            words += [param.opts[0], str(value)]
    return shlex.join(words)


@click.command(context_settings=CONTEXT, epilog=EXIT_CODES_HELP)
@_model_options
@_request_options
@click.option("--repeats", type=int, default=3, show_default=True, help="Timed generations per contender (median).")
@click.option("--warmup", type=int, default=1, show_default=True, help="Untimed generations first (compiles, arenas).")
@click.option("--backends", default=None,
              help="Comma list of maskst backends: ort-cpu, openvino (bf16 UNet/encoders on AMX CPUs), openvino-f32, "
                   "openvino-bf16, openvino:GRAPH=VALUE:..., ort-cuda, ort-trt, trt. "
                   "Default: every CPU backend and precision that applies here (ort-cpu, openvino-f32, and where the "
                   "CPU has native bf16 openvino and openvino-bf16, and openvino-int8 where the engines have int8 graphs "
                   "(maskst-export --int8; --random-full-size builds them when nncf is installed) and OpenVINO has "
                   "int8 kernels for the CPU (AVX2 and up); ort-cpu alone without openvino).")
@click.option("--rounds", type=int, default=1, show_default=True,
              help="Run the contenders one after the other this many times (fresh processes, interleaved) and pool "
                   "their timed generations: on a shared machine a busy spell then hits a round, not a contender.")
@click.option("--ceiling-repeats", type=int, default=8, show_default=True,
              help="Timed calls per ceiling kernel (MatMul, convolution per runtime and precision), measured before "
                   "the first and after the last contender; 0: no ceilings and no % of ceiling.")
@click.option("--no-reference", is_flag=True, help="Skip the PyTorch reference (no speedup column then).")
@click.option("--no-cold-start", is_flag=True, help="Skip the cold-start measurement.")
@click.option("--json", "json_out", type=click.Path(path_type=Path, dir_okay=False), help="Write the full report here.")
@click.option("--plot", "plot_out", type=click.Path(path_type=Path, dir_okay=False),
              help="Write a chart here (PNG; needs matplotlib): end to end per contender split by stage with its "
                   "speedup, each graph's % of its precision's ceiling, and peak RSS against the reference.")
@click.option("--from-json", "from_json", type=click.Path(path_type=Path, dir_okay=False, exists=True), multiple=True,
              help="Run nothing: print the table of a report written earlier by --json, and draw its --plot. "
                   "Repeated: the reports side by side, one row per run judged by today's targets (best speedup "
                   "against its CPU kind's goal, UNet % of ceiling, DeepCache, peak RSS), and --plot charts them.")
@click.option("--image-driven", is_flag=True,
              help="Image-driven requests: the bundled picture as control image (canny) through the engines' first "
                   "ControlNet (presets build engines with their ControlNet); adds the ControlNet-step row.")
@click.option("--deepcache-interval", type=int, default=None,
              help="Also run each backend with DeepCache step caching every N steps (maskst-run --deepcache-interval "
                   "N), as contender BACKEND+deepcacheN, and report its image's deviation from the same backend's "
                   "full computation and its speedup over it. Presets and checkpoints build engines with "
                   "maskst-export --deepcache; an --engines folder must have been exported with it.")
@click.option("--deepcache-backends", default=None,
              help="With --deepcache-interval: the backends (comma list, of those benchmarked) that also run with "
                   "DeepCache. Default: every benchmarked backend.")
@click.option("--cpu-isa-cap", type=click.Choice(ISA_CAPS, case_sensitive=False), default=None,
              help="Run every worker (reference, backends, ceilings) under this oneDNN ISA cap (oneDNN's "
                   "ONEDNN_MAX_CPU_ISA, honoured by torch and OpenVINO's CPU plugin): e.g. avx512_core_bf16 measures an "
                   "AMX machine as a CPU with AVX-512 BF16 and VNNI but no AMX. An emulation on this machine's cores "
                   "and memory, not another CPU: the report's machine records the cap and the real flags.")
@run_cli
def bench_main(base, ip_adapter, image_encoder, content_encoder, engines, random_full_size, preset, family, cache_dir,
               height, width, steps, num_images, guidance, prompt, content, seed, scheduler, threads, quiet, repeats,
               warmup,
               backends, rounds, ceiling_repeats, no_reference, no_cold_start, json_out, plot_out, from_json,
               image_driven, deepcache_interval, deepcache_backends, cpu_isa_cap):
    """Benchmark maskst's backends against the PyTorch reference (diffusers + IP-Adapter, fp32).

    Every contender gets the same request (prompt, bundled style image, content text, seed and
    initial noise) in its own process: warm-up excluded, medians over --repeats, per stage and end
    to end, peak RSS, and the cold start (fresh process to first UNet step, engines built).
    Prints a Markdown table; --json writes everything (machine, versions, the exact command).

    \b
    maskst-bench --preset tiny --steps 2 --repeats 1                 # smoke run
    maskst-bench --random-full-size --height 256 --width 256 --steps 10 --json out.json
    maskst-bench --random-full-size --family sdxl --height 512 --width 512 --steps 10 --json sdxl.json
    maskst-bench --engines eng/ --backends ort-cpu,openvino --repeats 5
    maskst-bench --preset tiny --image-driven --steps 2 --repeats 1   # image-driven (ControlNet) smoke run
    maskst-bench --random-full-size --height 256 --width 256 --steps 10 --backends openvino-bf16 \
                 --deepcache-interval 3 --json deepcache.json        # + openvino-bf16+deepcache3
    maskst-bench --base sd15/ --ip-adapter IP-Adapter/models/ip-adapter_sd15.safetensors \\
                 --content-encoder CLIP-ViT-H-14/ --json real.json
    maskst-bench --from-json real.json --plot real.png               # the table and a chart of a saved run
    maskst-bench --from-json mon.json --from-json tue.json --plot runs.png   # several runs side by side
    """
    from maskst.bench.bench import BenchSettings, deepcache_contender, format_table, run_bench
    from maskst.bench.chart import draw_bench_chart  # at the start: a long run ends with the code it started with

    if plot_out is not None:  # before any run: a bad chart path must not cost a benchmark
        from maskst.contract.files import check_chart_path
        from maskst.runtime.output import check_writable

        check_writable(plot_out, "--plot")
        check_chart_path(plot_out, "--plot")
    if len(from_json) == 1:
        _refuse_run_options(from_json[0])
        report = _saved_report(from_json[0])
        click.echo(format_table(report))
        _write_plot(plot_out, lambda path: draw_bench_chart(report, path, what="--plot"))
        return
    if from_json:
        from maskst.bench.runs import draw_runs_chart, format_runs_table, summarize

        _refuse_run_options(from_json[0])
        runs = [summarize(path.stem, _saved_report(path)) for path in from_json]  # every file checked before output
        click.echo(format_runs_table(runs))
        _write_plot(plot_out, lambda path: draw_runs_chart(runs, path, what="--plot"))
        return
    if backends is not None:
        names = [b.strip() for b in backends.split(",") if b.strip()]
        _check_backends(names)
    if repeats < 1 or warmup < 0 or ceiling_repeats < 0 or rounds < 1:
        raise InputError(f"--repeats {repeats} and --rounds {rounds} must be >= 1, --warmup {warmup} and "
                         f"--ceiling-repeats {ceiling_repeats} >= 0")
    if json_out is not None:
        from maskst.runtime.output import check_writable

        check_writable(json_out, "--json")
    settings = BenchSettings(height=height, width=width, steps=steps, num_images=num_images, repeats=repeats,
                             warmup=warmup, threads=threads, prompt=prompt, content=content, seed=seed,
                             scheduler=scheduler, image_driven=image_driven, guidance=guidance)
    settings.config()  # every request value checked before any model loads
    if deepcache_interval is not None:
        if deepcache_interval < 2:
            raise InputError(f"--deepcache-interval {deepcache_interval}: give N >= 2 (the plain backends are the "
                             "full computation, interval 1), e.g. 3")
        settings.config(deepcache_interval=deepcache_interval)  # the request's own checks (range, control image)
    elif deepcache_backends is not None:
        raise InputError("--deepcache-backends names the backends that also run with DeepCache: give "
                         "--deepcache-interval N too (e.g. 3), or drop it")
    if backends is not None:
        _deepcache_backends(deepcache_backends, names)  # a misspelt name fails before any model is built
    models = resolve_models(base, ip_adapter, image_encoder, content_encoder, engines, random_full_size, preset,
                            cache_dir, progress=not quiet, family=family, image_driven=image_driven,
                            deepcache_interval=deepcache_interval or 1)
    if backends is None:  # every CPU backend that applies here (openvino-int8: where the engines have int8 graphs)
        from maskst.engines.manifest import load_manifest
        from maskst.runtime.backends import default_cpu_backends, engines_have_int8

        int8 = engines_have_int8(load_manifest(models.engines, verify_hashes=False).data)
        names = default_cpu_backends(int8_engines=int8, isa_cap=cpu_isa_cap)
        if names == ["ort-cpu"] and not quiet:
            click.echo("note: openvino is not installed (pip install 'maskst[openvino]'): benchmarking ort-cpu only",
                       err=True)
        _check_backends(names)
    if deepcache_interval is not None:
        cached = _deepcache_backends(deepcache_backends, names)
        names = [n for b in names for n in (b, *([deepcache_contender(b, deepcache_interval)] if b in cached else []))]
    report = run_bench(models, settings, names, reference=not no_reference, cold_start=not no_cold_start,
                       progress=not quiet, command=_command("maskst-bench"), ceiling_repeats=ceiling_repeats,
                       rounds=rounds, isa_cap=cpu_isa_cap and cpu_isa_cap.lower())
    click.echo(format_table(report))  # first: a failed --json write must not lose the run's figures
    if json_out is not None:
        from maskst.contract.files import write_atomic

        write_atomic(json_out, json.dumps(report, indent=2), what="--json")
        click.echo(f"\nwrote {json_out}")
    _write_plot(plot_out, lambda path: draw_bench_chart(report, path, what="--plot"))
    if report["errors"]:
        sys.exit(1)


def _write_plot(path: Path | None, draw) -> None:
    """``draw(path)`` (a chart writer) and say so, when --plot was given."""
    if path is not None:
        draw(path)
        click.echo(f"wrote {path}")


# what format_table reads from a report: a saved file without one of them is not a maskst-bench report it can print
REPORT_KEYS = ("settings", "machine", "stages_ms", "end_to_end_ms", "speedup_vs_reference", "masking_projection_ms",
               "peak_rss_mib", "load_ms", "first_request_ms", "cold_start_ms", "image_diff_vs_reference", "errors",
               "targets", "manifest_verify_ms")


def _refuse_run_options(path: Path) -> None:
    """--from-json takes no run options (they would be silently ignored): InputError naming those given."""
    ctx = click.get_current_context()
    given = [p.opts[0] for p in ctx.command.params if p.name not in ("from_json", "plot_out", "quiet")
             and ctx.get_parameter_source(p.name) is click.core.ParameterSource.COMMANDLINE]
    if given:
        raise InputError(f"--from-json {path} redraws a saved report and runs nothing: drop {', '.join(given)}")


def _saved_report(path: Path) -> dict:
    """The report in ``path`` (written by --json), refused with the reason when it is not one."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"--from-json {path}: not a readable JSON file ({exc}); give a report written by "
                         "maskst-bench --json") from None
    missing = [key for key in REPORT_KEYS if not isinstance(report, dict) or key not in report]
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise InputError(f"--from-json {path}: not a maskst-bench report this version reads (no {shown}); give a "
                         "report written by maskst-bench --json")
    return report


def _deepcache_backends(option: str | None, names: list[str]) -> list[str]:
    """The backends of ``--deepcache-backends`` (default: all of ``names``), each one of ``names``."""
    if option is None:
        return list(names)
    cached = [b.strip() for b in option.split(",") if b.strip()]
    unknown = [b for b in cached if b not in names]
    if unknown or not cached:
        raise InputError(f"--deepcache-backends {option!r}: each must be one of the benchmarked backends "
                         f"({', '.join(names)}); a DeepCache contender is compared with its backend's full computation")
    return cached


def _check_backends(names: list[str]) -> None:
    """Every named backend known and runnable here, before any work (the registry's checks)."""
    from maskst.runtime.backends import require_backend

    if not names:
        raise InputError("--backends is empty; name at least one, e.g. ort-cpu")
    for name in names:
        require_backend(name)


@click.command(context_settings=CONTEXT, epilog=EXIT_CODES_HELP)
@_model_options
@_request_options
@click.option("--backend", default="ort-cpu", show_default=True,
              help="Backend to profile: ort-cpu (per-operator ORT profile), openvino (per-node OpenVINO counters), ...")
@click.option("--warmup", type=int, default=1, show_default=True,
              help="Untimed generations before the profiled one (their operators are left out of the tables).")
@click.option("--top", type=int, default=15, show_default=True, help="Rows of the per-op-type and per-node tables.")
@click.option("--out-dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for profile.txt, profile.json, trace.json (chrome://tracing / Perfetto) and profile.png.")
@run_cli
def profile_main(base, ip_adapter, image_encoder, content_encoder, engines, random_full_size, preset, family,
                 cache_dir, height, width, steps, num_images, guidance, prompt, content, seed, scheduler, threads, quiet, backend,
                 warmup,
                 top, out_dir):
    """Profile one generation: stage timeline, top operators, a trace file and a chart.

    \b
    maskst-profile --preset tiny --steps 2 --out-dir prof/
    maskst-profile --preset tiny --family sdxl --steps 2 --out-dir prof-sdxl/
    maskst-profile --engines eng/ --height 256 --width 256 --steps 10 --out-dir prof/
    maskst-profile --engines eng/ --backend openvino --out-dir prof-ov/

    Open trace.json in https://ui.perfetto.dev or chrome://tracing.
    """
    from maskst.bench.bench import BenchSettings
    from maskst.bench.profile import format_profile, profile_generation

    _check_backends([backend])
    if top < 1 or warmup < 0:
        raise InputError(f"--top {top} must be >= 1 and --warmup {warmup} >= 0")
    settings = BenchSettings(height=height, width=width, steps=steps, num_images=num_images, repeats=1,
                             warmup=warmup, threads=threads, prompt=prompt, content=content, seed=seed,
                             scheduler=scheduler, guidance=guidance)
    settings.config()
    models = resolve_models(base, ip_adapter, image_encoder, content_encoder, engines, random_full_size, preset,
                            cache_dir, progress=not quiet, family=family)
    summary = profile_generation(models.engines, backend, settings, out_dir, top=top, progress=not quiet,
                                 command=_command("maskst-profile"))
    click.echo(format_profile(summary))
    click.echo("\nwrote " + ", ".join(str(out_dir / name) for name in summary["files"].values()))
