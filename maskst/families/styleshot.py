"""StyleShot (open-mmlab/StyleShot) on Stable Diffusion 1.5: style-aware encoder, 6 style tokens, content fusion.

Selected by maskst-export ``--styleshot STYLESHOT_FOLDER`` (instead of ``--ip-adapter``) on an SD 1.5
base; pre-flight in :mod:`maskst.styleshot_checkpoints`. What it declares differently from SD 1.5:

- graphs: ``style_encoder`` (the style-aware encoder: high / middle / low patches of the 512 crop ->
  ``style_embeds`` [N, 3, P]) instead of ``image_encoder``; ``image_conditioner`` is the three-way one
  (each embedding masked on its own, three 2-token projections -> ``ip_tokens`` [N, 6, C]); the ``unet``
  takes 6 image tokens; the content-fusion encoder is a built-in ControlNet (``content_fusion``, recorded
  in the manifest's ``control`` section) that cross-attends the style tokens, not the text;
- the adapter's weights: ``ip.bin`` groups, ``to_k_ip`` / ``to_v_ip`` rounded through float16 as
  StyleShot loads them;
- style input ``styleshot`` (``maskst.styleshot``: 512 crop, patches, shuffle by the request's seed);
- methods ``styleshot`` (StyleShot itself), ``maskst``, ``instantstyle``.
"""

from __future__ import annotations

from maskst.contract.wire import Method
from maskst.families import STYLESHOT_LAYOUT, ModelFamily
from maskst.families.sd15 import SD15
from maskst.styleshot_checkpoints import resolve_styleshot_checkpoints, styleshot_adapter_state

STYLESHOT = ModelFamily(
    name="styleshot",
    title="Stable Diffusion 1.5 + StyleShot",
    pipeline_classes=("StableDiffusionPipeline",),
    graphs=("text_encoder", "style_encoder", "content_encoder", "image_conditioner", "unet", "vae_decoder"),
    tokenizers=SD15.tokenizers,
    tokenizer_sources=SD15.tokenizer_sources,
    default_size=SD15.default_size,
    reference_pipeline=SD15.reference_pipeline,
    preflight=resolve_styleshot_checkpoints,
    prompt_encoders=SD15.prompt_encoders,
    prompt_hidden_state=SD15.prompt_hidden_state,
    unet_added_inputs=SD15.unet_added_inputs,
    size_inputs=SD15.size_inputs,
    export_sizes=SD15.export_sizes,
    reference_options=SD15.reference_options,
    adapter_layout=STYLESHOT_LAYOUT,
    adapter_state=styleshot_adapter_state,
    style_input="styleshot",
    methods=(Method.STYLESHOT, Method.MASKST, Method.INSTANTSTYLE),
    plain_method=Method.STYLESHOT,
)
