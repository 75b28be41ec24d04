"""The PyTorch reference pipeline: diffusers' pipeline of the family (StableDiffusionPipeline,
StableDiffusionXLPipeline) with its own IP-Adapter support.

This is the yardstick of every parity check (DESIGN section 7). It deliberately uses the library
paths users already trust: the family's pipeline class ``from_pretrained`` on the base folder
(SDXL: its own two text encoders, pooled text embeddings and ``time_ids``),
``load_ip_adapter`` on the h94 file, transformers' CLIP models and ``CLIPImageProcessor``. Only
the conditioned embedding comes from maskst (:func:`maskst.masking.condition_embeds`), fed as
``ip_adapter_image_embeds`` = stack([zeros, e_hat]) (negative first), and the per-layer scales are
set on diffusers' IP-Adapter attention processors in ``attn_processors`` order.

Regional requests (``config.regions``) go through diffusers' own masks path: embeddings
``[2, R, D]`` (each region's style masked with its own content), ``cross_attention_kwargs=
{"ip_adapter_masks": [IPAdapterMaskProcessor().preprocess(masks, H, W).reshape(1, R, H, W)]}`` and
per-image scales ``proc.scale = [[s_l * r_1, ..., s_l * r_R]]`` (:meth:`ReferencePipeline.regional_inputs`).

DeepCache requests (``config.deepcache_interval > 1``) run with the published DeepCache code as its README
shows it: ``DeepCacheSDHelper(pipe)``, ``set_params(cache_interval=N, cache_branch_id=0)``, ``enable()``
around the pipeline call, ``disable()`` after (the helper wraps the UNet's and its blocks' ``forward`` on
this pipeline instance and restores them; maskst patches nothing itself). It works unchanged with
diffusers 0.42 and its IP-Adapter path: the image embeddings enter through ``added_cond_kwargs`` and the
regional masks through ``cross_attention_kwargs`` of the UNet call, which the helper passes through.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np

from maskst.checkpoints import AdapterKind, CheckpointSet
from maskst.contract.wire import diffusers_class_name
from maskst.deepcache import CACHE_BRANCH_ID
from maskst.errors import InputError
from maskst.families import detect_family
from maskst.generation import (GenerationConfig, effective_method, layer_scales, plus_method_error, starting_noise,
                               region_layer_scales, region_methods)
from maskst.masking import Method, condition_embeds
from maskst.tokenization import load_tokenizer, tokenize


@contextlib.contextmanager
def _deepcache(pipe, interval: int):
    """The published DeepCache helper enabled on ``pipe`` for one call (uniform schedule, branch
    :data:`maskst.deepcache.CACHE_BRANCH_ID`); nothing for interval 1.

    The helper numbers a UNet call by ``list(scheduler.timesteps).index(t)``: the step index wherever the
    timesteps are distinct (DDIM, Euler, UniPC, DPM-Solver++), but PNDM (PLMS) repeats its second timestep, and
    the helper counts that repeat (call 2) as step 1 again, so with PNDM its full steps agree with maskst's
    ``i % N`` (:func:`maskst.deepcache.is_full_step`) for every N but 2 (where call 2 is full for maskst and
    cached for the helper). maskst keeps the call index: the schedule the paper describes."""
    if interval == 1:
        yield
        return
    try:
        from DeepCache import DeepCacheSDHelper
    except ImportError:
        raise InputError("the reference of --deepcache-interval needs the published DeepCache code: "
                         "pip install 'maskst[deepcache]' (DeepCache==0.1.1)") from None
    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=CACHE_BRANCH_ID)
    helper.enable()
    try:
        yield
    finally:
        helper.disable()


@dataclasses.dataclass(frozen=True)
class ReferenceResult:
    images: np.ndarray  # uint8 [N, H, W, 3]
    image_embeds: np.ndarray  # float32 [D]: mean CLIP image_embeds of the style image(s) (regions: [R, D])
    content_embeds: np.ndarray | None  # float32 [D] (regions: [R, D], zero rows for regions without content)
    conditioned: np.ndarray  # float32 [D]: e_hat fed to the adapter (regions: [R, D])
    mask: np.ndarray  # bool [D] (regions: [R, D])


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
        self.family = detect_family(checkpoints.base)
        pipeline_class = getattr(diffusers, pipeline_class or self.family.reference_pipeline)
        self.pipe = pipeline_class.from_pretrained(
            str(checkpoints.base), **dict(self.family.reference_options), torch_dtype=torch.float32,
            local_files_only=True, **components,
        )
        self.pipe.set_progress_bar_config(disable=True)
        self.pipe.load_ip_adapter(
            str(checkpoints.ip_adapter.parent), subfolder=None, weight_name=checkpoints.ip_adapter.name,
            image_encoder_folder=None, local_files_only=True,
        )
        self.base_scheduler = self.pipe.scheduler  # the base model's own, restored for scheduler=None
        self.base_scheduler_config = dict(self.pipe.scheduler.config)
        self.image_encoder = torch_models.image_encoder(checkpoints.image_encoder)
        if checkpoints.shared_content_encoder:  # SDXL + bigG: the pipeline's own text_encoder_2 (pooled, projected)
            self.content_encoder = getattr(self.pipe, checkpoints.content_graph[0])
        else:
            self.content_encoder = torch_models.content_encoder(checkpoints.content_encoder)
        self.content_output = checkpoints.content_graph[1] if checkpoints.shared_content_encoder else "text_embeds"
        self.content_tokenizer = load_tokenizer(checkpoints.content_tokenizer_folder)
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
            out = self.content_encoder(input_ids=self.torch.from_numpy(ids))
            return getattr(out, self.content_output)[0].numpy()

    def regional_inputs(self, config: GenerationConfig):
        """A regional request in diffusers' terms: (embeds float32 [R, D] e_hat, masks tensor [1, R, H, W],
        per-processor scales [[s_l * r_1, ..., s_l * r_R]], e_i [R, D], e_c [R, D], mask bool [R, D])."""
        from diffusers.image_processor import IPAdapterMaskProcessor

        from maskst.images import load_image
        from maskst.regions import check_mask_aspect, load_mask_image

        methods = region_methods(config)
        e_i = np.stack([self.encode_images([load_image(r.style)]) for r in config.regions])
        e_c = np.stack([self.encode_content(r.content) if m is not Method.IP_ADAPTER else np.zeros_like(e_i[0])
                        for r, m in zip(config.regions, methods)])
        rows = [condition_embeds(e_i[i], e_c[i] if m is not Method.IP_ADAPTER else None, method=m,
                                 mode=config.mask_mode, theta=config.theta, content_scale=config.content_scale)
                for i, m in enumerate(methods)]
        images = []
        for index, region in enumerate(config.regions):
            image = load_mask_image(region.mask, index)
            check_mask_aspect(image, region.mask, index, config.height, config.width)
            images.append(image)
        masks = IPAdapterMaskProcessor().preprocess(images, height=config.height, width=config.width)
        masks = masks.reshape(1, len(images), config.height, config.width)
        scales = [[[float(v) for v in row]] for row in region_layer_scales(self.checkpoints.cross_attention_layers, config)]
        return (np.stack([r[0] for r in rows]), masks, scales, e_i, e_c, np.stack([r[1] for r in rows]))

    def generate(self, config: GenerationConfig, style_images=None, latents: np.ndarray | None = None,
                 **call_kwargs) -> ReferenceResult:
        """Run one request. ``latents``: diffusers' initial noise [N, 4, h, w]; default from the seed.
        ``style_images``: PIL images (a regional request reads its files from ``config.regions``).
        ``call_kwargs``: further arguments of the pipeline call (a ControlNet pipeline's ``image``, ...)."""
        torch = self.torch
        config = config.sized(self.family.default_size)
        config.validate(self.checkpoints.vae_scale_factor)
        method = effective_method(config)
        if self.plus and method is not Method.IP_ADAPTER:
            raise InputError(plus_method_error(method))
        attention_kwargs = None
        if config.regions:
            e_hat, region_masks, scales, e_i, e_c, mask = self.regional_inputs(config)
            for proc, value in zip(self.ip_processors, scales):
                proc.scale = value
            attention_kwargs = {"ip_adapter_masks": [region_masks]}
        else:
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
        noise = starting_noise(config, shape) if latents is None else np.asarray(latents, dtype=np.float32)
        if config.regions:  # [2, R, D], negative first
            embeds = torch.from_numpy(np.stack([np.stack([self.negative_embeds(e) for e in e_hat]), e_hat]))
        else:
            embeds = torch.from_numpy(np.stack([self.negative_embeds(e_hat), e_hat])[:, None])  # [2, 1, ...], negative first
        if not config.guided:  # diffusers skips guidance at <= 1 and takes the embeds as the positive half alone
            embeds = embeds[1:]
        with torch.no_grad(), _deepcache(self.pipe, config.deepcache_interval):
            out = self.pipe(
                # an empty negative prompt as diffusers' own default (None): SDXL then zeros it when the
                # base says force_zeros_for_empty_prompt, SD 1.5 encodes ""
                prompt=config.prompt, negative_prompt=config.negative_prompt or None, height=config.height,
                width=config.width, num_inference_steps=config.steps, guidance_scale=config.guidance,
                num_images_per_prompt=config.num_images, latents=torch.from_numpy(noise),
                ip_adapter_image_embeds=[embeds], cross_attention_kwargs=attention_kwargs, output_type="np",
                **call_kwargs,
            ).images
        images = (out * 255).round().astype(np.uint8)
        return ReferenceResult(images, e_i, e_c, e_hat, mask)
