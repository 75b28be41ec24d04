"""Style inputs of the runtime: how a request's style image becomes the conditioner's ``image_embeds``.

A model family names its style input (``ModelFamily.style_input``); the pipeline makes one per engines
folder and calls it, never branching on the family:

* ``clip`` (SD 1.5, SDXL): the ``image_encoder`` graph on the CLIP-preprocessed style image(s)
  (the base's feature extractor), averaged: ``image_embeds`` float32 [1, D] (IP-Adapter Plus: the
  penultimate hidden states [1, T, H]); cached by file identity (path, size, mtime).
* ``styleshot`` (StyleShot): one style image, its 512 crop cut into high / middle / low patches and
  shuffled by the request's seed (:mod:`maskst.styleshot`), the ``style_encoder`` graph:
  ``image_embeds`` float32 [1, 3, P]; cached by file identity and seed. The seed and the crop are
  recorded in the PNG metadata (``style_metadata``).

No torch here.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np

from maskst.errors import EngineError, InputError
from maskst.images import clip_preprocess, load_image

STYLE_CACHE_SIZE = 512  # embeddings kept (4 KB each for ViT-H image_embeds)


def file_identity(paths) -> tuple | None:
    """Identity of image files (resolved path, size, mtime of each); None if one is unreadable
    (not cached: loading then names the problem)."""
    key = []
    for path in paths:
        try:
            stat = Path(path).stat()
        except OSError:
            return None
        key.append((str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns))
    return tuple(key)


class _Cache:
    def __init__(self, size: int = STYLE_CACHE_SIZE):
        self.size = size
        self.entries: collections.OrderedDict = collections.OrderedDict()

    def get(self, key):
        return None if key is None else self.entries.get(key)

    def put(self, key, value) -> None:
        if key is None:
            return
        self.entries[key] = value
        if len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def clear(self) -> None:
        self.entries.clear()


class ClipStyleInput:
    """CLIP image embeddings of the style image(s): the ``image_encoder`` graph (SD 1.5, SDXL)."""

    graph = "image_encoder"

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.cache = _Cache()

    def check(self, config) -> None:
        """InputError for more style images than the engines take (before any work)."""
        limit = self.pipeline.runners[self.graph].spec.dims["S"].max
        if len(config.style) > limit:
            raise InputError(f"{len(config.style)} style images given; these engines take at most {limit} per request")

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """float32 [1, D] (Plus: [1, T, H]): the encoder's output for pixel_values [S, 3, 224, 224], averaged."""
        embeds = self.pipeline.run_graph(self.graph, {"pixel_values": pixels})["image_embeds"]
        self.pipeline.check_finite(self.graph, embeds)
        return embeds.mean(axis=0, keepdims=True, dtype=np.float32)

    def encode_images(self, images) -> np.ndarray:
        """float32 [1, D] (Plus: [1, T, H]): mean CLIP image embedding of PIL style images."""
        return self.encode_pixels(clip_preprocess(list(images), **self.pipeline.preprocess))

    def encode_files(self, paths) -> np.ndarray:
        """:meth:`encode_images` of image files, cached by file identity (path, size, mtime)."""
        key = file_identity(paths)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        embeds = self.encode_images([load_image(p) for p in paths])
        self.cache.put(key, embeds)
        return embeds

    def embeds(self, config, style_images=None) -> np.ndarray:
        """The conditioner's image_embeds of a request: the style images given, else ``config.style``."""
        return self.encode_images(style_images) if style_images is not None else self.encode_files(config.style)

    def uncond_embeds(self) -> np.ndarray:
        """What the conditioner projects for the negative half: zeros (Plus, as diffusers: the encoding of
        all-zero pixels)."""
        if self.pipeline.plus:
            pixels = np.zeros((1,) + self.pipeline.runners[self.graph].spec.inputs[0].shape[1:], np.float32)
            return self.encode_pixels(pixels)
        spec = self.pipeline.runners["image_conditioner"].spec
        return np.zeros((1,) + tuple(spec.inputs[0].shape[1:]), np.float32)

    def metadata(self, config) -> dict:
        return {}


class StyleShotStyleInput:
    """StyleShot's style-aware encoder on the shuffled patches of the 512 crop: the ``style_encoder`` graph."""

    graph = "style_encoder"

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.cache = _Cache()

    def check(self, config) -> None:
        if config.regions:
            raise InputError("--region: regional multi-style is not available on StyleShot engines (one style "
                             "image per request); use SD 1.5 / SDXL IP-Adapter engines for regions")
        if len(config.style) > 1:
            raise InputError(f"{len(config.style)} style images given; StyleShot takes one style image per request")

    def encode_image(self, image, seed: int) -> np.ndarray:
        """float32 [1, 3, P]: the style-aware encoder's embeddings of one PIL style image, patches shuffled by ``seed``."""
        from maskst.styleshot import style_patches

        embeds = self.pipeline.run_graph(self.graph, style_patches(image, seed))["style_embeds"]
        self.pipeline.check_finite(self.graph, embeds)
        return embeds.copy()

    def embeds(self, config, style_images=None) -> np.ndarray:
        if style_images is not None:
            images = list(style_images)
            if len(images) != 1:
                raise InputError(f"{len(images)} style images given; StyleShot takes one style image per request")
            return self.encode_image(images[0], config.seed)
        if not config.style:
            raise InputError("no style image given; pass --style IMAGE")
        identity = file_identity(config.style)
        key = None if identity is None else (identity, config.seed)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        embeds = self.encode_image(load_image(config.style[0]), config.seed)
        self.cache.put(key, embeds)
        return embeds

    def uncond_embeds(self) -> np.ndarray:
        """Zero style embeddings [1, 3, P]: the conditioner projects them to StyleShot's unconditional tokens."""
        spec = self.pipeline.runners["image_conditioner"].spec
        return np.zeros((1,) + tuple(spec.inputs[0].shape[1:]), np.float32)

    def metadata(self, config) -> dict:
        """What the PNG metadata records of the style input: the shuffle seed and the crop."""
        from maskst.styleshot import CROP

        return {"style_input": "styleshot", "shuffle_seed": config.seed, "style_crop": CROP}


STYLE_INPUTS = {"clip": ClipStyleInput, "styleshot": StyleShotStyleInput}


def style_input_for(name: str, pipeline):
    """The style input a family names, for one pipeline; EngineError for a name this maskst does not know."""
    if name not in STYLE_INPUTS:
        raise EngineError(f"style input {name!r}: this maskst knows {', '.join(STYLE_INPUTS)}; rebuild the engines "
                          "with maskst-export --force")
    return STYLE_INPUTS[name](pipeline)
