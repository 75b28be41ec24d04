"""StyleShot's networks in PyTorch, written from its published code's semantics (open-mmlab/StyleShot,
``ip_adapter/style_encoder.py`` and ``ip_adapter/ip_adapter.py``), with the widths read from the checkpoint.

Used by maskst-export (the ``style_encoder`` and ``image_conditioner`` graphs of StyleShot engines) and
by the PyTorch reference (:mod:`maskst.reference_styleshot`). The parameter names are StyleShot's, so
``style_aware_encoder.bin`` and the ``style_image_proj_modules.*`` of ``ip.bin`` load with
``load_state_dict(strict=True)``.

**Style-aware encoder** (``Style_Aware_Encoder``): per level (high / middle / low patches) a patch CNN

    PixelUnshuffle(8) -> conv_in 3x3 (192 -> c0) -> ResNet blocks -> AvgPool(2) -> flatten -> Linear(c2 -> H)

whose blocks are, by level (``(in, out, downsample first)``, widths ``c = (c0, c1, c2)``; StyleShot:
320, 640, 1280):

* high (128 px patches, 16 x 16 after the unshuffle): (c0,c0) (c0,c1) (c1,c1,down) (c1,c1,down) (c1,c2,down) (c2,c2)
* middle (64 px, 8 x 8): (c0,c0) (c0,c1) (c1,c1,down) (c1,c2,down) (c2,c2)
* low (32 px, 4 x 4): (c0,c0) (c0,c1) (c1,c2,down) (c2,c2)

A block (``ResnetBlock(sk=True, use_conv=False, ksize=1)``): ``x = AvgPool(2)(x)`` if down; ``x =
in_conv(x)`` (1x1) if in != out; ``h = block2(relu(block1(x)))`` (3x3 then 1x1); ``h + x``. Each patch
gives one token of width H (the transformer's). Tokens ``[cls0, high x8, cls1, middle x16, cls2,
low x32]`` (59; the class tokens are ``style_embeddings.{0,1,2}``) plus the encoder's own
``position_embedding`` [59, H] go through the CLIP vision transformer's ``pre_layrnorm`` and
``encoder``; tokens 0, 9, 26 through ``post_layernorm`` and ``visual_projection``: [N, 3, P].
The CLIP vision transformer is transformers' ``CLIPVisionModelWithProjection`` of the content encoder's
vision config (laion ViT-H/14 for StyleShot); its weights are the ``image_encoder.*`` of
``style_aware_encoder.bin`` (its patch embedding is not used).

**Style projections** (``style_image_proj_modules``): three ``ImageProjModel`` with 2 tokens each:
``LayerNorm(Linear(P -> 2 C)(e_k).reshape(-1, 2, C))``; their outputs concatenated: [N, 6, C].
"""

from __future__ import annotations

import dataclasses

LEVEL_BLOCKS = {  # (in width index, out width index, downsample first) per ResNet block
    "high": ((0, 0, False), (0, 1, False), (1, 1, True), (1, 1, True), (1, 2, True), (2, 2, False)),
    "middle": ((0, 0, False), (0, 1, False), (1, 1, True), (1, 2, True), (2, 2, False)),
    "low": ((0, 0, False), (0, 1, False), (1, 2, True), (2, 2, False)),
}
LEVEL_ORDER = ("high", "middle", "low")
UNSHUFFLE = 8
CNN_INPUT = 3 * UNSHUFFLE * UNSHUFFLE  # 192 channels after PixelUnshuffle(8)
NUM_POSITIONS = 59
CLASS_TOKENS = (0, 9, 26)
PROJ_TOKENS = 2  # tokens per style embedding
TOLERATED_ENCODER_KEYS = ("image_encoder.vision_model.embeddings.position_ids",)  # older transformers saved it


@dataclasses.dataclass(frozen=True)
class StyleEncoderShape:
    """The widths of a style-aware encoder: what its checkpoint tensors say."""

    cnn_widths: tuple[int, int, int]  # (c0, c1, c2); StyleShot: (320, 640, 1280)
    hidden: int  # transformer width H (laion ViT-H: 1280)
    projection_dim: int  # P (laion ViT-H: 1024)


def vision_config(config: dict):
    """transformers ``CLIPVisionConfig`` from a vision-config dict (with its ``projection_dim``)."""
    from transformers import CLIPVisionConfig

    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
            "image_size", "patch_size", "hidden_act", "layer_norm_eps", "attention_dropout", "projection_dim")
    return CLIPVisionConfig(**{k: config[k] for k in keys if config.get(k) is not None})


def _torch_modules():
    import torch
    from torch import nn

    class ResBlock(nn.Module):
        def __init__(self, c_in: int, c_out: int, down: bool):
            super().__init__()
            self.down = down
            self.in_conv = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None
            self.block1 = nn.Conv2d(c_out, c_out, 3, 1, 1)
            self.act = nn.ReLU()
            self.block2 = nn.Conv2d(c_out, c_out, 1)
            self.down_opt = nn.AvgPool2d(2, 2) if down else None

        def forward(self, x):
            if self.down_opt is not None:
                x = self.down_opt(x)
            if self.in_conv is not None:
                x = self.in_conv(x)
            return self.block2(self.act(self.block1(x))) + x

    class PatchCNN(nn.Module):
        """[M, 3, s, s] patches -> [M, H] tokens."""

        def __init__(self, level: str, widths: tuple[int, int, int], hidden: int):
            super().__init__()
            self.unshuffle = nn.PixelUnshuffle(UNSHUFFLE)
            self.conv_in = nn.Conv2d(CNN_INPUT, widths[0], 3, 1, 1)
            self.body = nn.Sequential(*(ResBlock(widths[a], widths[b], down) for a, b, down in LEVEL_BLOCKS[level]))
            self.pool = nn.AvgPool2d(2, 2)
            self.adapter = nn.Linear(widths[2], hidden)

        def forward(self, x):
            x = self.pool(self.body(self.conv_in(self.unshuffle(x))))
            return self.adapter(x.flatten(1))

    class StyleAwareEncoder(nn.Module):
        """(high [N, 8, 3, 128, 128], middle [N, 16, 3, 64, 64], low [N, 32, 3, 32, 32]) -> [N, 3, P] float32."""

        def __init__(self, config: dict, widths: tuple[int, int, int]):
            super().__init__()
            from transformers import CLIPVisionModelWithProjection

            cfg = vision_config(config)
            hidden = int(cfg.hidden_size)
            self.image_encoder = CLIPVisionModelWithProjection(cfg)
            self.cnn = nn.ModuleList([PatchCNN(level, widths, hidden) for level in LEVEL_ORDER])
            self.style_embeddings = nn.ParameterList([nn.Parameter(torch.zeros(hidden)) for _ in LEVEL_ORDER])
            self.position_embedding = nn.Embedding(NUM_POSITIONS, hidden)
            self.register_buffer("position_ids", torch.arange(NUM_POSITIONS).expand((1, -1)), persistent=False)

        def forward(self, high, middle, low):
            batch = high.shape[0]
            parts = []
            for index, patches in enumerate((high, middle, low)):
                tokens = self.cnn[index](patches.flatten(0, 1))  # [N n, H]
                tokens = tokens.view(batch, -1, tokens.shape[-1])
                cls = self.style_embeddings[index].view(1, 1, -1).expand(batch, 1, -1)
                parts += [cls, tokens]
            embeddings = torch.cat(parts, dim=1) + self.position_embedding(self.position_ids)
            vision = self.image_encoder.vision_model
            hidden = vision.encoder(inputs_embeds=vision.pre_layrnorm(embeddings))[0]
            pooled = vision.post_layernorm(hidden[:, list(CLASS_TOKENS), :])
            return self.image_encoder.visual_projection(pooled)

    class StyleProjection(nn.Module):
        """One ``ImageProjModel`` with 2 tokens: [N, P] -> [N, 2, C]."""

        def __init__(self, projection_dim: int, cross: int):
            super().__init__()
            self.cross = cross
            self.proj = nn.Linear(projection_dim, PROJ_TOKENS * cross)
            self.norm = nn.LayerNorm(cross)

        def forward(self, embeds):
            return self.norm(self.proj(embeds).reshape(-1, PROJ_TOKENS, self.cross))

    return StyleAwareEncoder, StyleProjection


def style_aware_encoder(config: dict, widths: tuple[int, int, int]):
    """An (untrained) :class:`StyleAwareEncoder` for a vision config dict and CNN widths, fp32."""
    cls, _ = _torch_modules()
    return cls(config, tuple(widths)).float()


def style_projections(projection_dim: int, cross: int):
    """``torch.nn.ModuleList`` of the three 2-token projections (``style_image_proj_modules``), fp32."""
    import torch

    _, cls = _torch_modules()
    return torch.nn.ModuleList([cls(projection_dim, cross) for _ in LEVEL_ORDER]).float()


def encoder_widths(state: dict) -> tuple[int, int, int] | None:
    """(c0, c1, c2) from a style-aware encoder state dict's high-level CNN, or None if those tensors are absent."""
    try:
        c0 = int(state["cnn.0.conv_in.weight"].shape[0])
        c1 = int(state["cnn.0.body.1.block1.weight"].shape[0])
        c2 = int(state["cnn.0.adapter.weight"].shape[1])
    except (KeyError, AttributeError, IndexError):
        return None
    return c0, c1, c2


def expected_encoder_shapes(config: dict, widths: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    """{parameter name: shape} of a style-aware encoder (built on the meta device: no memory, no init)."""
    import torch

    with torch.device("meta"):
        module = style_aware_encoder(config, widths)
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def load_style_aware_encoder(config: dict, state: dict):
    """The style-aware encoder with a checkpoint's weights (``state``: the pre-flighted
    ``style_aware_encoder.bin``), fp32, eval mode."""
    import torch

    widths = encoder_widths(state)
    with torch.device("meta"):
        module = style_aware_encoder(config, widths)
    weights = {k: v.float() for k, v in state.items() if k not in TOLERATED_ENCODER_KEYS}
    module.load_state_dict(weights, strict=True, assign=True)
    # non-persistent buffers are not in the checkpoint: made on the CPU (the vision embeddings' own
    # position ids are unused, the encoder's are its 59 token positions)
    module.position_ids = torch.arange(NUM_POSITIONS).expand((1, -1))
    embeddings = module.image_encoder.vision_model.embeddings
    if hasattr(embeddings, "position_ids"):
        embeddings.position_ids = torch.arange(embeddings.num_positions).expand((1, -1))
    return module.eval()


def load_style_projections(state: dict, projection_dim: int, cross: int):
    """The three style projections with ``ip.bin``'s ``style_image_proj_modules.*`` (``state``: prefix
    removed), fp32, eval mode."""
    module = style_projections(projection_dim, cross)
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return module.eval()
