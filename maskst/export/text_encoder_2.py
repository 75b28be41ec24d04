"""text_encoder_2: SDXL's second text encoder (OpenCLIP bigG text tower with projection).

Input: input_ids int64 [B, 77] (tokenizer_2: pads with "!"). Outputs: text_embeddings float32
[B, 77, C2] (the penultimate layer's hidden states, as diffusers' SDXL ``encode_prompt`` takes them;
concatenated after text_encoder's on the host) and text_embeds float32 [B, P] (the pooled, projected
output: the UNet's ``text_embeds`` added condition, and, for the bigG adapter, MaskST's content
embedding of the content text, in the same space as ViT-bigG ``image_embeds``).
"""

from __future__ import annotations

from maskst.checkpoints import CheckpointSet
from maskst.export.options import ExportOptions
from maskst.contract.spec import DimRange, GraphSpec, TensorSpec

NAME = "text_encoder_2"


def spec(ckpt: CheckpointSet, options: ExportOptions) -> GraphSpec:
    import json

    config = json.loads((ckpt.base / "text_encoder_2" / "config.json").read_text())
    seq, width, vocab = config["max_position_embeddings"], config["hidden_size"], config["vocab_size"]
    return GraphSpec(
        name=NAME,
        inputs=(TensorSpec("input_ids", "int64", ("B", seq), low=0, high=vocab),),
        outputs=(TensorSpec("text_embeddings", "float32", ("B", seq, width)),
                 TensorSpec("text_embeds", "float32", ("B", int(config["projection_dim"])))),
        dims={"B": DimRange(1, 2, 2 * options.max_batch)},
        atol=1e-4, rtol=1e-3,
    )


def build_module(ckpt: CheckpointSet, state: dict, options: ExportOptions):
    """torch module input_ids -> (hidden_states[-2], text_embeds)."""
    import torch

    from maskst import torch_models

    model = torch_models.sd_text_encoder_2(ckpt.base)

    class TextEncoder2(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            out = self.model(input_ids=input_ids, output_hidden_states=True)
            return out.hidden_states[-2], out.text_embeds

    return TextEncoder2().eval()
