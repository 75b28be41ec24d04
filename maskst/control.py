"""Control images for image-driven style transfer (ControlNet): loading, sizing, preprocessing (numpy, PIL, cv2).

No torch here: this runs on the runtime's hot path. The policies, each shared by maskst and its
reference so that both see the same control image:

* **Loading**: as style images (:func:`maskst.images.load_image`): EXIF rotation applied, RGBA / LA /
  palette transparency composited on white, 16-bit scaled, grayscale and CMYK converted to RGB (3 equal
  channels for grayscale, as diffusers' ``convert_to_rgb`` gives). Unreadable, empty, truncated files:
  :class:`~maskst.errors.InputError` naming the control image. diffusers itself would drop the alpha
  channel of an RGBA image and keep whatever colour lies under transparent pixels; maskst composites
  first and hands the reference the composited RGB image.
* **Size**: the output takes the control image's size when the request gives no height / width
  (each side rounded down to a multiple of 8, as diffusers' ``get_default_height_width``); a control
  image of another size than the output is resized to it with PIL's Lanczos filter, aspect ratio not
  kept (diffusers' ``VaeImageProcessor`` ``resize_mode="default"``), with a :class:`ControlAspectWarning`
  when the aspect ratio differs by more than 1%.
* **Preprocessing** (after that resize, at the output resolution):
  ``none``: the image itself (e.g. an edge map or line drawing made elsewhere);
  ``canny``: ``cv2.Canny(rgb, 100, 200)`` stacked to 3 channels (controlnet_aux's ``CannyDetector``);
  ``lineart``: the informative-drawings annotator (``sk_model.pth``, an exported graph, run by the
  runtime) quantised as StyleShot does, ``uint8(clip(line * 255))``: dark lines on white, the seed's
  image-driven setting; ``lineart-inverted``: ``255 -`` that, white lines on black, what
  controlnet_aux feeds lllyasviel's ``control_v11p_sd15_lineart``.
* **Tensor**: uint8 [H, W, 3] -> float32 [1, 3, H, W] = value / 255 in [0, 1], not normalised
  (diffusers' ``pil_to_numpy``); the pipeline repeats it for each image and both guidance halves.
"""

from __future__ import annotations

import enum
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from maskst.errors import InputError
from maskst.images import load_image

CANNY_LOW, CANNY_HIGH = 100, 200  # controlnet_aux CannyDetector defaults
ASPECT_TOLERANCE = 0.01


class ControlPreprocess(str, enum.Enum):
    """What turns a control image into the ControlNet's conditioning image."""

    NONE = "none"
    CANNY = "canny"
    LINEART = "lineart"
    LINEART_INVERTED = "lineart-inverted"

    @property
    def needs_lineart(self) -> bool:
        return self in (ControlPreprocess.LINEART, ControlPreprocess.LINEART_INVERTED)


class ControlAspectWarning(UserWarning):
    """The control image is stretched to an output of another aspect ratio."""


def load_control_image(path: str | Path) -> Image.Image:
    """The control image file as an 8-bit RGB PIL image (the style-image loading policy); InputError
    naming the control image for a missing, empty, unreadable, truncated or oversized file."""
    try:
        return load_image(path)
    except InputError as exc:
        message = str(exc)
        if message.startswith("style image "):  # load_image names what it loads a style image
            message = "control image " + message[len("style image "):]
        raise InputError(message) from None


def default_size(image: Image.Image, path: str | Path, multiple: int = 8) -> tuple[int, int]:
    """(height, width) of an output sized after a control image: each side rounded down to ``multiple``."""
    height, width = (side - side % multiple for side in (image.height, image.width))
    if height <= 0 or width <= 0:
        raise InputError(f"control image {path} is {image.width}x{image.height} pixels; the output size comes from it "
                         f"when --height/--width are not given and must be at least {multiple}x{multiple}: pass "
                         "--height and --width, or a larger control image")
    return height, width


def resize_control(image: Image.Image, height: int, width: int, name: str = "control image") -> np.ndarray:
    """uint8 [height, width, 3]: the RGB image resized as diffusers' VaeImageProcessor does (Lanczos,
    no aspect ratio kept; the same size is an exact copy). Warns when the aspect ratio changes."""
    if image.mode != "RGB":
        raise InputError(f"{name}: mode {image.mode!r}; load it with load_control_image (RGB)")
    if (image.width, image.height) != (width, height):
        have, want = image.width / image.height, width / height
        if abs(have / want - 1) > ASPECT_TOLERANCE:
            warnings.warn(f"{name} is {image.width}x{image.height} (aspect {have:.3f}); it is stretched to the output's "
                          f"{width}x{height} (aspect {want:.3f}). Crop it first, or pass a matching --height/--width",
                          ControlAspectWarning, stacklevel=2)
        image = image.resize((width, height), resample=Image.Resampling.LANCZOS, reducing_gap=None)
    return np.asarray(image, dtype=np.uint8).copy()


def canny(rgb: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [H, W, 3]: ``cv2.Canny(rgb, 100, 200)`` (edges 255 on 0) on 3 channels."""
    import cv2

    edges = cv2.Canny(np.ascontiguousarray(rgb), CANNY_LOW, CANNY_HIGH)
    return np.repeat(edges[:, :, None], 3, axis=2)


def lineart_input(rgb: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [1, 3, H, W] = rgb / 255: the lineart graph's ``image`` input."""
    return (rgb.astype(np.float32) / np.float32(255.0)).transpose(2, 0, 1)[None].copy()


def lineart_image(line: np.ndarray, invert: bool = False) -> np.ndarray:
    """The lineart graph's ``line`` float32 [1, 1, H, W] -> uint8 [H, W, 3], quantised as StyleShot does
    (``uint8(clip(line * 255, 0, 255))``, truncating); ``invert``: 255 minus that (controlnet_aux)."""
    gray = np.clip(line[0, 0] * np.float32(255.0), 0, 255).astype(np.uint8)
    if invert:
        gray = 255 - gray
    return np.repeat(gray[:, :, None], 3, axis=2)


def control_tensor(rgb: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [1, 3, H, W] in [0, 1] (value / 255, as diffusers' ``pil_to_numpy``)."""
    return (rgb.astype(np.float32) / np.float32(255.0)).transpose(2, 0, 1)[None].copy()
