"""The PyTorch reference of StyleShot engines, written from StyleShot's published code (open-mmlab/StyleShot:
``ip_adapter/ip_adapter.py`` ``StyleShot`` / ``StyleProcessor`` / ``StyleContentStableDiffusionControlNetPipeline``,
``ip_adapter/tools.py`` ``pre_processing``, ``ip_adapter/style_encoder.py``) and MaskST's StyleShot variant
(LinLLLL/MaskST ``ip_adapter_styleshot/``). It is kept apart from the runtime: torch and diffusers only,
its own style preprocessing and shuffle; it shares with the exporter only the torch module definitions of
:mod:`maskst.styleshot_model` (StyleShot's networks) and the method's masking definition
(:func:`maskst.masking.condition_embeds`).

What it does, as StyleShot does:

* the base folder as diffusers' ``StableDiffusionPipeline`` (text-driven) or
  ``StableDiffusionControlNetPipeline`` with the content-fusion encoder (image-driven), fp32;
* the UNet's cross-attention processors replaced by StyleShot's ``IPAttnProcessor2_0`` semantics: the
  last 6 tokens of ``encoder_hidden_states`` are the style tokens, ``out = SDPA(Q, K_text, V_text) +
  scale * SDPA(Q, to_k_ip T, to_v_ip T)``; ``to_k_ip`` / ``to_v_ip`` are loaded into float16 modules
  from ``ip.bin`` and then cast to float32 (StyleShot creates the processors in float16 and casts the
  pipeline to float32 after loading);
* the content-fusion encoder: ``ControlNetModel.from_unet(unet)`` with ``ip.bin``'s ``controlnet.*``,
  whose ``encoder_hidden_states`` are the style tokens ``[T0; T]`` (StyleShot's
  ``style_embeddings_input``), not the text;
* the style image: ``Resize(512, bilinear)``, ``CenterCrop(512)``, RGB, ``ToTensor`` + ``Normalize(0.5, 0.5)``
  per patch of ``pre_processing``'s recursive quadrant crops (PIL crops), each level reordered by
  ``randperm`` drawn from ``torch.Generator().manual_seed(seed)`` (StyleShot: the global RNG) in the
  order high, middle, low; the style-aware encoder; per embedding the method (``maskst``: each masked on
  its own against e_c, the method's definition; ``instantstyle``: ``e_k - content_scale * |e_k|/|e_c| e_c``;
  ``styleshot``: unchanged) and its 2-token projection; unconditional tokens = projections of zeros;
* prompt embeddings from ``pipe.encode_prompt`` with the style tokens appended (``[text; T]``, negative
  ``[text_neg; T0]``), handed to the pipeline as ``prompt_embeds`` / ``negative_prompt_embeds``, with the
  request's initial latents (maskst's seed noise) instead of StyleShot's torch generator.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from maskst.checkpoints import CheckpointSet
from maskst.errors import InputError
from maskst.generation import GenerationConfig, effective_method, layer_scales, starting_noise
from maskst.masking import Method, condition_embeds
from maskst.reference import diffusers_scheduler
from maskst.reference_control import load_lineart, reference_control_image
from maskst.tokenization import load_tokenizer, tokenize

CROP = 512


@dataclasses.dataclass(frozen=True)
class StyleShotReferenceResult:
    images: np.ndarray  # uint8 [N, H, W, 3]
    style_embeds: np.ndarray  # float32 [3, P]: the style-aware encoder's embeddings
    content_embeds: np.ndarray | None  # float32 [P]
    conditioned: np.ndarray  # float32 [3, P]: e_hat fed to the projections
    mask: np.ndarray  # bool [3, P]
    tokens: np.ndarray  # float32 [6, C]: the style tokens T


def _crop_4_patches(image):
    """StyleShot's ``crop_4_patches``: the 4 quadrants of a square PIL image (TL, BL, TR, BR)."""
    c = int(image.size[0] / 2)
    return (image.crop((0, 0, c, c)), image.crop((0, c, c, 2 * c)), image.crop((c, 0, 2 * c, c)),
            image.crop((c, c, 2 * c, 2 * c)))


def style_processor(image, seed: int):
    """StyleShot's ``StyleProcessor`` with the shuffle drawn from ``torch.Generator().manual_seed(seed)``:
    (high float32 [8, 3, 128, 128], middle [16, 3, 64, 64], low [32, 3, 32, 32]) torch tensors."""
    import torch
    from PIL import Image

    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = CROP, int(CROP * long / short)  # torchvision Resize(512) on a PIL image
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    if size != (width, height):
        image = image.resize(size, Image.BILINEAR)
    top, left = int(round((size[1] - CROP) / 2.0)), int(round((size[0] - CROP) / 2.0))  # CenterCrop(512)
    image = image.crop((left, top, left + CROP, top + CROP)).convert("RGB")

    def transform(patch):  # ToTensor + Normalize([0.5], [0.5])
        x = torch.from_numpy(np.array(patch, dtype=np.uint8)).permute(2, 0, 1).contiguous().float().div(255)
        return x.sub(0.5).div(0.5)

    high, middle, low = [], [], []
    for c4 in _crop_4_patches(image):
        c8 = _crop_4_patches(c4)
        high += [transform(c8[0]), transform(c8[3])]
        for part8 in (c8[1], c8[2]):
            c16 = _crop_4_patches(part8)
            middle += [transform(c16[0]), transform(c16[3])]
            for part16 in (c16[1], c16[2]):
                c32 = _crop_4_patches(part16)
                low += [transform(c32[0]), transform(c32[3])]
    high, middle, low = torch.stack(high), torch.stack(middle), torch.stack(low)
    generator = torch.Generator().manual_seed(seed)
    high = high[torch.randperm(high.shape[0], generator=generator)]
    middle = middle[torch.randperm(middle.shape[0], generator=generator)]
    low = low[torch.randperm(low.shape[0], generator=generator)]
    return high, middle, low


def _ip_processor_class():
    import torch
    import torch.nn.functional as F

    class StyleShotIPAttnProcessor(torch.nn.Module):
        """StyleShot's IPAttnProcessor2_0: text attention plus ``scale`` x attention over the last
        ``num_tokens`` tokens of ``encoder_hidden_states`` through ``to_k_ip`` / ``to_v_ip``."""

        def __init__(self, hidden_size: int, cross_attention_dim: int, num_tokens: int, scale: float = 1.0):
            super().__init__()
            self.to_k_ip = torch.nn.Linear(cross_attention_dim, hidden_size, bias=False)
            self.to_v_ip = torch.nn.Linear(cross_attention_dim, hidden_size, bias=False)
            self.num_tokens, self.scale = num_tokens, scale

        def forward(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
            residual = hidden_states
            if attn.spatial_norm is not None:
                hidden_states = attn.spatial_norm(hidden_states, temb)
            input_ndim = hidden_states.ndim
            if input_ndim == 4:
                batch, channel, height, width = hidden_states.shape
                hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
            batch = hidden_states.shape[0]
            if attn.group_norm is not None:
                hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
            query = attn.to_q(hidden_states)
            end = encoder_hidden_states.shape[1] - self.num_tokens
            text, style = encoder_hidden_states[:, :end, :], encoder_hidden_states[:, end:, :]
            if attn.norm_cross:
                text = attn.norm_encoder_hidden_states(text)
            key, value = attn.to_k(text), attn.to_v(text)
            head = key.shape[-1] // attn.heads
            q = query.view(batch, -1, attn.heads, head).transpose(1, 2)
            k = key.view(batch, -1, attn.heads, head).transpose(1, 2)
            v = value.view(batch, -1, attn.heads, head).transpose(1, 2)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)
            out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head).to(q.dtype)
            ip_k = self.to_k_ip(style).view(batch, -1, attn.heads, head).transpose(1, 2)
            ip_v = self.to_v_ip(style).view(batch, -1, attn.heads, head).transpose(1, 2)
            ip = F.scaled_dot_product_attention(q, ip_k, ip_v, attn_mask=None, dropout_p=0.0, is_causal=False)
            ip = ip.transpose(1, 2).reshape(batch, -1, attn.heads * head).to(q.dtype)
            hidden_states = out + self.scale * ip
            hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
            if input_ndim == 4:
                hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
            if attn.residual_connection:
                hidden_states = hidden_states + residual
            return hidden_states / attn.rescale_output_factor

    class SelfAttnProcessor(torch.nn.Module):
        """diffusers' AttnProcessor2_0 as a module (StyleShot's AttnProcessor is one: ``adapter_modules`` is
        the ModuleList of every processor, numbered in ``attn_processors`` order)."""

        def __init__(self):
            super().__init__()
            from diffusers.models.attention_processor import AttnProcessor2_0

            self.inner = AttnProcessor2_0()

        def forward(self, attn, hidden_states, *args, **kwargs):
            return self.inner(attn, hidden_states, *args, **kwargs)

    return StyleShotIPAttnProcessor, SelfAttnProcessor


def _fusion_class():
    from diffusers import ControlNetModel

    class ContentFusionEncoder(ControlNetModel):
        """``ControlNetModel.from_unet`` whose cross-attention reads the style tokens ``[T0; T]``
        (``style_context``), whatever the pipeline passes as ``encoder_hidden_states``."""

        style_context = None

        def forward(self, sample, timestep, encoder_hidden_states=None, *args, **kwargs):
            return super().forward(sample, timestep, self.style_context, *args, **kwargs)

    return ContentFusionEncoder


class StyleShotReference:
    """StyleShot (and MaskST on StyleShot) in PyTorch + diffusers, fp32 on CPU."""

    def __init__(self, checkpoints: CheckpointSet, lineart_model: Path | None = None):
        import diffusers
        import torch

        from maskst import torch_models
        from maskst.styleshot_checkpoints import load_torch_state, split_ip_state
        from maskst.styleshot_model import load_style_aware_encoder, load_style_projections

        self.torch = torch
        self.checkpoints = checkpoints
        self.pipe = diffusers.StableDiffusionPipeline.from_pretrained(
            str(checkpoints.base), safety_checker=None, requires_safety_checker=False, torch_dtype=torch.float32,
            local_files_only=True)
        self.pipe.set_progress_bar_config(disable=True)
        self.base_scheduler_config = dict(self.pipe.scheduler.config)
        self.base_scheduler_class = type(self.pipe.scheduler)
        unet = self.pipe.unet
        groups = split_ip_state(checkpoints.ip_adapter, load_torch_state(checkpoints.ip_adapter, "StyleShot ip.bin"))
        cls, self_attn = _ip_processor_class()
        processors, self.ip_processors = {}, []
        for name in unet.attn_processors:
            if name.endswith("attn1.processor"):
                processors[name] = self_attn()
                continue
            module = unet.get_submodule(name[: -len(".processor")])
            proc = cls(module.to_q.out_features, unet.config.cross_attention_dim, checkpoints.adapter.num_tokens)
            processors[name] = proc.to(torch.float16)  # as StyleShot: float16 processors, ip.bin loaded into them
            self.ip_processors.append(proc)
        unet.set_attn_processor(processors)
        ip_layers = torch.nn.ModuleList(unet.attn_processors.values())
        ip_layers.load_state_dict(groups["adapter_modules"], strict=True)
        for proc in self.ip_processors:
            proc.float()  # StyleShot: pipe.to(dtype=float32) after loading
        self.fusion = _fusion_class().from_unet(unet, load_weights_from_unet=False)  # every weight from ip.bin
        self.fusion.load_state_dict(groups["controlnet"], strict=True)
        self.fusion = self.fusion.float().eval()
        self.projections = load_style_projections(groups["style_image_proj_modules"], checkpoints.image_embed_dim,
                                                  checkpoints.adapter.cross_attention_dim)
        del groups
        with torch_models.quiet_transformers():
            self.style_encoder = load_style_aware_encoder(
                checkpoints.image_encoder_config,
                load_torch_state(checkpoints.image_encoder, "StyleShot style-aware encoder"))
        self.content_encoder = torch_models.content_encoder(checkpoints.content_encoder)
        self.content_tokenizer = load_tokenizer(checkpoints.content_tokenizer_folder)
        self.lineart = load_lineart(lineart_model)
        self._control_pipe = None

    def control_pipe(self):
        """StyleShot's image-driven pipeline: diffusers' ControlNet pipeline on the same components, with the
        content-fusion encoder as its ControlNet."""
        import diffusers

        if self._control_pipe is None:
            parts = {k: v for k, v in self.pipe.components.items() if k not in ("image_encoder",)}
            self._control_pipe = diffusers.StableDiffusionControlNetPipeline(**parts, controlnet=self.fusion)
            self._control_pipe.set_progress_bar_config(disable=True)
        return self._control_pipe

    def encode_style(self, image, seed: int) -> np.ndarray:
        """float32 [3, P]: the style-aware encoder's embeddings of a PIL RGB image, patches shuffled by ``seed``."""
        high, middle, low = style_processor(image, seed)
        with self.torch.no_grad():
            return self.style_encoder(high[None], middle[None], low[None])[0].numpy()

    def encode_content(self, text: str) -> np.ndarray:
        """float32 [P]: laion ``text_embeds`` of the content text."""
        ids = tokenize(self.content_tokenizer, [text], "content text", self.content_encoder.config.max_position_embeddings)
        with self.torch.no_grad():
            return self.content_encoder(input_ids=self.torch.from_numpy(ids)).text_embeds[0].numpy()

    def condition(self, style_embeds: np.ndarray, content: np.ndarray | None, method: Method, config: GenerationConfig):
        """(e_hat float32 [3, P], mask bool [3, P]) per StyleShot-MaskST's ``get_image_embeds``, each embedding
        on its own."""
        torch = self.torch
        rows, masks = [], []
        for e_k in style_embeds:
            if method is Method.MASKST:
                e_hat, mask = condition_embeds(e_k, content, method=Method.MASKST, mode=config.mask_mode, theta=config.theta)
            elif method is Method.INSTANTSTYLE:
                e, c = torch.from_numpy(e_k)[None], torch.from_numpy(content)[None]
                s = e.norm(dim=1) / c.norm(dim=1)
                e_hat, mask = (e - config.content_scale * s * c)[0].numpy(), np.zeros(e_k.shape, bool)
            else:
                e_hat, mask = e_k, np.zeros(e_k.shape, bool)
            rows.append(np.asarray(e_hat, np.float32))
            masks.append(mask)
        return np.stack(rows), np.stack(masks)

    def tokens(self, e_hat: np.ndarray):
        """(T [1, 6, C], T0 [1, 6, C]) torch: the three projections of e_hat and of zeros."""
        torch = self.torch
        with torch.no_grad():
            embeds = torch.from_numpy(e_hat)[None]
            cond = torch.cat([proj(embeds[:, k]) for k, proj in enumerate(self.projections)], dim=1)
            uncond = torch.cat([proj(torch.zeros_like(embeds[:, k])) for k, proj in enumerate(self.projections)], dim=1)
        return cond, uncond

    def generate(self, config: GenerationConfig, style_image, latents: np.ndarray | None = None) -> StyleShotReferenceResult:
        """One request (``style_image``: the PIL RGB style image; ``config.control_image``: image-driven).
        ``latents``: diffusers' initial noise [N, 4, h, w]; default from the seed."""
        torch = self.torch
        config = config.sized(512)
        config.validate(self.checkpoints.vae_scale_factor)
        method = effective_method(config, Method.STYLESHOT)
        if method is Method.IP_ADAPTER:
            raise InputError("StyleShot: use --method styleshot for the plain method")
        style = self.encode_style(style_image, config.seed)
        content = self.encode_content(config.content) if not method.is_plain else None
        e_hat, mask = self.condition(style, content, method, config)
        cond, uncond = self.tokens(e_hat)
        n = config.num_images
        for proc, value in zip(self.ip_processors, layer_scales(self.checkpoints.cross_attention_layers, config)):
            proc.scale = float(value)
        pipe = self.control_pipe() if config.control_image else self.pipe
        pipe.scheduler = (diffusers_scheduler(config.scheduler, self.base_scheduler_config) if config.scheduler
                          else self.base_scheduler_class.from_config(self.base_scheduler_config))
        f = self.checkpoints.vae_scale_factor
        shape = (n, self.pipe.unet.config.in_channels, config.height // f, config.width // f)
        noise = starting_noise(config, shape) if latents is None else np.asarray(latents, dtype=np.float32)
        cond_n, uncond_n = cond.repeat(n, 1, 1), uncond.repeat(n, 1, 1)
        kwargs = {}
        with torch.no_grad():
            prompt_embeds, negative_embeds = self.pipe.encode_prompt(
                config.prompt, "cpu", n, True, negative_prompt=config.negative_prompt or None)
            if config.control_image:
                if len(config.control_image) != 1:
                    raise InputError("StyleShot has one content-fusion encoder: give one control image")
                # StyleShot's style_embeddings_input; diffusers runs the positive half alone at guidance <= 1
                self.fusion.style_context = torch.cat([uncond_n, cond_n]) if config.guided else cond_n
                kwargs = {"image": reference_control_image(config.control_image[0], config.control_preprocess_of(0),
                                                           config.height, config.width, self.lineart),
                          "controlnet_conditioning_scale": config.control_scale_of(0)}
            out = pipe(prompt_embeds=torch.cat([prompt_embeds, cond_n], dim=1),
                       negative_prompt_embeds=torch.cat([negative_embeds, uncond_n], dim=1),
                       height=config.height, width=config.width, num_inference_steps=config.steps,
                       guidance_scale=config.guidance, latents=torch.from_numpy(noise), output_type="np", **kwargs).images
        images = (out * 255).round().astype(np.uint8)
        return StyleShotReferenceResult(images, style, content, e_hat, mask, cond[0].numpy())
