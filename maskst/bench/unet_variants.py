"""The UNet as other export paths make it, for comparing what OpenVINO compiles (docs/benchmarks.md).

``python -m maskst.bench.unet_variants VARIANT --out DIR [--random-full-size | --base B --ip-adapter A] --height 256 --width 256``

Variants (each written as ``DIR/<variant>.onnx`` or ``DIR/<variant>.xml``, in its own process: a full
SD 1.5 UNet export peaks at ~8 GB):

- ``maskst-static-onnx``: maskst's own UNet module (regional decoupled attention,
  :mod:`maskst.export.unet`) exported like the engines' graph but without dynamic axes.
- ``diffusers-static-onnx``: diffusers' UNet with its IP-Adapter processors
  (``IPAdapterAttnProcessor2_0``, ``image_embeds`` projected inside), TorchScript exporter, opset 17,
  no dynamic axes: the "static-shape export" of issue 15.
- ``maskst-ov``: maskst's UNet module through OpenVINO's PyTorch frontend (``ov.convert_model``),
  saved as fp32 IR (``compress_to_fp16=False``).
- ``diffusers-ov``: diffusers' UNet with IP-Adapter through the PyTorch frontend.

Compare them with ``python -m maskst.bench.ov_inspect`` (node types, kernels, interleaved timings).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

VARIANTS = ("maskst-static-onnx", "diffusers-static-onnx", "maskst-ov", "diffusers-ov")


def _checkpoints(args):
    from maskst.families import resolve_checkpoints

    if args.random_full_size:
        from maskst.bench.bench import random_models
        from maskst.cli.embedded import default_cache_dir

        models = random_models(default_cache_dir(), "full")
        return resolve_checkpoints(models.base, models.ip_adapter, models.image_encoder, models.content_encoder)[1]
    return resolve_checkpoints(args.base, args.ip_adapter, args.image_encoder, args.content_encoder)[1]


def maskst_module(ckpt, height: int, width: int, batch: int):
    """(module, spec, feed) of maskst's UNet graph at one static request shape (R = 1, all-ones masks)."""
    from maskst.checkpoints import load_adapter_state_dict
    from maskst.export import unet
    from maskst.export.options import ExportOptions

    options = ExportOptions()
    spec = unet.spec(ckpt, options)
    module = unet.build_module(ckpt, load_adapter_state_dict(ckpt.ip_adapter), options)
    dims = {"N": batch, "h": height // ckpt.vae_scale_factor, "w": width // ckpt.vae_scale_factor, "R": 1}
    feed = spec.sample_inputs(dims, seed=1)
    for name in feed:
        if name.startswith("region_mask_"):
            feed[name][:] = 1.0
    return module, spec, feed


def diffusers_module(ckpt, height: int, width: int, batch: int):
    """(module, input names, feed) of diffusers' UNet with its IP-Adapter processors (image_embeds in)."""
    import numpy as np
    import torch

    from maskst import torch_models
    from maskst.checkpoints import load_adapter_state_dict

    class DiffusersUNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = torch_models.unet(ckpt.base)
            self.unet._load_ip_adapter_weights([load_adapter_state_dict(ckpt.ip_adapter)], low_cpu_mem_usage=False)
            self.unet.eval()

        def forward(self, sample, timestep, text_embeddings, image_embeds):
            return self.unet(sample, timestep, encoder_hidden_states=text_embeddings,
                             added_cond_kwargs={"image_embeds": [image_embeds]}, return_dict=False)[0]

    rng = np.random.default_rng(1)
    b, f = 2 * batch, ckpt.vae_scale_factor
    cross = ckpt.adapter.cross_attention_dim
    feed = {"sample": rng.standard_normal((b, 4, height // f, width // f)).astype(np.float32),
            "timestep": np.array([500.0], np.float32),
            "text_embeddings": rng.standard_normal((b, 77, cross)).astype(np.float32),
            "image_embeds": rng.standard_normal((b, 1, ckpt.image_embed_dim)).astype(np.float32)}
    return DiffusersUNet().eval(), list(feed), feed


def build(variant: str, ckpt, out: Path, height: int, width: int, batch: int = 1) -> Path:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    if variant.startswith("maskst"):
        module, spec, feed = maskst_module(ckpt, height, width, batch)
        names, outputs = [t.name for t in spec.inputs], [t.name for t in spec.outputs]
    else:
        module, names, feed = diffusers_module(ckpt, height, width, batch)
        outputs = ["noise_pred"]
    args = tuple(torch.from_numpy(feed[n]) for n in names)
    if variant.endswith("static-onnx"):
        import onnx

        from maskst.engines.onnx_files import save_graph

        scratch = out / f".scratch-{variant}"
        scratch.mkdir(exist_ok=True)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(scratch / "model.onnx"), dynamo=False, opset_version=17,
                              do_constant_folding=True, input_names=names, output_names=outputs)
        path = out / f"{variant}.onnx"
        save_graph(onnx.load(str(scratch / "model.onnx"), load_external_data=True), path)
        import shutil

        shutil.rmtree(scratch)
        return path
    import openvino as ov

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # shapes by position (maskst's forward takes *rest: its inputs have no argument names to match)
        model = ov.convert_model(module, example_input=args, input=[list(feed[n].shape) for n in names])
    for port, name in zip(model.inputs, names):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, outputs):
        port.get_tensor().set_names({name})
    path = out / f"{variant}.xml"
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--random-full-size", action="store_true")
    parser.add_argument("--base", type=Path)
    parser.add_argument("--ip-adapter", type=Path)
    parser.add_argument("--image-encoder", type=Path)
    parser.add_argument("--content-encoder", type=Path)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--num-images", type=int, default=1)
    args = parser.parse_args(argv)
    path = build(args.variant, _checkpoints(args), args.out, args.height, args.width, args.num_images)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
