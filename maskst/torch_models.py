"""The PyTorch models of a checkpoint set, loaded once way for export and the reference: fp32, local only.

Checkpoint configs often say ``torch_dtype: float16`` (h94's image encoder does) and transformers 5
honours that by default; maskst's fp32 graphs and the fp32 reference need fp32 modules, so every
loader passes the dtype explicitly.
"""

from __future__ import annotations

import contextlib
from pathlib import Path


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load/save chatter: a full CLIPModel folder lists every vision weight as
    unused when only the text tower loads, and transformers 5 draws a bar per checkpoint shard."""
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()  # transformers 5 draws a bar per checkpoint load
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _transformers(cls, folder: Path):
    import torch

    with quiet_transformers():
        return cls.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True).eval()


def sd_text_encoder(base: Path):
    from transformers import CLIPTextModel

    return _transformers(CLIPTextModel, Path(base) / "text_encoder")


def sd_text_encoder_2(base: Path):
    """SDXL's text_encoder_2: CLIPTextModelWithProjection (pooled, projected ``text_embeds``)."""
    from transformers import CLIPTextModelWithProjection

    return _transformers(CLIPTextModelWithProjection, Path(base) / "text_encoder_2")


def image_encoder(folder: Path):
    from transformers import CLIPVisionModelWithProjection

    return _transformers(CLIPVisionModelWithProjection, folder)


def content_encoder(folder: Path):
    """CLIPTextModelWithProjection from a text-only or a full CLIPModel folder (vision keys ignored)."""
    from transformers import CLIPTextModelWithProjection

    return _transformers(CLIPTextModelWithProjection, folder)


def unet(base: Path):
    import torch
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(Path(base) / "unet"), torch_dtype=torch.float32, local_files_only=True).eval()


def vae(base: Path):
    import torch
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(str(Path(base) / "vae"), torch_dtype=torch.float32, local_files_only=True).eval()


def image_projection(unet_config: dict, state: dict):
    """The adapter's image projection as diffusers builds it (ImageProjection / IPAdapterPlusImageProjection).

    Uses diffusers' own h94 -> diffusers key conversion; the UNet it is called on lives on the
    meta device (no weights), since the conversion only reads the adapter's tensors.
    """
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
    projection = unet._convert_ip_adapter_image_proj_to_diffusers(state["image_proj"], low_cpu_mem_usage=False)
    return projection.float().eval()
