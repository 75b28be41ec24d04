"""Export options: one frozen dataclass built from CLI flags and validated in one place."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path

from maskst.errors import InputError
from maskst.contract.spec import DimRange
from maskst.engines.int8 import Int8Scheme


# Calibration prompts of --int8 (maskst-export --calibration-prompts FILE replaces them): varied subjects and
# styles, the demo prompt first; each is one generation at the engines' --opt-size (maskst.runtime.calibration).
DEFAULT_CALIBRATION_PROMPTS = (
    "a photo of a cat",
    "a watercolor landscape with mountains and a lake",
    "portrait of an old man, oil painting",
    "a city street at night, neon lights",
    "a bowl of fruit on a wooden table",
    "a red sports car on a coastal road",
    "a castle on a hill under a cloudy sky",
    "a close-up of a flower with dew drops",
)

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
    int8: bool = False  # also write OpenVINO int8 IRs of the UNet, VAE decoder, DeepCache graphs (maskst.engines.int8)
    int8_scheme: Int8Scheme = Int8Scheme.HYBRID
    calibration_prompts: tuple[str, ...] = DEFAULT_CALIBRATION_PROMPTS  # one generation each (--int8)
    calibration_size: int | None = None  # image side of the calibration generations (px); None: opt_size
    # style images of the calibration generations (their views: maskst.runtime.calibration); (): the demo style image
    calibration_styles: tuple[Path, ...] = ()
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
        if not isinstance(self.int8_scheme, Int8Scheme):
            raise InputError(f"int8_scheme={self.int8_scheme!r}: choose one of {', '.join(s.value for s in Int8Scheme)}")
        if self.int8 and self.precision is not Precision.FP32:
            raise InputError(f"--int8 with --precision {self.precision.value}: the int8 graphs are quantized from the fp32 "
                             "ONNX graphs, which --precision fp16 replaces; export with --precision fp32 --int8")
        if self.calibration_size is not None and (
                not isinstance(self.calibration_size, int) or self.calibration_size % vae_scale_factor
                or not self.min_size <= self.calibration_size <= self.max_size):
            raise InputError(f"calibration_size={self.calibration_size} must be a multiple of {vae_scale_factor} in "
                             f"[min_size {self.min_size}, max_size {self.max_size}]")
        if self.int8 and (  # every scheme: calibration (hybrid, full) and the held-out error check
                not self.calibration_prompts or not all(isinstance(p, str) and p.strip() for p in self.calibration_prompts)):
            raise InputError("--int8 needs at least one non-empty calibration prompt (--calibration-prompts FILE: one per line)")
        if self.int8 and self.int8_scheme.calibrated and self.check_parity and len(self.calibration_prompts) < 2:
            raise InputError(f"--int8 --int8-scheme {self.int8_scheme.value} needs at least 2 calibration prompts "
                             f"(got {len(self.calibration_prompts)}): the image encoder runs once per generation, and "
                             "one call calibrates while another is held out for the error check; add a prompt to "
                             "--calibration-prompts FILE")
        if self.fp32_ops and self.precision is not Precision.FP16:
            raise InputError(f"--fp32-op {' '.join(self.fp32_ops)}: keeps op types in fp32 during the fp16 conversion, "
                             f"but --precision is {self.precision.value}; add --precision fp16 or leave --fp32-op out")
        if self.fp32_ops:
            import onnx.defs  # lazily: options are read by processes that never export

            unknown = [op for op in self.fp32_ops if not (isinstance(op, str) and onnx.defs.has(op))]
            if unknown:
                raise InputError(f"--fp32-op {', '.join(map(repr, unknown))}: not an ONNX operator type (they are "
                                 "case-sensitive), e.g. --fp32-op Softmax --fp32-op LayerNormalization")
        for style in self.calibration_styles:
            if not isinstance(style, Path) or not style.is_file():
                raise InputError(f"--calibration-styles {style}: no such image file; give style images like your own")
        if self.calibration_styles and not self.int8:
            raise InputError("--calibration-styles is for --int8; add --int8 or leave it out")

    @property
    def calibration_side(self) -> int:
        """The image side (px) the --int8 calibration generations run at."""
        return self.opt_size if self.calibration_size is None else self.calibration_size

    def latent_range(self, vae_scale_factor: int) -> DimRange:
        f = vae_scale_factor
        return DimRange(self.min_size // f, self.opt_size // f, self.max_size // f)

    def batch_range(self) -> DimRange:
        return DimRange(self.min_batch, self.opt_batch, self.max_batch)
