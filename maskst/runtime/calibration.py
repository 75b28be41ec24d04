"""Calibration inputs for int8 quantization: the graph feeds of real generations, recorded.

:func:`record_feeds` runs :class:`~maskst.runtime.pipeline.MaskstPipeline` on an engines folder for
each calibration prompt (the demo style image and content text, fixed seeds) and keeps a copy of
every input of the wanted graphs as the pipeline calls them (:class:`FeedRecorder`, a
``PipelineCallback``: ``on_infer_inputs``; no runner is wrapped). For the UNet that is one feed per
denoising step (``sample [2N, 4, h, w]``, ``timestep [1]``, ``text_embeddings``, ``ip_tokens``, ...),
for the VAE decoder one per image (``latents [N, 4, h, w]``).

:func:`calibration_recorder` makes the callable the exporter takes (``export_engines(..., calibrate=)``),
so the exporter itself needs no runtime import.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from maskst.runtime.pipeline import MaskstPipeline, PipelineCallback

CALIBRATION_BACKEND = "openvino"  # fast on the CPU; the recorded inputs are samples of a distribution
CALIBRATION_STEPS = 10  # denoising steps per calibration prompt (the benchmark's request)


class FeedRecorder(PipelineCallback):
    """Keeps a copy of every input of the graphs in ``graphs``: ``feeds[graph]`` is a list of
    ``{input name: array}`` in call order."""

    def __init__(self, graphs: Sequence[str]):
        self.feeds: dict[str, list[dict[str, np.ndarray]]] = {g: [] for g in graphs}

    def on_infer_inputs(self, graph: str, feed: dict[str, np.ndarray]) -> None:
        if graph in self.feeds:
            self.feeds[graph].append({name: np.array(value, copy=True) for name, value in feed.items()})


def record_feeds(engines: Path, prompts: Sequence[str], graphs: Sequence[str], size: int,
                 steps: int = CALIBRATION_STEPS, backend: str = CALIBRATION_BACKEND, threads: int | None = None,
                 verify_hashes: bool = False) -> dict[str, list[dict[str, np.ndarray]]]:
    """{graph: recorded feeds} of one generation per prompt (``size`` x ``size`` px, ``steps`` steps,
    the demo style image and content text, seed = the prompt's index).

    The compiled models go to a temporary cache, removed afterwards (the folder may be a staging folder
    about to be renamed, whose blobs nobody would find again): imported from their blobs, OpenVINO's models
    drop the fp32 weights they were compiled from, which keeps the recording's peak memory near the
    runtime's (full-size SD 1.5, 8 prompts at 256 px: 7.7 GB peak RSS, 9.7 GB without a cache).
    """
    from maskst.generation import DEMO_CONTENT, DEMO_STYLE, GenerationConfig

    recorder = FeedRecorder(graphs)
    with tempfile.TemporaryDirectory(prefix="maskst-calibration-") as cache, \
            MaskstPipeline(Path(engines), backend=backend, verify_hashes=verify_hashes, threads=threads,
                           compile_cache=Path(cache), callbacks=[recorder]) as pipeline:
        for seed, prompt in enumerate(prompts):
            config = GenerationConfig.create(prompt=prompt, style=(DEMO_STYLE,), content=DEMO_CONTENT, steps=steps,
                                             height=size, width=size, seed=seed)
            pipeline.generate(config)
    return recorder.feeds


def calibration_recorder(prompts: Sequence[str], graphs: Sequence[str], size: int, steps: int = CALIBRATION_STEPS,
                         threads: int | None = None) -> Callable[[Path], dict[str, list[dict[str, np.ndarray]]]]:
    """``folder -> {graph: feeds}``: :func:`record_feeds` with these settings (what the exporter calls on
    its staging folder once the fp32 graphs and the manifest are there)."""
    prompts = tuple(prompts)

    def calibrate(folder: Path) -> dict[str, list[dict[str, np.ndarray]]]:
        return record_feeds(folder, prompts, graphs, size, steps=steps, threads=threads)

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
