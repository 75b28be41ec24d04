"""The method's metrics on CLIP embeddings (numpy, float64), and per-method summaries.

Embeddings (each float [D], L2-normalised here):

- ``gen``, ``style``: CLIP ``image_embeds`` of the generated image and of the style image;
- ``prompt``, ``content``: CLIP ``text_embeds`` of the prompt and of the content text, from the text
  tower of the *same* CLIP (for the laion ViT-H adapter, the image encoder is the vision tower of
  laion CLIP-ViT-H-14 and the content encoder its text tower: one embedding space).

Scores of one image (the seed's ``result_exp1.py`` and StyleBench's ``result_text_driven.py``):

- ``style_score = gen . style`` and ``text_score = gen . prompt`` (cosines);
- ``leakage = (gen . content) / (style . content)``: how much of the style image's content the
  generated image carries, relative to the style image itself (lower is better);
- ``faithful = gen . prompt >= gen . content``;
- ``gated_style_score = gen . (style - content)`` if faithful else 0;
- ``gated_leakage = leakage`` if faithful else 1.

Summaries: mean and a 95% confidence interval of the mean by the normal approximation with
Student's t quantile, ``mean +- t(0.975, n-1) * sd / sqrt(n)`` (sd with n-1); no interval for n < 2.
"""

from __future__ import annotations

import math

import numpy as np

SCORES = ("style_score", "text_score", "leakage", "faithful", "gated_style_score", "gated_leakage",
          "cos_gen_content", "cos_style_content")


def unit(x: np.ndarray) -> np.ndarray:
    """float64 copy of ``x`` [D] (or [1, D]) divided by its L2 norm (zero stays zero)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    norm = np.linalg.norm(x)
    return x / norm if norm > 0 else x


def image_scores(gen: np.ndarray, style: np.ndarray, prompt: np.ndarray, content: np.ndarray) -> dict:
    """Scores of one generated image from four embeddings of one space (each [D] or [1, D], any float dtype).

    Returns floats (``leakage``/``gated_leakage`` None when ``style . content`` is 0) and ``faithful`` a bool.
    """
    g, s, p, c = unit(gen), unit(style), unit(prompt), unit(content)
    gen_content, style_content = float(g @ c), float(s @ c)
    leakage = gen_content / style_content if style_content != 0 else None
    faithful = bool(float(g @ p) >= gen_content)
    return {
        "style_score": float(g @ s),
        "text_score": float(g @ p),
        "leakage": leakage,
        "faithful": faithful,
        "gated_style_score": float(g @ (s - c)) if faithful else 0.0,
        "gated_leakage": leakage if faithful else 1.0,
        "cos_gen_content": gen_content,
        "cos_style_content": style_content,
    }


def mean_interval(values) -> dict:
    """``{"n", "mean", "ci95": [low, high] | None}`` of the finite values (bools count as 0/1)."""
    x = np.asarray([float(v) for v in values if v is not None], dtype=np.float64)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return {"n": 0, "mean": None, "ci95": None}
    mean = float(x.mean())
    if n < 2:
        return {"n": n, "mean": mean, "ci95": None}
    from scipy import stats

    half = float(stats.t.ppf(0.975, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    return {"n": n, "mean": mean, "ci95": [mean - half, mean + half]}


def summarize(images: list[dict]) -> dict:
    """Per method (in first-seen order): ``{"images": n, SCORE: mean_interval(...)}`` for every score in SCORES
    (``faithful``: the faithful rate)."""
    methods: dict[str, list[dict]] = {}
    for image in images:
        methods.setdefault(image["method"], []).append(image)
    return {method: {"images": len(rows), **{score: mean_interval(r[score] for r in rows) for score in SCORES}}
            for method, rows in methods.items()}
