"""Stable Diffusion 1.x / 2.x with IP-Adapter (SD 1.5 the reference setting of MaskST)."""

from __future__ import annotations

from maskst.checkpoints import resolve_checkpoints
from maskst.families import ModelFamily, PromptEncoder

SD15 = ModelFamily(
    name="sd15",
    title="Stable Diffusion 1.x/2.x + IP-Adapter",
    pipeline_classes=("StableDiffusionPipeline",),
    graphs=("text_encoder", "image_encoder", "content_encoder", "image_conditioner", "unet", "vae_decoder"),
    tokenizers=(("tokenizer", "text_encoder"), ("content_tokenizer", "content_encoder")),
    tokenizer_sources=lambda ckpt: {"tokenizer": ckpt.base / "tokenizer", "content_tokenizer": ckpt.content_encoder},
    default_size=512,
    reference_pipeline="StableDiffusionPipeline",
    preflight=resolve_checkpoints,
    prompt_encoders=(PromptEncoder("text_encoder", (("text_embeddings", "text_embeddings"),)),),
    prompt_hidden_state="last",
    unet_added_inputs=lambda ckpt: (),
    size_inputs=lambda height, width: {},
    export_sizes=(256, 512, 1024),
    reference_options=(("safety_checker", None), ("requires_safety_checker", False)),
)
