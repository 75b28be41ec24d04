"""Style-image loading and CLIP image preprocessing (NumPy + PIL only).

This module is on the runtime hot path, so it must not import torch or transformers.

* :func:`load_image` turns any image file a user is likely to pass (RGB, RGBA, palette with
  transparency, grayscale, 16-bit grayscale, 1-bit, CMYK, EXIF-rotated JPEG) into an 8-bit
  ``"RGB"`` PIL image, and refuses everything else with an :class:`~maskst.errors.InputError`
  that names the file, says what is wrong and what to do.
* :func:`clip_preprocess` reproduces transformers' slow (PIL/NumPy) ``CLIPImageProcessor``
  step by step -- the preprocessing the h94 IP-Adapter ``image_encoder`` was trained with and
  that diffusers' ``feature_extractor`` applies -- producing ``float32 [N, 3, H, W]`` pixel values.
* :func:`preprocessor_params_from_config` turns a ``preprocessor_config.json`` dict (old int
  forms or new dict forms) into keyword arguments for :func:`clip_preprocess`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from maskst.errors import CheckpointError, InputError

__all__ = [
    "BACKGROUND",
    "CLIP_MEAN",
    "CLIP_STD",
    "RESCALE_FACTOR",
    "clip_preprocess",
    "load_image",
    "preprocessor_params_from_config",
    "to_rgb",
]

#: Colour that transparent pixels are composited over. White, like transformers'
#: ``convert_to_rgb``, so an RGBA image gives the same CLIP embedding whether it goes through
#: :func:`load_image` or straight into ``CLIPImageProcessor``.
BACKGROUND: tuple[int, int, int] = (255, 255, 255)

#: OpenAI CLIP normalisation constants (transformers' ``OPENAI_CLIP_MEAN`` / ``OPENAI_CLIP_STD``).
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

#: The only rescale factor :func:`clip_preprocess` applies (transformers' default, ``1 / 255``).
RESCALE_FACTOR: float = 1 / 255

# 16-bit single-channel modes. "I" (int32) is what older Pillow versions and some TIFF writers
# produce for 16-bit grayscale, so it is treated as 16-bit too (values clipped to [0, 65535]).
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_image(path: str | os.PathLike[str], label: str = "style image") -> Image.Image:
    """Load a style image from ``path`` as a fully decoded 8-bit ``"RGB"`` PIL image.

    Behaviour:

    * EXIF orientation is applied (``ImageOps.exif_transpose``), so a portrait photo whose
      pixels are stored landscape comes back portrait (width and height swapped).
    * Transparency (RGBA, LA, RGBa, PA, palette or grayscale/RGB with a ``transparency`` entry)
      is composited over :data:`BACKGROUND` (white).
    * 16-bit grayscale (``I;16``, ``I;16B``, ``I;16L``, ``I``) is *scaled* from the full 16-bit
      range to 8 bits (``round(v * 255 / 65535)``: 65535 -> 255, 32768 -> 128) instead of being
      clipped at 255 as ``Image.convert`` would do, which would turn most such images white.
    * Everything else (``1``, ``L``, ``CMYK``, ``YCbCr``, ``F`` ...) goes through
      ``Image.convert("RGB")``. CMYK uses PIL's plain formula; embedded ICC profiles are ignored.

    The whole file is decoded before returning (``Image.load()``), so truncated files fail here
    rather than later. ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is not touched.

    Args:
        path: image file path.
        label: what the file is, as error messages name it (``"mask"`` for a region mask).

    Returns:
        A new ``PIL.Image.Image`` in mode ``"RGB"`` (uint8, 3 channels), not tied to any open file.

    Raises:
        InputError: the path is missing, a directory, unreadable, empty, not an image, truncated
            or corrupt, above ``PIL.Image.MAX_IMAGE_PIXELS`` (decompression-bomb guard), or in a
            mode that cannot be converted to RGB. The message names the path.
    """
    if not os.fspath(path):  # Path("") is "." (the current folder): name the real mistake
        raise InputError(f"{label} '': empty path; pass the path of an image file.")
    p = Path(path)
    _check_path(p, label)
    # only a style image is resized to CLIP's input: other images get no such remark
    clip_note = "; it is resized to 224 px for CLIP anyway" if label == "style image" else ""
    try:
        # Turn PIL's DecompressionBombWarning (pixel count between 1x and 2x MAX_IMAGE_PIXELS)
        # into an exception for this call only; above 2x PIL raises DecompressionBombError itself.
        # The global limit itself is never changed.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                # Belt and braces: warnings filters are process-global and not thread-safe, so
                # check the declared size too (the header is read, nothing decoded yet).
                _check_pixel_count(p, im.size, label, clip_note)
                im.load()  # force the full decode now so truncation/corruption surfaces here
                im = _exif_transpose(im)
            return to_rgb(im, _name=f"{label} {p}")
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        limit = Image.MAX_IMAGE_PIXELS
        raise InputError(
            f"{label} {p}: too many pixels ({exc}); the limit of {limit} pixels "
            f"(PIL.Image.MAX_IMAGE_PIXELS) guards against decompression bombs. Downscale the "
            f"image (e.g. to 2048 px on the long side{clip_note})."
        ) from None
    except Image.UnidentifiedImageError:
        raise InputError(
            f"{label} {p}: not an image file PIL can read (unknown or unsupported format). "
            f"Pass a PNG, JPEG, WebP, BMP or TIFF image."
        ) from None
    except PermissionError:
        raise InputError(f"{label} {p}: permission denied; make the file readable.") from None
    except MemoryError:
        raise InputError(
            f"{label} {p}: not enough memory to decode it; downscale the image."
        ) from None
    except Exception as exc:  # noqa: BLE001 - PIL plugins raise OSError, SyntaxError, ValueError,
        # struct.error, EOFError, IndexError ... for broken files; none of them may leak as a traceback.
        raise InputError(
            f"{label} {p}: truncated or corrupt ({type(exc).__name__}: {exc}). "
            f"Re-download or re-export the image."
        ) from None


def _check_path(p: Path, label: str = "style image") -> None:
    """Refuse paths that cannot be an image file, before PIL gets to see them."""
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InputError(f"{label} {p}: no such file; check the path.") from None
    except PermissionError:
        raise InputError(f"{label} {p}: permission denied; make the file readable.") from None
    except OSError as exc:
        raise InputError(f"{label} {p}: cannot be accessed ({exc.strerror or exc}).") from None
    if p.is_dir():
        raise InputError(f"{label} {p}: is a directory; pass the path of an image file inside it.")
    if st.st_size == 0:
        raise InputError(
            f"{label} {p}: the file is empty (0 bytes); re-download or re-export the image."
        )


def _check_pixel_count(p: Path, size: tuple[int, int], label: str = "style image", clip_note: str = "") -> None:
    limit = Image.MAX_IMAGE_PIXELS
    w, h = size
    if limit is not None and w * h > limit:
        raise InputError(
            f"{label} {p}: {w}x{h} = {w * h} pixels is above the limit of {limit} pixels "
            f"(PIL.Image.MAX_IMAGE_PIXELS), which guards against decompression bombs. Downscale "
            f"the image (e.g. to 2048 px on the long side{clip_note})."
        )


def _exif_transpose(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; return a new image (never the file-backed one)."""
    try:
        out = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001
        # A malformed EXIF block says nothing reliable about orientation; show the pixels as
        # stored, which is what browsers and viewers that fail to parse EXIF do as well.
        return im.copy()
    # Older Pillow returned None when there was nothing to do; newer returns a copy.
    return im.copy() if out is None else out


def to_rgb(image: Image.Image, *, _name: str = "image") -> Image.Image:
    """Convert a decoded PIL image of any supported mode to 8-bit ``"RGB"`` (see :func:`load_image`).

    Args:
        image: a PIL image (any mode).

    Returns:
        A new ``"RGB"`` image of the same size (uint8). Transparency is composited over
        :data:`BACKGROUND`; 16-bit grayscale is scaled, not clipped.

    Raises:
        InputError: PIL cannot convert the mode to RGB.
    """
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(image)
    bands = image.getbands()
    has_alpha = "A" in bands or "a" in bands or image.info.get("transparency") is not None
    try:
        if has_alpha:
            # Same recipe as transformers' convert_to_rgb: alpha_composite in RGBA over an opaque
            # background, so an RGBA input gives identical pixels on both paths.
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise InputError(
            f"{_name}: image mode {mode!r} cannot be converted to RGB ({exc}); "
            f"save it as an 8-bit RGB PNG or JPEG."
        ) from None


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit (or int32) grayscale -> 8-bit RGB by scaling 0..65535 onto 0..255."""
    # np.asarray handles the byte order of I;16B (dtype '>u2'); widen before multiplying.
    raw = np.asarray(image).astype(np.int64)
    clipped = np.clip(raw, 0, 65535)
    # Integer round-half-up of v * 255 / 65535 (== v / 257): exact, no float rounding surprises.
    gray = ((clipped * 255 + 32767) // 65535).astype(np.uint8)
    transparency = image.info.get("transparency")
    if isinstance(transparency, int):
        # A 16-bit grayscale PNG with a tRNS chunk: that one raw value is fully transparent.
        alpha = np.where(raw == transparency, 0, 255).astype(np.uint8)
        la = Image.fromarray(np.stack([gray, alpha], axis=-1), mode="LA")
        return to_rgb(la)
    return Image.fromarray(gray, mode="L").convert("RGB")


# --------------------------------------------------------------------------------------------
# CLIP preprocessing
# --------------------------------------------------------------------------------------------


def _as_hw(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        h = w = int(value)
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        h, w = (int(v) for v in value)
    else:
        raise InputError(f"{name}={value!r} must be an int or a (height, width) pair")
    if h <= 0 or w <= 0:
        raise InputError(f"{name}={value!r} must be positive")
    return h, w


def _resize_output_size(width: int, height: int, size: int | Sequence[int]) -> tuple[int, int]:
    """Target ``(height, width)``, exactly as transformers computes it.

    An int ``size`` is the shortest edge (``get_resize_output_image_size`` with
    ``default_to_square=False``): the short side becomes ``size`` and the long side
    ``int(size * long / short)`` -- truncation, not rounding. A pair is an exact ``(h, w)``.
    """
    if not (isinstance(size, (int, np.integer)) and not isinstance(size, bool)):
        return _as_hw(size, "size")
    size = int(size)
    if size <= 0:
        raise InputError(f"size={size} must be positive")
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _center_crop(arr: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    """Center crop an ``[H, W, C]`` array like transformers' ``center_crop`` (zero pad if small)."""
    h, w = arr.shape[:2]
    # Floor division: for an odd surplus the extra row/column is dropped from the bottom/right.
    top = (h - crop_h) // 2
    left = (w - crop_w) // 2
    bottom, right = top + crop_h, left + crop_w
    if top >= 0 and left >= 0 and bottom <= h and right <= w:
        return arr[top:bottom, left:right]
    # Image smaller than the crop along some axis: zero-pad (before rescale/normalise, as
    # transformers does, so padding ends up at -mean/std), with the image centred, ceil'd.
    new_h, new_w = max(crop_h, h), max(crop_w, w)
    padded = np.zeros((new_h, new_w) + arr.shape[2:], dtype=arr.dtype)
    top_pad = math.ceil((new_h - h) / 2)
    left_pad = math.ceil((new_w - w) / 2)
    padded[top_pad : top_pad + h, left_pad : left_pad + w] = arr
    top, bottom, left, right = top + top_pad, bottom + top_pad, left + left_pad, right + left_pad
    return padded[max(0, top) : min(new_h, bottom), max(0, left) : min(new_w, right)]


def clip_preprocess(
    images: Sequence[Image.Image] | Image.Image,
    size: int | Sequence[int] = 224,
    crop_size: int | Sequence[int] = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    resample: int = Image.BICUBIC,
) -> np.ndarray:
    """CLIP image-encoder pixel values, identical to transformers' slow ``CLIPImageProcessor``.

    Per image, in transformers' order (``PilBackend._preprocess``):

    1. convert to RGB (:func:`to_rgb`; a no-op copy for ``"RGB"`` inputs);
    2. resize with PIL ``Image.resize`` and ``resample`` (BICUBIC) on the **uint8** image: an int
       ``size`` makes the shortest edge ``size`` with the long edge ``int(size * long / short)``
       (truncated); a ``(height, width)`` pair resizes to exactly that;
    3. center crop to ``crop_size`` (int -> square, or ``(height, width)``) with
       ``top = (H - crop_h) // 2``, ``left = (W - crop_w) // 2``; zero pad if the image is smaller;
    4. rescale: ``uint8 -> float64 * (1/255) -> float32`` (transformers upcasts to float64 first);
    5. normalise in float32: ``(x - mean) / std`` per channel.

    Args:
        images: PIL images (any size/aspect; non-RGB modes are converted like :func:`load_image`),
            or a single image.
        size: shortest edge after resize (int), or an exact ``(height, width)``.
        crop_size: crop size, int (square) or ``(height, width)``.
        mean, std: per-channel normalisation (3 floats each), RGB order.
        resample: PIL resampling filter (``PIL.Image.Resampling`` or its int value).

    Returns:
        ``np.ndarray`` float32 ``[N, 3, crop_h, crop_w]``, C-contiguous, RGB channel order.

    Raises:
        InputError: empty ``images``, a non-PIL item, or invalid size / crop / mean / std.
    """
    if isinstance(images, Image.Image):
        images = [images]
    images = list(images)
    if not images:
        raise InputError("clip_preprocess needs at least one image; got an empty list")
    crop_h, crop_w = _as_hw(crop_size, "crop_size")
    mean32 = np.asarray(mean, dtype=np.float32).reshape(-1)
    std32 = np.asarray(std, dtype=np.float32).reshape(-1)
    if mean32.shape != (3,) or std32.shape != (3,):
        raise InputError(f"mean and std must have 3 values (RGB); got mean={mean!r}, std={std!r}")
    if not np.all(std32 > 0):
        raise InputError(f"std={std!r} must be positive")

    out = np.empty((len(images), 3, crop_h, crop_w), dtype=np.float32)
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise InputError(
                f"clip_preprocess: images[{i}] is a {type(image).__name__}, not a PIL image"
            )
        # An "RGB" PNG can still carry a tRNS colour key; transformers composites that too.
        plain_rgb = image.mode == "RGB" and image.info.get("transparency") is None
        rgb = image if plain_rgb else to_rgb(image, _name=f"images[{i}]")
        new_h, new_w = _resize_output_size(rgb.width, rgb.height, size)
        resized = rgb.resize((new_w, new_h), resample=resample)  # PIL takes (width, height)
        arr = _center_crop(np.asarray(resized), crop_h, crop_w)  # uint8 [h, w, 3]
        # transformers' rescale: upcast to float64, multiply, downcast to float32. Doing the same
        # (rather than uint8 / 255 in float32) keeps the result bit-identical.
        x = (arr.astype(np.float64) * RESCALE_FACTOR).astype(np.float32)
        # transformers' normalize: float32 mean/std arrays, float32 subtract then divide.
        x = (x - mean32) / std32
        out[i] = x.transpose(2, 0, 1)
    return out


# --------------------------------------------------------------------------------------------
# preprocessor_config.json
# --------------------------------------------------------------------------------------------


def _config_error(key: str, value: Any, why: str) -> CheckpointError:
    return CheckpointError(f"preprocessor_config.json: {key}={value!r} {why}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _height_width(value: Any) -> tuple[int, int] | None:
    """``{"height": h, "width": w}`` or ``[h, w]`` (transformers' height-width order) -> ``(h, w)``."""
    if isinstance(value, Mapping) and set(value) == {"height", "width"}:
        value = (value["height"], value["width"])
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_is_int, value)):
        return (value[0], value[1])
    return None


def preprocessor_params_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for :func:`clip_preprocess` from a ``preprocessor_config.json`` dict.

    Interprets the keys the way transformers' ``CLIPImageProcessor`` does (``get_size_dict``):

    * ``size``: ``224`` (old form; shortest edge because CLIP's ``default_to_square`` is False,
      unless the config sets ``"default_to_square": true``), ``{"shortest_edge": 224}`` -> ``224``;
      ``{"height": h, "width": w}`` or ``[h, w]`` -> exact ``(h, w)``. Missing -> ``224``.
    * ``crop_size``: ``224`` (old form, square), ``{"height": h, "width": w}`` or ``[h, w]`` ->
      ``(h, w)``. Missing -> ``(224, 224)``.
    * ``image_mean`` / ``image_std``: 3 floats (or one, broadcast). Missing -> CLIP's.
    * ``resample``: PIL filter int (3 = BICUBIC). Missing -> BICUBIC.

    Args:
        config: the parsed JSON object.

    Returns:
        ``{"size": int | (h, w), "crop_size": (h, w), "mean": (3 floats), "std": (3 floats),
        "resample": PIL.Image.Resampling}`` -- pass as ``clip_preprocess(images, **params)``.

    Raises:
        CheckpointError: a value transformers would interpret differently from what
            :func:`clip_preprocess` does (``do_resize``/``do_center_crop``/``do_rescale``/
            ``do_normalize`` false, a rescale factor other than 1/255, a ``longest_edge`` size,
            malformed sizes, means or filters). The message names the key and value.
    """
    if not isinstance(config, Mapping):
        raise CheckpointError(
            f"preprocessor_config.json must hold a JSON object; got {type(config).__name__}"
        )
    # clip_preprocess always runs every step; a config that switches one off would silently
    # give different embeddings, so refuse it instead.
    for flag in ("do_resize", "do_center_crop", "do_rescale", "do_normalize"):
        if flag in config and config[flag] is not None and not config[flag]:
            raise _config_error(
                flag, config[flag], "is not supported: maskst's CLIP preprocessing always "
                "resizes, center-crops, rescales by 1/255 and normalises"
            )
    factor = config.get("rescale_factor")
    if factor is not None and not (
        isinstance(factor, (int, float)) and math.isclose(factor, RESCALE_FACTOR, rel_tol=1e-9)
    ):
        raise _config_error("rescale_factor", factor, "is not supported (only 1/255)")

    default_to_square = bool(config.get("default_to_square") or False)
    size_value = config.get("size")
    size: int | tuple[int, int]
    if size_value is None:
        size = 224
    elif _is_int(size_value):
        size = (size_value, size_value) if default_to_square else size_value
    elif isinstance(size_value, Mapping) and set(size_value) == {"shortest_edge"}:
        if not _is_int(size_value["shortest_edge"]):
            raise _config_error("size", size_value, "has a non-positive or non-int shortest_edge")
        size = size_value["shortest_edge"]
    elif (pair := _height_width(size_value)) is not None:
        size = pair
    else:
        raise _config_error(
            "size", size_value,
            'is not supported; expected an int, {"shortest_edge": n} or {"height": h, "width": w}',
        )

    crop_value = config.get("crop_size")
    if crop_value is None:
        crop = (224, 224)
    elif _is_int(crop_value):
        crop = (crop_value, crop_value)
    elif (pair := _height_width(crop_value)) is not None:
        crop = pair
    else:
        raise _config_error(
            "crop_size", crop_value, 'is not supported; expected an int or {"height": h, "width": w}'
        )

    def _triple(key: str, default: tuple[float, float, float]) -> tuple[float, float, float]:
        value = config.get(key)
        if value is None:
            return default
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (float(value),) * 3
        if (
            isinstance(value, (list, tuple))
            and len(value) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            return tuple(float(v) for v in value)  # type: ignore[return-value]
        raise _config_error(key, value, "must be 3 numbers (RGB)")

    mean = _triple("image_mean", CLIP_MEAN)
    std = _triple("image_std", CLIP_STD)
    if not all(s > 0 for s in std):
        raise _config_error("image_std", list(std), "must be positive")

    resample_value = config.get("resample")
    if resample_value is None:
        resample = Image.Resampling.BICUBIC
    else:
        try:
            if isinstance(resample_value, bool):
                raise ValueError
            resample = Image.Resampling(resample_value)
        except (ValueError, TypeError):
            raise _config_error(
                "resample", resample_value, "is not a PIL resampling filter (0-5; 3 = BICUBIC)"
            ) from None

    return {"size": size, "crop_size": crop, "mean": mean, "std": std, "resample": resample}
