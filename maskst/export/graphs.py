"""The exporter's graph registry: graph name -> the module that describes and builds it.

Every module here has the same three parts: ``NAME``; ``spec(ckpt, options) -> GraphSpec`` (the IO
contract everything else derives from); ``build_module(ckpt, state, options)`` (the torch module
exported, ``state`` being the adapter's state dict); and optionally ``parity_feeds(spec, dims)``
(extra parity cases). A model family lists the names it exports (maskst.families). Adding a graph:
one module plus one entry below.
"""

from __future__ import annotations

from maskst.export import (
    content_encoder,
    image_conditioner,
    image_encoder,
    style_encoder,
    text_encoder,
    text_encoder_2,
    unet,
    unet_deep,
    unet_shallow,
    vae_decoder,
)

GRAPH_BUILDERS = {module.NAME: module for module in (
    text_encoder, text_encoder_2, image_encoder, style_encoder, content_encoder, image_conditioner, unet, vae_decoder,
    unet_deep, unet_shallow,
)}
# How the torch modules are traced, as a number: bumped when a change alters the exported graphs' nodes but not
# their IO contract (old folders still run, they just are not what this version exports), so caches of exported
# engines (maskst-bench's) rebuild. Recorded in the manifest as "graph_revision" (absent = 1).
# 2: diffusers' GEGLU exported as two projections, no Split (maskst.export.rewrites.split_geglu).
GRAPH_REVISION = 2
# written on request, beside the family's graphs (maskst-export --deepcache): DeepCache step caching
DEEPCACHE_GRAPHS = (unet_deep.NAME, unet_shallow.NAME)
