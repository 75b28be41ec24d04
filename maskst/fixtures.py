"""Random-weight models written in the exact folder layouts users have (DESIGN sections 4 and 8).

No weights can be downloaded, so tests and benchmarks build their models here and then load them
through the same code that loads real checkpoints:

- ``<root>/base/``: a diffusers Stable Diffusion 1.5 folder (model_index.json, unet/, vae/,
  text_encoder/, tokenizer/ with vocab.json + merges.txt + tokenizer_config.json +
  special_tokens_map.json, scheduler/, feature_extractor/);
- ``<root>/ip_adapter/models/``: ``ip-adapter_sd15.safetensors`` (flat keys) and ``.bin`` (nested
  dict), ``ip-adapter-plus_sd15.safetensors`` (Resampler, 16 tokens) and ``image_encoder/``;
- ``<root>/content_encoder/``: a full transformers ``CLIPModel`` folder (like laion's ViT-H/14) with
  its tokenizer;
- ``<root>/controlnet/``: a diffusers ``ControlNetModel`` folder made from the base UNet as
  ``ControlNetModel.from_unet`` does, with random (nonzero) zero-convolutions and conditioning
  encoder, so its residuals change the image;
- ``<root>/annotators/sk_model.pth``: an informative-drawings ``Generator(3, 1, 3)`` state dict
  (the lineart annotator) with random weights.

SDXL sets (presets ``sdxl-*``, :class:`SdxlFixturePaths`): ``<root>/base/`` a diffusers
StableDiffusionXLPipeline folder (unet/, vae/, text_encoder/ (CLIPTextModel), text_encoder_2/
(CLIPTextModelWithProjection), tokenizer/, tokenizer_2/ (pads with "!"), scheduler/);
``<root>/ip_adapter/sdxl_models/``: ``ip-adapter_sdxl.safetensors`` (+ ``.bin``) with its ViT-bigG
``image_encoder/``, ``ip-adapter_sdxl_vit-h.safetensors`` and ``ip-adapter-plus_sdxl_vit-h.safetensors``
whose ViT-H encoder is ``<root>/ip_adapter/models/image_encoder/``; ``<root>/content_encoder/`` the
laion ViT-H CLIP of the ViT-H adapters.

StyleShot sets (presets ``styleshot-*``, :class:`StyleShotFixturePaths`): ``<root>/base/`` (SD 1.5, as
above), ``<root>/content_encoder/`` (the full CLIPModel whose vision config describes the style-aware
transformer), ``<root>/styleshot/pretrained_weight/ip.bin`` (``style_image_proj_modules.{0,1,2}``,
``adapter_modules``, ``controlnet`` = ``ControlNetModel.from_unet`` of the base UNet with random
zero-convolutions, and ``unet``, ignored as in StyleShot's file; the full preset leaves ``unet.*`` out)
and ``style_aware_encoder.bin`` (patch CNNs of the preset's widths, class tokens, position embedding and
the whole CLIP vision transformer; ``styleshot-tiny-wide`` also saves
``image_encoder.vision_model.embeddings.position_ids``, as older transformers did), and
``<root>/annotators/sk_model.pth``.

Presets: ``tiny`` and ``tiny-wide`` (other widths, depths and head sizes) for tests, and ``full``
(the real SD 1.5 / ViT-H / ViT-L architectures, random weights) for benchmarks; likewise
``sdxl-tiny``, ``sdxl-tiny-wide`` and ``sdxl-full`` (SDXL base 1.0 + ViT-bigG). Everything is
deterministic for a seed. Command line: ``maskst-fixtures OUT_DIR --preset tiny``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from maskst.contract.files import default_mode
from maskst.disk import disk_full_message, is_disk_full
from maskst.errors import CheckpointError, InputError, MaskstError
from maskst.generation import is_seed

ASSETS = Path(__file__).parent / "assets"
REAL_CONFIGS = ASSETS / "configs"

# Words that get whole-word BPE merges in the tiny vocabulary; other words still tokenize
# (byte-level fallback), exactly as CLIP's BPE does for rare words.
_WORDS = (
    "a an the of in on at with and by photo painting picture drawing sketch style art cat dog ship "
    "boat house tree flower person woman man bird car city mountain river sea sky portrait "
    "landscape watercolor oil ink pencil colorful blurry low quality bad ugly astronaut horse "
    "riding castle bridge van gogh starry night"
).split()


@dataclasses.dataclass(frozen=True)
class FixtureSpec:
    """Architecture knobs of a fixture set. Widths must stay divisible by the group-norm groups."""

    name: str
    text_hidden: int  # SD text encoder width == UNet cross-attention width
    text_layers: int
    text_heads: int
    unet_channels: tuple[int, ...]
    unet_layers_per_block: int
    unet_heads: int  # diffusers' legacy `attention_head_dim` (= number of heads)
    unet_groups: int
    vae_channels: tuple[int, ...]
    vae_groups: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_patch: int
    projection_dim: int  # CLIP projection width: image_embeds and content text_embeds
    content_hidden: int
    content_layers: int
    content_heads: int
    ip_tokens: int = 4  # diffusers infers ImageProjModel widths assuming 4 tokens, like every h94 SD 1.5 adapter
    plus_depth: int = 4  # diffusers builds every Resampler with depth 4, as the h94 Plus files have
    plus_heads: int = 1  # the Plus loader assumes 64-wide heads
    full_size: bool = False


PRESETS = {
    "tiny": FixtureSpec(
        name="tiny", text_hidden=32, text_layers=2, text_heads=2,
        unet_channels=(32, 64), unet_layers_per_block=1, unet_heads=4, unet_groups=8,
        vae_channels=(8, 16, 16, 16), vae_groups=8,
        vision_hidden=32, vision_layers=2, vision_heads=2, vision_patch=32, projection_dim=48,
        content_hidden=32, content_layers=2, content_heads=4,
    ),
    "tiny-wide": FixtureSpec(
        name="tiny-wide", text_hidden=48, text_layers=1, text_heads=3,
        unet_channels=(16, 32, 48), unet_layers_per_block=2, unet_heads=2, unet_groups=8,
        vae_channels=(16, 16, 32, 32), vae_groups=8,
        vision_hidden=40, vision_layers=3, vision_heads=5, vision_patch=28, projection_dim=72,
        content_hidden=24, content_layers=3, content_heads=2,
    ),
    "full": FixtureSpec(
        name="full", text_hidden=768, text_layers=12, text_heads=12,
        unet_channels=(320, 640, 1280, 1280), unet_layers_per_block=2, unet_heads=8, unet_groups=32,
        vae_channels=(128, 256, 512, 512), vae_groups=32,
        vision_hidden=1280, vision_layers=32, vision_heads=16, vision_patch=14, projection_dim=1024,
        content_hidden=1024, content_layers=24, content_heads=16, plus_heads=12,
        full_size=True,
    ),
}


@dataclasses.dataclass(frozen=True)
class StyleShotFixtureSpec:
    """A StyleShot set: an SD 1.5 fixture spec (base, content encoder) plus the style-aware encoder's CNN widths."""

    name: str
    sd: str  # the PRESETS entry of the base and the content encoder
    cnn_widths: tuple[int, int, int]  # StyleShot: (320, 640, 1280)
    save_position_ids: bool = False  # style_aware_encoder.bin with embeddings.position_ids (older transformers)
    unet_copy: bool = True  # ip.bin with the unet.* copy StyleShot's file has (ignored by every loader)

    @property
    def full_size(self) -> bool:
        return PRESETS[self.sd].full_size


STYLESHOT_PRESETS = {
    "styleshot-tiny": StyleShotFixtureSpec("styleshot-tiny", "tiny", (8, 16, 24)),
    "styleshot-tiny-wide": StyleShotFixtureSpec("styleshot-tiny-wide", "tiny-wide", (12, 20, 36), save_position_ids=True),
    "styleshot-full": StyleShotFixtureSpec("styleshot-full", "full", (320, 640, 1280), unet_copy=False),
}


def _read_config(name: str) -> dict:
    return json.loads((REAL_CONFIGS / name).read_text())


# ---------------------------------------------------------------- tokenizer files


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-to-printable-character table (the order CLIP's vocabulary starts with)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def write_clip_tokenizer(folder: Path, tokenizer_config: dict, special_tokens_map: dict) -> int:
    """Write vocab.json + merges.txt + the two json files of a small CLIP BPE; returns vocab size.

    The vocabulary has CLIP's structure (256 byte characters, the same with ``</w>``, merges,
    then ``<|startoftext|>`` and ``<|endoftext|>``) but merges only for a few common words.
    """
    folder.mkdir(parents=True, exist_ok=True)
    base = list(_bytes_to_unicode().values())
    vocab = base + [c + "</w>" for c in base]
    merges: list[str] = []
    for word in _WORDS:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            merge = f"{symbols[0]} {symbols[1]}"
            merged = symbols[0] + symbols[1]
            if merge not in merges:
                merges.append(merge)
                vocab.append(merged)
            symbols = [merged] + symbols[2:]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    ids = {tok: i for i, tok in enumerate(dict.fromkeys(vocab))}
    (folder / "vocab.json").write_text(json.dumps(ids, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(special_tokens_map, indent=2))
    return len(ids)


# ---------------------------------------------------------------- model configs


def _text_config(spec: FixtureSpec, vocab_size: int) -> dict:
    cfg = _read_config("sd15_text_encoder_config.json")
    if not spec.full_size:
        cfg.update(hidden_size=spec.text_hidden, intermediate_size=spec.text_hidden * 4,
                   num_hidden_layers=spec.text_layers, num_attention_heads=spec.text_heads,
                   vocab_size=vocab_size)
    return cfg


def _unet_config(spec: FixtureSpec) -> dict:
    cfg = _read_config("sd15_unet_config.json")
    if not spec.full_size:
        levels = len(spec.unet_channels)
        cfg.update(
            block_out_channels=list(spec.unet_channels),
            down_block_types=["CrossAttnDownBlock2D"] * (levels - 1) + ["DownBlock2D"],
            up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (levels - 1),
            layers_per_block=spec.unet_layers_per_block,
            attention_head_dim=spec.unet_heads,
            cross_attention_dim=spec.text_hidden,
            norm_num_groups=spec.unet_groups,
            sample_size=8,
        )
    return cfg


def _vae_config(spec: FixtureSpec) -> dict:
    cfg = _read_config("sd15_vae_config.json")
    if not spec.full_size:
        n = len(spec.vae_channels)
        cfg.update(block_out_channels=list(spec.vae_channels), layers_per_block=1,
                   down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
                   norm_num_groups=spec.vae_groups, sample_size=64)
    return cfg


def _vision_config(spec: FixtureSpec) -> dict:
    cfg = _read_config("ip_adapter_image_encoder_config.json")
    if not spec.full_size:
        cfg.update(hidden_size=spec.vision_hidden, intermediate_size=spec.vision_hidden * 4,
                   num_hidden_layers=spec.vision_layers, num_attention_heads=spec.vision_heads,
                   patch_size=spec.vision_patch, projection_dim=spec.projection_dim)
    return cfg


def _content_config(spec: FixtureSpec, vocab_size: int) -> dict:
    """A full CLIPModel config, like laion/CLIP-ViT-H-14's (text and vision towers)."""
    cfg = _read_config("content_encoder_config.json")
    if not spec.full_size:
        # bos / eos are the small vocabulary's last two ids (laion's 49406 / 49407 are outside it), so
        # every transformers path pools the end-of-text token as it does on the real model
        text = dict(hidden_size=spec.content_hidden, intermediate_size=spec.content_hidden * 4,
                    num_hidden_layers=spec.content_layers, num_attention_heads=spec.content_heads,
                    vocab_size=vocab_size, projection_dim=spec.projection_dim,
                    bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1)
        vision = dict(hidden_size=spec.vision_hidden, intermediate_size=spec.vision_hidden * 4,
                      num_hidden_layers=1, num_attention_heads=spec.vision_heads,
                      patch_size=spec.vision_patch, projection_dim=spec.projection_dim)
        for key, values in (("text_config", text), ("text_config_dict", text),
                            ("vision_config", vision), ("vision_config_dict", vision)):
            if key in cfg:
                cfg[key].update(values)
        cfg["projection_dim"] = spec.projection_dim
    return cfg


# ---------------------------------------------------------------- writers


def _seeded(seed: int):
    import torch

    torch.manual_seed(seed)
    return torch


def randomize_weights(module, seed: int) -> None:
    """Re-draw every parameter with a fixed generator so fixtures do not depend on init code.

    Scales stay moderate (std 0.02 for matrices, around 1 for norm weights) so tiny random
    networks produce non-trivial, finite activations.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim == 1 and ("norm" in name or "ln" in name) and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
            elif param.ndim == 1 and "embedding" in name:  # CLIP's class token: O(1) like a trained one
                param.copy_(torch.randn(param.shape, generator=gen))
            elif param.ndim == 1:
                param.copy_(0.02 * torch.randn(param.shape, generator=gen))
            else:
                fan_in = int(np.prod(param.shape[1:]))
                param.copy_(torch.randn(param.shape, generator=gen) / np.sqrt(max(fan_in, 1)))


def write_base(folder: Path, spec: FixtureSpec, seed: int) -> None:
    """A diffusers Stable Diffusion 1.5 folder as `save_pretrained` lays it out."""
    torch = _seeded(seed)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab_size = write_clip_tokenizer(
        folder / "tokenizer", _read_config("sd15_tokenizer_config.json"), _read_config("sd15_special_tokens_map.json")
    )
    if spec.full_size:
        vocab_size = 49408
    text = CLIPTextModel(CLIPTextConfig(**_text_config(spec, vocab_size)))
    unet = UNet2DConditionModel.from_config(_unet_config(spec))
    vae = AutoencoderKL.from_config(_vae_config(spec))
    for i, module in enumerate((text, unet, vae)):
        if not spec.full_size:
            randomize_weights(module, seed + i)
    text.save_pretrained(folder / "text_encoder")
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    del torch
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    shutil.copy(REAL_CONFIGS / "sd15_scheduler_config.json", folder / "scheduler" / "scheduler_config.json")
    (folder / "feature_extractor").mkdir(parents=True, exist_ok=True)
    shutil.copy(REAL_CONFIGS / "sd15_preprocessor_config.json", folder / "feature_extractor" / "preprocessor_config.json")
    index = _read_config("sd15_model_index.json")
    index["safety_checker"] = [None, None]
    index["requires_safety_checker"] = False
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def _cross_attention_hidden_sizes(unet_config: dict) -> list[int]:
    """Hidden width of each cross-attention layer in `unet.attn_processors` order."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_config(unet_config)
    sizes = []
    for name, _ in unet.attn_processors.items():
        if name.endswith("attn2.processor"):
            module = unet.get_submodule(name[: -len(".processor")])
            sizes.append(module.to_q.out_features)
    return sizes


def ip_adapter_state_dict(spec: FixtureSpec, seed: int, plus: bool = False) -> dict:
    """h94 nested state dict {"image_proj": {...}, "ip_adapter": {...}} with random weights."""
    return adapter_state_dict(seed, cross=spec.text_hidden, embed_dim=spec.projection_dim,
                              vision_hidden=spec.vision_hidden,
                              layer_widths=_cross_attention_hidden_sizes(_unet_config(spec)), plus=plus,
                              tokens=spec.ip_tokens, plus_heads=spec.plus_heads, plus_depth=spec.plus_depth,
                              full_size=spec.full_size)


def adapter_state_dict(seed: int, cross: int, embed_dim: int, vision_hidden: int, layer_widths: list[int],
                       plus: bool = False, tokens: int = 4, plus_heads: int = 1, plus_depth: int = 4,
                       full_size: bool = False) -> dict:
    """h94 nested state dict of any base: tokens ``cross`` wide, projection from ``embed_dim``
    (``image_embeds``; Plus: a Resampler from the encoder's hidden width ``vision_hidden``), one
    to_k_ip / to_v_ip pair per cross-attention layer of width ``layer_widths[i]`` (keys 1, 3, ...)."""
    import torch

    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=None):
        scale = scale if scale is not None else 1.0 / np.sqrt(shape[-1])
        return (scale * torch.randn(shape, generator=gen)).contiguous()

    if plus:
        dim, heads, depth, queries = cross, plus_heads, plus_depth, 16
        inner = 64 * heads
        dim = inner if not full_size else dim
        proj = {"latents": rand(1, queries, dim, scale=dim**-0.5),
                "proj_in.weight": rand(dim, vision_hidden), "proj_in.bias": rand(dim, scale=0.02),
                "proj_out.weight": rand(cross, dim), "proj_out.bias": rand(cross, scale=0.02),
                "norm_out.weight": 1 + rand(cross, scale=0.1), "norm_out.bias": rand(cross, scale=0.02)}
        for i in range(depth):
            p = f"layers.{i}."
            for norm in ("0.norm1", "0.norm2"):
                proj[p + norm + ".weight"] = 1 + rand(dim, scale=0.1)
                proj[p + norm + ".bias"] = rand(dim, scale=0.02)
            proj[p + "0.to_q.weight"] = rand(inner, dim)
            proj[p + "0.to_kv.weight"] = rand(2 * inner, dim)
            proj[p + "0.to_out.weight"] = rand(dim, inner)
            proj[p + "1.0.weight"] = 1 + rand(dim, scale=0.1)
            proj[p + "1.0.bias"] = rand(dim, scale=0.02)
            proj[p + "1.1.weight"] = rand(4 * dim, dim)
            proj[p + "1.3.weight"] = rand(dim, 4 * dim)
    else:
        proj = {"proj.weight": rand(tokens * cross, embed_dim),
                "proj.bias": rand(tokens * cross, scale=0.02),
                "norm.weight": 1 + rand(cross, scale=0.1), "norm.bias": rand(cross, scale=0.02)}
    layers = {}
    for i, hidden in enumerate(layer_widths):
        layers[f"{2 * i + 1}.to_k_ip.weight"] = rand(hidden, cross)
        layers[f"{2 * i + 1}.to_v_ip.weight"] = rand(hidden, cross)
    return {"image_proj": proj, "ip_adapter": layers}


def save_adapter(state: dict, path: Path, also_bin: bool = False) -> None:
    """Write an adapter state dict as h94 does: flat ``image_proj.*`` / ``ip_adapter.*`` safetensors,
    and (``also_bin``) the nested-dict ``.bin`` beside it."""
    import torch
    from safetensors.torch import save_file

    flat = {f"{group}.{k}": v for group, tensors in state.items() for k, v in tensors.items()}
    save_file(flat, str(path))
    if also_bin:
        torch.save(state, path.with_suffix(".bin"))


def write_ip_adapter(folder: Path, spec: FixtureSpec, seed: int) -> None:
    """h94/IP-Adapter layout: models/ip-adapter_sd15.{safetensors,bin}, plus, image_encoder/."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    models = folder / "models"
    models.mkdir(parents=True, exist_ok=True)
    for plus, stem in ((False, "ip-adapter_sd15"), (True, "ip-adapter-plus_sd15")):
        state = ip_adapter_state_dict(spec, seed + 10 + int(plus), plus=plus)
        # the .bin files are nested dicts
        save_adapter(state, models / f"{stem}.safetensors", also_bin=not plus and not spec.full_size)
    _seeded(seed + 20)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**_vision_config(spec)))
    if not spec.full_size:
        randomize_weights(encoder, seed + 20)
    encoder.save_pretrained(models / "image_encoder")


def write_content_encoder(folder: Path, spec: FixtureSpec, seed: int) -> None:
    """A transformers CLIPModel folder (text + vision towers, projections) and its tokenizer."""
    from transformers import CLIPConfig, CLIPModel

    vocab_size = write_clip_tokenizer(
        folder, _read_config("content_encoder_tokenizer_config.json"),
        _read_config("content_encoder_special_tokens_map.json"),
    )
    if spec.full_size:
        vocab_size = 49408
    _seeded(seed + 30)
    config = _content_config(spec, vocab_size)
    building = {k: v for k, v in config.items() if not k.endswith("_config_dict")}
    model = CLIPModel(CLIPConfig(**building))
    if not spec.full_size:
        randomize_weights(model, seed + 30)
    model.save_pretrained(folder)
    # keep laion's own config.json structure (text_config_dict / vision_config_dict, null nested
    # versions), so loaders are tested on the real file shape, not on what transformers writes
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def write_controlnet(folder: Path, base: Path, spec: FixtureSpec, seed: int) -> None:
    """``ControlNetModel.from_unet`` of the base UNet, saved as a diffusers ControlNet folder.

    from_unet copies the UNet's encoder and zero-initialises the conditioning encoder's last conv and
    every residual projection ("zero convolutions"); those are drawn at random here (as after training),
    so the ControlNet's residuals are nonzero and parity tests see them.
    """
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(base / "unet"), torch_dtype=torch.float32)
    controlnet = ControlNetModel.from_unet(unet)
    for i, module in enumerate((controlnet.controlnet_cond_embedding, controlnet.controlnet_down_blocks,
                                controlnet.controlnet_mid_block)):
        randomize_weights(module, seed + 40 + i)
    controlnet.save_pretrained(folder)


def write_styleshot(folder: Path, base: Path, content_encoder: Path, spec: "StyleShotFixtureSpec", seed: int) -> None:
    """``pretrained_weight/ip.bin`` and ``pretrained_weight/style_aware_encoder.bin`` in StyleShot's layout
    (random weights; the style-aware transformer is the content encoder's vision config)."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    from maskst.styleshot_checkpoints import vision_tower_config
    from maskst.styleshot_model import style_aware_encoder, style_projections

    weights = folder / "pretrained_weight"
    weights.mkdir(parents=True, exist_ok=True)
    full = spec.full_size
    unet = UNet2DConditionModel.from_pretrained(str(base / "unet"), torch_dtype=torch.float32)
    cross = int(unet.config.cross_attention_dim)
    vision = vision_tower_config(content_encoder / "config.json", json.loads((content_encoder / "config.json").read_text()))
    _seeded(seed + 60)
    state = {}
    projections = style_projections(vision["projection_dim"], cross)
    if not full:
        randomize_weights(projections, seed + 60)
    state.update({f"style_image_proj_modules.{k}": v for k, v in projections.state_dict().items()})
    layer = 0
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            width = int(unet.get_submodule(name[: -len(".processor")]).to_q.out_features)
            gen = torch.Generator().manual_seed(seed + 61 + layer)
            for kind in ("to_k_ip", "to_v_ip"):
                state[f"adapter_modules.{2 * layer + 1}.{kind}.weight"] = torch.randn(width, cross, generator=gen) / np.sqrt(cross)
            layer += 1
    controlnet = ControlNetModel.from_unet(unet)
    if not full:  # from_unet zero-initialises these; trained ones are not zero
        for i, module in enumerate((controlnet.controlnet_cond_embedding, controlnet.controlnet_down_blocks,
                                    controlnet.controlnet_mid_block)):
            randomize_weights(module, seed + 70 + i)
    state.update({f"controlnet.{k}": v for k, v in controlnet.state_dict().items()})
    if spec.unet_copy:
        state.update({f"unet.{k}": v for k, v in unet.state_dict().items()})
    torch.save(state, weights / "ip.bin")
    del state, controlnet, unet
    _seeded(seed + 80)
    encoder = style_aware_encoder(vision, spec.cnn_widths)
    if not full:
        randomize_weights(encoder, seed + 80)
    encoder_state = encoder.state_dict()
    if spec.save_position_ids:
        embeddings = encoder.image_encoder.vision_model.embeddings
        encoder_state["image_encoder.vision_model.embeddings.position_ids"] = torch.arange(embeddings.num_positions)[None]
    torch.save(encoder_state, weights / "style_aware_encoder.bin")


def write_lineart_model(path: Path, seed: int) -> None:
    """A random-weight informative-drawings ``Generator(3, 1, 3)`` state dict (``sk_model.pth``)."""
    import torch

    from maskst.informative_drawings import lineart_generator

    torch.manual_seed(seed + 50)
    model = lineart_generator()
    randomize_weights(model, seed + 50)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)


@dataclasses.dataclass(frozen=True)
class FixturePaths:
    """Where a fixture set lives; the arguments maskst-export takes."""

    root: Path

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def ip_adapter(self) -> Path:
        return self.root / "ip_adapter" / "models" / "ip-adapter_sd15.safetensors"

    @property
    def ip_adapter_bin(self) -> Path:
        return self.root / "ip_adapter" / "models" / "ip-adapter_sd15.bin"

    @property
    def ip_adapter_plus(self) -> Path:
        return self.root / "ip_adapter" / "models" / "ip-adapter-plus_sd15.safetensors"

    @property
    def image_encoder(self) -> Path:
        return self.root / "ip_adapter" / "models" / "image_encoder"

    @property
    def content_encoder(self) -> Path:
        return self.root / "content_encoder"

    @property
    def default_content_encoder(self) -> Path:
        """What maskst-export needs as --content-encoder for ``ip_adapter``."""
        return self.content_encoder

    @property
    def controlnet(self) -> Path:
        return self.root / "controlnet"

    @property
    def lineart_model(self) -> Path:
        return self.root / "annotators" / "sk_model.pth"


# ---------------------------------------------------------------- SDXL


@dataclasses.dataclass(frozen=True)
class SdxlFixtureSpec:
    """Architecture knobs of an SDXL fixture set (base, h94 ``sdxl_models/`` adapters, encoders).

    Two text encoders as SDXL has them: ``text_encoder`` (the CLIP ViT-L role, ``text_*``) and
    ``text_encoder_2`` (the OpenCLIP bigG text role, ``text2_*``, with a projection to
    ``text2_projection`` = the bigG image encoder's ``projection_dim``); the UNet's cross-attention
    width is ``text_hidden + text2_hidden`` and its ``text_time`` embedding takes
    ``6 * time_embed_dim + text2_projection`` values. ``vision_*`` / ``projection_dim`` /
    ``content_*`` are the ViT-H image encoder (``models/image_encoder``) and the laion content
    encoder of the ``*_vit-h`` adapters, as in :class:`FixtureSpec`.
    """

    name: str
    text_hidden: int
    text_layers: int
    text_heads: int
    text2_hidden: int
    text2_layers: int
    text2_heads: int
    text2_projection: int
    unet_channels: tuple[int, ...]
    unet_layers_per_block: int
    unet_heads: tuple[int, ...]  # diffusers' legacy `attention_head_dim` per block (= number of heads)
    unet_transformer_layers: tuple[int, ...]  # `transformer_layers_per_block` (the mid block uses the last)
    unet_groups: int
    time_embed_dim: int  # `addition_time_embed_dim`: sinusoid width per time id
    vae_channels: tuple[int, ...]
    vae_groups: int
    bigg_hidden: int
    bigg_layers: int
    bigg_heads: int
    bigg_patch: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_patch: int
    projection_dim: int
    content_hidden: int
    content_layers: int
    content_heads: int
    ip_tokens: int = 4
    plus_depth: int = 4
    plus_heads: int = 1
    full_size: bool = False
    family: str = "sdxl"


SDXL_PRESETS = {
    "sdxl-tiny": SdxlFixtureSpec(
        name="sdxl-tiny", text_hidden=32, text_layers=2, text_heads=2,
        text2_hidden=48, text2_layers=2, text2_heads=3, text2_projection=40,
        unet_channels=(32, 64), unet_layers_per_block=1, unet_heads=(2, 4), unet_transformer_layers=(1, 2),
        unet_groups=8, time_embed_dim=8, vae_channels=(8, 16, 16, 16), vae_groups=8,
        bigg_hidden=40, bigg_layers=2, bigg_heads=2, bigg_patch=32,
        vision_hidden=32, vision_layers=2, vision_heads=2, vision_patch=32, projection_dim=48,
        content_hidden=32, content_layers=2, content_heads=4,
    ),
    "sdxl-tiny-wide": SdxlFixtureSpec(
        name="sdxl-tiny-wide", text_hidden=24, text_layers=1, text_heads=2,
        text2_hidden=40, text2_layers=3, text2_heads=5, text2_projection=56,
        unet_channels=(16, 32, 48), unet_layers_per_block=2, unet_heads=(1, 2, 3), unet_transformer_layers=(1, 1, 2),
        unet_groups=8, time_embed_dim=4, vae_channels=(16, 16, 32, 32), vae_groups=8,
        bigg_hidden=24, bigg_layers=3, bigg_heads=3, bigg_patch=28,
        vision_hidden=40, vision_layers=3, vision_heads=5, vision_patch=28, projection_dim=72,
        content_hidden=24, content_layers=3, content_heads=2,
    ),
    # the real SDXL base 1.0 + ViT-bigG architectures; ip-adapter_sdxl (bigG) only (no ViT-H set)
    "sdxl-full": SdxlFixtureSpec(
        name="sdxl-full", text_hidden=768, text_layers=12, text_heads=12,
        text2_hidden=1280, text2_layers=32, text2_heads=20, text2_projection=1280,
        unet_channels=(320, 640, 1280), unet_layers_per_block=2, unet_heads=(5, 10, 20),
        unet_transformer_layers=(1, 2, 10), unet_groups=32, time_embed_dim=256,
        vae_channels=(128, 256, 512, 512), vae_groups=32,
        bigg_hidden=1664, bigg_layers=48, bigg_heads=16, bigg_patch=14,
        vision_hidden=1280, vision_layers=32, vision_heads=16, vision_patch=14, projection_dim=1024,
        content_hidden=1024, content_layers=24, content_heads=16, plus_heads=20,
        full_size=True,
    ),
}


def _sdxl_text_configs(spec: SdxlFixtureSpec, vocab_size: int) -> tuple[dict, dict]:
    first, second = _read_config("sdxl_text_encoder_config.json"), _read_config("sdxl_text_encoder_2_config.json")
    if not spec.full_size:
        first.update(hidden_size=spec.text_hidden, intermediate_size=spec.text_hidden * 4,
                     num_hidden_layers=spec.text_layers, num_attention_heads=spec.text_heads,
                     vocab_size=vocab_size, projection_dim=spec.text_hidden)
        second.update(hidden_size=spec.text2_hidden, intermediate_size=spec.text2_hidden * 4,
                      num_hidden_layers=spec.text2_layers, num_attention_heads=spec.text2_heads,
                      vocab_size=vocab_size, projection_dim=spec.text2_projection)
    return first, second


def sdxl_unet_config(spec: SdxlFixtureSpec) -> dict:
    cfg = _read_config("sdxl_unet_config.json")
    if not spec.full_size:
        levels = len(spec.unet_channels)
        cfg.update(
            block_out_channels=list(spec.unet_channels),
            down_block_types=["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (levels - 1),
            up_block_types=["CrossAttnUpBlock2D"] * (levels - 1) + ["UpBlock2D"],
            layers_per_block=spec.unet_layers_per_block,
            attention_head_dim=list(spec.unet_heads),
            transformer_layers_per_block=list(spec.unet_transformer_layers),
            cross_attention_dim=spec.text_hidden + spec.text2_hidden,
            addition_time_embed_dim=spec.time_embed_dim,
            projection_class_embeddings_input_dim=6 * spec.time_embed_dim + spec.text2_projection,
            norm_num_groups=spec.unet_groups,
            sample_size=16,
        )
    return cfg


def _sdxl_vae_config(spec: SdxlFixtureSpec) -> dict:
    cfg = _read_config("sdxl_vae_config.json")
    if not spec.full_size:
        n = len(spec.vae_channels)
        cfg.update(block_out_channels=list(spec.vae_channels), layers_per_block=1,
                   down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
                   norm_num_groups=spec.vae_groups, sample_size=64)
    return cfg


def _bigg_vision_config(spec: SdxlFixtureSpec) -> dict:
    cfg = _read_config("ip_adapter_sdxl_image_encoder_config.json")
    if not spec.full_size:
        cfg.update(hidden_size=spec.bigg_hidden, intermediate_size=spec.bigg_hidden * 4,
                   num_hidden_layers=spec.bigg_layers, num_attention_heads=spec.bigg_heads,
                   patch_size=spec.bigg_patch, projection_dim=spec.text2_projection)
    return cfg


def write_sdxl_base(folder: Path, spec: SdxlFixtureSpec, seed: int) -> None:
    """A diffusers StableDiffusionXLPipeline folder as `save_pretrained` lays it out (no feature
    extractor, no image encoder: SDXL base 1.0 has neither)."""
    torch = _seeded(seed)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    vocab_size = write_clip_tokenizer(
        folder / "tokenizer", _read_config("sd15_tokenizer_config.json"), _read_config("sd15_special_tokens_map.json"))
    write_clip_tokenizer(folder / "tokenizer_2", _read_config("sdxl_tokenizer_2_config.json"),
                         _read_config("sdxl_tokenizer_2_special_tokens_map.json"))  # pads with "!" (id 0)
    if spec.full_size:
        vocab_size = 49408
    first, second = _sdxl_text_configs(spec, vocab_size)
    modules = {"text_encoder": CLIPTextModel(CLIPTextConfig(**first)),
               "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**second))}
    modules["unet"] = UNet2DConditionModel.from_config(sdxl_unet_config(spec))
    modules["vae"] = AutoencoderKL.from_config(_sdxl_vae_config(spec))
    for i, (name, module) in enumerate(modules.items()):
        # fp32 on disk like every other component (transformers 5 builds text_encoder_2 in its config's
        # torch_dtype, float16 in SDXL base 1.0's config); loaders read fp32 either way
        module = module.float()
        if not spec.full_size:
            randomize_weights(module, seed + i)
        module.save_pretrained(folder / name)
        modules[name] = None  # full size: free each model (GBs) once written
    del torch
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    shutil.copy(REAL_CONFIGS / "sdxl_scheduler_config.json", folder / "scheduler" / "scheduler_config.json")
    shutil.copy(REAL_CONFIGS / "sdxl_model_index.json", folder / "model_index.json")


def write_sdxl_ip_adapter(folder: Path, spec: SdxlFixtureSpec, seed: int) -> None:
    """h94 layout for SDXL: ``sdxl_models/ip-adapter_sdxl`` (ViT-bigG ``image_embeds``) with
    ``sdxl_models/image_encoder/``; ``sdxl_models/ip-adapter_sdxl_vit-h`` and
    ``ip-adapter-plus_sdxl_vit-h`` (Resampler, 16 tokens) with ``models/image_encoder/`` (ViT-H).
    The full-size preset writes the bigG adapter and encoder only."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from maskst.checkpoints import unet_cross_attention_widths

    widths = [w for _, w in unet_cross_attention_widths(sdxl_unet_config(spec))]
    cross = int(sdxl_unet_config(spec)["cross_attention_dim"])
    models = folder / "sdxl_models"
    models.mkdir(parents=True, exist_ok=True)
    common = dict(cross=cross, layer_widths=widths, tokens=spec.ip_tokens, plus_heads=spec.plus_heads,
                  plus_depth=spec.plus_depth, full_size=spec.full_size)
    save_adapter(adapter_state_dict(seed + 10, embed_dim=spec.text2_projection, vision_hidden=spec.bigg_hidden, **common),
                 models / "ip-adapter_sdxl.safetensors", also_bin=not spec.full_size)
    encoders = [(models / "image_encoder", _bigg_vision_config(spec), seed + 20)]
    if not spec.full_size:
        for offset, (plus, stem) in enumerate(((False, "ip-adapter_sdxl_vit-h"), (True, "ip-adapter-plus_sdxl_vit-h"))):
            state = adapter_state_dict(seed + 11 + offset, embed_dim=spec.projection_dim, vision_hidden=spec.vision_hidden,
                                       plus=plus, **common)
            save_adapter(state, models / f"{stem}.safetensors")
        encoders.append((folder / "models" / "image_encoder", _vision_config(spec), seed + 21))
    for path, config, enc_seed in encoders:
        _seeded(enc_seed)
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**config)).float()
        if not spec.full_size:
            randomize_weights(encoder, enc_seed)
        encoder.save_pretrained(path)
        del encoder


@dataclasses.dataclass(frozen=True)
class SdxlFixturePaths:
    """Where an SDXL fixture set lives (the h94 repository layout under ``ip_adapter/``)."""

    root: Path

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def ip_adapter(self) -> Path:
        """ip-adapter_sdxl: ViT-bigG image_embeds; its content encoder defaults to the base's text_encoder_2."""
        return self.root / "ip_adapter" / "sdxl_models" / "ip-adapter_sdxl.safetensors"

    @property
    def ip_adapter_bin(self) -> Path:
        return self.root / "ip_adapter" / "sdxl_models" / "ip-adapter_sdxl.bin"

    @property
    def ip_adapter_vit_h(self) -> Path:
        return self.root / "ip_adapter" / "sdxl_models" / "ip-adapter_sdxl_vit-h.safetensors"

    @property
    def ip_adapter_plus(self) -> Path:
        return self.root / "ip_adapter" / "sdxl_models" / "ip-adapter-plus_sdxl_vit-h.safetensors"

    @property
    def image_encoder(self) -> Path:
        """ViT-bigG (sdxl_models/image_encoder): the default beside ip-adapter_sdxl."""
        return self.root / "ip_adapter" / "sdxl_models" / "image_encoder"

    @property
    def image_encoder_vit_h(self) -> Path:
        """ViT-H (models/image_encoder): what the *_vit-h adapters need (--image-encoder)."""
        return self.root / "ip_adapter" / "models" / "image_encoder"

    @property
    def content_encoder(self) -> Path:
        """laion ViT-H CLIP (text tower): the content encoder of the *_vit-h adapters."""
        return self.root / "content_encoder"

    @property
    def default_content_encoder(self) -> None:
        """What maskst-export needs as --content-encoder for ``ip_adapter`` (bigG): none, the base's text_encoder_2."""
        return None


@dataclasses.dataclass(frozen=True)
class StyleShotFixturePaths:
    """Where a StyleShot fixture set lives; the arguments of ``maskst-export --styleshot``."""

    root: Path

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def styleshot(self) -> Path:
        return self.root / "styleshot"

    @property
    def ip_bin(self) -> Path:
        return self.styleshot / "pretrained_weight" / "ip.bin"

    @property
    def style_aware_encoder(self) -> Path:
        return self.styleshot / "pretrained_weight" / "style_aware_encoder.bin"

    @property
    def content_encoder(self) -> Path:
        """The laion-like CLIPModel: vision config of the style-aware transformer, text tower for e_c."""
        return self.root / "content_encoder"

    @property
    def lineart_model(self) -> Path:
        return self.root / "annotators" / "sk_model.pth"


def fixture_paths(root: Path, preset: str):
    """FixturePaths (SD 1.5 presets), SdxlFixturePaths (``sdxl-*``) or StyleShotFixturePaths (``styleshot-*``)."""
    if preset in STYLESHOT_PRESETS:
        return StyleShotFixturePaths(Path(root))
    return SdxlFixturePaths(Path(root)) if preset in SDXL_PRESETS else FixturePaths(Path(root))


ALL_PRESETS = (*PRESETS, *SDXL_PRESETS, *STYLESHOT_PRESETS)


# What write_fixtures puts at a set's top level (every preset's folders and the marker): a folder holding only these
# is a set it wrote and may be replaced; anything else in it is someone's data.
MARKER = "fixture.json"
FIXTURE_ENTRIES = frozenset({MARKER, "base", "ip_adapter", "content_encoder", "controlnet", "annotators", "styleshot"})


def check_seed(seed, what: str = "seed") -> None:
    """The project's seed rule (as GenerationConfig and maskst-sweep --seeds): an integer in [0, 2**63)."""
    if not is_seed(seed):
        raise InputError(f"{what} {seed} must be an integer in [0, 2**63); choose a seed in that range, e.g. 0")


def existing_fixtures(root: Path, what: str = "OUT_DIR") -> dict | None:
    """The marker of the fixture set at ``root`` (None: no folder there, or an empty one, so nothing to replace).

    InputError for anything that is not a set :func:`write_fixtures` wrote: a file, a non-empty folder without a
    readable marker, or a set with files of someone else's added at its top."""
    root = Path(root)
    if not root.exists():
        return None
    if not root.is_dir():
        raise InputError(f"{what} {root} is a file, not a folder; give a new or empty folder for the fixtures")
    try:
        names = sorted(entry.name for entry in root.iterdir())
    except OSError as exc:
        raise InputError(f"{what} {root} cannot be read ({exc.strerror or exc}); give a new or empty folder") from None
    if not names:
        return None
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        marker = None
    if not isinstance(marker, dict) or "preset" not in marker:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise InputError(f"{what} {root} is not empty ({shown}) and is not a fixture set (no valid {MARKER}); "
                         f"it was left untouched. Give a new or empty folder, or remove {root} yourself")
    extra = [name for name in names if name not in FIXTURE_ENTRIES]
    if extra:
        raise InputError(f"{what} {root} is a fixture set ({marker['preset']}) but also holds "
                         f"{', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''}, which maskst-fixtures did not "
                         f"write; it was left untouched. Move those out, or give a new or empty folder")
    return marker


def write_fixtures(root: Path, preset: str = "tiny", seed: int = 0):
    """Write a complete fixture set under ``root`` (base, ip_adapter, content_encoder; SD 1.5 presets also a
    ControlNet made from the base UNet and an informative-drawings lineart model).

    ``root`` must be new, empty or a fixture set written here before (:func:`existing_fixtures`; anything else is
    InputError and left untouched). The set is built in a temporary sibling folder and swapped in at the end, so an
    interrupted or failed run never leaves a half-written set, and a previous set stays as it was.
    """
    if preset not in ALL_PRESETS:
        raise InputError(f"preset={preset!r}; choose one of {', '.join(ALL_PRESETS)}")
    check_seed(seed)
    spec = PRESETS.get(preset) or SDXL_PRESETS.get(preset) or STYLESHOT_PRESETS[preset]
    given = Path(root)
    # a link to a folder: the set goes where it points (renaming the link away would leave its target behind)
    root = Path(os.path.realpath(given)) if given.is_symlink() else given
    existing_fixtures(root)  # before minutes of work: refuse someone's folder up front
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    except OSError as exc:
        raise InputError(f"OUT_DIR {given}: cannot create a folder in {root.parent} ({exc.strerror or exc}); "
                         "choose a writable location") from None
    from maskst.torch_models import quiet_transformers

    try:
        os.chmod(staging, default_mode(folder=True))  # it becomes OUT_DIR: mkdtemp's 0700 would hide the set
        with quiet_transformers():
            if isinstance(spec, StyleShotFixtureSpec):
                sd = PRESETS[spec.sd]
                write_base(staging / "base", sd, seed)
                write_content_encoder(staging / "content_encoder", sd, seed)
                write_styleshot(staging / "styleshot", staging / "base", staging / "content_encoder", spec, seed)
                write_lineart_model(staging / "annotators" / "sk_model.pth", seed)
            elif isinstance(spec, SdxlFixtureSpec):
                write_sdxl_base(staging / "base", spec, seed)
                write_sdxl_ip_adapter(staging / "ip_adapter", spec, seed)
                if not spec.full_size:  # the laion ViT-H CLIP of the *_vit-h adapters
                    write_content_encoder(staging / "content_encoder", spec, seed)
            else:
                write_base(staging / "base", spec, seed)
                write_ip_adapter(staging / "ip_adapter", spec, seed)
                write_content_encoder(staging / "content_encoder", spec, seed)
                write_controlnet(staging / "controlnet", staging / "base", spec, seed)
                write_lineart_model(staging / "annotators" / "sk_model.pth", seed)
        (staging / MARKER).write_text(json.dumps({"preset": preset, "seed": seed}))
        _swap_in(staging, root)
    except BaseException as exc:
        # looked at before the partial set is removed; our own typed errors are never a full disk
        if isinstance(exc, MaskstError) or not is_disk_full(exc, root.parent):
            raise
        shutil.rmtree(staging, ignore_errors=True)
        raise CheckpointError(disk_full_message(root.parent, f"the {preset} fixtures", exc,
                                                "maskst-bench --cache-dir")) from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return fixture_paths(given, preset)


def _swap_in(staging: Path, root: Path) -> None:
    """Rename the finished ``staging`` to ``root``; a previous set is renamed aside first and removed only once the
    new one is in place (put back if that rename fails)."""
    existing_fixtures(root)  # again: someone may have written into it during the build
    try:
        if not root.exists():
            staging.rename(root)
            return
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old.", dir=root.parent))
        old.rmdir()  # only its unique name is needed: rename() onto it
        root.rename(old)
    except OSError as exc:  # e.g. an empty mount point, which cannot be renamed
        raise InputError(f"OUT_DIR {root} could not be replaced ({exc.strerror or exc}); it was left as it was. "
                         f"Give a new folder (e.g. {root / 'fixtures'})") from None
    try:
        staging.rename(root)
    except BaseException:
        old.rename(root)
        raise
    shutil.rmtree(old, ignore_errors=True)
