"""DeepCache step caching (Ma et al., CVPR 2024): the facts the exporter, the runtime and the reference share.

DeepCache skips the deep part of the UNet on most denoising steps: a *full* step runs the whole UNet
and keeps the high-level feature that enters one skip branch of the up path; the following *cached*
steps run only the shallow layers around that branch and reuse the kept feature. maskst follows the
published code (``DeepCache.DeepCacheSDHelper``, DeepCache 0.1.1) with its defaults:
``cache_branch_id = 0`` and the ``uniform`` schedule (a full step at step indices ``i % N == 0``).

What ``cache_branch_id = 0`` means in that code (``is_skip_step`` with ``cache_block_id = 0``,
``cache_layer_id = 0``): on a cached step every down block, the mid block and every up block but the
last are skipped (their outputs are the cached ones), and in the last up block only its last layer
(``up_blocks[-1].resnets[-1]`` and, where the block has cross-attention, ``attentions[-1]``) runs. What
still runs: the time (and SDXL's added) embedding, ``conv_in`` (whose output is that last layer's skip
input), that last layer and the output head (``conv_norm_out``, ``conv_act``, ``conv_out``). The cached
feature (:data:`FEATURE`) is therefore the hidden state entering ``up_blocks[-1].resnets[-1]``: the output
of the last up block's second-to-last layer, float32 ``[B, block_out_channels[0], h, w]``.

Graphs (maskst-export --deepcache): :data:`DEEP_GRAPH` (the full UNet, outputs ``noise_pred`` and the
feature) and :data:`SHALLOW_GRAPH` (the shallow layers, the feature as an input); the plain ``unet`` graph
stays as it is. Requests with a control image are refused: ControlNet residuals enter the skipped blocks
(and the shallow layer's skip input), so the cached steps could not apply them.
"""

from __future__ import annotations

import dataclasses

from maskst.errors import CheckpointError

DEEP_GRAPH = "unet_deep"
SHALLOW_GRAPH = "unet_shallow"
FEATURE = "deep_feature"
CACHE_BRANCH_ID = 0  # DeepCacheSDHelper.set_params(cache_branch_id=0): the paper's SD setting
MAX_INTERVAL = 1000  # the steps limit of GenerationConfig: an interval above the step count runs one full step
EXPORT_FLAG = "--deepcache"
# DeepCache interval of the maskst-export --int8 calibration pass that records unet_deep / unet_shallow
# (maskst.runtime.calibration): the interval docs/deepcache.md recommends and the benchmark measures; at 10 steps
# (11 UNet calls with PNDM) 4 deep and 7 shallow calls per prompt, the cached feature 1 and 2 steps old as at run time
CALIBRATION_INTERVAL = 3


def is_full_step(index: int, interval: int) -> bool:
    """True where step ``index`` (0-based) runs the whole UNet (DeepCache's uniform schedule)."""
    return index % interval == 0


def full_steps(steps: int, interval: int) -> int:
    """How many of ``steps`` steps run the whole UNet (the others run the shallow graph)."""
    return -(-steps // interval)


@dataclasses.dataclass(frozen=True)
class CachePoint:
    """Where the feature is cached in a UNet (branch 0): the last up block's last layer and its input.

    ``feature_channels``: channels of the cached feature (= ``block_out_channels[0]``);
    ``cross_attention``: whether that last layer has a cross-attention (SD 1.5: yes; SDXL: no, its last
    up block is an ``UpBlock2D``); ``up_block``: index of the last up block."""

    up_block: int
    feature_channels: int
    cross_attention: bool

    @property
    def attention_prefix(self) -> str:
        """Module name prefix of the cross-attention layer the shallow graph runs (``up_blocks.3.attentions.``)."""
        return f"up_blocks.{self.up_block}.attentions."


def cache_point(unet_config: dict) -> CachePoint:
    """The branch-0 cache point of a diffusers ``UNet2DConditionModel`` config; CheckpointError for a UNet
    whose layout the split does not cover (naming the field)."""
    ups = list(unet_config.get("up_block_types", ()))
    if not ups:
        raise CheckpointError("DeepCache: the UNet config has no up_block_types")
    per_block = unet_config.get("layers_per_block", 2)
    per_block = per_block[0] if isinstance(per_block, (list, tuple)) else per_block  # reversed: the last up block's
    if int(per_block) + 1 < 2:
        raise CheckpointError(f"DeepCache: layers_per_block={per_block} leaves the last up block one layer; the "
                              "cached feature is the input of its last layer, so at least two are needed")
    for key, plain in (("center_input_sample", False), ("class_embed_type", None)):
        if unet_config.get(key, plain) != plain:
            raise CheckpointError(f"DeepCache: UNet config {key}={unet_config[key]!r} is not supported by the "
                                  "shallow graph (it computes the time embedding and conv_in as plain SD / SDXL do)")
    return CachePoint(up_block=len(ups) - 1, feature_channels=int(unet_config["block_out_channels"][0]),
                      cross_attention="CrossAttn" in ups[-1])
