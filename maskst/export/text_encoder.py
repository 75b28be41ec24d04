"""text_encoder: the base's CLIP text model; input_ids int64 [B, 77] -> text_embeddings float32 [B, 77, C].

Which hidden state is the output is the family's declaration (``ModelFamily.prompt_hidden_state``):
SD 1.x ``last_hidden_state`` (after the final layer norm), SDXL the penultimate layer's hidden states
(``hidden_states[-2]``, no final layer norm), as diffusers' ``encode_prompt`` takes them.
"""

from __future__ import annotations

from maskst.checkpoints import CheckpointSet
from maskst.export.options import ExportOptions
from maskst.contract.spec import DimRange, GraphSpec, TensorSpec
from maskst.families import family_named

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
    from maskst.export.wrappers import output_of, penultimate_hidden_states

    model = torch_models.sd_text_encoder(ckpt.base)
    if family_named(ckpt.family).prompt_hidden_state == "penultimate":
        return penultimate_hidden_states(model, "input_ids")
    return output_of(model, "input_ids", "last_hidden_state")
