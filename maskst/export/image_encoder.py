"""image_encoder: CLIP vision tower; pixel_values [S, 3, 224, 224] -> image_embeds [S, D].

For IP-Adapter Plus the output is the penultimate layer's hidden states [S, T, H] (T = patches + 1),
what its Resampler consumes (diffusers: ``hidden_states[-2]``).
"""

from __future__ import annotations

from maskst.checkpoints import AdapterKind, CheckpointSet
from maskst.export.options import ExportOptions
from maskst.contract.spec import DimRange, GraphSpec, TensorSpec

NAME = "image_encoder"


def image_encoder_tokens(ckpt: CheckpointSet) -> int:
    cfg = ckpt.image_encoder_config
    return (int(cfg.get("image_size", 224)) // int(cfg["patch_size"])) ** 2 + 1


def spec(ckpt: CheckpointSet, options: ExportOptions) -> GraphSpec:
    size = int(ckpt.image_encoder_config.get("image_size", 224))
    if ckpt.adapter.kind is AdapterKind.PLUS:
        output = TensorSpec("image_embeds", "float32", ("S", image_encoder_tokens(ckpt),
                                                        int(ckpt.image_encoder_config["hidden_size"])))
    else:
        output = TensorSpec("image_embeds", "float32", ("S", ckpt.image_embed_dim))
    return GraphSpec(
        name=NAME,
        inputs=(TensorSpec("pixel_values", "float32", ("S", 3, size, size), low=-2.0, high=2.0),),
        outputs=(output,),
        dims={"S": DimRange(1, 1, options.max_batch)},
        atol=1e-4, rtol=1e-3,
    )


def build_module(ckpt: CheckpointSet, state: dict, options: ExportOptions):
    from maskst import torch_models
    from maskst.export.wrappers import output_of, penultimate_hidden_states

    model = torch_models.image_encoder(ckpt.image_encoder)
    if ckpt.adapter.kind is AdapterKind.PLUS:
        return penultimate_hidden_states(model, "pixel_values")
    return output_of(model, "pixel_values", "image_embeds")
