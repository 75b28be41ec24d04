"""Export options: one frozen dataclass built from CLI flags and validated in one place."""

from __future__ import annotations

import dataclasses
import enum

from maskst.errors import InputError
from maskst.contract.spec import DimRange


MAX_REGIONS_LIMIT = 16  # the UNet's attention batch grows with R: 2N x R queries per layer


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"


class Target(str, enum.Enum):
    ONNX = "onnx"  # ONNX graphs for ONNX Runtime (CPU / CUDA / TensorRT EP)
    TRT = "trt"  # plus native TensorRT plans (needs an NVIDIA GPU and tensorrt)


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """What maskst-export builds. Sizes are in pixels; batch counts images (the UNet sees 2x)."""

    precision: Precision = Precision.FP32
    target: Target = Target.ONNX
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 4
    min_size: int = 256
    opt_size: int = 512
    max_size: int = 1024
    max_regions: int = 4  # style regions one request may use (the UNet's R axis: 1..max_regions)
    opset: int = 17
    fp32_ops: tuple[str, ...] = ()  # extra op types kept in fp32 by the fp16 conversion
    check_parity: bool = True
    deepcache: bool = False  # also write unet_deep + unet_shallow (DeepCache step caching, maskst.deepcache)

    def validate(self, vae_scale_factor: int = 8) -> None:
        DimRange(self.min_batch, self.opt_batch, self.max_batch)
        DimRange(self.min_size, self.opt_size, self.max_size)
        for name in ("min_size", "opt_size", "max_size"):
            value = getattr(self, name)
            if value % vae_scale_factor:
                raise InputError(f"{name}={value} must be a multiple of {vae_scale_factor}")
        if not isinstance(self.max_regions, int) or not 1 <= self.max_regions <= MAX_REGIONS_LIMIT:
            raise InputError(f"max_regions={self.max_regions} must be an integer in [1, {MAX_REGIONS_LIMIT}]")
        if not 17 <= self.opset <= 21:
            raise InputError(f"opset={self.opset}: maskst exports with opset 17 to 21")

    def latent_range(self, vae_scale_factor: int) -> DimRange:
        f = vae_scale_factor
        return DimRange(self.min_size // f, self.opt_size // f, self.max_size // f)

    def batch_range(self) -> DimRange:
        return DimRange(self.min_batch, self.opt_batch, self.max_batch)
