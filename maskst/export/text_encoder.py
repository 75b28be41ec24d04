"""text_encoder: SD's CLIP text model; input_ids int64 [B, 77] -> text_embeddings float32 [B, 77, C]."""

from __future__ import annotations

from maskst.checkpoints import CheckpointSet
from maskst.export.options import ExportOptions
from maskst.contract.spec import DimRange, GraphSpec, TensorSpec

NAME = "text_encoder"


def spec(ckpt: CheckpointSet, options: ExportOptions) -> GraphSpec:
    import json

    config = json.loads((ckpt.base / "text_encoder" / "config.json").read_text())
    seq, width, vocab = config["max_position_embeddings"], config["hidden_size"], config["vocab_size"]
    return GraphSpec(
        name=NAME,
        inputs=(TensorSpec("input_ids", "int64", ("B", seq), low=0, high=vocab),),
        outputs=(TensorSpec("text_embeddings", "float32", ("B", seq, width)),),
        dims={"B": DimRange(1, 2, 2 * options.max_batch)},
        atol=1e-4, rtol=1e-3,
    )


def build_module(ckpt: CheckpointSet, state: dict, options: ExportOptions):
    from maskst import torch_models
    from maskst.export.wrappers import output_of

    return output_of(torch_models.sd_text_encoder(ckpt.base), "input_ids", "last_hidden_state")
