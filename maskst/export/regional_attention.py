"""The UNet's IP-Adapter cross-attention with regions: R styles, each with its own softmax and mask.

One processor per cross-attention layer l at latent stride s (:func:`maskst.regions.layer_strides`):

    out = Attn(Q, K_text, V_text) + sum_r ip_scale[l, r] * (Attn(Q, W_k T_r, W_v T_r) * mask_s[r])

with ``T`` = ``ip_tokens`` float32 [B, R, k, C] (each region's k tokens in its own softmax, as
diffusers' ``IPAdapterAttnProcessor2_0`` does when it gets ``ip_adapter_masks``), ``ip_scale``
float32 [L, R] and ``mask_s`` = ``region_mask_<s>`` float32 [R, ceil(h/s), ceil(w/s)] (the layer's
query grid, row-major = query order; computed on the host by :mod:`maskst.regions`). R is a
dynamic axis: 1..max_regions regions run on one graph. With R = 1 and an all-ones mask the layer
computes ``text + ip_scale[l, 0] * Attn(Q, W_k T, W_v T)`` with the same operations as the
non-regional processor (times 1.0 and a sum over one element are exact), which is how a request
without regions runs.

The regions are folded into the attention batch (query repeated R times), so R needs no loop and
no re-export; the R outputs are masked, scaled and summed over R.
"""

from __future__ import annotations

import functools


class LayerInputs:
    """Per-call graph inputs shared by every layer's processor (set by the UNet module's forward):
    ``tokens`` [B, R, k, C], ``scale`` [L, R], ``masks`` {stride: [R, gh, gw]}."""

    tokens = None
    scale = None
    masks: dict = {}


@functools.lru_cache(maxsize=None)
def processor_class():
    """The torch module class (built on first use: this module imports no torch at import time)."""
    import torch
    import torch.nn.functional as F

    from maskst.errors import CheckpointError

    class RegionalDecoupledCrossAttnProcessor(torch.nn.Module):
        """diffusers' IP-Adapter attention with regions, scales and masks taken from graph inputs."""

        def __init__(self, hidden_size: int, cross_dim: int, layer: int, stride: int, name: str, inputs: LayerInputs):
            super().__init__()
            self.to_k_ip = torch.nn.Linear(cross_dim, hidden_size, bias=False)
            self.to_v_ip = torch.nn.Linear(cross_dim, hidden_size, bias=False)
            self.layer, self.stride, self.name, self.inputs = layer, stride, name, inputs

        def image_attention(self, attn, query):
            """sum_r scale[l, r] * (Attn(query, region r's tokens) * mask[r]): [B, Q, inner]."""
            batch, q_len, inner = query.shape
            heads = attn.heads
            head = inner // heads
            tokens = self.inputs.tokens  # [B, R, k, C]
            key = self.to_k_ip(tokens).unflatten(-1, (heads, head)).permute(0, 1, 3, 2, 4).flatten(0, 1)
            value = self.to_v_ip(tokens).unflatten(-1, (heads, head)).permute(0, 1, 3, 2, 4).flatten(0, 1)
            q = query.view(batch, -1, heads, head).transpose(1, 2)  # [B, heads, Q, hd]
            q = q.unsqueeze(1).expand(-1, tokens.shape[1], -1, -1, -1).flatten(0, 1)  # [B R, heads, Q, hd]
            out = F.scaled_dot_product_attention(q, key, value, dropout_p=0.0, is_causal=False)
            out = out.view(batch, -1, heads, q_len, head).transpose(2, 3).flatten(3)  # [B, R, Q, inner]
            mask = self.inputs.masks[self.stride]  # [R, gh, gw]
            if mask.shape[-1] * mask.shape[-2] != q_len:  # shapes are concrete while tracing
                raise CheckpointError(
                    f"cross-attention layer {self.name} has {q_len} queries but the stride-{self.stride} mask grid "
                    f"{list(mask.shape[-2:])} has {mask.shape[-1] * mask.shape[-2]}: this UNet's block layout does "
                    "not follow maskst.regions.layer_strides")
            mask = mask.flatten(1)[None, :, :, None]  # [1, R, Q, 1]
            scale = self.inputs.scale[self.layer].view(1, -1, 1, 1)  # [1, R, 1, 1]
            return (scale * (out * mask)).sum(dim=1)

        def forward(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
            residual = hidden_states
            if attn.spatial_norm is not None:
                hidden_states = attn.spatial_norm(hidden_states, temb)
            input_ndim = hidden_states.ndim
            if input_ndim == 4:
                b, ch, hh, ww = hidden_states.shape
                hidden_states = hidden_states.view(b, ch, hh * ww).transpose(1, 2)
            batch = hidden_states.shape[0]
            if attn.group_norm is not None:
                hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
            query = attn.to_q(hidden_states)
            if attn.norm_cross:
                encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
            key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
            head = key.shape[-1] // attn.heads
            q = query.view(batch, -1, attn.heads, head).transpose(1, 2)
            k = key.view(batch, -1, attn.heads, head).transpose(1, 2)
            v = value.view(batch, -1, attn.heads, head).transpose(1, 2)
            text = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
            text = text.transpose(1, 2).reshape(batch, -1, attn.heads * head)
            hidden_states = text + self.image_attention(attn, query)
            hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
            if input_ndim == 4:
                hidden_states = hidden_states.transpose(-1, -2).reshape(b, ch, hh, ww)
            if attn.residual_connection:
                hidden_states = hidden_states + residual
            return hidden_states / attn.rescale_output_factor

    return RegionalDecoupledCrossAttnProcessor


def install_processors(unet, adapter_layers: dict, strides: tuple[int, ...], inputs: LayerInputs) -> None:
    """Replace every cross-attention processor of ``unet`` by a regional IP-Adapter processor with the
    adapter's ``to_k_ip`` / ``to_v_ip`` weights (h94 key ``2 l + 1`` for layer l, attn_processors
    order); self-attention gets diffusers' AttnProcessor2_0."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    cls = processor_class()
    processors, layer = {}, 0
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            module = unet.get_submodule(name[: -len(".processor")])
            proc = cls(module.to_q.out_features, module.cross_attention_dim, layer, strides[layer],
                       name[: -len(".processor")], inputs)
            key = 2 * layer + 1
            proc.load_state_dict({"to_k_ip.weight": adapter_layers[f"{key}.to_k_ip.weight"],
                                  "to_v_ip.weight": adapter_layers[f"{key}.to_v_ip.weight"]})
            processors[name] = proc.float()
            layer += 1
        else:
            processors[name] = AttnProcessor2_0()
    unet.set_attn_processor(processors)
