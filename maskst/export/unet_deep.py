"""unet_deep: the full UNet (the ``unet`` graph's module) that also returns DeepCache's cached feature.

Inputs: exactly those of :mod:`maskst.export.unet` (IP-Adapter tokens, per-layer scales and region masks
stay run-time inputs). Outputs: ``noise_pred`` float32 [B, 4, h, w] (the same computation as ``unet``)
and ``deep_feature`` float32 [B, block_out_channels[0], h, w], the hidden state entering the last up
block's last layer (branch 0 of DeepCache, :mod:`maskst.deepcache`), which :mod:`maskst.export.unet_shallow`
takes on the cached steps. Written by ``maskst-export --deepcache`` beside the plain ``unet`` graph.
"""

from __future__ import annotations

import dataclasses

from maskst.checkpoints import CheckpointSet
from maskst.contract.spec import GraphSpec, TensorSpec
from maskst.deepcache import DEEP_GRAPH, FEATURE, cache_point
from maskst.export import unet
from maskst.export.options import ExportOptions

NAME = DEEP_GRAPH


def feature_spec(ckpt: CheckpointSet) -> TensorSpec:
    """The cached feature: float32 [B, block_out_channels[0], h, w] (the latent grid: the last up block
    runs at latent resolution). Output of ``unet_deep``, input of ``unet_shallow``; values bounded like
    activations for the parity feeds."""
    return TensorSpec(FEATURE, "float32", ("B", cache_point(ckpt.unet_config).feature_channels, "h", "w"),
                      low=-3.0, high=3.0)


def spec(ckpt: CheckpointSet, options: ExportOptions) -> GraphSpec:
    base = unet.spec(ckpt, options)
    return dataclasses.replace(base, name=NAME, outputs=base.outputs + (feature_spec(ckpt),))


parity_feeds = unet.parity_feeds  # the same inputs as the plain graph: its non-regional and regional feeds


def build_module(ckpt: CheckpointSet, state: dict, options: ExportOptions):
    """torch module (the ``unet`` inputs) -> (noise_pred, deep_feature). The feature is taken by a forward
    hook on the last up block's second-to-last layer (its attention where it has one, else its resnet):
    the output of that layer is what the last layer's resnet concatenates with the conv_in skip."""
    import torch

    plain = unet.build_module(ckpt, state, options)
    point = cache_point(ckpt.unet_config)
    block = plain.unet.up_blocks[point.up_block]
    layer = block.attentions[-2] if point.cross_attention else block.resnets[-2]

    class UNetDeep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.plain = plain
            self.feature = None
            layer.register_forward_hook(self._keep)

        def _keep(self, module, args, output):
            self.feature = output[0] if isinstance(output, tuple) else output

        def forward(self, *inputs):
            self.feature = None
            noise = self.plain(*inputs)
            return noise, self.feature

    return UNetDeep().eval()
