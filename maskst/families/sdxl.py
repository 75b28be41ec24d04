"""Stable Diffusion XL with IP-Adapter (h94 ``sdxl_models/``): the MaskST SDXL setting.

What SDXL adds to SD 1.5, as this family declares it:

- two text encoders: ``text_encoder`` (CLIP ViT-L) and ``text_encoder_2`` (OpenCLIP bigG text tower
  with projection); the UNet's ``encoder_hidden_states`` [B, 77, 2048] are both encoders'
  *penultimate* hidden states concatenated (768 + 1280), and its ``added_cond_kwargs`` take
  ``text_embeds`` [B, 1280] (text_encoder_2's pooled, projected output) and ``time_ids`` [B, 6]
  (original height, width, crop top, crop left, target height, width: ``(h, w, 0, 0, h, w)`` for a
  request of h x w, as diffusers' ``_get_add_time_ids`` defaults);
- an empty negative prompt is all-zero embeddings when ``model_index.json`` says
  ``force_zeros_for_empty_prompt`` (SDXL base 1.0 does; diffusers' default for SDXL is true);
- adapters: ``ip-adapter_sdxl`` consumes ViT-bigG ``image_embeds`` (1280-d, ``sdxl_models/image_encoder``),
  and its MaskST content embedding is SDXL's own pooled text_encoder_2 output of the content text
  (the same 1280-d space; no extra content encoder is exported: the runtime runs text_encoder_2 on
  the content text); ``ip-adapter_sdxl_vit-h`` / ``ip-adapter-plus_sdxl_vit-h`` consume ViT-H
  (``models/image_encoder``, 1024-d) and take the laion ViT-H CLIP as content encoder, as on SD 1.5;
- 70 cross-attention layers (``ip_scale [70]``); InstantStyle's style block ``up_blocks.0.attentions.1``;
- default size 1024.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maskst.checkpoints import (
    AdapterKind,
    CheckpointSet,
    check_adapter,
    check_content_encoder,
    check_image_encoder,
    check_tokenizer,
    encoder_name,
    find_weights,
    read_config,
)
from maskst.contract.spec import TensorSpec
from maskst.errors import CheckpointError
from maskst.families import ModelFamily, PromptEncoder

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
WEIGHTED = ("unet", "vae", "text_encoder", "text_encoder_2")
TIME_IDS = 6  # original size (h, w), crop top-left (y, x), target size (h, w)
# CLIP image towers by the width an adapter's projection reads (projection_dim; Plus: hidden_size)
_BY_PROJECTION = {1280: "ViT-bigG/14", 1024: "ViT-H/14"}
_BY_HIDDEN = {1664: "ViT-bigG/14", 1280: "ViT-H/14"}


def time_ids(height: int, width: int) -> dict[str, np.ndarray]:
    """``time_ids`` float32 [1, 6] of an h x w request: (h, w, 0, 0, h, w), one row per guidance half."""
    return {"time_ids": np.array([[height, width, 0, 0, height, width]], dtype=np.float32)}


def unet_added_inputs(ckpt: CheckpointSet) -> tuple[TensorSpec, ...]:
    """The SDXL UNet's ``added_cond_kwargs``: pooled ``text_embeds`` [B, P] and ``time_ids`` [B, 6]."""
    pooled = int(read_config(ckpt.base / "text_encoder_2" / "config.json", "base text encoder 2")["projection_dim"])
    return (TensorSpec("text_embeds", "float32", ("B", pooled)),
            TensorSpec("time_ids", "float32", ("B", TIME_IDS), low=0.0, high=2048.0))


def _expected_encoder(adapter, field: str) -> str:
    names = _BY_PROJECTION if adapter.kind is AdapterKind.BASE else _BY_HIDDEN
    return names.get(adapter.input_dim, f"a CLIP with {field} {adapter.input_dim}")


def _encoder_hint(adapter, pooled: int) -> str:
    """Which h94 folder holds the encoder: an adapter reading image_embeds of the width of SDXL's pooled
    text space is ip-adapter_sdxl (ViT-bigG); the others (and every Plus) are the *_vit-h ones."""
    if adapter.kind is AdapterKind.BASE and adapter.input_dim == pooled:
        return "ip-adapter_sdxl needs h94's sdxl_models/image_encoder (ViT-bigG/14), the default beside the adapter file"
    return ("h94's *_vit-h SDXL adapters need the ViT-H/14 encoder of models/image_encoder: pass "
            "--image-encoder IP-Adapter/models/image_encoder")


def resolve_sdxl_checkpoints(base, ip_adapter, image_encoder=None, content_encoder=None) -> CheckpointSet:
    """Pre-flight of an SDXL checkpoint set; CheckpointError naming files and shapes on any mismatch.

    Args:
        base: diffusers StableDiffusionXLPipeline folder (model_index.json, unet/, vae/, text_encoder/,
            text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/).
        ip_adapter: ``sdxl_models/ip-adapter_sdxl.safetensors`` (or ``.bin``), ``ip-adapter_sdxl_vit-h``,
            ``ip-adapter-plus_sdxl_vit-h``.
        image_encoder: CLIPVisionModelWithProjection folder; default ``<adapter dir>/image_encoder``.
        content_encoder: CLIP folder whose text tower projects into the image encoder's space. Default:
            the base's own text_encoder_2 (pooled, projected; tokenizer_2) when that is the image
            encoder's space (bigG adapters); required otherwise (ViT-H adapters: laion ViT-H/14).
    """
    base, ip_adapter = Path(base), Path(ip_adapter)
    image_encoder = Path(image_encoder) if image_encoder else ip_adapter.parent / "image_encoder"
    if not base.is_dir():
        raise CheckpointError(f"base model folder {base} does not exist")
    index = read_config(base / "model_index.json", "base model")
    for name in COMPONENTS:
        if not (base / name).is_dir():
            raise CheckpointError(
                f"base model {base} has no {name}/ folder; it must be a complete diffusers Stable Diffusion XL folder"
            )
    unet_path, te_path, te2_path = (base / "unet" / "config.json", base / "text_encoder" / "config.json",
                                    base / "text_encoder_2" / "config.json")
    unet_config = read_config(unet_path, "base unet")
    vae_config = read_config(base / "vae" / "config.json", "base vae")
    text_config = read_config(te_path, "base text encoder")
    text2_config = read_config(te2_path, "base text encoder 2")
    read_config(base / "scheduler" / "scheduler_config.json", "base scheduler")
    check_tokenizer(base / "tokenizer", "base tokenizer")
    check_tokenizer(base / "tokenizer_2", "base tokenizer_2")
    for name in WEIGHTED:
        find_weights(base / name, f"base {name}")
    if unet_config.get("addition_embed_type") != "text_time":
        raise CheckpointError(
            f"{unet_path}: addition_embed_type is {unet_config.get('addition_embed_type')!r}; an SDXL base UNet takes "
            "'text_time' conditioning (pooled text embeddings and time ids). This is not an SDXL base model"
        )
    cross = int(unet_config["cross_attention_dim"])
    widths = int(text_config["hidden_size"]), int(text2_config["hidden_size"])
    if sum(widths) != cross:
        raise CheckpointError(
            f"{te_path} (hidden_size {widths[0]}) and {te2_path} (hidden_size {widths[1]}) give {sum(widths)}-wide "
            f"prompt embeddings, but the UNet's cross_attention_dim ({unet_path}) is {cross}; the base folder mixes "
            "components of different models"
        )
    pooled = int(text2_config.get("projection_dim") or 0)
    time_dim = int(unet_config.get("addition_time_embed_dim") or 0)
    expected = int(unet_config.get("projection_class_embeddings_input_dim") or 0)
    if TIME_IDS * time_dim + pooled != expected:
        raise CheckpointError(
            f"{unet_path}: projection_class_embeddings_input_dim is {expected}, but {TIME_IDS} time ids x "
            f"addition_time_embed_dim {time_dim} + text_encoder_2 projection_dim {pooled} ({te2_path}) is "
            f"{TIME_IDS * time_dim + pooled}; the base folder mixes components of different models"
        )

    adapter, layers = check_adapter(base, ip_adapter, unet_config)
    enc_config = check_image_encoder(image_encoder, ip_adapter, adapter, lambda field: _expected_encoder(adapter, field),
                                     hint=_encoder_hint(adapter, pooled))
    hidden, projection = int(enc_config.get("hidden_size", 0)), int(enc_config.get("projection_dim", 0))

    own_encoder = base / "text_encoder_2"
    if content_encoder is None:
        if projection != pooled:
            raise CheckpointError(
                f"content encoder: no folder given. The image encoder {image_encoder / 'config.json'} is "
                f"{encoder_name(hidden, projection)} (projection_dim {projection}) and the base's text_encoder_2 "
                f"({te2_path}) projects text to {pooled} values, so it cannot be the content encoder: pass the CLIP "
                "whose text tower shares the image encoder's space (--content-encoder, e.g. "
                "laion/CLIP-ViT-H-14-laion2B-s32B-b79K for the *_vit-h adapters)"
            )
        content_encoder = own_encoder
    content_encoder = Path(content_encoder)
    shared = content_encoder.resolve() == own_encoder.resolve()
    tokenizer = base / "tokenizer_2" if shared else content_encoder
    content_config = check_content_encoder(content_encoder, tokenizer, image_encoder, enc_config)
    return CheckpointSet(
        base=base, ip_adapter=ip_adapter, image_encoder=image_encoder, content_encoder=content_encoder,
        adapter=adapter, cross_attention_layers=tuple(n for n, _ in layers), unet_config=unet_config,
        vae_config=vae_config, image_encoder_config=enc_config, content_text_config=content_config,
        family="sdxl", content_tokenizer=tokenizer,
        content_graph=("text_encoder_2", "text_embeds") if shared else ("content_encoder", "content_embeds"),
        base_weights=WEIGHTED,
        force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", True)),
    )


SDXL = ModelFamily(
    name="sdxl",
    title="Stable Diffusion XL + IP-Adapter",
    pipeline_classes=("StableDiffusionXLPipeline",),
    graphs=("text_encoder", "text_encoder_2", "image_encoder", "content_encoder", "image_conditioner", "unet",
            "vae_decoder"),
    tokenizers=(("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"),
                ("content_tokenizer", "content_encoder")),
    tokenizer_sources=lambda ckpt: {"tokenizer": ckpt.base / "tokenizer", "tokenizer_2": ckpt.base / "tokenizer_2",
                                    **({} if ckpt.shared_content_encoder
                                       else {"content_tokenizer": ckpt.content_tokenizer_folder})},
    default_size=1024,
    reference_pipeline="StableDiffusionXLPipeline",
    preflight=resolve_sdxl_checkpoints,
    prompt_encoders=(
        PromptEncoder("text_encoder", (("text_embeddings", "text_embeddings"),)),
        PromptEncoder("text_encoder_2", (("text_embeddings", "text_embeddings"), ("text_embeds", "text_embeds"))),
    ),
    prompt_hidden_state="penultimate",
    unet_added_inputs=unet_added_inputs,
    size_inputs=time_ids,
    export_sizes=(256, 1024, 1536),
    reference_options=(("add_watermarker", False),),
)
