"""vae_decoder: latents [N, 4, h, w] -> images float32 [N, 3, 8h, 8w] in [0, 1].

Unscaling by the VAE's scaling factor and diffusers' postprocessing (x / 2 + 0.5, clamp) live in
the graph; the uint8 conversion (round(x * 255)) is done on the host like diffusers' numpy_to_pil.
"""

from __future__ import annotations

from maskst.checkpoints import CheckpointSet
from maskst.export.options import ExportOptions
from maskst.contract.spec import GraphSpec, TensorSpec

NAME = "vae_decoder"


def spec(ckpt: CheckpointSet, options: ExportOptions) -> GraphSpec:
    f = ckpt.vae_scale_factor
    latent = options.latent_range(f)
    channels = int(ckpt.vae_config.get("latent_channels", 4))
    return GraphSpec(
        name=NAME,
        inputs=(TensorSpec("latents", "float32", ("N", channels, "h", "w"), low=-3.0, high=3.0),),
        outputs=(TensorSpec("images", "float32", ("N", 3, "H", "W")),),
        dims={"N": options.batch_range(), "h": latent, "w": latent},
        derived={"H": ("h", f), "W": ("w", f)},
        atol=2e-4, rtol=1e-3,
    )


def build_module(ckpt: CheckpointSet, state: dict, options: ExportOptions):
    import torch
    from maskst import torch_models

    class VaeDecoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vae = torch_models.vae(ckpt.base)
            self.scaling_factor = float(self.vae.config.scaling_factor)

        def forward(self, latents):
            image = self.vae.decode(latents / self.scaling_factor).sample
            return (image / 2 + 0.5).clamp(0, 1)

    return VaeDecoder().eval()
