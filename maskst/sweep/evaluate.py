"""maskst-eval: score a sweep's images with the engines' own encoders.

Which encoder and space each number uses:

- generated and style images -> the engines' ``image_encoder`` graph (CLIP vision tower with
  projection, output ``image_embeds`` [1, D]), preprocessed exactly as for conditioning
  (``preprocessor_config.json`` of the engines: the base model's feature extractor);
  ``MaskstPipeline.encode_style``. A job with several style images is scored against the mean of
  their embeddings, the embedding it was conditioned on;
- prompt and content text -> the engines' ``content_encoder`` graph (the text tower with projection
  of the image encoder's CLIP, output ``text_embeds`` [1, D]); ``MaskstPipeline.encode_content``.
  Not the SD text encoder.

For the laion ViT-H adapter both are towers of laion CLIP-ViT-H-14, so every cosine is taken in
that one 1024-d space (the seed's metrics). The formulas are in :mod:`maskst.sweep.metrics`.

Images come from ``DIR/results.jsonl`` (lines with ``status: ok``; their ``images``), or, without
that file, from every PNG in DIR; prompt, content text, style files and method come from each PNG's
``maskst`` metadata (``method`` is the method that ran). Images that cannot be scored (file
missing, style file gone, no content text) are listed under ``skipped`` with the reason.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from maskst.contract.files import write_atomic
from maskst.errors import InputError
from maskst.sweep.metrics import image_scores, summarize
from maskst.sweep.store import read_metadata

RESULTS_NAME = "results.jsonl"
CSV_COLUMNS = ("file", "method", "style_score", "text_score", "leakage", "faithful", "gated_style_score",
               "gated_leakage", "cos_gen_content", "cos_style_content", "prompt", "content", "style", "seed",
               "prompt_index", "style_index")


def list_images(results_dir: Path) -> list[Path]:
    """The PNGs to score, in results.jsonl order (or sorted by name when there is no results.jsonl)."""
    results_dir = Path(results_dir)
    results = results_dir / RESULTS_NAME
    if not results.is_file():
        return sorted(results_dir.glob("*.png"))
    paths = []
    for number, line in enumerate(results.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{results} line {number} is not valid JSON ({exc})") from None
        if isinstance(record, dict) and record.get("status") == "ok":
            for name in record.get("images", []):
                # sweeps write names relative to DIR; maskst-run --batch writes paths as given on its command line
                path = Path(name)
                paths.append(results_dir / path if not path.is_absolute() and (results_dir / path).exists() else path)
    return paths


def _describe_encoders(pipeline, dim: int) -> dict:
    preprocessor = json.loads((Path(pipeline.manifest.folder) / "preprocessor_config.json").read_text())
    return {
        "engines": str(pipeline.manifest.folder), "engines_manifest": pipeline.manifest.digest,
        "image": {"graph": "image_encoder", "output": "image_embeds", "dim": dim,
                  "scores": "generated images and style images",
                  "preprocessing": {k: preprocessor.get(k) for k in ("size", "crop_size", "resample", "image_mean",
                                                                     "image_std") if k in preprocessor}},
        "text": {"graph": pipeline.content_graph,
                 "output": f"{pipeline.content_output} (text tower projecting into the image encoder's space)",
                 "dim": dim, "scores": "prompt and content text"},
        "space": "one CLIP embedding space (image_embeds and text_embeds of the same CLIP; laion ViT-H/14 for the "
                 "h94 ViT-H adapters); every embedding L2-normalised, scores are dot products (cosines)",
        "interval": "95% confidence interval of the mean: mean +- t(0.975, n-1) * sd / sqrt(n)",
    }


def _style_paths(meta: dict) -> list[Path]:
    style = meta.get("style") or []
    return [Path(p) for p in ([style] if isinstance(style, str) else style)]


def evaluate(pipeline_options, results_dir: Path, progress: bool = True) -> dict:
    """``{"images": [...], "summary": {method: ...}, "encoders": {...}, "results": DIR, "skipped": [...]}``.

    ``pipeline_options``: :class:`maskst.sweep.executors.PipelineOptions` of the scoring engines.
    Each image entry: ``file`` (relative to DIR when inside it), ``method``, the scores of
    :func:`maskst.sweep.metrics.image_scores`, ``prompt``, ``content``, ``style``, ``seed``,
    ``prompt_index``/``style_index`` (sweeps only, else None).
    """
    results_dir = Path(results_dir)
    paths = list_images(results_dir)
    if not paths:
        raise InputError(f"--results {results_dir} has no image to score (no ok line in {RESULTS_NAME}, no PNG)")
    images, skipped = [], []
    with pipeline_options.open() as pipeline:
        dim = None
        for path in tqdm(paths, desc="eval", unit="image", disable=not progress):
            name = str(path.relative_to(results_dir)) if path.is_relative_to(results_dir) else str(path)
            meta = read_metadata(path)
            if meta is None:
                skipped.append({"file": name, "reason": "missing, or no maskst metadata"})
                continue
            if not str(meta.get("content") or "").strip():
                skipped.append({"file": name, "reason": "no content text in its metadata (leakage undefined)"})
                continue
            prompt_text = meta.get("prompt")
            if not isinstance(prompt_text, str) or not isinstance(meta.get("content"), str):
                skipped.append({"file": name, "reason": "its metadata has no prompt or content text"})
                continue
            try:
                with Image.open(path) as image:
                    gen = pipeline.encode_style([image.convert("RGB")])
            except (OSError, SyntaxError, ValueError) as exc:  # metadata intact, pixels truncated or corrupt
                skipped.append({"file": name, "reason": f"the image cannot be decoded ({exc})"})
                continue
            if gen.ndim != 2:
                raise InputError(f"the image encoder of {pipeline_options.engines} outputs hidden states "
                                 f"{list(gen.shape)} (IP-Adapter Plus), not image_embeds; score with engines of a "
                                 "base (non-Plus) adapter")
            dim = gen.shape[-1]
            try:
                style = pipeline.encode_style_files(_style_paths(meta))
            except InputError as exc:
                skipped.append({"file": name, "reason": f"style image: {exc}"})
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # truncation warnings were shown when the images were made
                prompt, content = pipeline.encode_content(meta["prompt"]), pipeline.encode_content(meta["content"])
            sweep = meta.get("sweep") or {}
            images.append({"file": name, "method": meta.get("method"), **image_scores(gen, style, prompt, content),
                           "prompt": meta["prompt"], "content": meta["content"],
                           "style": [str(p) for p in _style_paths(meta)], "seed": meta.get("seed"),
                           "prompt_index": sweep.get("prompt_index"), "style_index": sweep.get("style_index")})
        if not images:  # an empty report would look like a finished evaluation
            raise InputError(f"--results {results_dir}: none of its {len(paths)} image(s) could be scored "
                             f"({skipped_summary(skipped)}); pass the output folder of maskst-sweep or "
                             "maskst-run --batch (PNGs with maskst metadata and their style files)")
        encoders = _describe_encoders(pipeline, dim)
    return {"results": str(results_dir), "images": images, "summary": summarize(images), "encoders": encoders,
            "skipped": skipped}


def skipped_summary(skipped: list[dict], limit: int = 3) -> str:
    """The first ``limit`` skipped files with their reasons, on one line."""
    shown = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:limit])
    return shown + (f"; and {len(skipped) - limit} more" if len(skipped) > limit else "")


def write_json(report: dict, path: Path) -> None:
    """The report as indented JSON, written atomically (InputError naming --json on a failed write)."""
    write_atomic(path, json.dumps(report, indent=2) + "\n", what="--json")


def write_csv(report: dict, path: Path) -> None:
    """One row per image, the columns of CSV_COLUMNS (style files joined with ';')."""
    text = io.StringIO(newline="")  # a report is a few kB: built whole, then written in one atomic replace
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for image in report["images"]:
        writer.writerow({**image, "style": ";".join(image["style"])})
    write_atomic(path, text.getvalue(), what="--csv")
