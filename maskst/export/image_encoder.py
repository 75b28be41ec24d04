"""image_encoder: CLIP vision tower with projection; pixel_values [S, 3, 224, 224] -> image_embeds [S, D]."""

from __future__ import annotations

from maskst.checkpoints import CheckpointSet
from maskst.export.options import ExportOptions
from maskst.export.spec import DimRange, GraphSpec, TensorSpec

NAME = "image_encoder"


def spec(ckpt: CheckpointSet, options: ExportOptions) -> GraphSpec:
    size = int(ckpt.image_encoder_config.get("image_size", 224))
    return GraphSpec(
        name=NAME,
        inputs=(TensorSpec("pixel_values", "float32", ("S", 3, size, size), low=-2.0, high=2.0),),
        outputs=(TensorSpec("image_embeds", "float32", ("S", ckpt.image_embed_dim)),),
        dims={"S": DimRange(1, 1, options.max_batch)},
        atol=1e-4, rtol=1e-3,
    )


def build_module(ckpt: CheckpointSet):
    from maskst import torch_models
    from maskst.export.wrappers import output_of

    return output_of(torch_models.image_encoder(ckpt.image_encoder), "pixel_values", "image_embeds")
