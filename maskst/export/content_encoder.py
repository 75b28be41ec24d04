"""content_encoder: text tower of the image encoder's CLIP; input_ids [N, 77] -> content_embeds [N, D]."""

from __future__ import annotations

from maskst.checkpoints import CheckpointSet
from maskst.export.options import ExportOptions
from maskst.contract.spec import DimRange, GraphSpec, TensorSpec

NAME = "content_encoder"


def spec(ckpt: CheckpointSet, options: ExportOptions) -> GraphSpec:
    cfg = ckpt.content_text_config
    return GraphSpec(
        name=NAME,
        inputs=(TensorSpec("input_ids", "int64", ("N", int(cfg.get("max_position_embeddings", 77))),
                           low=0, high=int(cfg["vocab_size"])),),
        outputs=(TensorSpec("content_embeds", "float32", ("N", ckpt.image_embed_dim)),),
        dims={"N": DimRange(1, 1, options.max_batch)},
        atol=1e-4, rtol=1e-3,
    )


def build_module(ckpt: CheckpointSet, state: dict, options: ExportOptions):
    from maskst import torch_models
    from maskst.export.wrappers import output_of

    return output_of(torch_models.content_encoder(ckpt.content_encoder), "input_ids", "text_embeds")
