"""style_encoder: StyleShot's style-aware encoder; the three patch levels of a style crop -> 3 style embeddings.

Inputs (:mod:`maskst.styleshot` makes them: the 512 crop's patches, shuffled by the request's seed,
values ``x / 255 * 2 - 1``): ``high_patches`` float32 [N, 8, 3, 128, 128], ``middle_patches`` float32
[N, 16, 3, 64, 64], ``low_patches`` float32 [N, 32, 3, 32, 32] (N style images). Output:
``style_embeds`` float32 [N, 3, P] (the projected class tokens of the high, middle and low levels;
:mod:`maskst.styleshot_model`). Weights: ``style_aware_encoder.bin`` (``CheckpointSet.image_encoder``);
architecture: the content encoder's vision config and the CNN widths the checkpoint's tensors have.
"""

from __future__ import annotations

from maskst.checkpoints import CheckpointSet
from maskst.contract.spec import DimRange, GraphSpec, TensorSpec
from maskst.export.options import ExportOptions
from maskst.styleshot import LEVELS, PATCH_INPUTS

NAME = "style_encoder"


def spec(ckpt: CheckpointSet, options: ExportOptions) -> GraphSpec:
    inputs = tuple(TensorSpec(name, "float32", ("N", count, 3, side, side), low=-1.0, high=1.0)
                   for name, (_, count, side) in zip(PATCH_INPUTS, LEVELS))
    return GraphSpec(
        name=NAME,
        inputs=inputs,
        outputs=(TensorSpec("style_embeds", "float32", ("N", 3, ckpt.image_embed_dim)),),
        dims={"N": DimRange(1, 1, options.max_batch)},
        atol=1e-4, rtol=1e-3,
    )


def build_module(ckpt: CheckpointSet, state: dict, options: ExportOptions):
    """torch module (high_patches, middle_patches, low_patches) -> style_embeds, with style_aware_encoder.bin."""
    from maskst.styleshot_checkpoints import load_torch_state
    from maskst.styleshot_model import load_style_aware_encoder
    from maskst.torch_models import quiet_transformers

    weights = load_torch_state(ckpt.image_encoder, "StyleShot style-aware encoder")
    with quiet_transformers():
        return load_style_aware_encoder(ckpt.image_encoder_config, weights)
