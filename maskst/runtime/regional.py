"""The UNet's regional inputs for one request, and the conditioning of N style regions.

Kept apart from :mod:`maskst.runtime.pipeline` so the denoising loop stays one path: a request
without regions is fed as one region (R = 1) with all-ones masks and ``ip_scale[:, 0]`` = the
per-layer scales, which computes exactly what the pre-regions graph computed (see
:mod:`maskst.export.regional_attention`); a regional request feeds R regions. No torch here.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from maskst.contract.wire import Method
from maskst.errors import InputError
from maskst.generation import GenerationConfig, region_layer_scales, region_methods
from maskst.regions import RegionMasks, full_mask_inputs, load_region_masks, region_mask_inputs


@dataclasses.dataclass(frozen=True)
class RegionalConditioning:
    """Per-region results of the conditioner: ``tokens`` float32 [R, k, C], ``masks`` bool [R, D]
    (embedding elements zeroed per region), ``methods`` (each region's method), ``pixels`` (the
    preprocessed pixel masks, None without regions)."""

    tokens: np.ndarray
    masks: np.ndarray
    methods: tuple[Method, ...]
    pixels: RegionMasks | None = None


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


def condition_regions(pipeline, config: GenerationConfig, pixels: RegionMasks, timings: dict) -> RegionalConditioning:
    """Encode every region's style image and content text, then mask + project all R rows in one
    conditioner call (each row masked with its own content; a region without content text gets a
    zero content embedding, which the graph turns into plain ip-adapter for that row exactly)."""
    import time

    methods = region_methods(config)
    clock = time.perf_counter
    t0 = clock()
    e_i = np.concatenate([pipeline.encode_style_files([region.style]) for region in config.regions])
    timings["image_encoder"] = (clock() - t0) * 1e3
    t0 = clock()
    rows = [pipeline.encode_content(region.content) if method is not Method.IP_ADAPTER else np.zeros_like(e_i[:1])
            for region, method in zip(config.regions, methods)]
    e_c = np.concatenate(rows).astype(np.float32)
    timings["content_encoder"] = (clock() - t0) * 1e3
    method = config.method if any(m is not Method.IP_ADAPTER for m in methods) else Method.IP_ADAPTER
    tokens, masks = pipeline.condition(e_i, e_c, method, config.mask_mode, config.theta, config.content_scale)
    return RegionalConditioning(tokens, masks, methods, pixels)


def unet_region_feed(config: GenerationConfig, layer_names, strides, latent_h: int, latent_w: int,
                     pixels: RegionMasks | None) -> dict[str, np.ndarray]:
    """``ip_scale`` float32 [L, R] and the ``region_mask_<s>`` inputs float32 [R, ceil(h/s), ceil(w/s)]."""
    masks = (region_mask_inputs(pixels, strides, latent_h, latent_w) if pixels is not None
             else full_mask_inputs(strides, latent_h, latent_w))
    return {"ip_scale": region_layer_scales(layer_names, config), **masks}


def ip_tokens_feed(uncond: np.ndarray, tokens: np.ndarray, num_images: int) -> np.ndarray:
    """float32 [2N, R, k, C]: the negative half ImageProj(0) for every region, then each region's tokens."""
    regions = tokens.shape[0]
    negative = np.broadcast_to(uncond[None], (num_images, regions) + uncond.shape[1:])
    positive = np.broadcast_to(tokens[None], (num_images,) + tokens.shape)
    return np.ascontiguousarray(np.concatenate([negative, positive]), dtype=np.float32)
