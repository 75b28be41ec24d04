"""The PyTorch reference pipeline: diffusers' StableDiffusionPipeline with its own IP-Adapter support.

This is the yardstick of every parity check (DESIGN section 7). It deliberately uses the library
paths users already trust: ``StableDiffusionPipeline.from_pretrained`` on the base folder,
``load_ip_adapter`` on the h94 file, transformers' CLIP models and ``CLIPImageProcessor``. Only
the conditioned embedding comes from maskst (:func:`maskst.masking.condition_embeds`), fed as
``ip_adapter_image_embeds`` = stack([zeros, e_hat]) (negative first), and the per-layer scales are
set on diffusers' IP-Adapter attention processors in ``attn_processors`` order.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from maskst.checkpoints import AdapterKind, CheckpointSet
from maskst.contract.wire import diffusers_class_name
from maskst.errors import InputError
from maskst.families import detect_family
from maskst.generation import GenerationConfig, effective_method, initial_noise, layer_scales, plus_method_error
from maskst.masking import Method, condition_embeds
from maskst.tokenization import load_tokenizer, tokenize


@dataclasses.dataclass(frozen=True)
class ReferenceResult:
    images: np.ndarray  # uint8 [N, H, W, 3]
    image_embeds: np.ndarray  # float32 [D]: mean CLIP image_embeds of the style image(s)
    content_embeds: np.ndarray | None  # float32 [D]
    conditioned: np.ndarray  # float32 [D]: e_hat fed to the adapter
    mask: np.ndarray  # bool [D]


def diffusers_scheduler(name: str, base_config):
    """A diffusers scheduler of maskst's name built from the base model's scheduler config."""
    import diffusers

    return getattr(diffusers, diffusers_class_name(name)).from_config(base_config)


class ReferencePipeline:
    """diffusers + IP-Adapter, fp32 on CPU, one thread-safe instance per process."""

    def __init__(self, checkpoints: CheckpointSet, pipeline_class: str | None = None, **components):
        """``pipeline_class`` / ``components``: another diffusers pipeline of the base folder and the
        components it needs besides the base's (e.g. ``StableDiffusionControlNetPipeline`` with
        ``controlnet=``; :mod:`maskst.reference_control`). Default: the family's reference pipeline."""
        import diffusers
        import torch
        from transformers import CLIPImageProcessor

        from maskst import torch_models

        self.checkpoints = checkpoints
        self.torch = torch
        pipeline_class = getattr(diffusers, pipeline_class or detect_family(checkpoints.base).reference_pipeline)
        self.pipe = pipeline_class.from_pretrained(
            str(checkpoints.base), safety_checker=None, requires_safety_checker=False,
            torch_dtype=torch.float32, local_files_only=True, **components,
        )
        self.pipe.set_progress_bar_config(disable=True)
        self.pipe.load_ip_adapter(
            str(checkpoints.ip_adapter.parent), subfolder=None, weight_name=checkpoints.ip_adapter.name,
            image_encoder_folder=None, local_files_only=True,
        )
        self.base_scheduler = self.pipe.scheduler  # the base model's own, restored for scheduler=None
        self.base_scheduler_config = dict(self.pipe.scheduler.config)
        self.image_encoder = torch_models.image_encoder(checkpoints.image_encoder)
        self.content_encoder = torch_models.content_encoder(checkpoints.content_encoder)
        self.content_tokenizer = load_tokenizer(checkpoints.content_encoder)
        # what diffusers' IP-Adapter path uses: the pipeline's feature extractor (bicubic shortest
        # edge, centre crop, CLIP mean/std); CLIP's defaults at the encoder's resolution without one
        size = int(checkpoints.image_encoder_config.get("image_size", 224))
        self.image_processor = self.pipe.feature_extractor or CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        self.ip_processors = [
            proc for name, proc in self.pipe.unet.attn_processors.items() if name.endswith("attn2.processor")
        ]

    @property
    def plus(self) -> bool:
        return self.checkpoints.adapter.kind is AdapterKind.PLUS

    def _encode_pixels(self, pixels):
        with self.torch.no_grad():
            if self.plus:  # the Resampler consumes the penultimate hidden states [S, T, H]
                return self.image_encoder(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
            return self.image_encoder(pixel_values=pixels).image_embeds

    def encode_images(self, images) -> np.ndarray:
        """float32 [D] (Plus: [T, H]): mean image embedding over the style images (PIL RGB)."""
        pixels = self.image_processor(images=list(images), return_tensors="pt").pixel_values
        return self._encode_pixels(pixels).mean(dim=0).numpy().astype(np.float32)

    def negative_embeds(self, e_hat: np.ndarray) -> np.ndarray:
        """What diffusers pairs with the negative prompt: zeros, or (Plus) the encoding of zero pixels."""
        if not self.plus:
            return np.zeros_like(e_hat)
        size = int(self.checkpoints.image_encoder_config.get("image_size", 224))
        return self._encode_pixels(self.torch.zeros(1, 3, size, size))[0].numpy()

    def encode_content(self, text: str) -> np.ndarray:
        """float32 [D]: ``text_embeds`` of the content text from the same CLIP's text tower."""
        ids = tokenize(self.content_tokenizer, [text], "content text",
                       self.content_encoder.config.max_position_embeddings)
        with self.torch.no_grad():
            return self.content_encoder(input_ids=self.torch.from_numpy(ids)).text_embeds[0].numpy()

    def generate(self, config: GenerationConfig, style_images, latents: np.ndarray | None = None,
                 **call_kwargs) -> ReferenceResult:
        """Run one request. ``latents``: diffusers' initial noise [N, 4, h, w]; default from the seed.
        ``call_kwargs``: further arguments of the pipeline call (a ControlNet pipeline's ``image``, ...)."""
        torch = self.torch
        config.validate(self.checkpoints.vae_scale_factor)
        method = effective_method(config)
        if self.plus and method is not Method.IP_ADAPTER:
            raise InputError(plus_method_error(method))
        e_i = self.encode_images(style_images)
        e_c = self.encode_content(config.content) if method is not Method.IP_ADAPTER else None
        e_hat, mask = condition_embeds(e_i, e_c, method=method, mode=config.mask_mode,
                                       theta=config.theta, content_scale=config.content_scale)
        scales = layer_scales(self.checkpoints.cross_attention_layers, config)
        for proc, value in zip(self.ip_processors, scales):
            proc.scale = [float(value)]
        if config.scheduler:
            self.pipe.scheduler = diffusers_scheduler(config.scheduler, self.base_scheduler_config)
        else:
            self.pipe.scheduler = type(self.base_scheduler).from_config(self.base_scheduler_config)
        f = self.checkpoints.vae_scale_factor
        shape = (config.num_images, self.pipe.unet.config.in_channels, config.height // f, config.width // f)
        noise = initial_noise(config.seed, shape) if latents is None else np.asarray(latents, dtype=np.float32)
        embeds = torch.from_numpy(np.stack([self.negative_embeds(e_hat), e_hat])[:, None])  # [2, 1, ...], negative first
        with torch.no_grad():
            out = self.pipe(
                prompt=config.prompt, negative_prompt=config.negative_prompt, height=config.height,
                width=config.width, num_inference_steps=config.steps, guidance_scale=config.guidance,
                num_images_per_prompt=config.num_images, latents=torch.from_numpy(noise),
                ip_adapter_image_embeds=[embeds], output_type="np", **call_kwargs,
            ).images
        images = (out * 255).round().astype(np.uint8)
        return ReferenceResult(images, e_i, e_c, e_hat, mask)
