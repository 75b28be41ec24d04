"""The MaskST masking step and the comparison methods, in numpy (DESIGN section 1).

``p = (e_i / ||e_i||) * (e_c / ||e_c||)`` element-wise; the mask M marks the elements of the image
embedding tied to the content text; the conditioned embedding is ``e_i * (1 - M)``.

Degenerate inputs have a defined result, never NaN:

- a zero image or content vector makes p all zero, hence constant: nothing is masked;
- a constant p (no two distinct values) has no 2-means split: nothing is masked;
- in both cases :func:`content_mask` emits a :class:`DegenerateMaskWarning`;
- non-finite inputs (NaN / inf) raise :class:`maskst.errors.InputError`.

The exported ``image_conditioner`` graph (``maskst/export/image_conditioner.py``) implements the
same rules; ``tests/test_masking.py`` and the export parity check hold the two together.
"""

from __future__ import annotations

import warnings

import numpy as np

from maskst.contract.wire import MaskMode, Method, parse_enum  # noqa: F401 (re-exported: the method's vocabulary)
from maskst.errors import InputError


class DegenerateMaskWarning(UserWarning):
    """The product vector has no structure to split (zero or constant): nothing was masked."""


def as_batch(x, name: str) -> tuple[np.ndarray, bool]:
    arr = np.asarray(x)
    if arr.ndim not in (1, 2) or arr.shape[-1] == 0:
        raise InputError(f"{name} must have shape [D] or [N, D]; got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name} must be numeric; got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise InputError(
            f"{name} contains NaN or infinity; the encoder that produced it failed "
            "(check the input image/text and run the encoder in fp32)"
        )
    return np.atleast_2d(arr.astype(np.float64)), arr.ndim == 1


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; zero rows stay zero (no division by zero)."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def content_product(image_embeds, content_embeds) -> np.ndarray:
    """p = normalised image embedding times normalised content embedding, float64 [N, D] or [D]."""
    e_i, single = as_batch(image_embeds, "image_embeds")
    e_c, _ = as_batch(content_embeds, "content_embeds")
    e_i, e_c = _broadcast_pair(e_i, e_c)
    p = _unit(e_i) * _unit(e_c)
    return p[0] if single else p


def _broadcast_pair(e_i: np.ndarray, e_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if e_i.shape[-1] != e_c.shape[-1]:
        raise InputError(
            f"image_embeds has {e_i.shape[-1]} elements but content_embeds has {e_c.shape[-1]}: "
            "the content encoder must be the text tower of the same CLIP as the image encoder"
        )
    if e_c.shape[0] == 1 and e_i.shape[0] > 1:
        e_c = np.repeat(e_c, e_i.shape[0], axis=0)
    if e_i.shape[0] != e_c.shape[0]:
        raise InputError(
            f"image_embeds has {e_i.shape[0]} rows but content_embeds has {e_c.shape[0]}; "
            "give one content embedding per image or a single one for all"
        )
    return e_i, e_c


def two_means_split(values: np.ndarray) -> tuple[float | None, float]:
    """Exact 2-means of 1-D ``values`` (float64): returns (threshold, within-cluster SSE).

    The optimal 1-D 2-means partition is a split of the sorted values into a lower and an upper
    run. Every split between two *distinct* sorted values is scored by the between-cluster
    sum of squares ``S_k^2/k + (S-S_k)^2/(D-k)`` of the centred values (maximising it minimises
    the within-cluster SSE); the first best split wins, so ties are deterministic. The upper
    cluster is ``values >= threshold``. Returns ``(None, total SSE)`` when all values are equal.
    Splits between equal values are never needed: a point equidistant from both centres can
    join either cluster at no cost, so some optimum keeps equal values together.
    """
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    d = v.size
    centred = v - v.mean()
    total_sse = float(np.sum(centred**2))
    if d < 2 or v[0] == v[-1]:
        return None, total_sse
    prefix = np.cumsum(centred)[:-1]  # S_k for k = 1..D-1 (lower cluster = first k values)
    k = np.arange(1, d, dtype=np.float64)
    between = prefix**2 / k + prefix**2 / (d - k)  # S - S_k = -S_k because the values are centred
    between[v[1:] == v[:-1]] = -np.inf  # only splits between distinct values
    best = int(np.argmax(between))
    return float(v[best + 1]), total_sse - float(between[best])


def torch_quantile(values: np.ndarray, q: float) -> float:
    """``torch.quantile(values, q)`` (linear interpolation) of 1-D values, in float64."""
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    pos = q * (v.size - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, v.size - 1)
    return float(v[lo] + (v[hi] - v[lo]) * (pos - lo))


def _check_theta(theta: float) -> float:
    theta = float(theta)
    if not 0.0 <= theta <= 1.0:
        raise InputError(f"theta={theta} must lie in [0, 1] (the paper's CIFAR setting is 0.7)")
    return theta


def content_mask(image_embeds, content_embeds, mode: str | MaskMode = "kmeans", theta: float = 0.7):
    """Boolean mask of the image-embedding elements tied to the content (True = zeroed).

    Args:
        image_embeds: float [D] or [N, D], CLIP ``image_embeds`` of the style image(s).
        content_embeds: float [D] or [N, D] (or [1, D] for all rows), CLIP ``text_embeds`` of the
            content text from the text tower of the same CLIP.
        mode: ``"kmeans"`` (exact 2-means, the upper cluster) or ``"quantile"`` (p > quantile).
        theta: quantile level in [0, 1], used by ``"quantile"`` only.

    Returns:
        bool ndarray with the shape of ``image_embeds``.
    """
    mode = parse_enum(MaskMode, mode, "mask mode")
    if mode is MaskMode.QUANTILE:
        theta = _check_theta(theta)
    p = content_product(image_embeds, content_embeds)
    single = p.ndim == 1
    rows = np.atleast_2d(p)
    mask = np.zeros(rows.shape, dtype=bool)
    for n, row in enumerate(rows):
        if mode is MaskMode.KMEANS:
            threshold, _ = two_means_split(row)
            if threshold is None:
                warnings.warn(
                    "content mask: the image/content product is constant (a zero embedding or an "
                    "empty content?); nothing is masked",
                    DegenerateMaskWarning,
                    stacklevel=2,
                )
                continue
            mask[n] = row >= threshold
        else:
            if row.min() == row.max():
                warnings.warn(
                    "content mask: the image/content product is constant; nothing is masked",
                    DegenerateMaskWarning,
                    stacklevel=2,
                )
            mask[n] = row > torch_quantile(row, theta)
    return mask[0] if single else mask


def condition_embeds(
    image_embeds,
    content_embeds=None,
    method: str | Method = "maskst",
    mode: str | MaskMode = "kmeans",
    theta: float = 0.7,
    content_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The conditioned image embedding e_hat of one of the three methods, and the mask.

    Returns:
        (e_hat float32 with the shape of ``image_embeds``, mask bool of the same shape; all False
        for methods other than ``maskst``).
    """
    method = parse_enum(Method, method, "method")
    e_i, single = as_batch(image_embeds, "image_embeds")
    mask = np.zeros(e_i.shape, dtype=bool)
    if method.is_plain:  # ip-adapter (and styleshot, its StyleShot name)
        e_hat = e_i
    else:
        if content_embeds is None:
            raise InputError(f"method {method.value!r} needs content_embeds (the content text's embedding)")
        e_c, _ = as_batch(content_embeds, "content_embeds")
        e_i, e_c = _broadcast_pair(e_i, e_c)
        if method is Method.INSTANTSTYLE:
            e_hat = e_i - float(content_scale) * e_c
        else:
            mask = np.atleast_2d(content_mask(e_i, e_c, mode=mode, theta=theta))
            e_hat = e_i * (~mask)
    e_hat = e_hat.astype(np.float32)
    return (e_hat[0], mask[0]) if single else (e_hat, mask)
