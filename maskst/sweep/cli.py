"""maskst-sweep (StyleBench-size grids, in-process or on Ray) and maskst-eval (the method's metrics)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from maskst.cli.common import EXIT_CODES_HELP, run_cli, threads_option
from maskst.errors import InputError
from maskst.cli.options import given_request, request_options
from maskst.sweep.grid import GRID_FIELDS

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
SWEEP_EXIT_CODES = EXIT_CODES_HELP.replace("some batch jobs failed", "some jobs failed (see results.jsonl)")


@click.command(context_settings=CONTEXT, epilog=SWEEP_EXIT_CODES)
@click.option("--engines", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Engines folder built by maskst-export (on shared storage for a Ray cluster).")
@click.option("--prompts", "prompts_file", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Text file: one prompt per line (blank lines and '#' lines skipped).")
@click.option("--styles", "styles_file", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="CSV with a header and columns style,content: image path (relative to the CSV's folder) and "
                   "the text of what the image shows (the content to mask).")
@click.option("--methods", default="maskst,instantstyle,ip-adapter", show_default=True,
              help="Comma-separated methods: maskst, instantstyle, ip-adapter (StyleShot engines: styleshot, maskst, "
                   "instantstyle).")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds, e.g. 0,1.")
@click.option("--out-dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Output folder: PNGs, sweep.json, results.jsonl. Rerunning into it skips finished jobs.")
@request_options(exclude=GRID_FIELDS)
@click.option("--backend", default="ort-cpu", show_default=True, help="Runtime backend of every worker (see maskst-run).")
@threads_option("Intra-op threads per session. Default: all cores in-process; --cpus-per-worker on Ray.")
@click.option("--skip-verify", is_flag=True, help="Skip SHA-256 verification of the engine files (faster start).")
@click.option("--allow-fallback", is_flag=True, help="Accept a GPU backend silently falling back to CPU.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Run on Ray Data (pip install 'maskst[ray]'): alone, start a local Ray; with an ADDRESS "
                   "(auto, ray://head:10001), connect to that cluster. Without --ray: in this process.")
@click.option("--workers", type=int, default=None, help="Ray: actors in the pool, one pipeline each [default: 2].")
@click.option("--cpus-per-worker", type=float, default=None, help="Ray: CPUs reserved per actor [default: 1].")
@click.option("--gpus-per-worker", type=float, default=None, help="Ray: GPUs reserved per actor [default: 0].")
@click.option("--batch-size", type=int, default=None, help="Ray: jobs per actor call [default: 1].")
@click.option("--crash-marker", type=click.Path(path_type=Path, dir_okay=False), hidden=True,
              help="Test hook (Ray only): a worker that finds this file renames it to FILE.fired and exits at once.")
@click.option("--dry-run", is_flag=True, help="Print the grid (one JSON line per job, finished or pending) and stop.")
@click.option("--json", "json_out", is_flag=True, help="Print the summary as one JSON line.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@run_cli
def sweep_main(engines, prompts_file, styles_file, methods, seeds, out_dir, backend, threads, skip_verify, allow_fallback,
               ray_address, workers, cpus_per_worker, gpus_per_worker, batch_size, crash_marker, dry_run, json_out,
               quiet, **request):
    """Run the grid PROMPTS x STYLES x METHODS x SEEDS: one PNG per job, one line per job in OUT_DIR/results.jsonl.

    \b
    maskst-sweep --engines eng/ --prompts prompts.txt --styles styles.csv --out-dir runs/a
    maskst-sweep ... --seeds 0,1 --steps 30 --ray --workers 4 --cpus-per-worker 4
    maskst-sweep ... --ray auto --workers 8 --gpus-per-worker 1 --backend ort-cuda

    Jobs are ordered prompt, style, method, seed; files are named p{prompt:03d}-s{style:03d}-{method}-seed{seed}.png.
    A rerun skips every job whose PNGs exist with matching metadata (same options, engines and style file)
    and redoes the rest. A style file that cannot be read fails its jobs only.
    """
    from maskst.sweep.executors import LocalExecutor, PipelineOptions
    from maskst.sweep.grid import SweepSpec
    from maskst.sweep.runner import plan, run_sweep

    ray_flags = {"--workers": workers, "--cpus-per-worker": cpus_per_worker, "--gpus-per-worker": gpus_per_worker,
                 "--batch-size": batch_size, "--crash-marker": crash_marker}
    if ray_address is None and any(v is not None for v in ray_flags.values()):
        used = ", ".join(k for k, v in ray_flags.items() if v is not None)
        raise InputError(f"{used} only apply with --ray")
    from maskst.runtime.backends import require_backend

    require_backend(backend, allow_fallback)  # unknown names and missing GPUs / packages (exit 6): before the engines
    run_options = given_request(request)  # the options given; GenerationConfig's defaults for the rest
    if run_options.get("init_latents"):
        run_options["init_latents"] = run_options["init_latents"].absolute()
    if run_options.get("control_image"):  # as init latents: workers may start elsewhere (Ray)
        run_options["control_image"] = tuple(Path(p).absolute() for p in run_options["control_image"])
    spec = SweepSpec.create(prompts_file, styles_file, methods=methods, seeds=seeds, run_options=run_options)
    pipeline = PipelineOptions(engines, backend=backend, threads=threads, verify_hashes=not skip_verify,
                               allow_fallback=allow_fallback)
    if dry_run:
        jobs, pending = plan(spec, engines, out_dir)
        waiting = {job.index for job in pending}
        for job in jobs:
            click.echo(json.dumps({"job": job.index, "name": job.name, "images": list(job.images),
                                   "state": "pending" if job.index in waiting else "finished", "key": job.key}))
        click.echo(json.dumps({"jobs": len(jobs), "pending": len(pending), "finished": len(jobs) - len(pending)}))
        return
    if ray_address is None:
        executor = LocalExecutor(pipeline)
    else:
        from maskst.sweep.ray_executor import RayExecutor, RayOptions, import_ray

        import_ray()  # Ray missing: exit 6 before any work

        given = {"workers": workers, "cpus_per_worker": cpus_per_worker, "gpus_per_worker": gpus_per_worker,
                 "batch_size": batch_size, "crash_marker": crash_marker}
        executor = RayExecutor(pipeline, RayOptions(address=ray_address or None,
                                                    **{k: v for k, v in given.items() if v is not None}))

    def report_failure(record: dict) -> None:
        if record["status"] != "ok":
            click.echo(f"error: job {record['job']} ({record['name']}): {record['error']}", err=True)

    report = run_sweep(spec, engines, out_dir, executor, progress=not quiet, on_record=report_failure)
    if json_out:
        click.echo(json.dumps(report.to_dict()))
    else:
        click.echo(f"{report.jobs} jobs: {report.ran} ran, {report.cached} already finished, {report.failed} failed; "
                   f"results in {report.results}")
    raise SystemExit(report.exit_code)


@click.command(context_settings=CONTEXT, epilog=EXIT_CODES_HELP.replace(", 1 some batch jobs failed", ""))
@click.option("--engines", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Engines folder whose image encoder and content (text) encoder score the images; for the "
                   "seed's ViT-H metrics, engines of the laion ViT-H adapter.")
@click.option("--results", "results_dir", required=True, type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="Output folder of maskst-sweep (or maskst-run --batch): results.jsonl and the PNGs.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Write per-image scores, per-method summary and encoder description as JSON.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path, dir_okay=False), help="Write per-image scores as CSV.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Write a PNG chart: methods side by side (style vs text score; leakage).")
@click.option("--backend", default="ort-cpu", show_default=True, help="Runtime backend for the encoders.")
@threads_option("Intra-op threads per session (default: all cores).")
@click.option("--skip-verify", is_flag=True, help="Skip SHA-256 verification of the engine files (faster start).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@run_cli
def eval_main(engines, results_dir, json_path, csv_path, plot_path, backend, threads, skip_verify, quiet):
    """Score the images of a sweep with the engines' own CLIP encoders; print the per-method summary as JSON.

    \b
    maskst-eval --engines eng/ --results runs/a --json runs/a/eval.json --csv runs/a/eval.csv --plot runs/a/eval.png

    Per image (all embeddings L2-normalised; gen, style = CLIP image_embeds of the generated and style
    images; prompt, content = CLIP text_embeds of the prompt and the content text):
    style_score = gen.style; text_score = gen.prompt; leakage = (gen.content) / (style.content);
    faithful = gen.prompt >= gen.content; gated_style_score = gen.(style - content) if faithful else 0;
    gated_leakage = leakage if faithful else 1. Per method: mean and 95% Student-t interval.
    """
    from maskst.runtime.output import check_writable
    from maskst.sweep.evaluate import evaluate, skipped_summary, write_csv, write_json

    for path, flag in ((json_path, "--json"), (csv_path, "--csv"), (plot_path, "--plot")):
        if path is not None:
            check_writable(path, flag)
    if plot_path is not None:  # checked before the scoring, which takes a while
        from maskst.contract.files import check_chart_path

        check_chart_path(plot_path, "--plot")
    from maskst.sweep.executors import PipelineOptions

    report = evaluate(PipelineOptions(engines, backend=backend, threads=threads, verify_hashes=not skip_verify),
                      results_dir, progress=not quiet)
    skipped = report["skipped"]
    if skipped:  # nothing scored at all is an error (evaluate); some skipped is worth a line, not only a JSON entry
        total = len(skipped) + len(report["images"])
        click.echo(f"warning: {len(skipped)} of {total} images were not scored ({skipped_summary(skipped)})", err=True)
    if json_path is not None:
        write_json(report, json_path)
    if csv_path is not None:
        write_csv(report, csv_path)
    if plot_path is not None:
        from maskst.sweep.plot import plot_report

        plot_report(report, plot_path, what="--plot")
    click.echo(json.dumps(report["summary"]))
