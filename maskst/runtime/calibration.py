"""Calibration inputs for int8 quantization: the graph feeds of real generations, recorded.

:func:`record_feeds` runs :class:`~maskst.runtime.pipeline.MaskstPipeline` on an engines folder for
each calibration prompt (a calibration style image, the demo content text, fixed seeds) and keeps a copy of
every input of the wanted graphs as the pipeline calls them (:class:`FeedRecorder`, a
``PipelineCallback``: ``on_infer_inputs``; no runner is wrapped). For the UNet that is one feed per
denoising step (``sample [2N, 4, h, w]``, ``timestep [1]``, ``text_embeddings``, ``ip_tokens``, ...),
for the VAE decoder one per image (``latents [N, 4, h, w]``), for the image encoder one per generation
(``pixel_values [1, 3, 224, 224]``).

Each generation gets its own style picture (:func:`calibration_styles`): generation ``i`` uses view
``i // S`` of style image ``i % S`` (``S`` images: ``maskst-export --calibration-styles``, or the demo style
image), view 0 being the image itself and the others deterministic variations of it (:func:`style_view`:
mirrored, cropped, turned, grey, recoloured). The image encoder is called once per generation, so without
them every generation would feed it the same picture: one calibration sample, and held-out "checks" on the
very image it was calibrated on.

The DeepCache graphs (engines exported with ``--deepcache``) are recorded the way they run: a second
pass of the same generations with DeepCache on (:data:`maskst.deepcache.CALIBRATION_INTERVAL`, on a
``MaskstPipeline(deepcache=True)``), so ``unet_deep`` gets the inputs of the full steps and
``unet_shallow`` those of the cached steps, its ``deep_feature`` the one the last ``unet_deep`` call
returned. Two passes rather than one with DeepCache: the plain ``unet`` keeps the inputs of every step
(the cached steps never call it), as before.

:func:`calibration_recorder` makes the callable the exporter takes (``export_engines(..., calibrate=)``),
so the exporter itself needs no runtime import.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from maskst.deepcache import CALIBRATION_INTERVAL, DEEP_GRAPH, SHALLOW_GRAPH
from maskst.engines.manifest import load_manifest
from maskst.runtime.pipeline import MaskstPipeline, PipelineCallback

CALIBRATION_VIEWS = 8  # views of each calibration style image (style_view), view 0 the image itself
CALIBRATION_BACKEND = "openvino"  # fast on the CPU; the recorded inputs are samples of a distribution
CALIBRATION_STEPS = 10  # denoising steps per calibration prompt (the benchmark's request)
DEEPCACHE_GRAPHS = (DEEP_GRAPH, SHALLOW_GRAPH)


class FeedRecorder(PipelineCallback):
    """Keeps a copy of every input of the graphs in ``graphs``: ``feeds[graph]`` is a list of
    ``{input name: array}`` in call order."""

    def __init__(self, graphs: Sequence[str]):
        self.feeds: dict[str, list[dict[str, np.ndarray]]] = {g: [] for g in graphs}

    def on_infer_inputs(self, graph: str, feed: dict[str, np.ndarray]) -> None:
        if graph in self.feeds:
            self.feeds[graph].append({name: np.array(value, copy=True) for name, value in feed.items()})


def style_view(image: Image.Image, view: int) -> Image.Image:
    """View ``view`` (0 .. :data:`CALIBRATION_VIEWS` - 1) of an RGB style image, deterministic: the image, mirrored,
    its centre (60%), turned a quarter, in grey, its top-left corner (70%) mirrored, more saturated and
    contrasted, posterized (3 bits a channel: flat colour areas)."""
    from PIL import ImageEnhance, ImageOps

    w, h = image.size
    views = (
        lambda im: im,
        ImageOps.mirror,
        lambda im: im.crop((round(w * 0.2), round(h * 0.2), round(w * 0.8), round(h * 0.8))),
        lambda im: im.transpose(Image.Transpose.ROTATE_90),
        lambda im: ImageOps.grayscale(im).convert("RGB"),
        lambda im: ImageOps.mirror(im.crop((0, 0, max(1, round(w * 0.7)), max(1, round(h * 0.7))))),
        lambda im: ImageEnhance.Contrast(ImageEnhance.Color(im).enhance(1.8)).enhance(1.3),
        lambda im: ImageOps.posterize(im, 3),
    )
    if not 0 <= view < len(views):
        raise ValueError(f"view={view} must be in [0, {len(views) - 1}]")
    return views[view](image)


def calibration_styles(styles: Sequence[Path], count: int, folder: Path) -> list[Path]:
    """The style image of each of ``count`` calibration generations: generation ``i`` gets view ``i // S`` of
    ``styles[i % S]`` (the demo style image when ``styles`` is empty), the views other than 0 written as PNGs
    into ``folder``; past ``S * CALIBRATION_VIEWS`` generations the pictures repeat. InputError naming the file if
    a style image cannot be read."""
    from maskst.generation import DEMO_STYLE
    from maskst.images import load_image

    styles = [Path(p) for p in styles] or [DEMO_STYLE]
    Path(folder).mkdir(parents=True, exist_ok=True)
    chosen, loaded = [], {}
    for i in range(count):
        index, view = i % len(styles), (i // len(styles)) % CALIBRATION_VIEWS
        if view == 0:
            chosen.append(styles[index])
            continue
        path = Path(folder) / f"style{index}-view{view}.png"
        if not path.is_file():
            if index not in loaded:
                loaded[index] = load_image(styles[index])
            style_view(loaded[index], view).save(path)
        chosen.append(path)
    return chosen


def record_feeds(engines: Path, prompts: Sequence[str], graphs: Sequence[str], size: int,
                 steps: int = CALIBRATION_STEPS, backend: str = CALIBRATION_BACKEND, threads: int | None = None,
                 verify_hashes: bool = False, deepcache_interval: int = CALIBRATION_INTERVAL,
                 styles: Sequence[Path] = ()) -> dict[str, list[dict[str, np.ndarray]]]:
    """{graph: recorded feeds} of one generation per prompt (``size`` x ``size`` px, ``steps`` steps,
    the style picture of :func:`calibration_styles` (``styles``: the calibration style images; empty: the demo
    style image), the demo content text, seed = the prompt's index).

    ``unet_deep`` / ``unet_shallow`` in ``graphs`` are recorded from a second pass of the same generations
    with ``deepcache_interval`` (> 1), on a pipeline that loads them instead of the plain ``unet`` (one full
    UNet in memory at a time); engines without them (exported without ``--deepcache``) give them no feeds
    and run no second pass.

    The compiled models go to a temporary cache, removed afterwards (the folder may be a staging folder
    about to be renamed, whose blobs nobody would find again): imported from their blobs, OpenVINO's models
    drop the fp32 weights they were compiled from, which keeps the recording's peak memory near the
    runtime's (full-size SD 1.5, 8 prompts at 256 px: 7.7 GB peak RSS, 9.7 GB without a cache). Both
    passes share it (the encoders are compiled once).
    """
    if deepcache_interval < 2:
        raise ValueError(f"deepcache_interval={deepcache_interval}: the DeepCache pass needs an interval > 1 "
                         "(the shallow graph runs on cached steps only)")
    exported = load_manifest(Path(engines), verify_hashes=False).data["graphs"]
    plain = [g for g in graphs if g not in DEEPCACHE_GRAPHS]
    cached = [g for g in graphs if g in DEEPCACHE_GRAPHS and g in exported]
    feeds: dict[str, list[dict[str, np.ndarray]]] = {g: [] for g in graphs}
    with tempfile.TemporaryDirectory(prefix="maskst-calibration-") as scratch:
        pictures = calibration_styles(styles, len(prompts), Path(scratch))  # an unreadable image fails before any work
        cache = Path(scratch) / "compiled"
        for wanted, interval in ((plain, 1), (cached, deepcache_interval)):
            if not wanted:
                continue
            recorder = FeedRecorder(wanted)
            with MaskstPipeline(Path(engines), backend=backend, verify_hashes=verify_hashes, threads=threads,
                                compile_cache=cache, callbacks=[recorder], deepcache=interval > 1) as pipeline:
                _generate(pipeline, prompts, pictures, size, steps, interval)
            feeds.update(recorder.feeds)
    return feeds


def _generate(pipeline: MaskstPipeline, prompts: Sequence[str], styles: Sequence[Path], size: int, steps: int,
              interval: int) -> None:
    """One calibration generation per prompt on ``pipeline`` (style ``styles[i]``, seed = the prompt's index)."""
    from maskst.generation import DEMO_CONTENT, GenerationConfig

    for seed, (prompt, style) in enumerate(zip(prompts, styles)):
        config = GenerationConfig.create(prompt=prompt, style=(style,), content=DEMO_CONTENT, steps=steps,
                                         height=size, width=size, seed=seed, deepcache_interval=interval)
        pipeline.generate(config)


def calibration_recorder(prompts: Sequence[str], graphs: Sequence[str], size: int, steps: int = CALIBRATION_STEPS,
                         threads: int | None = None,
                         styles: Sequence[Path] = ()) -> Callable[[Path], dict[str, list[dict[str, np.ndarray]]]]:
    """``folder -> {graph: feeds}``: :func:`record_feeds` with these settings (what the exporter calls on
    its staging folder once the fp32 graphs and the manifest are there)."""
    prompts, styles = tuple(prompts), tuple(styles)

    def calibrate(folder: Path) -> dict[str, list[dict[str, np.ndarray]]]:
        return record_feeds(folder, prompts, graphs, size, steps=steps, threads=threads, styles=styles)

    return calibrate


def read_prompts(path: Path) -> tuple[str, ...]:
    """Calibration prompts of a text file: one per line, blank lines and ``#`` comments skipped.
    InputError naming the file if it cannot be read or holds no prompt."""
    from maskst.errors import InputError

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"--calibration-prompts {path}: no such file; give a text file with one prompt per line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--calibration-prompts {path} cannot be read as UTF-8 text ({exc})") from None
    prompts = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))
    if not prompts:
        raise InputError(f"--calibration-prompts {path} holds no prompt; write one prompt per line")
    return prompts
