"""The UNet's regional inputs for one request, and the conditioning of N style regions.

Kept apart from :mod:`maskst.runtime.pipeline` so the denoising loop stays one path: a request
without regions is fed as one region (R = 1) with all-ones masks and ``ip_scale[:, 0]`` = the
per-layer scales, which computes exactly what the pre-regions graph computed (see
:mod:`maskst.export.regional_attention`); a regional request feeds R regions. No torch here.
"""

from __future__ import annotations

import time

import numpy as np

from maskst.contract.wire import Method
from maskst.errors import InputError
from maskst.generation import GenerationConfig, region_layer_scales, region_methods
from maskst.regions import RegionMasks, full_mask_inputs, load_region_masks, region_mask_inputs


def check_region_count(config: GenerationConfig, max_regions: int, unet_spec) -> None:
    """InputError when the request has more regions than these engines take (before any work)."""
    count = len(config.regions)
    limit = min(max_regions, unet_spec.dim_range("R").max)
    if count > limit:
        raise InputError(f"{count} regions given; these engines take at most {limit} per request. Rebuild them with "
                         f"maskst-export --max-regions {count} (or more), or give fewer --region")


def prepare_masks(config: GenerationConfig) -> RegionMasks:
    """The request's pixel masks, read and checked (:func:`maskst.regions.load_region_masks`)."""
    return load_region_masks(config.regions, config.height, config.width)


def encode_regions(pipeline, config: GenerationConfig, timings: dict) -> tuple[np.ndarray, np.ndarray, tuple[Method, ...]]:
    """Every region's style embedding float32 [R, D] and content embedding float32 [R, D] (a zero row
    for a region that runs as ip-adapter: no content text, or method ip-adapter; the conditioner graph
    then leaves that row's embedding as it is, exactly), and each region's method. The conditioner
    masks and projects the R rows in one call, each with its own content, under the request's method."""
    methods = region_methods(config)
    t0 = time.perf_counter()
    e_i = np.concatenate([pipeline.encode_style_files([region.style]) for region in config.regions])
    timings["image_encoder"] = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    rows = [pipeline.encode_content(region.content) if method is not Method.IP_ADAPTER else np.zeros_like(e_i[:1])
            for region, method in zip(config.regions, methods)]
    timings["content_encoder"] = (time.perf_counter() - t0) * 1e3
    return e_i, np.concatenate(rows).astype(np.float32), methods


def unet_region_feed(config: GenerationConfig, layer_names, strides, latent_h: int, latent_w: int,
                     pixels: RegionMasks | None) -> dict[str, np.ndarray]:
    """``ip_scale`` float32 [L, R] and the ``region_mask_<s>`` inputs float32 [R, ceil(h/s), ceil(w/s)]."""
    masks = (region_mask_inputs(pixels, strides, latent_h, latent_w) if pixels is not None
             else full_mask_inputs(strides, latent_h, latent_w))
    return {"ip_scale": region_layer_scales(layer_names, config), **masks}


def ip_tokens_feed(uncond: np.ndarray | None, tokens: np.ndarray, num_images: int) -> np.ndarray:
    """float32 [2N, R, k, C]: the negative half ImageProj(0) for every region, then each region's tokens; without
    ``uncond`` (guidance off) [N, R, k, C], the positive half alone."""
    regions = tokens.shape[0]
    positive = np.broadcast_to(tokens[None], (num_images,) + tokens.shape)
    if uncond is None:
        return np.ascontiguousarray(positive, dtype=np.float32)
    negative = np.broadcast_to(uncond[None], (num_images, regions) + uncond.shape[1:])
    return np.ascontiguousarray(np.concatenate([negative, positive]), dtype=np.float32)
