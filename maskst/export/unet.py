"""unet: UNet2DConditionModel with IP-Adapter decoupled cross-attention, image tokens as their own input.

Inputs: sample float32 [B, 4, h, w] (B = 2N: negative half first), timestep float32 [1],
text_embeddings float32 [B, 77, C], ip_tokens float32 [B, k, C], ip_scale float32 [L] (one scale per
cross-attention layer in ``unet.attn_processors`` order). Output: noise_pred float32 [B, 4, h, w].

Each cross-attention layer computes ``Attn(Q, K_text, V_text) + ip_scale[l] * Attn(Q, W_k T, W_v T)``
exactly as diffusers' IPAdapterAttnProcessor2_0, but with the scale read from a graph input, so
adapter scale and InstantStyle block selection change at run time without a rebuild.
"""

from __future__ import annotations

from maskst.checkpoints import CheckpointSet
from maskst.export.options import ExportOptions
from maskst.contract.spec import GraphSpec, TensorSpec

NAME = "unet"


def spec(ckpt: CheckpointSet, options: ExportOptions) -> GraphSpec:
    import json

    text_cfg = json.loads((ckpt.base / "text_encoder" / "config.json").read_text())
    seq, c = int(text_cfg["max_position_embeddings"]), ckpt.adapter.cross_attention_dim
    channels = int(ckpt.unet_config.get("in_channels", 4))
    out_channels = int(ckpt.unet_config.get("out_channels", channels))
    latent = options.latent_range(ckpt.vae_scale_factor)
    layers = len(ckpt.cross_attention_layers)
    return GraphSpec(
        name=NAME,
        inputs=(
            TensorSpec("sample", "float32", ("B", channels, "h", "w"), low=-3.0, high=3.0),
            TensorSpec("timestep", "float32", (1,), low=1.0, high=999.0),
            TensorSpec("text_embeddings", "float32", ("B", seq, c)),
            TensorSpec("ip_tokens", "float32", ("B", ckpt.adapter.num_tokens, c)),
            TensorSpec("ip_scale", "float32", (layers,), low=0.0, high=1.5),
        ),
        outputs=(TensorSpec("noise_pred", "float32", ("B", out_channels, "h", "w")),),
        dims={"N": options.batch_range(), "h": latent, "w": latent},
        derived={"B": ("N", 2)},
        atol=1e-4, rtol=1e-3,
    )


def build_module(ckpt: CheckpointSet, state: dict, options: ExportOptions):
    """torch module (sample, timestep, text_embeddings, ip_tokens, ip_scale) -> noise_pred."""
    import torch
    import torch.nn.functional as F
    from diffusers.models.attention_processor import AttnProcessor2_0

    from maskst import torch_models

    class IPInputs:
        """Per-call image tokens and scales, shared by the layers' processors (set by forward)."""

        tokens = None
        scale = None

    class DecoupledCrossAttnProcessor(torch.nn.Module):
        """diffusers' IP-Adapter attention with the layer scale taken from a tensor input."""

        def __init__(self, hidden_size: int, cross_dim: int, layer: int, inputs: IPInputs):
            super().__init__()
            self.to_k_ip = torch.nn.Linear(cross_dim, hidden_size, bias=False)
            self.to_v_ip = torch.nn.Linear(cross_dim, hidden_size, bias=False)
            self.layer = layer
            self.inputs = inputs

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

            def attend(keys_from, to_k, to_v):
                key, value = to_k(keys_from), to_v(keys_from)
                head = key.shape[-1] // attn.heads
                q = query.view(batch, -1, attn.heads, head).transpose(1, 2)
                k = key.view(batch, -1, attn.heads, head).transpose(1, 2)
                v = value.view(batch, -1, attn.heads, head).transpose(1, 2)
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
                return out.transpose(1, 2).reshape(batch, -1, attn.heads * head)

            text = attend(encoder_hidden_states, attn.to_k, attn.to_v)
            image = attend(self.inputs.tokens, self.to_k_ip, self.to_v_ip)
            hidden_states = text + self.inputs.scale[self.layer] * image
            hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
            if input_ndim == 4:
                hidden_states = hidden_states.transpose(-1, -2).reshape(b, ch, hh, ww)
            if attn.residual_connection:
                hidden_states = hidden_states + residual
            return hidden_states / attn.rescale_output_factor

    class UNetWithIPAdapter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = torch_models.unet(ckpt.base)
            self.inputs = IPInputs()
            layers = state["ip_adapter"]
            processors, layer = {}, 0
            for name in self.unet.attn_processors:
                if name.endswith("attn2.processor"):
                    module = self.unet.get_submodule(name[: -len(".processor")])
                    proc = DecoupledCrossAttnProcessor(module.to_q.out_features, module.cross_attention_dim, layer, self.inputs)
                    key = 2 * layer + 1
                    proc.load_state_dict({"to_k_ip.weight": layers[f"{key}.to_k_ip.weight"],
                                          "to_v_ip.weight": layers[f"{key}.to_v_ip.weight"]})
                    processors[name] = proc.float()
                    layer += 1
                else:
                    processors[name] = AttnProcessor2_0()
            self.unet.set_attn_processor(processors)

        def forward(self, sample, timestep, text_embeddings, ip_tokens, ip_scale, **unet_kwargs):
            # unet_kwargs: extra UNet2DConditionModel arguments of graphs built on this one (the ControlNet
            # residuals of maskst.export.controlnet); the plain graph passes none
            self.inputs.tokens, self.inputs.scale = ip_tokens, ip_scale
            return self.unet(sample, timestep, encoder_hidden_states=text_embeddings, return_dict=False, **unet_kwargs)[0]

    return UNetWithIPAdapter().eval()
