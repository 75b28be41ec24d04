"""The line-drawing generator of "Informative Drawings" (Chan et al., CVPR 2022), as a torch module.

This is the network behind the ``sk_model.pth`` annotator (lllyasviel/Annotators) that StyleShot and
the MaskST seed use for their image-driven "lineart" content images: ``Generator(3, 1, 3)`` = 3 input
channels (RGB in [0, 1], i.e. uint8 / 255, no normalisation), 1 output channel (a line drawing in
[0, 1] after a sigmoid: dark lines on white), 3 residual blocks. The module and parameter names are
those of the published state dict (``model0.1.weight``, ``model2.0.conv_block.1.weight``, ...), so the
file loads with ``load_state_dict`` as is.

Layout (H, W multiples of 4): reflection pad 3, 7x7 conv 3->64, InstanceNorm, ReLU; two stride-2 3x3
convs 64->128->256 (InstanceNorm, ReLU each); n residual blocks at 256 channels (reflection pad 1,
3x3 conv, InstanceNorm, ReLU, reflection pad 1, 3x3 conv, InstanceNorm, plus the input); two stride-2
transposed convs 256->128->64 (output padding 1; InstanceNorm, ReLU); reflection pad 3, 7x7 conv
64->1, sigmoid. InstanceNorm has no affine parameters and no running statistics.
"""

from __future__ import annotations

import torch
from torch import nn

LINEART_CHANNELS = (3, 1)  # (input, output)
LINEART_RESIDUAL_BLOCKS = 3


def _norm_relu(channels: int) -> list[nn.Module]:
    return [nn.InstanceNorm2d(channels), nn.ReLU(inplace=True)]


class ResidualBlock(nn.Module):
    """x + (pad, conv3x3, IN, ReLU, pad, conv3x3, IN)(x); ``conv_block.1`` and ``conv_block.5`` hold weights."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), *_norm_relu(channels),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class Generator(nn.Module):
    """float32 [N, input_nc, H, W] in [0, 1] -> float32 [N, output_nc, H, W] in [0, 1] (H, W multiples of 4)."""

    def __init__(self, input_nc: int, output_nc: int, n_residual_blocks: int = 9, sigmoid: bool = True):
        super().__init__()
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(input_nc, 64, 7), *_norm_relu(64))
        down: list[nn.Module] = []
        for width in (64, 128):
            down += [nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), *_norm_relu(2 * width)]
        self.model1 = nn.Sequential(*down)
        self.model2 = nn.Sequential(*(ResidualBlock(256) for _ in range(n_residual_blocks)))
        up: list[nn.Module] = []
        for width in (256, 128):
            up += [nn.ConvTranspose2d(width, width // 2, 3, stride=2, padding=1, output_padding=1),
                   *_norm_relu(width // 2)]
        self.model3 = nn.Sequential(*up)
        tail: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(64, output_nc, 7)]
        if sigmoid:
            tail.append(nn.Sigmoid())
        self.model4 = nn.Sequential(*tail)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))


def lineart_generator() -> Generator:
    """The sk_model.pth architecture, ``Generator(3, 1, 3)``, with fresh (untrained) weights."""
    return Generator(*LINEART_CHANNELS, LINEART_RESIDUAL_BLOCKS)
