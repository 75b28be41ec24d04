"""image_conditioner of StyleShot engines: the masking of three style embeddings fused with their three projections.

Inputs: ``image_embeds`` float32 [N, 3, P] (the style-aware encoder's ``style_embeds``: high, middle,
low), ``content_embeds`` float32 [N, P] (the content text's laion ``text_embeds``), ``method`` int64 [1]
(:attr:`maskst.contract.wire.Method.index`: 0 plain = ``styleshot``, 1 instantstyle, 2 maskst),
``mask_mode`` int64 [1] (0 kmeans, 1 quantile), ``theta`` float32 [1], ``content_scale`` float32 [1].
Outputs: ``ip_tokens`` float32 [N, 6, C] (``LayerNorm(Linear(P -> 2 C)(e_hat_k))`` for k = 0, 1, 2,
concatenated on the token axis) and ``mask`` bool [N, 3, P] (True = zeroed; all False unless maskst).

Per embedding (the numpy definition is :func:`maskst.styleshot.condition_style_embeds`):

* maskst: ``e_hat_k = e_k * (1 - M_k)``, ``M_k`` from ``p_k = unit(e_k) * unit(e_c)`` with the same exact
  2-means split / quantile as SD 1.5's conditioner (:func:`maskst.export.image_conditioner.content_mask_rows`,
  float64 on ONNX Runtime), each embedding on its own;
* instantstyle: ``e_hat_k = e_k - content_scale * |e_k| * unit(e_c)`` (StyleShot-MaskST's
  ``e_k - (|e_k| / |e_c|) e_c`` at content_scale 1);
* plain (styleshot): ``e_hat_k = e_k``.

The unconditional tokens are this graph's output for zero embeddings (the projections of zeros, as
StyleShot's ``uncond_style_ip_tokens``).
"""

from __future__ import annotations

from maskst.checkpoints import CheckpointSet
from maskst.contract.spec import DimRange, GraphSpec, TensorSpec
from maskst.contract.wire import CONDITIONER_METHODS, METHOD_CODES, MaskMode, Method
from maskst.export.options import ExportOptions, Target

NAME = "image_conditioner"
EMBEDDINGS = 3


def spec(ckpt: CheckpointSet, options: ExportOptions) -> GraphSpec:
    k, c, p = ckpt.adapter.num_tokens, ckpt.adapter.cross_attention_dim, ckpt.image_embed_dim
    return GraphSpec(
        name=NAME,
        inputs=(
            TensorSpec("image_embeds", "float32", ("N", EMBEDDINGS, p)),
            TensorSpec("content_embeds", "float32", ("N", p)),
            TensorSpec("method", "int64", (1,), low=0, high=len(METHOD_CODES)),
            TensorSpec("mask_mode", "int64", (1,), low=0, high=len(MaskMode)),
            TensorSpec("theta", "float32", (1,), low=0.0, high=1.0),
            TensorSpec("content_scale", "float32", (1,), low=0.0, high=2.0),
        ),
        outputs=(TensorSpec("ip_tokens", "float32", ("N", k, c)), TensorSpec("mask", "bool", ("N", EMBEDDINGS, p))),
        dims={"N": DimRange(1, 1, options.max_batch)},
        atol=1e-5, rtol=1e-4,
    )


def parity_feeds(graph: GraphSpec, dims: dict[str, int]) -> list[dict]:
    """Every method code x mask mode, a zero style row and a zero content row (degenerate: nothing masked)."""
    import numpy as np

    feeds = []
    for method in CONDITIONER_METHODS:
        for mode in MaskMode:
            feed = graph.sample_inputs(dims, seed=200 + method.index * 7 + mode.index)
            feed.update(method=np.array([method.index]), mask_mode=np.array([mode.index]),
                        theta=np.array([0.6], np.float32), content_scale=np.array([0.8], np.float32))
            feeds.append(feed)
    degenerate = dict(feeds[-1])
    degenerate["image_embeds"] = degenerate["image_embeds"].copy()
    degenerate["image_embeds"][0, 1] = 0.0
    degenerate["content_embeds"] = np.zeros_like(degenerate["content_embeds"])
    instant = dict(degenerate, method=np.array([Method.INSTANTSTYLE.index]))
    return feeds + [degenerate, instant]


def build_module(ckpt: CheckpointSet, state: dict, options: ExportOptions):
    """torch module with the graph's inputs / outputs; ``state["image_proj"]``: the style projections."""
    import torch

    from maskst.export.image_conditioner import content_mask_rows
    from maskst.styleshot_model import load_style_projections

    compute_dtype = torch.float32 if options.target is Target.TRT else torch.float64
    projections = load_style_projections(state["image_proj"], ckpt.image_embed_dim, ckpt.adapter.cross_attention_dim)

    class StyleShotConditioner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.projections = projections

        def forward(self, image_embeds, content_embeds, method, mask_mode, theta, content_scale):
            p = image_embeds.shape[-1]
            rows = image_embeds.reshape(-1, p)  # [N 3, P]: each embedding masked on its own
            content_rows = content_embeds.unsqueeze(1).expand(-1, EMBEDDINGS, -1).reshape(-1, p)
            mask = content_mask_rows(rows, content_rows, method, mask_mode, theta, compute_dtype)
            mask = mask.reshape(image_embeds.shape)
            masked = image_embeds * (~mask).to(image_embeds.dtype)
            norm_c = torch.linalg.vector_norm(content_embeds, dim=-1, keepdim=True)
            unit_c = content_embeds / norm_c.clamp_min(torch.finfo(content_embeds.dtype).tiny)  # zero stays zero
            norm_k = torch.linalg.vector_norm(image_embeds, dim=-1, keepdim=True)  # [N, 3, 1]
            instant = image_embeds - content_scale * norm_k * unit_c.unsqueeze(1)
            e_hat = torch.where(method == Method.INSTANTSTYLE.index, instant, masked)
            tokens = [proj(e_hat[:, index]) for index, proj in enumerate(self.projections)]
            return torch.cat(tokens, dim=1), mask

    return StyleShotConditioner().eval()
