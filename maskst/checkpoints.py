"""Loading checkpoints from local folders, with pre-flight validation (DESIGN section 4).

Everything that must agree between the base model, the IP-Adapter file, its image encoder and
the content encoder is checked here, from configs and tensor headers, before any export or
generation work starts. A mismatch raises :class:`maskst.errors.CheckpointError` naming the file,
the expected and the found shape; never a ``mat1 and mat2 shapes cannot be multiplied`` later.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from pathlib import Path

from maskst.errors import CheckpointError

LFS_POINTER_PREFIX = b"version https://git-lfs"
_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors",
                 "diffusion_pytorch_model.bin", "pytorch_model.bin")
BASE_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
# Cross-attention widths of the base families, to name them in errors.
_FAMILIES = {768: "Stable Diffusion 1.x (cross-attention 768)",
             1024: "Stable Diffusion 2.x (cross-attention 1024)",
             2048: "Stable Diffusion XL (cross-attention 2048)"}
# Known CLIP image towers by (hidden_size, projection_dim).
_ENCODERS = {(1280, 1024): "ViT-H/14", (1664, 1280): "ViT-bigG/14", (1024, 768): "ViT-L/14"}


class AdapterKind(str, enum.Enum):
    """Image projection family of an IP-Adapter checkpoint."""

    BASE = "base"  # ImageProjModel: Linear(D -> k*C), LayerNorm; consumes image_embeds
    PLUS = "plus"  # Resampler: consumes the penultimate hidden states [N, 257, H]
    STYLESHOT = "styleshot"  # StyleShot: 3 ImageProjModels (2 tokens each) on the style-aware encoder's [N, 3, P]


def _family(width: int) -> str:
    return _FAMILIES.get(width, f"a model with cross-attention width {width}")


def _encoder_name(hidden: int, projection: int) -> str:
    return _ENCODERS.get((hidden, projection), f"CLIP (hidden {hidden}, projection {projection})")


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{what}: {path} is missing; point to the folder that holds it")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{what}: {path} is not valid JSON ({exc}); re-download it") from None


def check_weight_file(path: Path) -> None:
    """Refuse a missing, empty, Git-LFS-pointer or truncated weights file, naming it."""
    if not path.is_file():
        raise CheckpointError(f"weights file {path} is missing")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"weights file {path} is empty (0 bytes); re-download it")
    with open(path, "rb") as f:
        head = f.read(len(LFS_POINTER_PREFIX))
    if head == LFS_POINTER_PREFIX:
        raise CheckpointError(
            f"{path} is a Git LFS pointer ({size} bytes), not the weights: run `git lfs pull` in "
            "that repository or download the file itself"
        )
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                f.keys()
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"{path} is not a complete safetensors file ({exc}); it is probably truncated: re-download it"
            ) from None


def find_weights(folder: Path, what: str) -> Path:
    for name in _WEIGHT_NAMES:
        if (folder / name).exists():
            check_weight_file(folder / name)
            return folder / name
    raise CheckpointError(
        f"{what}: no weights in {folder} (looked for {', '.join(_WEIGHT_NAMES)}); "
        "download the component's weights into that folder"
    )


# ---------------------------------------------------------------- adapter files


def load_adapter_state_dict(path: Path) -> dict:
    """h94 IP-Adapter file -> {"image_proj": {name: tensor}, "ip_adapter": {name: tensor}}.

    ``.safetensors`` files have flat ``image_proj.*`` / ``ip_adapter.*`` keys; ``.bin`` files are
    nested dicts, read with ``torch.load(weights_only=True)`` (no code execution).
    """
    import torch

    path = Path(path)
    check_weight_file(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        flat = load_file(str(path))
        state: dict = {"image_proj": {}, "ip_adapter": {}}
        for key, tensor in flat.items():
            group, _, name = key.partition(".")
            if group in state:
                state[group][name] = tensor
    elif path.suffix in (".bin", ".pt", ".pth"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several unrelated types for corrupt pickles
            raise CheckpointError(f"{path} could not be read as a torch checkpoint ({exc}); re-download it") from None
    else:
        raise CheckpointError(f"{path}: unknown adapter file type {path.suffix!r}; expected .safetensors or .bin")
    if not isinstance(state, dict) or not state.get("image_proj") or not state.get("ip_adapter"):
        raise CheckpointError(
            f"{path} is not an IP-Adapter checkpoint: it needs the groups 'image_proj' and 'ip_adapter'"
        )
    return state


@dataclasses.dataclass(frozen=True)
class AdapterInfo:
    """What an IP-Adapter checkpoint expects, read from its tensor shapes."""

    path: Path
    kind: AdapterKind
    num_tokens: int  # image tokens per image (4 base, 16 Plus)
    cross_attention_dim: int  # token width == UNet cross-attention width
    input_dim: int  # width of what the projection consumes (projection_dim or vision hidden)
    layer_widths: tuple[int, ...]  # to_k_ip output width per cross-attention layer, in order


def inspect_adapter(path: Path, state: dict) -> AdapterInfo:
    proj = state["image_proj"]
    if "proj.weight" in proj and "norm.weight" in proj:
        cross = int(proj["norm.weight"].shape[0])
        kind, tokens, input_dim = AdapterKind.BASE, int(proj["proj.weight"].shape[0]) // cross, int(proj["proj.weight"].shape[1])
    elif "latents" in proj and "proj_in.weight" in proj:
        kind = AdapterKind.PLUS
        tokens, cross, input_dim = int(proj["latents"].shape[1]), int(proj["proj_out.weight"].shape[0]), int(proj["proj_in.weight"].shape[1])
        depth = len({k.split(".")[1] for k in proj if k.startswith("layers.")})
        if depth != 4:
            raise CheckpointError(
                f"{path}: its Resampler has {depth} layers; diffusers (whose loader maskst uses) builds Plus "
                "projections with 4, as in ip-adapter-plus_sd15"
            )
    else:
        raise CheckpointError(
            f"{path}: unsupported image projection (keys {sorted(proj)[:4]}...); maskst supports "
            "ip-adapter_sd15 (ImageProjModel) and ip-adapter-plus_sd15 (Resampler)"
        )
    layers = state["ip_adapter"]
    indices = sorted(int(k.split(".")[0]) for k in layers if k.endswith(".to_k_ip.weight"))
    if indices != [2 * i + 1 for i in range(len(indices))]:
        raise CheckpointError(f"{path}: ip_adapter layer keys {indices} are not numbered 1, 3, 5, ...")
    widths = []
    for i in indices:
        k, v = layers.get(f"{i}.to_k_ip.weight"), layers.get(f"{i}.to_v_ip.weight")
        if v is None or tuple(k.shape) != tuple(v.shape) or int(k.shape[1]) != cross:
            raise CheckpointError(
                f"{path}: ip_adapter.{i}.to_k_ip/to_v_ip have shapes {tuple(k.shape)} / "
                f"{None if v is None else tuple(v.shape)}; expected [hidden, {cross}] for both"
            )
        widths.append(int(k.shape[0]))
    return AdapterInfo(Path(path), kind, tokens, cross, input_dim, tuple(widths))


# ---------------------------------------------------------------- the checkpoint set


def unet_cross_attention_widths(unet_config: dict) -> list[tuple[str, int]]:
    """(processor name, hidden width) of each cross-attention layer, in `attn_processors` order.

    Built on the meta device from the config: no weights are read, no memory is used.
    """
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
    out = []
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            out.append((name[: -len(".processor")], int(unet.get_submodule(name[: -len(".processor")]).to_q.out_features)))
    return out


@dataclasses.dataclass(frozen=True)
class CheckpointSet:
    """Validated local checkpoints: the inputs of maskst-export and the reference pipeline.

    The fields after ``content_text_config`` default to SD 1.5's values; other families' pre-flights
    set them (``maskst.families``).
    """

    base: Path
    ip_adapter: Path
    image_encoder: Path
    content_encoder: Path  # folder of the content text tower (SDXL + bigG adapter: the base's text_encoder_2)
    adapter: AdapterInfo
    cross_attention_layers: tuple[str, ...]  # module names, in attn_processors order
    unet_config: dict
    vae_config: dict
    image_encoder_config: dict
    content_text_config: dict
    family: str = "sd15"  # maskst.families name of the base
    content_tokenizer: Path | None = None  # tokenizer folder of the content text; None: the content encoder's own
    # (graph, output) that embeds the content text: its own graph, or a prompt encoder it shares
    content_graph: tuple[str, str] = ("content_encoder", "content_embeds")
    base_weights: tuple[str, ...] = ("unet", "vae", "text_encoder")  # base components with weights
    force_zeros_for_empty_prompt: bool = False  # model_index.json: an empty negative prompt is all-zero embeddings
    # adapters that are not one IP-Adapter file plus a CLIP image-encoder folder (StyleShot): their weights
    # files by manifest source name, replacing "ip_adapter" / "image_encoder" in weight_files()
    adapter_files: tuple[tuple[str, Path], ...] = ()
    # ControlNets that come with the adapter itself (StyleShot's content-fusion encoder, weights in ip.bin):
    # maskst.control_checkpoints.ControlNetInfo, exported before any --controlnet
    builtin_controlnets: tuple = ()

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_config["block_out_channels"]) - 1)

    @property
    def image_embed_dim(self) -> int:
        return int(self.image_encoder_config["projection_dim"])

    @property
    def content_tokenizer_folder(self) -> Path:
        return self.content_tokenizer or self.content_encoder

    @property
    def shared_content_encoder(self) -> bool:
        """Whether the content text is embedded by one of the base's own prompt encoders (no graph of its own)."""
        return self.content_graph[0] != "content_encoder"

    def weight_files(self) -> dict[str, Path]:
        """Every weights file the set is built from, by component (for manifest hashes)."""
        files = {name: find_weights(self.base / name, f"base {name}") for name in self.base_weights}
        if self.adapter_files:
            files.update(self.adapter_files)
        else:
            files["ip_adapter"] = self.ip_adapter
            files["image_encoder"] = find_weights(self.image_encoder, "image encoder")
        if not self.shared_content_encoder:
            files["content_encoder"] = find_weights(self.content_encoder, "content encoder")
        return files


def _text_tower_config(folder: Path) -> dict:
    config = _read_json(folder / "config.json", "content encoder")
    if config.get("model_type") == "clip" or "text_config" in config:
        text = dict(config.get("text_config") or config.get("text_config_dict") or {})
        text.setdefault("projection_dim", config.get("projection_dim"))
        return text
    return config


def _check_tokenizer(folder: Path, what: str) -> None:
    missing = [n for n in TOKENIZER_FILES[:2] if not (folder / n).is_file()]
    if missing and not (folder / "tokenizer.json").is_file():
        raise CheckpointError(f"{what}: {folder} lacks {', '.join(missing)}; copy the tokenizer files into it")


def check_adapter(base: Path, ip_adapter: Path, unet_config: dict) -> tuple[AdapterInfo, list[tuple[str, int]]]:
    """Read an IP-Adapter file and check it against a UNet config: token width == cross-attention
    width, one to_k_ip / to_v_ip pair per cross-attention layer of the layer's width. Returns the
    adapter's facts and the UNet's (layer name, width) list in attn_processors order."""
    cross = int(unet_config["cross_attention_dim"])
    state = load_adapter_state_dict(ip_adapter)
    adapter = inspect_adapter(ip_adapter, state)
    if adapter.cross_attention_dim != cross:
        raise CheckpointError(
            f"IP-Adapter {ip_adapter} was built for {_family(adapter.cross_attention_dim)}, but the base model "
            f"{base / 'unet' / 'config.json'} is {_family(cross)}: its image tokens are "
            f"{adapter.cross_attention_dim} wide, the UNet expects {cross}. Use the adapter made for this base "
            "(models/ for SD 1.5, sdxl_models/ for SDXL)"
        )
    layers = unet_cross_attention_widths(unet_config)
    expected = tuple(w for _, w in layers)
    if adapter.layer_widths != expected:
        raise CheckpointError(
            f"IP-Adapter {ip_adapter} has {len(adapter.layer_widths)} cross-attention layers of widths "
            f"{list(adapter.layer_widths)}; the UNet in {base / 'unet'} has {len(expected)} of widths "
            f"{list(expected)}. Use the adapter made for this base model"
        )
    return adapter, layers


def check_image_encoder(image_encoder: Path, ip_adapter: Path, adapter: AdapterInfo, expected_name,
                        hint: str = "Use the image_encoder folder that ships next to this adapter") -> dict:
    """The image encoder's config, checked against what the adapter's projection consumes
    (``projection_dim`` for ImageProjModel, ``hidden_size`` for a Resampler). ``expected_name(field)``
    names the encoder the adapter expects in the error."""
    enc_config = _read_json(image_encoder / "config.json", "image encoder")
    find_weights(image_encoder, "image encoder")
    hidden, projection = int(enc_config.get("hidden_size", 0)), int(enc_config.get("projection_dim", 0))
    wanted = projection if adapter.kind is AdapterKind.BASE else hidden
    if wanted != adapter.input_dim:
        field = "projection_dim" if adapter.kind is AdapterKind.BASE else "hidden_size"
        raise CheckpointError(
            f"image encoder {image_encoder / 'config.json'} is {_encoder_name(hidden, projection)} ({field} {wanted}), "
            f"but the IP-Adapter {ip_adapter} expects {expected_name(field)} ({field} {adapter.input_dim}). {hint}"
        )
    return enc_config


def check_content_encoder(content_encoder: Path, tokenizer: Path, image_encoder: Path, enc_config: dict) -> dict:
    """The content text tower's config, checked: weights, tokenizer, and a projection into the image
    encoder's embedding space (MaskST multiplies the two embeddings element-wise)."""
    hidden, projection = int(enc_config.get("hidden_size", 0)), int(enc_config.get("projection_dim", 0))
    content_config = _text_tower_config(content_encoder)
    find_weights(content_encoder, "content encoder")
    _check_tokenizer(tokenizer, "content encoder tokenizer")
    content_dim = int(content_config.get("projection_dim") or 0)
    if content_dim != projection:
        raise CheckpointError(
            f"content encoder {content_encoder / 'config.json'} projects text to {content_dim} values, but the image "
            f"encoder {image_encoder / 'config.json'} projects images to {projection}: MaskST needs the text tower "
            f"of the same CLIP ({_encoder_name(hidden, projection)})"
        )
    return content_config


def encoder_name(hidden: int, projection: int) -> str:
    """A CLIP image tower's common name from its widths (e.g. ViT-H/14), or its widths."""
    return _encoder_name(hidden, projection)


def read_config(path: Path, what: str) -> dict:
    """A JSON config, or CheckpointError naming the missing / unreadable file."""
    return _read_json(path, what)


def text_tower_config(folder: Path) -> dict:
    """The text tower's config of a CLIP folder (a full CLIPModel or a text-only one), with its projection_dim."""
    return _text_tower_config(folder)


def check_tokenizer(folder: Path, what: str) -> None:
    """CheckpointError unless ``folder`` holds a CLIP tokenizer (vocab.json + merges.txt, or tokenizer.json)."""
    _check_tokenizer(folder, what)


def check_sd_base(base: Path) -> tuple[dict, dict]:
    """Pre-flight of a diffusers Stable Diffusion 1.x/2.x folder: every component folder, config, tokenizer
    and weights file, a UNet without SDXL conditioning, a text encoder as wide as the UNet's cross-attention.
    Returns (unet config, vae config); CheckpointError naming the file otherwise."""
    if not base.is_dir():
        raise CheckpointError(f"base model folder {base} does not exist")
    _read_json(base / "model_index.json", "base model")
    for name in BASE_COMPONENTS:
        if not (base / name).is_dir():
            raise CheckpointError(
                f"base model {base} has no {name}/ folder; it must be a complete diffusers Stable Diffusion folder"
            )
    unet_config = _read_json(base / "unet" / "config.json", "base unet")
    vae_config = _read_json(base / "vae" / "config.json", "base vae")
    text_config = _read_json(base / "text_encoder" / "config.json", "base text encoder")
    _read_json(base / "scheduler" / "scheduler_config.json", "base scheduler")
    _check_tokenizer(base / "tokenizer", "base tokenizer")
    for name in ("unet", "vae", "text_encoder"):
        find_weights(base / name, f"base {name}")
    if unet_config.get("addition_embed_type") or unet_config.get("class_embed_type"):
        raise CheckpointError(
            f"{base / 'unet' / 'config.json'}: this UNet needs extra conditioning "
            f"(addition_embed_type={unet_config.get('addition_embed_type')!r}, class_embed_type="
            f"{unet_config.get('class_embed_type')!r}), as Stable Diffusion XL does, but {base / 'model_index.json'} "
            "names a Stable Diffusion 1.x/2.x pipeline; maskst exports SDXL from a complete StableDiffusionXLPipeline "
            "folder (text_encoder_2/, tokenizer_2/)"
        )
    cross = int(unet_config["cross_attention_dim"])
    if int(text_config["hidden_size"]) != cross:
        raise CheckpointError(
            f"{base / 'text_encoder' / 'config.json'}: hidden_size {text_config['hidden_size']} but the UNet's "
            f"cross_attention_dim is {cross}; the base folder mixes components of different models"
        )
    return unet_config, vae_config


def resolve_checkpoints(base, ip_adapter, image_encoder=None, content_encoder=None) -> CheckpointSet:
    """Validate a base folder, an IP-Adapter file, its image encoder and a content encoder.

    Args:
        base: diffusers Stable Diffusion folder (model_index.json, unet/, vae/, text_encoder/, ...).
        ip_adapter: ``models/ip-adapter_sd15.safetensors`` (or ``.bin``, or a Plus variant).
        image_encoder: CLIPVisionModelWithProjection folder; default ``<adapter dir>/image_encoder``.
        content_encoder: transformers CLIP folder with the text tower of the *same* CLIP.
    """
    base, ip_adapter = Path(base), Path(ip_adapter)
    image_encoder = Path(image_encoder) if image_encoder else ip_adapter.parent / "image_encoder"
    if content_encoder is None:
        raise CheckpointError("content encoder: no folder given; pass the ViT-H/14 CLIP folder (--content-encoder)")
    content_encoder = Path(content_encoder)
    unet_config, vae_config = check_sd_base(base)
    cross = int(unet_config["cross_attention_dim"])
    adapter, layers = check_adapter(base, ip_adapter, unet_config)
    enc_config = check_image_encoder(image_encoder, ip_adapter, adapter,
                                     lambda field: "ViT-H/14" if adapter.input_dim in (1024, 1280) and cross == 768
                                     else f"a CLIP with {field} {adapter.input_dim}")
    content_config = check_content_encoder(content_encoder, content_encoder, image_encoder, enc_config)
    return CheckpointSet(
        base=base, ip_adapter=ip_adapter, image_encoder=image_encoder, content_encoder=content_encoder,
        adapter=adapter, cross_attention_layers=tuple(n for n, _ in layers), unet_config=unet_config,
        vae_config=vae_config, image_encoder_config=enc_config, content_text_config=content_config,
    )
