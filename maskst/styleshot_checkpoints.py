"""Pre-flight of a StyleShot checkpoint set (open-mmlab/StyleShot's ``Gaojunyao/StyleShot`` layout).

``STYLESHOT_FOLDER/pretrained_weight/``:

* ``ip.bin``: one flat torch state dict with ``style_image_proj_modules.{0,1,2}.{proj,norm}.*`` (three
  ``ImageProjModel`` of 2 tokens, ``Linear(P -> 2 C)`` + ``LayerNorm(C)``), ``adapter_modules.{2l+1}.
  to_{k,v}_ip.weight`` (the decoupled cross-attention of the 16 cross-attention layers, numbered as
  ``unet.attn_processors`` as h94's adapters are), ``controlnet.*`` (the content-fusion encoder:
  ``ControlNetModel.from_unet`` of the base UNet) and ``unet.*`` (a copy of the base UNet made while
  training; ignored, as StyleShot ignores it);
* ``style_aware_encoder.bin``: the style-aware encoder's state dict (:mod:`maskst.styleshot_model`):
  its patch CNNs, class tokens, position embedding and every weight of the CLIP vision transformer
  (``image_encoder.*``); ``image_encoder.vision_model.embeddings.position_ids`` (saved by older
  transformers) is tolerated.

plus ``--content-encoder``: a full transformers CLIPModel folder (laion/CLIP-ViT-H-14-laion2B-s32B-b79K
for StyleShot) whose vision config describes the style-aware transformer and whose text tower and
tokenizer embed the content text (``e_c``, in the style embeddings' P-wide space), and the SD 1.5 base.

Everything is checked from configs and tensor shapes before any export work (files are read with
``torch.load(weights_only=True, mmap=True)``: no code runs, no weights are copied): a missing file, a
missing or unknown group, a missing or extra tensor, a tensor of another shape, a transformer of another
width than the content encoder's vision config, a UNet of another layout: :class:`CheckpointError`
naming the file (and the tensor, with the expected and found shapes). :func:`styleshot_adapter_state`
gives the exporter ``{"image_proj", "ip_adapter", "controlnet"}`` with ``to_k_ip`` / ``to_v_ip`` rounded
through float16, as StyleShot loads them (its IP attention processors are float16 modules when
``ip.bin`` is loaded, cast to float32 afterwards).
"""

from __future__ import annotations

from pathlib import Path

from maskst.checkpoints import (
    AdapterInfo,
    AdapterKind,
    CheckpointSet,
    check_sd_base,
    check_tokenizer,
    check_weight_file,
    find_weights,
    read_config,
    text_tower_config,
    unet_cross_attention_widths,
)
from maskst.control_checkpoints import ControlNetInfo, unet_residuals
from maskst.errors import CheckpointError

IP_FILE = Path("pretrained_weight") / "ip.bin"
ENCODER_FILE = Path("pretrained_weight") / "style_aware_encoder.bin"
IP_GROUPS = ("style_image_proj_modules", "adapter_modules", "controlnet")
IGNORED_GROUPS = ("unet",)
NUM_TOKENS = 6  # 3 style embeddings x 2 tokens
FUSION_GRAPH = "content_fusion"
# what the style-aware transformer needs of the content encoder's vision config
VISION_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
               "image_size", "patch_size", "hidden_act", "layer_norm_eps", "attention_dropout")
_SHOWN = 4


def load_torch_state(path: Path, what: str) -> dict:
    """A flat torch state dict {name: tensor} from a ``.bin`` file: ``torch.load(weights_only=True)``
    (memory-mapped when the file allows it). CheckpointError naming the file otherwise."""
    import torch

    path = Path(path)
    check_weight_file(path)
    state = None
    for mmap in (True, False):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            break
        except Exception as exc:  # torch raises several unrelated types for corrupt or legacy pickles
            error = exc
    if state is None:
        raise CheckpointError(f"{what} {path} could not be read as a torch checkpoint ({error}); re-download it")
    if not isinstance(state, dict):
        raise CheckpointError(f"{what} {path} holds a {type(state).__name__}, not a state dict")
    return state


def _listing(names) -> str:
    names = sorted(names)
    return ", ".join(names[:_SHOWN]) + (f" (+{len(names) - _SHOWN} more)" if len(names) > _SHOWN else "")


def check_tensors(path: Path, what: str, got: dict, want: dict[str, tuple[int, ...]], prefix: str = "") -> None:
    """CheckpointError naming ``path`` unless ``got`` has exactly the tensors of ``want`` with their shapes."""
    missing = set(want) - set(got)
    extra = set(got) - set(want)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {_listing(prefix + k for k in missing)}")
        if extra:
            parts.append(f"unexpected {_listing(prefix + k for k in extra)}")
        raise CheckpointError(f"{what} {path}: {'; '.join(parts)}")
    for key, shape in want.items():
        found = tuple(getattr(got[key], "shape", ()))
        if found != tuple(shape):
            raise CheckpointError(f"{what} {path}: {prefix}{key} has shape {list(found)}, expected {list(shape)}")


def split_ip_state(path: Path, state: dict) -> dict[str, dict]:
    """{group: {name without the group prefix: tensor}} of an ``ip.bin``; CheckpointError for a file that
    is not StyleShot's (an h94 IP-Adapter file, unknown groups) or lacks a group."""
    if isinstance(state.get("image_proj"), dict) or isinstance(state.get("ip_adapter"), dict):
        raise CheckpointError(
            f"{path} is an h94 IP-Adapter checkpoint (groups image_proj / ip_adapter), not StyleShot's ip.bin: "
            "export it with maskst-export --ip-adapter FILE instead of --styleshot"
        )
    groups: dict[str, dict] = {group: {} for group in IP_GROUPS}
    unknown = []
    for key, value in state.items():
        group, _, name = str(key).partition(".")
        if group in groups and name and hasattr(value, "shape"):
            groups[group][name] = value
        elif group not in IGNORED_GROUPS:
            unknown.append(str(key))
    if unknown:
        raise CheckpointError(
            f"{path}: {_listing(unknown)} belong to no part of a StyleShot ip.bin "
            f"({', '.join(g + '.*' for g in IP_GROUPS + IGNORED_GROUPS)}); is it StyleShot's pretrained_weight/ip.bin?"
        )
    missing = [group for group in IP_GROUPS if not groups[group]]
    if missing:
        roles = {"style_image_proj_modules": "the style projections", "adapter_modules": "the IP attention layers",
                 "controlnet": "the content-fusion encoder"}
        raise CheckpointError(
            f"{path} has no {', '.join(f'{g}.* ({roles[g]})' for g in missing)}: StyleShot's ip.bin holds "
            f"{', '.join(g + '.*' for g in IP_GROUPS)}; re-download pretrained_weight/ip.bin"
        )
    return groups


def vision_tower_config(path: Path, config: dict) -> dict:
    """The vision tower's architecture of a full CLIPModel config (``vision_config``, overridden by a
    ``vision_config_dict`` as transformers does), with the model's ``projection_dim``."""
    if config.get("model_type") != "clip" or not (config.get("vision_config") or config.get("vision_config_dict")):
        raise CheckpointError(
            f"content encoder {path}: not a full CLIPModel config (model_type {config.get('model_type')!r}, no "
            "vision_config); StyleShot needs the CLIP whose vision tower its style-aware encoder was trained from "
            "(laion/CLIP-ViT-H-14-laion2B-s32B-b79K) as --content-encoder"
        )
    vision = {**(config.get("vision_config") or {}), **(config.get("vision_config_dict") or {})}
    out = {key: vision[key] for key in VISION_KEYS if vision.get(key) is not None}
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads"):
        if key not in out:
            raise CheckpointError(f"content encoder {path}: its vision config has no {key}")
    out["projection_dim"] = int(config.get("projection_dim") or vision.get("projection_dim") or 0)
    return out


def _style_projection_shapes(projection_dim: int, cross: int) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for i in range(3):
        shapes.update({f"{i}.proj.weight": (2 * cross, projection_dim), f"{i}.proj.bias": (2 * cross,),
                       f"{i}.norm.weight": (cross,), f"{i}.norm.bias": (cross,)})
    return shapes


def _controlnet_shapes(unet_config: dict) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of ``ControlNetModel.from_unet`` of a UNet config (meta device: no memory)."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
    return {name: tuple(t.shape) for name, t in controlnet.state_dict().items()}


def check_style_encoder(path: Path, state: dict, vision: dict, content_config_path: Path) -> tuple[int, int, int]:
    """Check ``style_aware_encoder.bin`` against the content encoder's vision config; its CNN widths."""
    from maskst.styleshot_model import TOLERATED_ENCODER_KEYS, encoder_widths, expected_encoder_shapes

    widths = encoder_widths(state)
    if widths is None:
        raise CheckpointError(
            f"style-aware encoder {path} has no cnn.0.conv_in / cnn.0.body.1.block1 / cnn.0.adapter weights: it is "
            "not StyleShot's pretrained_weight/style_aware_encoder.bin"
        )
    position = state.get("position_embedding.weight")
    width = int(position.shape[-1]) if position is not None and len(position.shape) == 2 else None
    if width is not None and width != int(vision["hidden_size"]):
        raise CheckpointError(
            f"style-aware encoder {path} is {width} wide (position_embedding {list(position.shape)}), but the content "
            f"encoder's vision config {content_config_path} describes a {vision['hidden_size']}-wide transformer: pass "
            "the CLIP the style-aware encoder was trained from (laion ViT-H/14 for StyleShot) as --content-encoder"
        )
    want = expected_encoder_shapes(vision, widths)
    got = {k: v for k, v in state.items() if k not in TOLERATED_ENCODER_KEYS}
    check_tensors(path, "style-aware encoder", got, want)
    return widths


def resolve_styleshot_checkpoints(base, styleshot, image_encoder=None, content_encoder=None) -> CheckpointSet:
    """Validate an SD 1.5 base folder, a StyleShot folder and the content encoder (laion ViT-H/14).

    Args:
        base: diffusers Stable Diffusion 1.5 folder.
        styleshot: StyleShot folder with ``pretrained_weight/ip.bin`` and ``pretrained_weight/style_aware_encoder.bin``.
        image_encoder: must be None (StyleShot's style encoder is ``style_aware_encoder.bin``).
        content_encoder: full transformers CLIPModel folder (vision config of the style-aware transformer,
            text tower and tokenizer of the content text).

    Returns:
        CheckpointSet with ``adapter.kind`` STYLESHOT (6 tokens), ``image_encoder`` = the
        style-aware encoder file, ``image_encoder_config`` = its transformer's vision config plus
        ``projection_dim`` and ``cnn_widths``, and the content-fusion encoder as built-in ControlNet.
    """
    styleshot = Path(styleshot)
    if image_encoder is not None:
        raise CheckpointError(f"--image-encoder {image_encoder}: StyleShot has no CLIP image encoder of its own; its "
                              f"style encoder is {styleshot / ENCODER_FILE} (leave --image-encoder out)")
    if content_encoder is None:
        raise CheckpointError("content encoder: no folder given; StyleShot needs the laion ViT-H/14 CLIP folder "
                              "(--content-encoder CLIP-ViT-H-14-laion2B-s32B-b79K): its vision config describes the "
                              "style-aware transformer and its text tower embeds the content text")
    content_encoder = Path(content_encoder)
    base = Path(base)
    if not styleshot.is_dir():
        raise CheckpointError(f"StyleShot folder {styleshot} does not exist; pass the folder that holds "
                              f"{IP_FILE} and {ENCODER_FILE} (e.g. a download of Gaojunyao/StyleShot)")
    ip_path, encoder_path = styleshot / IP_FILE, styleshot / ENCODER_FILE
    for path in (ip_path, encoder_path):
        if not path.is_file():
            raise CheckpointError(f"StyleShot folder {styleshot}: {path} is missing; a StyleShot folder holds "
                                  f"{IP_FILE} and {ENCODER_FILE}")
        check_weight_file(path)

    unet_config, vae_config = check_sd_base(base)
    cross = int(unet_config["cross_attention_dim"])

    content_path = content_encoder / "config.json"
    content_json = read_config(content_path, "content encoder")
    vision = vision_tower_config(content_path, content_json)
    text = text_tower_config(content_encoder)
    find_weights(content_encoder, "content encoder")
    check_tokenizer(content_encoder, "content encoder tokenizer")

    groups = split_ip_state(ip_path, load_torch_state(ip_path, "StyleShot ip.bin"))
    proj = groups["style_image_proj_modules"]
    first = proj.get("0.proj.weight")
    if first is None or len(first.shape) != 2:
        raise CheckpointError(f"StyleShot ip.bin {ip_path}: style_image_proj_modules.0.proj.weight is missing")
    if int(first.shape[0]) != 2 * cross:
        raise CheckpointError(
            f"StyleShot ip.bin {ip_path}: style_image_proj_modules.0.proj.weight {list(first.shape)} makes 2 tokens "
            f"{int(first.shape[0]) // 2} wide, but the base UNet {base / 'unet' / 'config.json'} cross-attends "
            f"{cross}-wide tokens: this StyleShot was trained for another base model"
        )
    projection = int(first.shape[1])
    check_tensors(ip_path, "StyleShot ip.bin", proj, _style_projection_shapes(projection, cross),
                  prefix="style_image_proj_modules.")
    layers = unet_cross_attention_widths(unet_config)
    adapter_want = {}
    for index, (_, width) in enumerate(layers):
        key = 2 * index + 1
        adapter_want.update({f"{key}.to_k_ip.weight": (width, cross), f"{key}.to_v_ip.weight": (width, cross)})
    check_tensors(ip_path, "StyleShot ip.bin", groups["adapter_modules"], adapter_want, prefix="adapter_modules.")
    check_tensors(ip_path, "StyleShot ip.bin (content-fusion encoder, ControlNetModel.from_unet of the base UNet)",
                  groups["controlnet"], _controlnet_shapes(unet_config), prefix="controlnet.")
    del groups

    encoder_state = load_torch_state(encoder_path, "StyleShot style-aware encoder")
    widths = check_style_encoder(encoder_path, encoder_state, vision, content_path)
    del encoder_state
    if vision["projection_dim"] != projection:
        raise CheckpointError(
            f"content encoder {content_path} projects to {vision['projection_dim']} values, but StyleShot's style "
            f"projections ({ip_path}) read {projection}-wide style embeddings: pass the CLIP StyleShot was trained "
            "with (laion ViT-H/14)"
        )
    if int(text.get("projection_dim") or 0) != projection:
        raise CheckpointError(
            f"content encoder {content_path}: its text tower projects to {text.get('projection_dim')} values, but the "
            f"style embeddings are {projection} wide; MaskST multiplies the two element-wise"
        )
    down, mid = unet_residuals(unet_config)
    fusion = ControlNetInfo(folder=styleshot, weights=ip_path, conditioning_channels=3, channel_order="rgb",
                            down=down, mid=mid, name=FUSION_GRAPH, context="ip_tokens", state_group="controlnet")
    adapter = AdapterInfo(ip_path, AdapterKind.STYLESHOT, NUM_TOKENS, cross, projection, tuple(w for _, w in layers))
    return CheckpointSet(
        base=base, ip_adapter=ip_path, image_encoder=encoder_path, content_encoder=content_encoder,
        adapter=adapter, cross_attention_layers=tuple(n for n, _ in layers), unet_config=unet_config,
        vae_config=vae_config, image_encoder_config={**vision, "cnn_widths": list(widths)},
        content_text_config=text, family="styleshot",
        adapter_files=(("ip_adapter", ip_path), ("style_aware_encoder", encoder_path)),
        builtin_controlnets=(fusion,),
    )


def styleshot_adapter_state(ckpt: CheckpointSet) -> dict:
    """The exporter's adapter state of a StyleShot set: {"image_proj": style projections, "ip_adapter":
    to_k_ip / to_v_ip rounded through float16 (as StyleShot loads them), "controlnet": the content-fusion
    encoder}, float32 tensors, prefixes removed."""
    import torch

    groups = split_ip_state(ckpt.ip_adapter, load_torch_state(ckpt.ip_adapter, "StyleShot ip.bin"))
    return {
        "image_proj": {k: v.float() for k, v in groups["style_image_proj_modules"].items()},
        "ip_adapter": {k: v.to(torch.float16).float() for k, v in groups["adapter_modules"].items()},
        "controlnet": {k: v.float() for k, v in groups["controlnet"].items()},
    }
