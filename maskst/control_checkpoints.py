"""Pre-flight of the image-driven checkpoints: diffusers ControlNet folders and the lineart annotator.

A ControlNet adds one residual to each of the UNet's skip connections (SD 1.5: 12 down residuals and
one mid residual), so it must have been made for the same UNet layout: the same latent channels, the
same ``block_out_channels`` / ``layers_per_block`` / number of down blocks (which fix the residuals'
channels and strides), the same cross-attention width (it reads the same text embeddings) and a
conditioning encoder that downsamples the control image by the VAE's factor. Everything is checked
from ``config.json`` files and tensor headers before any export work; a mismatch is a
:class:`~maskst.errors.CheckpointError` naming both files.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from maskst.checkpoints import CheckpointSet, check_weight_file, find_weights
from maskst.errors import CheckpointError

CONTROLNET_CLASS = "ControlNetModel"


@dataclasses.dataclass(frozen=True)
class Residual:
    """One residual a ControlNet adds to the UNet: ``channels`` at latent stride ``stride`` (1, 2, 4, ...)."""

    channels: int
    stride: int


def unet_residuals(unet_config: dict) -> tuple[tuple[Residual, ...], Residual]:
    """(down residuals in order, mid residual) of a diffusers UNet / ControlNet config.

    The down path keeps one skip per ``conv_in``, per resnet of each down block and per downsampler
    (every block but the last), as ``UNet2DConditionModel`` collects ``down_block_res_samples``;
    SD 1.5: 320/1 x3, 320/2, 640/2 x2, 640/4, 1280/4 x2, 1280/8 x3, mid 1280/8.
    """
    channels = [int(c) for c in unet_config["block_out_channels"]]
    blocks = len(unet_config["down_block_types"])
    layers = unet_config.get("layers_per_block", 2)
    layers = [int(layers)] * blocks if isinstance(layers, int) else [int(v) for v in layers]
    down = [Residual(channels[0], 1)]
    for i in range(blocks):
        down += [Residual(channels[i], 2 ** i)] * layers[i]
        if i < blocks - 1:
            down.append(Residual(channels[i], 2 ** (i + 1)))
    return tuple(down), Residual(channels[-1], 2 ** (blocks - 1))


@dataclasses.dataclass(frozen=True)
class ControlNetInfo:
    """A validated ControlNet folder."""

    folder: Path
    weights: Path
    conditioning_channels: int  # channels of the control image (3 for every SD 1.5 ControlNet)
    channel_order: str  # "rgb" or "bgr" (flipped inside the graph, as diffusers does)
    down: tuple[Residual, ...]
    mid: Residual
    name: str | None = None  # graph name; None: controlnet_<index> (the --controlnet order)
    # the UNet inputs its encoder_hidden_states come from: the text embeddings (diffusers' ControlNet
    # pipeline), or the image tokens (StyleShot's content-fusion encoder cross-attends the style tokens)
    context: str = "text_embeddings"
    state_group: str | None = None  # weights in this group of the adapter's state dict (ip.bin) instead of folder/


def _read_config(path: Path, what: str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{what}: {path} is missing; pass a diffusers ControlNetModel folder "
                              "(config.json + diffusion_pytorch_model.safetensors)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{what}: {path} is not valid JSON ({exc}); re-download it") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{what}: {path} must hold a JSON object")
    return data


def inspect_controlnet(folder: Path, ckpt: CheckpointSet) -> ControlNetInfo:
    """Check a diffusers ControlNet folder against the base model of ``ckpt``; CheckpointError naming both files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"ControlNet folder {folder} does not exist; pass a diffusers ControlNetModel folder")
    path = folder / "config.json"
    config = _read_config(path, "ControlNet")
    weights = find_weights(folder, f"ControlNet {folder}")
    base = ckpt.base / "unet" / "config.json"
    unet = ckpt.unet_config
    name = config.get("_class_name")
    if name != CONTROLNET_CLASS:
        raise CheckpointError(f"{path}: _class_name {name!r}; maskst exports diffusers {CONTROLNET_CLASS} folders "
                              "(SD 1.x/2.x ControlNets such as lllyasviel/control_v11p_sd15_canny)")
    for key in ("addition_embed_type", "class_embed_type", "encoder_hid_dim_type"):
        if config.get(key):
            raise CheckpointError(f"{path}: {key}={config[key]!r}: this ControlNet needs extra conditioning (an SDXL "
                                  f"ControlNet?); the base UNet {base} takes none. Use a ControlNet made for this base")
    if config.get("global_pool_conditions"):
        raise CheckpointError(f"{path}: global_pool_conditions=true (a shuffle-type ControlNet whose residuals are "
                              "pooled to 1x1) is not supported by maskst's exported graphs")
    mismatches = []
    for key, default in (("in_channels", 4), ("cross_attention_dim", None), ("block_out_channels", None)):
        got, want = config.get(key, default), unet.get(key, default)
        if got != want:
            mismatches.append(f"{key} {got} (UNet: {want})")
    if not mismatches:
        down, mid = unet_residuals(config)
        want_down, want_mid = unet_residuals(unet)
        if (down, mid) != (want_down, want_mid):
            mismatches.append(f"{len(down)} down residuals {[(r.channels, r.stride) for r in down]} "
                              f"(UNet skips: {[(r.channels, r.stride) for r in want_down]})")
    if mismatches:
        raise CheckpointError(
            f"ControlNet {path} does not fit the base UNet {base}: {'; '.join(mismatches)}. "
            f"A ControlNet is made for one base family (cross-attention {config.get('cross_attention_dim')} here, "
            f"{unet.get('cross_attention_dim')} in the base); use one made for this base model"
        )
    embedding = config.get("conditioning_embedding_out_channels") or (16, 32, 96, 256)
    factor = 2 ** (len(embedding) - 1)
    if factor != ckpt.vae_scale_factor:
        raise CheckpointError(
            f"ControlNet {path}: its conditioning encoder downsamples the control image {factor}x "
            f"(conditioning_embedding_out_channels {list(embedding)}), but the VAE of {ckpt.base} downsamples "
            f"{ckpt.vae_scale_factor}x; use a ControlNet made for this base model"
        )
    order = config.get("controlnet_conditioning_channel_order", "rgb")
    if order not in ("rgb", "bgr"):
        raise CheckpointError(f"{path}: controlnet_conditioning_channel_order {order!r} must be 'rgb' or 'bgr'")
    down, mid = unet_residuals(config)
    return ControlNetInfo(folder, weights, int(config.get("conditioning_channels", 3)), order, down, mid)


def load_lineart_state(path: Path) -> dict:
    """The state dict of an informative-drawings ``sk_model.pth`` (``Generator(3, 1, 3)``), checked key by key.

    Read with ``torch.load(weights_only=True)`` (no code execution). CheckpointError naming the file
    for a missing / truncated / LFS-pointer file, another architecture (e.g. ``sk_model2.pth`` is the
    same architecture and loads; an anime lineart ``netG.pth`` does not) or wrong shapes.
    """
    import torch

    from maskst.informative_drawings import lineart_generator

    path = Path(path)
    check_weight_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for corrupt pickles
        raise CheckpointError(f"lineart model {path} could not be read as a torch state dict ({exc}); "
                              "re-download sk_model.pth") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"lineart model {path} holds a {type(state).__name__}, not a state dict")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    want = {k: tuple(v.shape) for k, v in lineart_generator().state_dict().items()}
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    if missing or extra:
        raise CheckpointError(
            f"lineart model {path} is not an informative-drawings Generator(3, 1, 3) (sk_model.pth): "
            f"missing {missing[:4]}{'...' if len(missing) > 4 else ''}, unexpected {extra[:4]}{'...' if len(extra) > 4 else ''}"
        )
    for key, shape in want.items():
        got = tuple(getattr(state[key], "shape", ()))
        if got != shape:
            raise CheckpointError(f"lineart model {path}: {key} has shape {list(got)}; Generator(3, 1, 3) needs {list(shape)}")
    return state
