"""Regional multi-style: each style conditions only the pixels of its mask (diffusers' ``ip_adapter_masks``).

The semantics are diffusers' (``IPAdapterMaskProcessor`` and ``IPAdapterAttnProcessor2_0``); this
module is their host-side half, in numpy + PIL (no torch: it runs on the hot path):

1. :func:`preprocess_mask`: ``IPAdapterMaskProcessor.preprocess(mask, H, W)`` for one mask: resize
   the image to the output size (PIL Lanczos, in the image's own mode), convert to grayscale,
   ``/ 255`` in float32, binarise at 0.5 -> float32 [H, W] of 0 and 1. Same PIL calls, same numpy
   expression: bit-identical to diffusers.
2. :func:`downsample_mask`: ``IPAdapterMaskProcessor.downsample`` for one cross-attention layer with
   Q queries: diffusers' grid rule (``mask_h = int(sqrt(Q / (W / H)))``, +1 if it does not divide
   Q, ``mask_w = Q // mask_h``), bicubic resize of the *pixel* mask to that grid (torch's
   ``F.interpolate(mode="bicubic")``: A = -0.75, half-pixel centres, clamped borders, no
   antialias), row-major flatten, zero-pad or truncate to Q. The bicubic step reproduces torch's CPU
   kernel operation by operation (float32, and the fused multiply-adds its x86-64 build contracts
   to), so the values are bit-identical to diffusers' (``tests/test_regions.py`` checks it against
   ``F.interpolate`` on hundreds of size pairs). Where every layer grid divides the pixel mask
   evenly (output sizes that are multiples of 8 * 2^(levels - 1): 64 px on SD 1.5), every weight
   and every sum is an exact dyadic number, so there the equality holds on any torch build.

Why on the host and not in the UNet graph: diffusers' grid is computed with Python floats from Q
and the output aspect ratio, which a traced graph would freeze at the traced size; and no ONNX
``Resize`` implementation rounds like torch's kernel. The masks depend only on the request (output
size and mask files), not on the step, so they are computed once per request and fed to the UNet
as ``region_mask_<stride>`` inputs, one per latent stride of the cross-attention layers, each
``[R, ceil(h / stride), ceil(w / stride)]`` in query order (row-major = the layers' query order).

When diffusers' grid is not the layer's grid (latent sizes not divisible by 2^(levels - 1), e.g.
72 x 120 px: the 5 x 8 layer gets a 4 x 10 mask, flattened over its 40 queries) diffusers applies
the mask misplaced; maskst reproduces that exactly and warns (:class:`RegionMaskWarning`).

Policies (docs/regions.md): a mask of another aspect ratio than the output (more than 1% off) is
refused (diffusers stretches it silently); a mask with no white pixel at the output size is
refused; overlapping masks add their regions' contributions and uncovered pixels get no image
conditioning (both allowed, as in diffusers); a mask file is read like a style image
(:func:`maskst.images.load_image`: EXIF rotation, 16-bit scaled, transparency composited on white).
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from maskst.errors import CheckpointError, InputError
from maskst.images import load_image

#: A mask whose aspect ratio differs from the output's by more than this (relative) is refused.
MASK_ASPECT_TOLERANCE = 0.01
MASK_INPUT_PREFIX = "region_mask_"


class RegionMaskWarning(UserWarning):
    """diffusers' mask grid is not the layer's query grid at this output size (the mask lands misplaced, as in diffusers)."""


# ------------------------------------------------------------------ UNet levels: which grid each layer has


def layer_strides(layer_names, num_down_blocks: int) -> tuple[int, ...]:
    """Latent stride (1, 2, 4, ...) of each cross-attention layer's query grid, in layer order.

    Down block i runs at level i (each down block but the last ends with a stride-2 downsampler),
    the mid block at the last level, up block j at level ``num_down_blocks - 1 - j``. The same rule
    holds for SD 1.5 and SDXL; the export's parity check at odd latent sizes confirms it per model.
    """
    strides = []
    for name in layer_names:
        match = re.match(r"(down_blocks|up_blocks)\.(\d+)\.|mid_block\.", name)
        if match is None:
            raise CheckpointError(f"cross-attention layer {name!r} is in no down, mid or up block; "
                                  "regional masks need the UNet's block layout")
        if match.group(1) == "down_blocks":
            level = int(match.group(2))
        elif match.group(1) == "up_blocks":
            level = num_down_blocks - 1 - int(match.group(2))
        else:
            level = num_down_blocks - 1
        strides.append(2 ** level)
    return tuple(strides)


def checkpoint_strides(ckpt) -> tuple[int, ...]:
    """:func:`layer_strides` of a :class:`maskst.checkpoints.CheckpointSet`'s cross-attention layers."""
    return layer_strides(ckpt.cross_attention_layers, len(ckpt.unet_config["down_block_types"]))


def mask_input_name(stride: int) -> str:
    """Name of the UNet input holding the masks of the layers at latent stride ``stride``."""
    return f"{MASK_INPUT_PREFIX}{stride}"


def grid_dims(stride: int) -> tuple[str, str]:
    """Symbolic dims of a stride's grid: ("h", "w") at stride 1, ("h/2", "w/2") at 2, ..."""
    return ("h", "w") if stride == 1 else (f"h/{stride}", f"w/{stride}")


def grid_size(latent: int, stride: int) -> int:
    """Side of a level's query grid: ceil(latent / stride) (stride-2 convolutions with padding 1)."""
    return -(-latent // stride)


# ------------------------------------------------------------------ mask files -> pixel masks


def load_mask_image(path: Path, index: int) -> Image.Image:
    """The mask file of region ``index`` as a PIL image (read like a style image)."""
    try:
        return load_image(path, label="mask")
    except InputError as exc:
        raise InputError(f"mask of region {index + 1}: {exc}") from None


def check_mask_aspect(image: Image.Image, path: Path, index: int, height: int, width: int) -> None:
    """InputError when the mask's aspect ratio differs from the output's by more than 1%
    (diffusers would stretch it to the output size without a word)."""
    mask_ratio, out_ratio = image.width / image.height, width / height
    if abs(mask_ratio - out_ratio) > MASK_ASPECT_TOLERANCE * out_ratio:
        raise InputError(
            f"mask of region {index + 1} ({path}) is {image.width}x{image.height} (aspect {mask_ratio:.3f}) but the "
            f"output is {width}x{height} (aspect {out_ratio:.3f}); it would be stretched. Make the mask "
            f"{width}x{height} (or any size of that aspect ratio), or change --width/--height"
        )


def preprocess_mask(image: Image.Image, height: int, width: int) -> np.ndarray:
    """diffusers' ``IPAdapterMaskProcessor.preprocess`` for one PIL mask: float32 [H, W] of 0 / 1."""
    resized = image.resize((width, height), resample=Image.Resampling.LANCZOS, reducing_gap=None)
    array = np.array(resized.convert("L")).astype(np.float32) / 255.0
    array[array < 0.5] = 0
    array[array >= 0.5] = 1
    return array


@dataclasses.dataclass(frozen=True)
class RegionMasks:
    """The pixel masks of a regional request: ``pixels`` float32 [R, H, W] of 0 / 1 (diffusers'
    preprocessed masks, ``[1, R, H, W]`` for its ``ip_adapter_masks``); ``coverage`` the fraction of
    output pixels each mask covers."""

    pixels: np.ndarray

    @property
    def coverage(self) -> tuple[float, ...]:
        return tuple(float(m.mean()) for m in self.pixels)

    @property
    def overlap(self) -> float:
        """Fraction of output pixels covered by more than one region."""
        return float((self.pixels.sum(axis=0) > 1).mean())

    @property
    def uncovered(self) -> float:
        """Fraction of output pixels covered by no region (text conditioning only there)."""
        return float((self.pixels.sum(axis=0) == 0).mean())


def load_region_masks(regions, height: int, width: int) -> RegionMasks:
    """Read, check and preprocess every region's mask at the output size (before any engine work).

    InputError for an unreadable file, another aspect ratio, or a mask with no white pixel at the
    output size (that region would condition nothing).
    """
    pixels = []
    for index, region in enumerate(regions):
        image = load_mask_image(region.mask, index)
        check_mask_aspect(image, region.mask, index, height, width)
        mask = preprocess_mask(image, height, width)
        if not mask.any():
            raise InputError(
                f"mask of region {index + 1} ({region.mask}) has no white pixel at {width}x{height} (after "
                "grayscale conversion and the 0.5 threshold): that style would condition nothing. Paint its region "
                "white (>= 50% gray) or drop the region"
            )
        pixels.append(mask)
    return RegionMasks(np.stack(pixels))


# ------------------------------------------------------------------ pixel masks -> per-layer masks


def diffusers_mask_grid(queries: int, height: int, width: int) -> tuple[int, int]:
    """(mask_h, mask_w) of ``IPAdapterMaskProcessor.downsample`` for a layer of ``queries`` queries
    and a pixel mask of ``height`` x ``width`` (Python float arithmetic, as diffusers)."""
    ratio = width / height
    mask_h = int(math.sqrt(queries / ratio))
    if mask_h == 0:
        raise InputError(
            f"regional masks are undefined at {width}x{height}: a {queries}-query attention layer gets a 0-row mask "
            "grid (diffusers fails there too); use a less extreme aspect ratio"
        )
    mask_h = mask_h + int(queries % mask_h != 0)
    return mask_h, queries // mask_h


def _fma(a, b, c) -> np.ndarray:
    """float32 fused multiply-add ``round(a * b + c)``, correctly rounded (float64 with round-to-odd)."""
    a, b, c = (np.asarray(v, dtype=np.float64) for v in (a, b, c))
    product = a * b  # exact: two float32 significands fit in a float64 one
    total = product + c
    back = total - product
    error = (product - (total - back)) + (c - back)  # TwoSum: the exact rounding error of total
    even = (total.view(np.int64) & 1) == 0
    odd = np.nextafter(total, np.where(error > 0, np.inf, -np.inf))
    total = np.where((error != 0) & even, odd, total)  # round to odd: no double rounding below
    return total.astype(np.float32)


_A = np.float32(-0.75)


def _cubic_near(x):  # |x| <= 1: ((A + 2) x - (A + 3)) x x + 1, first step fused (torch's x86-64 build)
    return _fma(_A + np.float32(2), x, -(_A + np.float32(3))) * x * x + np.float32(1)


def _cubic_far(x):  # 1 <= |x| <= 2: ((A x - 5 A) x + 8 A) x - 4 A, first two steps fused
    t = _fma(_A, x, -(np.float32(5) * _A))
    t = _fma(t, x, np.float32(8) * _A)
    return t * x - np.float32(4) * _A


def _cubic_axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices int64 [out, 4] (clamped) and weights float32 [out, 4] of one axis."""
    scale = np.float32(in_size) / np.float32(out_size)
    centre = np.arange(out_size).astype(np.float32) + np.float32(0.5)
    source = _fma(scale, centre, np.float32(-0.5))  # half-pixel centres (align_corners=False)
    index = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    t = np.minimum(np.maximum(source - index.astype(np.float32), np.float32(0)), np.float32(1))
    one = np.float32(1)
    weights = np.stack([_cubic_far(t + one), _cubic_near(t), _cubic_near(one - t), _cubic_far((one - t) + one)], 1)
    taps = np.clip(index[:, None] + np.arange(-1, 3)[None, :], 0, in_size - 1)
    return taps, weights.astype(np.float32)


def _weighted_sum(values: list[np.ndarray], weights: list[np.ndarray]) -> np.ndarray:
    out = _fma(values[0], weights[0], values[1] * weights[1])
    for v, w in zip(values[2:], weights[2:]):
        out = _fma(v, w, out)
    return out


def bicubic_resize(mask: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """torch's ``F.interpolate(mask[None, None], (out_h, out_w), mode="bicubic")[0, 0]`` for a float32
    [H, W] array, in numpy (see the module docstring for how exact)."""
    mask = np.asarray(mask, dtype=np.float32)
    rows, row_w = _cubic_axis(mask.shape[0], out_h)
    cols, col_w = _cubic_axis(mask.shape[1], out_w)
    lines = []
    for j in range(4):  # the inner (width) interpolation of the four source rows of each output row
        source = mask[rows[:, j]]  # [out_h, W]
        lines.append(_weighted_sum([source[:, cols[:, i]] for i in range(4)], [col_w[None, :, i] for i in range(4)]))
    return _weighted_sum(lines, [row_w[:, j, None] for j in range(4)])


def downsample_mask(mask: np.ndarray, queries: int) -> np.ndarray:
    """diffusers' ``IPAdapterMaskProcessor.downsample`` of one pixel mask float32 [H, W] for a layer
    with ``queries`` queries: float32 [queries] in query order (soft values, not re-binarised)."""
    mask_h, mask_w = diffusers_mask_grid(queries, *mask.shape)
    flat = bicubic_resize(mask, mask_h, mask_w).reshape(-1)
    if flat.size < queries:
        flat = np.concatenate([flat, np.zeros(queries - flat.size, np.float32)])
    return flat[:queries]


def region_mask_inputs(masks: RegionMasks, strides, latent_h: int, latent_w: int) -> dict[str, np.ndarray]:
    """The UNet's ``region_mask_<stride>`` inputs, float32 [R, ceil(h / s), ceil(w / s)] for every
    stride s of the cross-attention layers; warns (:class:`RegionMaskWarning`) where diffusers' mask
    grid is not the layer's grid."""
    height, width = masks.pixels.shape[1:]
    out = {}
    for stride in sorted(set(strides)):
        gh, gw = grid_size(latent_h, stride), grid_size(latent_w, stride)
        grid = diffusers_mask_grid(gh * gw, height, width)
        if grid != (gh, gw):
            warnings.warn(
                f"at {width}x{height} the {gh}x{gw} attention layers get diffusers' {grid[0]}x{grid[1]} mask grid "
                f"(flattened over their {gh * gw} queries: the regions land misplaced there, as in diffusers); "
                f"sizes that are multiples of {8 * max(strides)} px keep every grid aligned", RegionMaskWarning,
                stacklevel=2)
        out[mask_input_name(stride)] = np.stack(
            [downsample_mask(m, gh * gw).reshape(gh, gw) for m in masks.pixels]).astype(np.float32)
    return out


def full_mask_inputs(strides, latent_h: int, latent_w: int, regions: int = 1) -> dict[str, np.ndarray]:
    """All-ones ``region_mask_<stride>`` inputs: no region restriction (the non-regional path)."""
    return {mask_input_name(s): np.ones((regions, grid_size(latent_h, s), grid_size(latent_w, s)), np.float32)
            for s in sorted(set(strides))}
