"""unet_shallow: the layers DeepCache runs on a cached step, with the cached feature as an input.

Branch 0 of DeepCache (:mod:`maskst.deepcache`): the time embedding (and the family's added embedding,
SDXL ``text_embeds`` / ``time_ids``), ``conv_in``, the last up block's last layer (``resnets[-1]`` on
``cat([deep_feature, conv_in(sample)])``, then ``attentions[-1]`` where the block has cross-attention:
the IP-Adapter decoupled cross-attention with run-time tokens, scales and masks, as in ``unet``) and the
output head. About 1/20 of the full UNet's FLOPs on SD 1.5.

Inputs (the subset of the ``unet`` inputs these layers read, in the ``unet`` order, then the feature):
``sample`` float32 [B, 4, h, w], ``timestep`` float32 [1], the family's added inputs; where the last up
block has cross-attention (SD 1.5) also ``text_embeddings`` [B, 77, C], ``ip_tokens`` [B, R, k, C],
``ip_scale`` [L, R] (the whole vector: the layer reads its own row) and the region masks of that layer's
stride (``region_mask_1`` [R, h, w]); last ``deep_feature`` float32 [B, block_out_channels[0], h, w] from
``unet_deep``. Output: ``noise_pred`` float32 [B, 4, h, w].
"""

from __future__ import annotations

import dataclasses

from maskst.checkpoints import CheckpointSet
from maskst.contract.spec import GraphSpec, TensorSpec
from maskst.deepcache import SHALLOW_GRAPH, FEATURE, cache_point
from maskst.export import unet
from maskst.export.options import ExportOptions
from maskst.export.unet_deep import feature_spec
from maskst.families import family_named
from maskst.regions import checkpoint_strides, mask_input_name

NAME = SHALLOW_GRAPH


def _stride(ckpt: CheckpointSet) -> int:
    """Latent stride of the cross-attention layer the shallow graph runs (its region mask input)."""
    prefix = cache_point(ckpt.unet_config).attention_prefix
    strides = [s for name, s in zip(ckpt.cross_attention_layers, checkpoint_strides(ckpt)) if name.startswith(prefix)]
    return strides[-1]


def input_names(ckpt: CheckpointSet) -> tuple[str, ...]:
    """The ``unet`` inputs the shallow layers read (without the feature)."""
    added = tuple(t.name for t in family_named(ckpt.family).unet_added_inputs(ckpt))
    names = ("sample", "timestep") + added
    if cache_point(ckpt.unet_config).cross_attention:
        names += ("text_embeddings", "ip_tokens", "ip_scale", mask_input_name(_stride(ckpt)))
    return names


def spec(ckpt: CheckpointSet, options: ExportOptions) -> GraphSpec:
    base = unet.spec(ckpt, options)
    wanted = set(input_names(ckpt))
    inputs = tuple(t for t in base.inputs if t.name in wanted) + (feature_spec(ckpt),)
    used = {d for t in inputs for d in t.shape if isinstance(d, str)}
    return dataclasses.replace(base, name=NAME, inputs=inputs,
                               divided={k: v for k, v in base.divided.items() if k in used})


def parity_feeds(graph: GraphSpec, dims: dict[str, int]) -> list[dict]:
    """The plain graph's cases (:func:`maskst.export.unet.parity_feeds`: R = 1 with all-ones masks; regional
    feeds with soft, partly zero masks and a region switched off) where the shallow layers have cross-attention;
    one random feed where they have none (SDXL: no region input)."""
    if "ip_scale" not in {t.name for t in graph.inputs}:
        return [graph.sample_inputs(dims, seed=1)]
    return unet.parity_feeds(graph, dims)


def build_module(ckpt: CheckpointSet, state: dict, options: ExportOptions):
    """torch module (the inputs of :func:`input_names`, deep_feature) -> noise_pred, built on the ``unet``
    graph's module (same weights, same IP-Adapter processors) and computing its layers as
    ``UNet2DConditionModel.forward`` does for them."""
    import torch

    plain = unet.build_module(ckpt, state, options)
    point = cache_point(ckpt.unet_config)
    names = input_names(ckpt)
    added = [t.name for t in family_named(ckpt.family).unet_added_inputs(ckpt)]
    stride = _stride(ckpt) if point.cross_attention else None

    class UNetShallow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.plain = plain  # (the last up block has no upsampler: diffusers builds the final block without)

        def forward(self, *inputs):
            feed = dict(zip(names + (FEATURE,), inputs))
            u = self.plain.unet
            sample, timestep = feed["sample"], feed["timestep"]
            added_cond = {name: feed[name] for name in added} or None
            context = feed.get("text_embeddings")
            emb = u.time_embedding(u.get_time_embed(sample=sample, timestep=timestep), None)
            aug = u.get_aug_embed(emb=emb, encoder_hidden_states=context, added_cond_kwargs=added_cond)
            emb = emb + aug if aug is not None else emb
            if u.time_embed_act is not None:
                emb = u.time_embed_act(emb)
            skip = u.conv_in(sample)
            block = u.up_blocks[point.up_block]
            hidden = block.resnets[-1](torch.cat([feed[FEATURE], skip], dim=1), emb)
            if point.cross_attention:
                self.plain.inputs.tokens, self.plain.inputs.scale = feed["ip_tokens"], feed["ip_scale"]
                self.plain.inputs.masks = {stride: feed[mask_input_name(stride)]}
                context = u.process_encoder_hidden_states(encoder_hidden_states=context, added_cond_kwargs=added_cond)
                hidden = block.attentions[-1](hidden, encoder_hidden_states=context, return_dict=False)[0]
            if u.conv_norm_out is not None:
                hidden = u.conv_act(u.conv_norm_out(hidden))
            return u.conv_out(hidden)

    return UNetShallow().eval()
