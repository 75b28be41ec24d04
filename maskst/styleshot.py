"""StyleShot's style input and its three-way conditioning, in numpy (no torch: the runtime's hot path).

StyleShot (open-mmlab/StyleShot) does not encode the style image with CLIP's 224 px preprocessing.
Its style-aware encoder reads patches of a 512 px crop at three scales:

1. **Crop**: the shorter side resized to 512 with PIL's bilinear filter (the longer side to
   ``int(512 * long / short)``), then a centre crop of 512 x 512 with offsets
   ``int(round((W - 512) / 2))`` / ``int(round((H - 512) / 2))`` (Python's round: half to even), as
   torchvision's ``Resize(512, BILINEAR)`` + ``CenterCrop(512)`` do on PIL images; RGB.
2. **Values**: ``x / 255 * 2 - 1`` computed as torchvision's ``ToTensor`` + ``Normalize(0.5, 0.5)``
   do (float32 ``(x / 255 - 0.5) / 0.5``), channels first.
3. **Patches** by recursive quadrant splits (each split in the order top-left, bottom-left, top-right,
   bottom-right, StyleShot's ``crop_4_patches``): of each 256 quadrant's four 128 patches the top-left
   and bottom-right are *high* patches and the other two are split again; of their 64 patches the
   top-left / bottom-right are *middle* patches and the other two are split again into 32 patches, whose
   top-left / bottom-right are *low* patches: high float32 [8, 3, 128, 128], middle [16, 3, 64, 64],
   low [32, 3, 32, 32]. The geometry is fixed; it does not depend on the model.
4. **Shuffle**: each level is reordered by ``randperm`` (high, then middle, then low). StyleShot draws
   the permutations from torch's global RNG; maskst makes them reproducible from the request's seed,
   exactly as ``g = torch.Generator().manual_seed(seed); randperm(8, generator=g); randperm(16,
   generator=g); randperm(32, generator=g)`` would, computed here without torch: torch's CPU generator
   is MT19937 seeded with the seed's low 32 bits (``init_genrand``, the "legacy" seeding numpy's
   ``RandomState`` also uses), and its ``randperm`` for small n is a Fisher-Yates pass that swaps
   position i with ``i + (u32 % (n - i))`` for i = 0..n-2, one 32-bit draw each
   (``tests/test_styleshot.py`` checks this against torch for many seeds).

The style-aware encoder (an exported graph) turns the three levels into three embeddings
``e_k`` float32 [3, P]. :func:`condition_style_embeds` is the numpy definition of the three-way
conditioning that the exported ``image_conditioner`` of StyleShot engines fuses with the three
projections:

* ``maskst``: each ``e_k`` masked on its own against the content embedding ``e_c`` (the method's
  definition: ``p_k = e_k/|e_k| * e_c/|e_c|``, the upper 2-means cluster or ``p_k > quantile(p_k,
  theta)`` zeroed). The seed's StyleShot code overwrites its content vector inside its loop over the
  three embeddings, so its embeddings 2 and 3 are masked against the previous masked result; maskst
  follows the definition instead (docs/styleshot.md). The seed divides by ``1e-6 + |e_c|``; the mask
  does not depend on that positive factor.
* ``instantstyle``: ``e_k - content_scale * (|e_k| / |e_c|) * e_c`` (the seed's StyleShot code, with
  maskst's ``content_scale``, 1 by default, as a factor);
* ``styleshot``: ``e_k`` unchanged (StyleShot itself).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from maskst.contract.wire import Method, parse_enum
from maskst.errors import InputError
from maskst.masking import MaskMode, as_batch, condition_embeds

CROP = 512  # side of the square style crop
LEVELS = (("high", 8, 128), ("middle", 16, 64), ("low", 32, 32))  # (name, patches, side)
PATCH_INPUTS = tuple(f"{name}_patches" for name, _, _ in LEVELS)  # the style_encoder graph's inputs
STYLE_TOKENS = 1 + 8 + 1 + 16 + 1 + 32  # [cls0, high x8, cls1, middle x16, cls2, low x32]
CLASS_TOKENS = (0, 9, 26)  # positions of the three class tokens: the three style embeddings
UNSHUFFLE = 8  # PixelUnshuffle factor of the style-aware encoder's patch CNNs
TOKENS_PER_EMBEDDING = 2  # each style embedding projects to 2 tokens: 6 style tokens

_MT_N, _MT_M = 624, 397


def style_crop(image: Image.Image) -> Image.Image:
    """The 512 x 512 RGB style crop of a PIL image (StyleShot's ``Resize(512)`` + ``CenterCrop(512)``).

    Args:
        image: PIL image (any size; converted to RGB first: maskst's loaders already composite
            transparency on white).

    Returns:
        PIL RGB image, 512 x 512.
    """
    image = image.convert("RGB") if image.mode != "RGB" else image
    width, height = image.size
    if min(width, height) < 1:
        raise InputError(f"style image of size {width}x{height} is empty")
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(CROP * long / short)
    size = (CROP, new_long) if width <= height else (new_long, CROP)  # (width, height)
    if size != (width, height):
        image = image.resize(size, Image.BILINEAR)
    top = int(round((size[1] - CROP) / 2.0))
    left = int(round((size[0] - CROP) / 2.0))
    return image.crop((left, top, left + CROP, top + CROP))


def _quadrants(y: int, x: int, size: int) -> tuple[tuple[int, int], ...]:
    """Top-left corners of the 4 quadrants of a square at (y, x): TL, BL, TR, BR."""
    half = size // 2
    return ((y, x), (y + half, x), (y, x + half), (y + half, x + half))


def patch_origins() -> dict[str, list[tuple[int, int]]]:
    """{level: [(y, x) of each patch's top-left corner, in StyleShot's order]} (before the shuffle)."""
    out: dict[str, list[tuple[int, int]]] = {"high": [], "middle": [], "low": []}
    for q256 in _quadrants(0, 0, CROP):
        q128 = _quadrants(*q256, CROP // 2)
        out["high"] += [q128[0], q128[3]]
        for c128 in (q128[1], q128[2]):
            q64 = _quadrants(*c128, CROP // 4)
            out["middle"] += [q64[0], q64[3]]
            for c64 in (q64[1], q64[2]):
                q32 = _quadrants(*c64, CROP // 8)
                out["low"] += [q32[0], q32[3]]
    return out


def crop_values(crop: Image.Image) -> np.ndarray:
    """float32 [3, 512, 512]: ``(x / 255 - 0.5) / 0.5`` of the RGB crop (torchvision ToTensor + Normalize)."""
    rgb = np.asarray(crop, dtype=np.uint8)
    if rgb.shape != (CROP, CROP, 3):
        raise InputError(f"style crop has shape {list(rgb.shape)}; expected [{CROP}, {CROP}, 3]")
    x = rgb.astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(0.5)) / np.float32(0.5)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def unshuffled_patches(image: Image.Image) -> dict[str, np.ndarray]:
    """{"high": float32 [8, 3, 128, 128], "middle": [16, 3, 64, 64], "low": [32, 3, 32, 32]} in StyleShot's
    patch order, before the shuffle."""
    values = crop_values(style_crop(image))
    origins = patch_origins()
    return {name: np.stack([values[:, y:y + side, x:x + side] for y, x in origins[name]])
            for name, _, side in LEVELS}


def mt19937_uint32(seed: int, count: int) -> list[int]:
    """The first ``count`` 32-bit outputs of MT19937 seeded as torch's CPU generator is by
    ``manual_seed(seed)``: ``init_genrand(seed & 0xffffffff)``."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise InputError(f"shuffle seed {seed!r} must be a non-negative integer")
    state = [seed & 0xFFFFFFFF]
    for j in range(1, _MT_N):
        prev = state[-1]
        state.append((1812433253 * (prev ^ (prev >> 30)) + j) & 0xFFFFFFFF)
    out, index = [], _MT_N
    for _ in range(count):
        if index >= _MT_N:
            for k in range(_MT_N):
                y = (state[k] & 0x80000000) | (state[(k + 1) % _MT_N] & 0x7FFFFFFF)
                state[k] = state[(k + _MT_M) % _MT_N] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
            index = 0
        y = state[index]
        index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        y ^= y >> 18
        out.append(y)
    return out


def shuffle_permutations(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int64 [8], [16], [32]): ``randperm(8)``, ``randperm(16)``, ``randperm(32)`` of one
    ``torch.Generator().manual_seed(seed)``, in that order."""
    sizes = [count for _, count, _ in LEVELS]
    draws = iter(mt19937_uint32(seed, sum(n - 1 for n in sizes)))
    perms = []
    for n in sizes:
        perm = list(range(n))
        for i in range(n - 1):
            z = next(draws) % (n - i)
            perm[i], perm[i + z] = perm[i + z], perm[i]
        perms.append(np.asarray(perm, dtype=np.int64))
    return tuple(perms)


def style_patches(image: Image.Image, seed: int) -> dict[str, np.ndarray]:
    """The style_encoder graph's inputs of one style image, shuffled by ``seed``: {"high_patches":
    float32 [1, 8, 3, 128, 128], "middle_patches": [1, 16, 3, 64, 64], "low_patches": [1, 32, 3, 32, 32]}."""
    levels = unshuffled_patches(image)
    return {key: np.ascontiguousarray(levels[name][perm])[None]
            for key, (name, _, _), perm in zip(PATCH_INPUTS, LEVELS, shuffle_permutations(seed))}


def condition_style_embeds(style_embeds, content_embeds=None, method: str | Method = "maskst",
                           mode: str | MaskMode = "kmeans", theta: float = 0.7,
                           content_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """StyleShot's three embeddings conditioned by one method (numpy definition of the fused graph).

    Args:
        style_embeds: float [3, P], the style-aware encoder's embeddings of one style image.
        content_embeds: float [P], the content text's ``text_embeds`` (None for the plain methods).
        method: ``styleshot`` / ``ip-adapter`` (unchanged), ``maskst`` (each embedding masked on its own),
            ``instantstyle`` (``e_k - content_scale * |e_k| / |e_c| * e_c``).
        mode, theta: the mask selection (:func:`maskst.masking.content_mask`).

    Returns:
        (e_hat float32 [3, P], mask bool [3, P]; all False unless ``maskst``).
    """
    method = parse_enum(Method, method, "method")
    e, _ = as_batch(style_embeds, "style_embeds")
    if e.shape[0] != len(CLASS_TOKENS):
        raise InputError(f"style_embeds has {e.shape[0]} rows; StyleShot gives {len(CLASS_TOKENS)}")
    if method.is_plain:
        return e.astype(np.float32), np.zeros(e.shape, dtype=bool)
    if content_embeds is None:
        raise InputError(f"method {method.value!r} needs content_embeds (the content text's embedding)")
    e_c, _ = as_batch(content_embeds, "content_embeds")
    if e_c.shape != (1, e.shape[1]):
        raise InputError(f"content_embeds has shape {list(e_c.shape)}; expected [1, {e.shape[1]}]")
    if method is Method.INSTANTSTYLE:
        unit_c = e_c / np.linalg.norm(e_c) if np.any(e_c) else e_c  # |e_k| / |e_c| * e_c = |e_k| * unit(e_c)
        e_hat = e - float(content_scale) * np.linalg.norm(e, axis=1, keepdims=True) * unit_c
        return e_hat.astype(np.float32), np.zeros(e.shape, dtype=bool)
    rows = [condition_embeds(e[k], e_c[0], method=Method.MASKST, mode=mode, theta=theta) for k in range(e.shape[0])]
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])
