"""ControlNet graphs: one graph per ControlNet that returns its residuals, and a UNet that adds them.

Layout (docs/controlnet.md has the measurements behind the choice): a *separate* ControlNet graph
whose 13 outputs (SD 1.5) feed 13 extra inputs of the UNet graph, as StreamDiffusion's TensorRT
fork does, not TensorRT demo's fused UNet + ControlNet engine. The UNet graph of an engines folder
exported with ``--controlnet`` is the plain ``unet`` graph (:mod:`maskst.export.unet`, unchanged)
plus those inputs; without a control image the runtime feeds zeros, which leaves every skip
connection exactly as it was (``x + 0 == x`` in floating point).

``controlnet_<i>`` (one per ``--controlnet`` folder, in the order given):

* inputs: ``sample`` float32 [B, 4, h, w] (the scaled latent model input: both CFG halves,
  B = 2N, or the positive half alone, B = N, without guidance),
  ``timestep`` float32 [1], ``text_embeddings`` float32 [B, 77, C] (the ControlNet reads the text
  embeddings only: with IP-Adapter the UNet alone gets the image tokens, as in diffusers),
  ``controlnet_cond`` float32 [B, 3, H, W] (the control image in [0, 1], not normalised, H = 8h),
  ``conditioning_scale`` float32 [1];
* outputs: ``down_residual_<j>`` float32 [B, c_j, ceil(h/s_j), ceil(w/s_j)] (12 for SD 1.5) and
  ``mid_residual`` float32 [B, c_mid, ceil(h/s_mid), ceil(w/s_mid)], already multiplied by
  ``conditioning_scale`` (diffusers' ``ControlNetModel.forward`` with ``guess_mode=False``).

Several ControlNets: the runtime sums their residuals (diffusers' ``MultiControlNetModel``).

A ControlNet that comes with the adapter (``CheckpointSet.builtin_controlnets``: StyleShot's
content-fusion encoder, ``ControlNetModel.from_unet`` of the base UNet with the weights of ``ip.bin``'s
``controlnet.*``) is a graph of the same kind, named by its :class:`ControlNetInfo` (``content_fusion``),
whose cross-attention reads the UNet's ``ip_tokens`` [B, 1, k, C] (the style tokens, T0 for the
negative half) instead of the text embeddings: ``ControlNetInfo.context``. The manifest's ``control``
entry of each graph lists the UNet inputs it reads (``reads``), so the runtime feeds it from the UNet's
feed by name.
"""

from __future__ import annotations

import dataclasses

from maskst.checkpoints import CheckpointSet
from maskst.contract.spec import GraphSpec, TensorSpec
from maskst.control_checkpoints import ControlNetInfo, Residual, unet_residuals
from maskst.export import unet
from maskst.export.options import ExportOptions

DOWN = "down_residual_{}"
MID = "mid_residual"


def residual_names(count: int) -> tuple[str, ...]:
    """Names of the residual tensors (ControlNet outputs = UNet inputs): the down ones, then the mid one."""
    return tuple(DOWN.format(j) for j in range(count)) + (MID,)


def _dim(axis: str, stride: int) -> str:
    return axis if stride == 1 else f"{axis}{stride}"


def _residual_specs(down: tuple[Residual, ...], mid: Residual) -> tuple[tuple[TensorSpec, ...], dict]:
    """TensorSpecs of the residuals and the divided dims they use (``h4`` = ceil(h / 4), ...)."""
    specs, divided = [], {}
    for name, r in zip(residual_names(len(down)), down + (mid,)):
        specs.append(TensorSpec(name, "float32", ("B", r.channels, _dim("h", r.stride), _dim("w", r.stride))))
        if r.stride != 1:
            divided.update({_dim("h", r.stride): ("h", r.stride), _dim("w", r.stride): ("w", r.stride)})
    return tuple(specs), divided


def _context_spec(base: GraphSpec, context: str) -> TensorSpec:
    """The UNet input a ControlNet's cross-attention reads: ``text_embeddings`` as the UNet has it, or
    ``ip_tokens`` of one region ([B, 1, k, C]: the style tokens of a non-regional request)."""
    spec = {t.name: t for t in base.inputs}[context]
    if context == "ip_tokens":
        return dataclasses.replace(spec, shape=(spec.shape[0], 1, *spec.shape[2:]))
    return spec


class ControlNetGraph:
    """The graph of one ControlNet (a folder, or the adapter's own), with the registry's module interface
    (NAME, spec, build_module)."""

    def __init__(self, index: int, info: ControlNetInfo):
        self.NAME = info.name or f"controlnet_{index}"
        self.info = info

    def reads(self) -> tuple[str, ...]:
        """The UNet inputs this graph takes as they are (the runtime feeds them by name)."""
        return ("sample", "timestep", self.info.context)

    def spec(self, ckpt: CheckpointSet, options: ExportOptions) -> GraphSpec:
        base = unet.spec(ckpt, options)
        inputs = {t.name: t for t in base.inputs}
        f = ckpt.vae_scale_factor
        outputs, divided = _residual_specs(self.info.down, self.info.mid)
        return dataclasses.replace(  # the UNet's dims, batch rule (B = 2 N or N) and tolerances
            base,
            name=self.NAME,
            inputs=(inputs["sample"], inputs["timestep"], _context_spec(base, self.info.context),
                    TensorSpec("controlnet_cond", "float32", ("B", self.info.conditioning_channels, "H", "W"),
                               low=0.0, high=1.0),
                    TensorSpec("conditioning_scale", "float32", (1,), low=0.0, high=2.0)),
            outputs=outputs,
            dims=dict(base.dims),
            derived={**base.derived, "H": ("h", f), "W": ("w", f)},
            divided=divided,
        )

    def _load(self, ckpt: CheckpointSet, state: dict):
        """The diffusers ControlNetModel: from its folder, or ``from_unet`` of the base UNet with the
        adapter state's weights (``state[info.state_group]``, checked at pre-flight)."""
        import torch
        from diffusers import ControlNetModel

        if self.info.state_group is None:
            return ControlNetModel.from_pretrained(str(self.info.folder), torch_dtype=torch.float32,
                                                   local_files_only=True).eval()
        from maskst import torch_models

        controlnet = ControlNetModel.from_unet(torch_models.unet(ckpt.base), load_weights_from_unet=False)
        controlnet.load_state_dict(state[self.info.state_group], strict=True)
        return controlnet.float().eval()

    def build_module(self, ckpt: CheckpointSet, state: dict, options: ExportOptions):
        """torch module (sample, timestep, context, controlnet_cond, conditioning_scale) -> 13 residuals;
        context: text_embeddings [B, 77, C] or (StyleShot) ip_tokens [B, 1, k, C]."""
        import torch
        from diffusers.models.attention_processor import AttnProcessor2_0

        from maskst.export.rewrites import split_geglu

        controlnet = self._load(ckpt, state)
        split_geglu(controlnet)  # the same function, no Split node (maskst.export.rewrites)

        class ControlNetResiduals(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.controlnet = controlnet
                self.controlnet.set_attn_processor(AttnProcessor2_0())

            def forward(self, sample, timestep, context, controlnet_cond, conditioning_scale):
                if context.dim() == 4:  # ip_tokens [B, 1, k, C] -> [B, k, C]
                    context = context.flatten(1, 2)
                down, mid = self.controlnet(sample, timestep, encoder_hidden_states=context,
                                            controlnet_cond=controlnet_cond, conditioning_scale=conditioning_scale,
                                            return_dict=False)
                return (*down, mid)

        return ControlNetResiduals().eval()


class UNetWithResiduals:
    """The ``unet`` graph plus one input per ControlNet residual (registry module interface).

    Inputs: those of :mod:`maskst.export.unet`, then ``down_residual_0..`` and ``mid_residual`` (the
    shapes of :func:`maskst.control_checkpoints.unet_residuals`), added to the UNet's skip connections
    and mid-block output (diffusers' ``down_block_additional_residuals`` /
    ``mid_block_additional_residual``). Output: ``noise_pred`` as the plain graph.
    """

    NAME = unet.NAME

    def spec(self, ckpt: CheckpointSet, options: ExportOptions) -> GraphSpec:
        base = unet.spec(ckpt, options)
        residuals, divided = _residual_specs(*unet_residuals(ckpt.unet_config))
        return dataclasses.replace(base, inputs=base.inputs + residuals, divided={**base.divided, **divided})

    def build_module(self, ckpt: CheckpointSet, state: dict, options: ExportOptions):
        import torch

        plain = unet.build_module(ckpt, state, options)
        count = len(unet.spec(ckpt, options).inputs)

        class Residuals(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.plain = plain

            def forward(self, *inputs):
                return self.plain(*inputs[:count], down_block_additional_residuals=list(inputs[count:-1]),
                                  mid_block_additional_residual=inputs[-1])

        return Residuals().eval()


def controlnet_graphs(controlnets: tuple[ControlNetInfo, ...]) -> list:
    """Graph builders that ``--controlnet`` adds (one per folder, in order)."""
    return [ControlNetGraph(i, info) for i, info in enumerate(controlnets)]


def with_control(builders: list, controlnets: tuple[ControlNetInfo, ...], lineart=None) -> list:
    """The export's graph builders with ControlNet support: the UNet takes residuals, the ControlNet
    graphs (and the lineart annotator, if given) are appended. Without ControlNets: unchanged."""
    if controlnets:
        builders = [UNetWithResiduals() if b.NAME == unet.NAME else b for b in builders]
        builders = builders + controlnet_graphs(controlnets)
    if lineart is not None:
        builders = builders + [lineart]
    return builders


def control_manifest(controlnets: tuple[ControlNetInfo, ...], lineart=None) -> dict:
    """The manifest's ``control`` section: what the runtime reads to know which control graphs exist."""
    return {
        "controlnets": [{"graph": graph.NAME, "folder": str(info.folder.resolve()),
                         "conditioning_channels": info.conditioning_channels, "channel_order": info.channel_order,
                         "residuals": list(residual_names(len(info.down))), "reads": list(graph.reads())}
                        for graph, info in zip(controlnet_graphs(controlnets), controlnets)],
        "lineart": None if lineart is None else {"graph": lineart.NAME, "source": str(lineart.path.resolve())},
    }


def control_sources(controlnets: tuple[ControlNetInfo, ...], lineart=None) -> dict:
    """{manifest source name: weights file} of the control checkpoints (hashed into ``sources``)."""
    files = {graph.NAME: info.weights for graph, info in zip(controlnet_graphs(controlnets), controlnets)
             if info.state_group is None}  # the adapter's own ControlNet: hashed with the adapter's files
    if lineart is not None:
        files[lineart.NAME] = lineart.path
    return files
