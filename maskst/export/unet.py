"""unet: UNet2DConditionModel with IP-Adapter decoupled cross-attention, image tokens as their own input.

Inputs: sample float32 [B, 4, h, w] (B = 2N with classifier-free guidance, negative half first; B = N, the
positive half alone, with guidance off), timestep float32 [1],
text_embeddings float32 [B, 77, C], then the family's added conditions (``ModelFamily.unet_added_inputs``;
SD 1.5 none, SDXL ``text_embeds`` float32 [B, 1280] and ``time_ids`` float32 [B, 6], passed as diffusers'
``added_cond_kwargs``), ip_tokens float32 [B, R, k, C] (R style regions, 1..max_regions; R = 1 without
regions), ip_scale float32 [L, R] (one scale per cross-attention layer in ``unet.attn_processors`` order
and region), region_mask_<s> float32 [R, ceil(h/s), ceil(w/s)] for each latent stride s of the
cross-attention layers (all ones without regions). Output: noise_pred float32 [B, 4, h, w].

Each cross-attention layer computes ``Attn(Q, K_text, V_text) + sum_r ip_scale[l, r] * (Attn(Q, W_k T_r,
W_v T_r) * mask[r])`` exactly as diffusers' IPAdapterAttnProcessor2_0 with ``ip_adapter_masks``
(:mod:`maskst.export.regional_attention`), with scales, tokens and masks read from graph inputs, so
adapter scale, InstantStyle block selection and the regions change at run time without a rebuild.
"""

from __future__ import annotations

from maskst.checkpoints import CheckpointSet
from maskst.export.options import ExportOptions
from maskst.contract.spec import DimRange, GraphSpec, TensorSpec
from maskst.families import family_named
from maskst.regions import checkpoint_strides, grid_dims, mask_input_name

NAME = "unet"


def spec(ckpt: CheckpointSet, options: ExportOptions) -> GraphSpec:
    import json

    text_cfg = json.loads((ckpt.base / "text_encoder" / "config.json").read_text())
    seq, c = int(text_cfg["max_position_embeddings"]), ckpt.adapter.cross_attention_dim
    channels = int(ckpt.unet_config.get("in_channels", 4))
    out_channels = int(ckpt.unet_config.get("out_channels", channels))
    latent = options.latent_range(ckpt.vae_scale_factor)
    layers = len(ckpt.cross_attention_layers)
    strides = sorted(set(checkpoint_strides(ckpt)))
    masks = tuple(TensorSpec(mask_input_name(s), "float32", ("R", *grid_dims(s)), low=0.0, high=1.0) for s in strides)
    divided = {dim: (base, s) for s in strides if s > 1 for dim, base in zip(grid_dims(s), ("h", "w"))}
    return GraphSpec(
        name=NAME,
        inputs=(
            TensorSpec("sample", "float32", ("B", channels, "h", "w"), low=-3.0, high=3.0),
            TensorSpec("timestep", "float32", (1,), low=1.0, high=999.0),
            TensorSpec("text_embeddings", "float32", ("B", seq, c)),
            *family_named(ckpt.family).unet_added_inputs(ckpt),
            TensorSpec("ip_tokens", "float32", ("B", "R", ckpt.adapter.num_tokens, c)),
            TensorSpec("ip_scale", "float32", (layers, "R"), low=0.0, high=1.5),
            *masks,
        ),
        outputs=(TensorSpec("noise_pred", "float32", ("B", out_channels, "h", "w")),),
        dims={"N": options.batch_range(), "h": latent, "w": latent, "R": DimRange(1, 1, options.max_regions)},
        derived={"B": ("N", 2)},
        optional_factors=("B",),  # B = N: guidance off (diffusers' rule at <= 1) runs the positive half alone
        divided=divided,
        atol=1e-4, rtol=1e-3,
    )


def parity_feeds(graph: GraphSpec, dims: dict[str, int]) -> list[dict]:
    """The non-regional feed (R = 1, all-ones masks), the same at the smallest batch without guidance (B = N: an odd
    batch the guided runs never make) and regional feeds at several R: masks that are soft (as downsampled pixel
    masks are), zero in places, and one region with scale 0."""
    import numpy as np

    def non_regional(feed_dims: dict[str, int], seed: int) -> dict:
        feed = graph.sample_inputs({**feed_dims, "R": 1}, seed=seed)
        for t in graph.inputs:
            if t.name.startswith("region_mask_"):
                feed[t.name] = np.ones_like(feed[t.name])
        return feed

    r_max = graph.dims["R"].max
    feeds = [non_regional(dims, seed=1)]
    if "B" in graph.optional_factors:
        fewest = graph.dims["N"].min
        feeds.append(non_regional({**dims, "N": fewest, "B": fewest}, seed=2))
    for count in sorted({2, 3, r_max} & set(range(2, r_max + 1))):
        feed = graph.sample_inputs({**dims, "R": count}, seed=10 + count)
        for t in graph.inputs:
            if t.name.startswith("region_mask_"):
                feed[t.name][feed[t.name] < 0.3] = 0.0  # uncovered query positions
        if count == 3:
            feed["ip_scale"][:, -1] = 0.0  # a region switched off
        feeds.append(feed)
    return feeds


def build_module(ckpt: CheckpointSet, state: dict, options: ExportOptions):
    """torch module (sample, timestep, text_embeddings, *added conditions, ip_tokens, ip_scale,
    region_mask_<s>...) -> noise_pred."""
    import torch

    from maskst import torch_models
    from maskst.export.regional_attention import LayerInputs, install_processors
    from maskst.export.rewrites import split_geglu

    strides = checkpoint_strides(ckpt)
    mask_strides = sorted(set(strides))

    class UNetWithIPAdapter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = torch_models.unet(ckpt.base)
            self.inputs = LayerInputs()
            install_processors(self.unet, state["ip_adapter"], strides, self.inputs)
            split_geglu(self.unet)  # the same function, no Split node (maskst.export.rewrites)

        def forward(self, sample, timestep, text_embeddings, *rest, **unet_kwargs):
            # rest: the family's added conditions, ip_tokens, ip_scale, the region masks (spec order);
            # unet_kwargs: extra UNet2DConditionModel arguments of graphs built on this one (the ControlNet
            # residuals of maskst.export.controlnet); the plain graph passes none
            added, (ip_tokens, ip_scale), region_masks = (rest[:len(added_names)],
                                                          rest[len(added_names):len(added_names) + 2],
                                                          rest[len(added_names) + 2:])
            self.inputs.tokens, self.inputs.scale = ip_tokens, ip_scale
            self.inputs.masks = dict(zip(mask_strides, region_masks))
            added_cond = dict(zip(added_names, added)) if added_names else None
            return self.unet(sample, timestep, encoder_hidden_states=text_embeddings, added_cond_kwargs=added_cond,
                             return_dict=False, **unet_kwargs)[0]

    added_names = [t.name for t in family_named(ckpt.family).unet_added_inputs(ckpt)]
    return UNetWithIPAdapter().eval()
