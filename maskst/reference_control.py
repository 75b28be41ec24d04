"""The PyTorch reference of image-driven requests: diffusers' StableDiffusionControlNetPipeline.

:class:`ControlNetReference` is :class:`maskst.reference.ReferencePipeline` (``load_ip_adapter`` +
``ip_adapter_image_embeds``, the same noise) on ``StableDiffusionControlNetPipeline`` with the
ControlNet folder(s) loaded by ``ControlNetModel.from_pretrained`` (several: diffusers'
``MultiControlNetModel``). The control image it gets:

* ``none``: the loaded control image itself (:func:`maskst.control.load_control_image`: RGB, the
  policy for RGBA / grayscale / 16-bit files), at its own size: diffusers resizes it to the output
  (``VaeImageProcessor``: Lanczos) and scales it to [0, 1];
* ``canny``: :func:`maskst.control.canny` of the image resized as diffusers would (cv2, the same code
  the runtime runs: the Canny *definition* is cv2's);
* ``lineart`` / ``lineart-inverted``: the informative-drawings ``Generator(3, 1, 3)`` in torch with the
  ``sk_model.pth`` weights (the runtime runs the exported graph), quantised as StyleShot does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maskst.checkpoints import CheckpointSet
from maskst.control import ControlPreprocess, canny, lineart_image, lineart_input, load_control_image, resize_control
from maskst.errors import InputError
from maskst.generation import GenerationConfig
from maskst.reference import ReferencePipeline, ReferenceResult


def reference_control_image(path: Path, preprocess: ControlPreprocess, height: int, width: int, lineart=None):
    """The PIL image a diffusers ControlNet pipeline's ``image`` argument gets for one control image
    (``lineart``: the torch informative-drawings generator, for the lineart preprocessings)."""
    import torch
    from PIL import Image

    image = load_control_image(path)
    if preprocess is ControlPreprocess.NONE:
        return image  # diffusers resizes it
    rgb = resize_control(image, height, width, name=f"control image {path}")
    if preprocess is ControlPreprocess.CANNY:
        return Image.fromarray(canny(rgb))
    if lineart is None:
        raise InputError(f"control preprocess {preprocess.value} needs the lineart model: pass lineart_model")
    with torch.no_grad():
        line = lineart(torch.from_numpy(lineart_input(rgb))).numpy()
    return Image.fromarray(lineart_image(line, invert=preprocess is ControlPreprocess.LINEART_INVERTED))


def load_lineart(lineart_model: Path | None):
    """The torch informative-drawings generator with ``sk_model.pth``'s weights, or None."""
    if lineart_model is None:
        return None
    from maskst.control_checkpoints import load_lineart_state
    from maskst.informative_drawings import lineart_generator

    model = lineart_generator()
    model.load_state_dict(load_lineart_state(Path(lineart_model)))
    return model.eval()


class ControlNetReference(ReferencePipeline):
    """diffusers ControlNet pipeline + IP-Adapter, fp32 on CPU."""

    def __init__(self, checkpoints: CheckpointSet, controlnets: tuple[Path, ...], lineart_model: Path | None = None):
        import torch
        from diffusers import ControlNetModel

        if not controlnets:
            raise InputError("ControlNetReference needs at least one ControlNet folder")
        nets = [ControlNetModel.from_pretrained(str(folder), torch_dtype=torch.float32, local_files_only=True).eval()
                for folder in controlnets]
        super().__init__(checkpoints, pipeline_class="StableDiffusionControlNetPipeline",
                         controlnet=nets[0] if len(nets) == 1 else nets)
        self.lineart = load_lineart(lineart_model)

    def control_image(self, path: Path, preprocess: ControlPreprocess, height: int, width: int):
        """The PIL image handed to diffusers' ``image`` argument for one control image."""
        return reference_control_image(path, preprocess, height, width, self.lineart)

    def generate(self, config: GenerationConfig, style_images, latents: np.ndarray | None = None,
                 **call_kwargs) -> ReferenceResult:
        """One image-driven request (``config.control_image``, one per ControlNet)."""
        count = len(config.control_image)
        nets = getattr(self.pipe.controlnet, "nets", [self.pipe.controlnet])
        if count != len(nets):
            raise InputError(f"{count} control images for {len(nets)} ControlNet(s) in the reference: give one each")
        images = [self.control_image(path, config.control_preprocess_of(i), config.height, config.width)
                  for i, path in enumerate(config.control_image)]
        scales = [config.control_scale_of(i) for i in range(count)]
        return super().generate(config, style_images, latents, image=images[0] if count == 1 else images,
                                controlnet_conditioning_scale=scales[0] if count == 1 else scales, **call_kwargs)
