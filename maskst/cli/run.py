"""maskst-run: style transfer from an engines folder (one request, or a JSONL batch)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
from tqdm.auto import tqdm

from maskst.cli.common import EXIT_CODES_HELP, run_cli, threads_option
from maskst.errors import InputError, MaskstError
from maskst.runtime.backends import RunnerOptions, backends_help, require_backend
from maskst.cli.embedded import DEFAULT_SIZE
from maskst.cli.options import REQUEST_FIELDS, given_request, request_from, request_options
from maskst.generation import DEMO_CONTENT, DEMO_PROMPT, DEMO_STYLE, GenerationConfig
from maskst.regions import load_region_masks
from maskst.runtime.output import (
    check_writable,
    check_writable_dir,
    generation_metadata,
    image_paths,
    save_control_images,
    save_png,
)

# Options a batch-job line may carry: the GenerationConfig fields.
JOB_FIELDS = REQUEST_FIELDS


def _write_images(out: Path, config, result, pipeline) -> list[str]:
    paths = image_paths(out, len(result.images))
    meta = generation_metadata(config, result, pipeline)
    for index, (path, image) in enumerate(zip(paths, result.images)):
        save_png(path, image, {**meta, "image_index": index})
    return [str(p) for p in paths]


def _defaults_for(job: dict, defaults: dict) -> dict:
    """The defaults a job line starts from: a job with ``regions`` drops inherited --style/--content,
    a job with ``style`` drops inherited --region/--region-scales (a job's own fields win)."""
    if job.get("regions"):
        return {k: v for k, v in defaults.items() if k not in ("style", "content")}
    if job.get("style"):
        return {k: v for k, v in defaults.items() if k not in ("regions", "region_scales")}
    return defaults


# A job's "name" becomes a file name in --out-dir: one path component of ordinary characters.
MAX_NAME = 200


def _job_name(job: dict, index: int, used: dict[str, int]) -> str:
    """The PNG stem of job ``index`` (its ``name``, else its 0-based index), refused when it could leave
    ``--out-dir``, is not a plain file name, or repeats an earlier job's (its images would be overwritten)."""
    if "name" not in job:
        name = f"{index:05d}"
    else:
        name = job.pop("name")
        if isinstance(name, int) and not isinstance(name, bool):
            name = str(name)
        if (not isinstance(name, str) or not name or name.startswith(".") or len(name) > MAX_NAME
                or any(c in name for c in "/\\\0") or not name.isprintable()):
            raise InputError(f"name={name!r} must be a plain file name: 1-{MAX_NAME} printable characters, no "
                             "path separators, not starting with '.' (e.g. \"cat-wave\")")
    if name in used:
        raise InputError(f"name={name!r} is already job {used[name]}'s; give each job its own name")
    used[name] = index
    return name


def _job_lines(jobs_file: Path) -> list[tuple[int, str]]:
    """(file line number, text) of each non-blank line; a file without any is refused."""
    try:
        text = jobs_file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--batch {jobs_file} could not be read ({exc})") from None
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise InputError(f"--batch {jobs_file} has no job lines; give one JSON object per line, e.g. "
                         '{"prompt": "a cat", "style": "wave.png", "content": "a wave"}')
    return lines


def _run_batch(pipeline, jobs_file: Path, out_dir: Path, defaults: dict, quiet: bool) -> int:
    """Run every job line; a failing job is reported in its result line (naming its file line) and the others
    still run. results.jsonl is written beside as a staging file and replaces the previous one only once a job
    has run, so a rerun that stops before its first job leaves the last run's results in place."""
    lines = _job_lines(jobs_file)
    failures = 0
    used: dict[str, int] = {}
    results_path = out_dir / "results.jsonl"
    staging = out_dir / ".results.jsonl.partial"
    written = False
    try:
        with open(staging, "w") as results:
            for index, (number, line) in enumerate(tqdm(lines, desc="jobs", unit="job", disable=quiet)):
                record = {"job": index, "line": number}
                try:
                    try:
                        job = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise InputError(f"not valid JSON ({exc})") from None
                    if not isinstance(job, dict):
                        raise InputError("must be a JSON object")
                    name = _job_name(job, index, used)
                    unknown = set(job) - set(JOB_FIELDS)
                    if unknown:
                        raise InputError(f"unknown job field(s) {sorted(unknown)}; known: {', '.join(JOB_FIELDS)}")
                    # open sizes: the engines' family default
                    config = pipeline.resolve(GenerationConfig.create(**{**_defaults_for(job, defaults), **job}))
                    started = time.perf_counter()
                    result = pipeline.generate(config)
                    record.update(status="ok", images=_write_images(out_dir / f"{name}.png", config, result, pipeline),
                                  masked_elements=result.masked_elements, method=result.method.value,
                                  seconds=round(time.perf_counter() - started, 3))
                except MaskstError as exc:
                    failures += 1
                    record.update(status="error", error=f"{jobs_file} line {number}: {exc}", exit_code=exc.exit_code)
                results.write(json.dumps(record) + "\n")
                results.flush()
                written = True
                click.echo(json.dumps(record))
    finally:
        if written:
            staging.replace(results_path)
        else:
            staging.unlink(missing_ok=True)
    return 1 if failures else 0


def _check_save_control(save_control, batch, request: dict) -> None:
    if save_control is None:
        return
    if batch is not None:
        raise InputError("--save-control applies to one request; in --batch mode it is not available")
    if not request.get("control_image"):
        raise InputError("--save-control needs --control-image (it writes the preprocessed control image)")
    check_writable(save_control, "--save-control")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
               epilog=EXIT_CODES_HELP)
@click.option("--engines", type=click.Path(path_type=Path, file_okay=False),
              help="Engines folder built by maskst-export. Default: the embedded tiny demo engines (built once, cached).")
@request_options()
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="Output PNG (several images: OUT-0.png, ...).")
@click.option("--save-control", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the preprocessed control image(s) that conditioned the result (with --control-image).")
@click.option("--batch", "batch", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="JSONL file: one job per line with the option names above (prompt, style, content, seed, ...).")
@click.option("--out-dir", type=click.Path(path_type=Path, file_okay=False), help="Output folder for --batch.")
@click.option("--backend", default="ort-cpu", show_default=True, help=backends_help())
@click.option("--compile-cache", type=click.Path(path_type=Path, file_okay=False),
              help="Compiled-model cache folder: OpenVINO's compiled blobs there (default ~/.cache/maskst/openvino), "
                   "ort-cpu's optimized graphs in its onnxruntime/ subfolder (default ~/.cache/maskst/onnxruntime); "
                   "entries of graph files since re-exported or deleted are removed when a new one is written.")
@click.option("--compile-cache-limit", "compile_cache_limit_gb", type=click.FloatRange(min=0, min_open=True),
              metavar="GB",
              help="The most disk each compiled-model cache may take (GB): after a new entry is written, the least "
                   "recently used go. OpenVINO writes one blob per graph and input shape (~1.7 GB for a full-size "
                   "UNet in bf16, 3.5 GB in f32). [default: no limit]")
@click.option("--no-compile-cache", is_flag=True,
              help="Do not cache compiled models: slower start (ort-cpu optimizes every graph again, about 15 s for a "
                   "full-size UNet), and with OpenVINO more memory (without the cache a compiled model keeps the "
                   "weights it was compiled from).")
@click.option("--allow-fallback", is_flag=True, help="Accept a GPU backend silently falling back to CPU.")
@threads_option("Intra-op threads per session (default: all cores).")
@click.option("--skip-verify", is_flag=True, help="Skip SHA-256 verification of the engine files (faster start).")
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False), help="Where the embedded engines are cached.")
@click.option("--json", "json_out", is_flag=True, help="Print a JSON result line instead of text.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@run_cli
def main(engines, out, save_control, batch, out_dir, backend, compile_cache, compile_cache_limit_gb, no_compile_cache,
         allow_fallback, threads, skip_verify, cache_dir, json_out, quiet, **request):
    """Generate PROMPT in the style of --style without copying its --content (MaskST).

    \b
    maskst-run --out cat.png                       # embedded demo engines, bundled style image
    maskst-run --engines eng/ --prompt "a cat" --style wave.png --content "a wave" --out cat.png
    maskst-run --engines eng/ --batch jobs.jsonl --out-dir results/
    maskst-run --engines eng/ --prompt "a city" --region wave.png left.png "a wave" \\
               --region stars.png right.png "a village" --region-scales 1.0,0.6 --out city.png
    """
    embedded = engines is None
    # the cache options are validated where they live (RunnerOptions); built here to refuse them before any work
    RunnerOptions(compile_cache=False if no_compile_cache else compile_cache, compile_cache_limit_gb=compile_cache_limit_gb)
    if batch is not None and out_dir is None:
        raise InputError("--batch needs --out-dir (one PNG per job and results.jsonl go there)")
    if batch is not None:
        check_writable_dir(out_dir)  # before any engine loads
    if batch is None:
        if out is None:
            raise InputError("--out is required (the PNG to write)")
        if out.suffix.lower() != ".png":  # the bytes are PNG (with the generation metadata) whatever the name says
            raise InputError(f"--out {out}: maskst writes PNG files with generation metadata; give a .png name, "
                             f"e.g. {out.with_suffix('.png')}")
        check_writable(out)
    # the embedded demo engines come with a demo request; real engines take GenerationConfig's defaults
    fallback = ({"prompt": DEMO_PROMPT, "style": (DEMO_STYLE,), "content": DEMO_CONTENT, "height": DEFAULT_SIZE,
                 "width": DEFAULT_SIZE} if embedded else {})
    if request.get("regions"):  # each region brings its own style image and content text
        fallback = {k: v for k, v in fallback.items() if k not in ("style", "content")}
    defaults = {**fallback, **given_request(request)}  # what batch lines start from
    if batch is None:
        if embedded or request.get("prompt") is not None:
            config = request_from(request, **fallback)  # every value checked before any engine loads
            if config.regions:  # mask files read, sized and checked before any engine loads
                load_region_masks(config.regions, config.height, config.width)
        else:
            raise InputError("--prompt is required with --engines")
    _check_save_control(save_control, batch, defaults)
    require_backend(backend, allow_fallback)  # unknown names and missing GPUs / packages: before any work
    if embedded:
        from maskst.cli.embedded import default_engines

        engines = default_engines(cache_dir, progress=not quiet)
    if batch is None and config.control_image:  # control images and the engines' ControlNets, before any session loads
        from maskst.control import load_control_image
        from maskst.engines.manifest import load_manifest
        from maskst.runtime.control import check_control_request

        for path in config.control_image:
            load_control_image(path)  # unreadable / empty / truncated: exit 2 now
        check_control_request(load_manifest(engines, verify_hashes=False), config)
    from maskst.runtime.pipeline import MaskstPipeline

    # --deepcache-interval N > 1 (the request, or the batch's default): unet_deep + unet_shallow load instead of the
    # plain unet, one full UNet in memory (engines without them: the export hint before any session loads); batch
    # lines with interval 1 then run unet_deep, lines asking for DeepCache on a plain pipeline load it on first use
    interval = config.deepcache_interval if batch is None else defaults.get("deepcache_interval") or 1
    with MaskstPipeline(engines, backend=backend, verify_hashes=not skip_verify, threads=threads,
                        allow_fallback=allow_fallback,
                        compile_cache=False if no_compile_cache else compile_cache,
                        compile_cache_limit_gb=compile_cache_limit_gb,
                        deepcache=interval if isinstance(interval, int) and interval > 1 else False) as pipeline:
        if batch is not None:
            sys.exit(_run_batch(pipeline, batch, out_dir, defaults, quiet))
        bars = []  # the bar starts with the first step: a request refused before it leaves no empty bar above the error

        def advance(step: int, total: int) -> None:
            if not bars:
                bars.append(tqdm(desc="denoise", unit="step", total=total, disable=quiet))
            bars[0].update(1)

        config = pipeline.resolve(config)  # open sizes: the engines' family default (what the metadata records)
        try:
            result = pipeline.generate(config, progress=advance)
        finally:
            for bar in bars:
                bar.close()
        paths = _write_images(out, config, result, pipeline)
        control_paths = save_control_images(save_control, config, result) if save_control else []
    summary = {"status": "ok", "images": paths, "method": result.method.value,
               "masked_elements": result.masked_elements, "scheduler": result.scheduler,
               "timings_ms": {k: round(v, 2) for k, v in result.timings_ms.items()}}
    if control_paths:
        summary["control_images"] = control_paths
    if json_out:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"wrote {', '.join(paths)} ({result.method.value}, {result.masked_elements} elements masked, "
                   f"{result.scheduler}, {config.steps} steps)")


if __name__ == "__main__":
    main()
