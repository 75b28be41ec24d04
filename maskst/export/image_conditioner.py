"""image_conditioner: the MaskST masking step fused with the IP-Adapter projection, in one graph.

Inputs: image_embeds float32 [N, D], content_embeds float32 [N, D] (N style rows: one style, or one per
region of a regional request, each with its own content text), method int64 [1]
(0 ip-adapter, 1 instantstyle, 2 maskst: :attr:`maskst.masking.Method.index`), mask_mode int64 [1]
(0 kmeans, 1 quantile), theta float32 [1], content_scale float32 [1].
Outputs: ip_tokens float32 [N, k, C] and mask bool [N, D] (True = zeroed; all False unless maskst).

Same rules as :mod:`maskst.masking` (the numpy definition): p is the product of the unit-normalised
embeddings (zero vectors stay zero); kmeans is the exact 2-means split over splits between distinct
sorted values, first best wins, upper cluster = ``p >= threshold``; quantile is torch.quantile's
linear interpolation with ``p > q``; a constant p masks nothing. The split arithmetic runs in
``compute_dtype``: float64 for ONNX Runtime (bit-for-bit the numpy decision), float32 for TensorRT,
which has no float64 (values are centred before the prefix sums to keep float32 cancellation small).
Method, mode, theta and scale are live inputs: changing them needs no re-export.

IP-Adapter Plus (Resampler, 16 tokens) consumes the image encoder's penultimate hidden states
[N, T, H], not the projected embedding MaskST masks; its conditioner graph is the projection alone
(image_embeds [N, T, H] -> ip_tokens [N, 16, C]) and only the ``ip-adapter`` method applies.
"""

from __future__ import annotations

from maskst.checkpoints import AdapterKind, CheckpointSet
from maskst.export.options import ExportOptions, Target
from maskst.export.image_encoder import image_encoder_tokens
from maskst.contract.spec import DimRange, GraphSpec, TensorSpec
from maskst.contract.wire import CONDITIONER_METHODS, METHOD_CODES
from maskst.masking import MaskMode, Method

NAME = "image_conditioner"


def _delegate(ckpt: CheckpointSet):
    """The module of an adapter kind whose conditioner has other IO (StyleShot's three-way one), or None."""
    if ckpt.adapter.kind is AdapterKind.STYLESHOT:
        from maskst.export import styleshot_conditioner

        return styleshot_conditioner
    return None


def spec(ckpt: CheckpointSet, options: ExportOptions) -> GraphSpec:
    if _delegate(ckpt) is not None:
        return _delegate(ckpt).spec(ckpt, options)
    k, c = ckpt.adapter.num_tokens, ckpt.adapter.cross_attention_dim
    batch = {"N": DimRange(1, 1, max(2 * options.max_batch, options.max_regions))}  # regions: one row each
    if ckpt.adapter.kind is AdapterKind.PLUS:
        tokens, hidden = image_encoder_tokens(ckpt), int(ckpt.image_encoder_config["hidden_size"])
        return GraphSpec(
            name=NAME,
            inputs=(TensorSpec("image_embeds", "float32", ("N", tokens, hidden), low=-3.0, high=3.0),),
            outputs=(TensorSpec("ip_tokens", "float32", ("N", k, c)),),
            dims=batch, atol=1e-4, rtol=1e-3,
        )
    d = ckpt.image_embed_dim
    return GraphSpec(
        name=NAME,
        inputs=(
            TensorSpec("image_embeds", "float32", ("N", d)),
            TensorSpec("content_embeds", "float32", ("N", d)),
            TensorSpec("method", "int64", (1,), low=0, high=len(METHOD_CODES)),
            TensorSpec("mask_mode", "int64", (1,), low=0, high=len(MaskMode)),
            TensorSpec("theta", "float32", (1,), low=0.0, high=1.0),
            TensorSpec("content_scale", "float32", (1,), low=0.0, high=2.0),
        ),
        outputs=(TensorSpec("ip_tokens", "float32", ("N", k, c)), TensorSpec("mask", "bool", ("N", d))),
        dims=batch, atol=1e-5, rtol=1e-4,
    )


def parity_feeds(graph: GraphSpec, dims: dict[str, int]) -> list[dict]:
    """Every method x mask mode, plus a zero image embedding (degenerate: nothing masked)."""
    import numpy as np

    if len(graph.inputs) == 1:  # Plus: the projection alone
        return [graph.sample_inputs(dims, seed=1)]
    if len(graph.inputs[0].shape) == 3:  # StyleShot: [N, 3, P]
        from maskst.export import styleshot_conditioner

        return styleshot_conditioner.parity_feeds(graph, dims)
    feeds = []
    for method in CONDITIONER_METHODS:
        for mode in MaskMode:
            feed = graph.sample_inputs(dims, seed=method.index * 7 + mode.index)
            feed.update(method=np.array([method.index]), mask_mode=np.array([mode.index]),
                        theta=np.array([0.7], np.float32), content_scale=np.array([0.5], np.float32))
            feeds.append(feed)
    degenerate = dict(feeds[-1])
    degenerate["image_embeds"] = np.zeros_like(degenerate["image_embeds"])
    return feeds + [degenerate] + regional_feeds(graph, dims)


def regional_feeds(graph: GraphSpec, dims: dict[str, int]) -> list[dict]:
    """Regional requests: N = 2, 3 style rows, each masked with its own content (one row with a zero
    content embedding: a region without content text), every method x mask mode."""
    import numpy as np

    feeds = []
    for count in (2, 3):
        if not graph.dims["N"].min <= count <= graph.dims["N"].max:
            continue
        for method in CONDITIONER_METHODS:
            for mode in MaskMode:
                feed = graph.sample_inputs({**dims, "N": count}, seed=100 + 10 * count + 3 * method.index + mode.index)
                feed["content_embeds"][-1] = 0.0
                feed.update(method=np.array([method.index]), mask_mode=np.array([mode.index]),
                            theta=np.array([0.6], np.float32), content_scale=np.array([0.8], np.float32))
                feeds.append(feed)
    return feeds


def _unit(x):
    import torch

    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x / norm.clamp_min(torch.finfo(x.dtype).tiny)  # zero rows stay zero


def content_mask_rows(image_embeds, content_embeds, method, mask_mode, theta, compute_dtype):
    """The MaskST mask of each row (torch, traced into the conditioner graphs): bool [N, D], True = zeroed.

    ``image_embeds`` / ``content_embeds`` float32 [N, D]; ``method`` / ``mask_mode`` int64 [1] codes
    (all False unless ``method`` is maskst's); ``theta`` float32 [1]; the split runs in ``compute_dtype``.
    """
    import torch

    e_i = image_embeds.to(compute_dtype)
    e_c = content_embeds.to(compute_dtype)
    p = _unit(e_i) * _unit(e_c)
    d = p.shape[-1]
    ordered, _ = torch.sort(p, dim=-1)
    distinct = ordered[:, 1:] > ordered[:, :-1]  # [N, D-1]: split k lies between k-1 and k
    has_split = distinct.any(dim=-1, keepdim=True)

    # exact 2-means: maximise S_k^2 / k + S_k^2 / (D - k) over splits of the centred values
    centred = ordered - ordered.mean(dim=-1, keepdim=True)
    prefix = torch.cumsum(centred, dim=-1)[:, :-1]
    k = torch.arange(1, d, dtype=compute_dtype)
    between = prefix * prefix / k + prefix * prefix / (d - k)
    # -1 (below every real score, which is >= 0) where the split is between equal values;
    # arithmetic, not Where: ONNX Runtime has no float64 Where kernel
    between = between - (~distinct).to(compute_dtype) * (between + 1.0)
    best = torch.argmax(between, dim=-1, keepdim=True)
    threshold = torch.gather(ordered[:, 1:], 1, best)
    kmeans_mask = (p >= threshold) & has_split

    # quantile: torch.quantile's linear interpolation at theta
    pos = theta.to(compute_dtype) * (d - 1)
    lo = torch.floor(pos)
    hi = torch.clamp(lo + 1, max=d - 1)
    lo_v = torch.index_select(ordered, 1, lo.long())
    hi_v = torch.index_select(ordered, 1, hi.long())
    quantile_mask = p > lo_v + (hi_v - lo_v) * (pos - lo)

    use_maskst = method == Method.MASKST.index
    is_kmeans = mask_mode == MaskMode.KMEANS.index  # logic ops: ONNX Runtime has no bool Where
    return ((is_kmeans & kmeans_mask) | (~is_kmeans & quantile_mask)) & use_maskst


def build_module(ckpt: CheckpointSet, state: dict, options: ExportOptions):
    """torch module with the graph's inputs/outputs; ``state`` is the adapter's nested state dict."""
    import torch

    from maskst import torch_models

    if _delegate(ckpt) is not None:
        return _delegate(ckpt).build_module(ckpt, state, options)
    compute_dtype = torch.float32 if options.target is Target.TRT else torch.float64
    projection = torch_models.image_projection(ckpt.unet_config, state)
    if ckpt.adapter.kind is AdapterKind.PLUS:
        return projection

    class ImageConditioner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = projection

        def forward(self, image_embeds, content_embeds, method, mask_mode, theta, content_scale):
            mask = content_mask_rows(image_embeds, content_embeds, method, mask_mode, theta, compute_dtype)
            masked = image_embeds * (~mask).to(image_embeds.dtype)
            instant = image_embeds - content_scale * content_embeds
            e_hat = torch.where(method == Method.INSTANTSTYLE.index, instant, masked)
            return self.proj(e_hat), mask

    return ImageConditioner().eval()
