"""Fused UNet + ControlNet graph (TensorRT demo) vs a separate ControlNet graph (StreamDiffusion): measured.

Builds a random-weight SD-1.5-shaped UNet (block widths scaled by --width-scale; 1.0 = SD 1.5 itself)
and ``ControlNetModel.from_unet`` of it, exports four ONNX graphs with the TorchScript exporter and
times them on ONNX Runtime CPU (median and minimum over --repeats interleaved rounds, after one warm-up
call each), at batch 2 (CFG):

* ``plain``: the UNet alone (what a text-driven request costs per step);
* ``fused``: one graph, ControlNet + UNet (inputs of both, output ``noise_pred``);
* ``separate``: the ControlNet graph (13 outputs) then the UNet graph that takes them as inputs;
* ``separate_zero``: the residual-taking UNet with all-zero residuals (a text-driven request on
  engines exported with a ControlNet, maskst's layout).

Also reported: graph file sizes, the residual bytes that cross between the two graphs per step (the
host round trip the separate layout costs on a GPU whose runners return host arrays), and the share
of the ControlNet's conditioning encoder. Example (what docs/controlnet.md quotes):

    python bench/controlnet_layout.py --width-scale 0.5 --size 256 --json bench/results/controlnet-layout-half-256.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def sd15_unet_config(width_scale: float) -> dict:
    config = json.loads((Path(__file__).resolve().parents[1] / "maskst" / "assets" / "configs" /
                         "sd15_unet_config.json").read_text())
    config["block_out_channels"] = [int(c * width_scale) // 32 * 32 for c in config["block_out_channels"]]
    config["norm_num_groups"] = 32
    return config


def build(width_scale: float):
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(sd15_unet_config(width_scale)).eval()
    controlnet = ControlNetModel.from_unet(unet).eval()
    with torch.no_grad():
        for module in (controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                       controlnet.controlnet_cond_embedding.conv_out):
            for p in module.parameters():
                p.normal_(0, 0.02)  # nonzero zero-convs, as after training
        for p in controlnet.parameters():  # weights of its own (from_unet copies the UNet's, which the
            p.add_(1e-3 * torch.randn_like(p))  # ONNX exporter would store once in a fused graph)
    unet.set_attn_processor(AttnProcessor2_0())
    controlnet.set_attn_processor(AttnProcessor2_0())
    return unet, controlnet


def modules(unet, controlnet):
    import torch

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, text):
            return self.unet(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]

    class Fused(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet, self.controlnet = unet, controlnet

        def forward(self, sample, timestep, text, cond, scale):
            down, mid = self.controlnet(sample, timestep, encoder_hidden_states=text, controlnet_cond=cond,
                                        conditioning_scale=scale, return_dict=False)
            return self.unet(sample, timestep, encoder_hidden_states=text, down_block_additional_residuals=down,
                             mid_block_additional_residual=mid, return_dict=False)[0]

    class Control(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.controlnet = controlnet

        def forward(self, sample, timestep, text, cond, scale):
            down, mid = self.controlnet(sample, timestep, encoder_hidden_states=text, controlnet_cond=cond,
                                        conditioning_scale=scale, return_dict=False)
            return (*down, mid)

    class WithResiduals(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, text, *residuals):
            return self.unet(sample, timestep, encoder_hidden_states=text, down_block_additional_residuals=list(residuals[:-1]),
                             mid_block_additional_residual=residuals[-1], return_dict=False)[0]

    return Plain(), Fused(), Control(), WithResiduals()


def export(module, args, names, outputs, path: Path) -> None:
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=17, input_names=names,
                          output_names=outputs, do_constant_folding=True)


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def interleaved(fns: dict, rounds: int) -> dict[str, dict[str, float]]:
    """{name: {median, min}} ms per call, the variants called in turn each round (one warm-up call each), so
    that load from other processes spreads over all of them instead of favouring whichever ran in a quiet moment."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: {"median": round(statistics.median(v), 2), "min": round(min(v), 2)} for name, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width-scale", type=float, default=0.5, help="UNet width relative to SD 1.5 (1.0 = SD 1.5)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (latent = size / 8)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (1: least disturbed by other processes)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)
    unet, controlnet = build(args.width_scale)
    plain, fused, control, with_residuals = modules(unet, controlnet)
    latent, batch = args.size // 8, 2
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((batch, 4, latent, latent)).astype(np.float32)
    timestep = np.array([500.0], np.float32)
    text = rng.standard_normal((batch, 77, unet.config.cross_attention_dim)).astype(np.float32)
    cond = rng.random((batch, 3, args.size, args.size)).astype(np.float32)
    scale = np.array([1.0], np.float32)
    t = {k: torch.from_numpy(v) for k, v in dict(sample=sample, timestep=timestep, text=text, cond=cond, scale=scale).items()}
    with torch.no_grad():
        residuals = [r.numpy() for r in control(t["sample"], t["timestep"], t["text"], t["cond"], t["scale"])]
        cond_embedding_ms = timed(lambda: controlnet.controlnet_cond_embedding(t["cond"]), 2)
        controlnet_ms = timed(lambda: control(t["sample"], t["timestep"], t["text"], t["cond"], t["scale"]), 2)
    res_names = [f"r{i}" for i in range(len(residuals))]
    report = {"width_scale": args.width_scale, "size": args.size, "batch": batch, "threads": args.threads,
              "block_out_channels": list(unet.config.block_out_channels),
              "unet_params_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1),
              "controlnet_params_M": round(sum(p.numel() for p in controlnet.parameters()) / 1e6, 1),
              "residuals": len(residuals), "residual_bytes_per_step": int(sum(r.nbytes for r in residuals)),
              "torch_cond_embedding_share_of_controlnet": round(cond_embedding_ms / controlnet_ms, 3),
              "onnxruntime": onnxruntime.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = (t["sample"], t["timestep"], t["text"])
        export(plain, base, ["sample", "timestep", "text"], ["noise_pred"], tmp / "plain.onnx")
        export(fused, base + (t["cond"], t["scale"]), ["sample", "timestep", "text", "cond", "scale"], ["noise_pred"],
               tmp / "fused.onnx")
        export(control, base + (t["cond"], t["scale"]), ["sample", "timestep", "text", "cond", "scale"], res_names,
               tmp / "control.onnx")
        export(with_residuals, base + tuple(torch.from_numpy(r) for r in residuals),
               ["sample", "timestep", "text", *res_names], ["noise_pred"], tmp / "with_residuals.onnx")
        report["file_mb"] = {p.stem: round(sum(f.stat().st_size for f in tmp.glob(p.stem + ".onnx*")) / 2**20, 1)
                             for p in tmp.glob("*.onnx")}
        feeds = {"sample": sample, "timestep": timestep, "text": text}
        s = {name: session(tmp / f"{name}.onnx", args.threads) for name in ("plain", "fused", "control", "with_residuals")}
        zeros = {n: np.zeros_like(r) for n, r in zip(res_names, residuals)}

        def separate():
            out = s["control"].run(None, {**feeds, "cond": cond, "scale": scale})
            return s["with_residuals"].run(None, {**feeds, **dict(zip(res_names, out))})[0]

        ms = interleaved({
            "plain": lambda: s["plain"].run(None, feeds),
            "fused": lambda: s["fused"].run(None, {**feeds, "cond": cond, "scale": scale}),
            "separate": separate,
            "separate_controlnet_only": lambda: s["control"].run(None, {**feeds, "cond": cond, "scale": scale}),
            "separate_zero": lambda: s["with_residuals"].run(None, {**feeds, **zeros}),
        }, args.repeats)
        fused_out = s["fused"].run(None, {**feeds, "cond": cond, "scale": scale})[0]
        report["separate_vs_fused_max_abs_diff"] = float(np.abs(separate() - fused_out).max())
        report["zero_residuals_vs_plain_max_abs_diff"] = float(
            np.abs(s["with_residuals"].run(None, {**feeds, **zeros})[0] - s["plain"].run(None, feeds)[0]).max())
    report["step_ms"] = ms
    for key, (num, den) in {"separate_over_fused": ("separate", "fused"), "separate_zero_over_plain": ("separate_zero", "plain"),
                            "fused_over_plain": ("fused", "plain")}.items():
        report[key] = {stat: round(ms[num][stat] / ms[den][stat], 3) for stat in ("median", "min")}
    text_out = json.dumps(report, indent=2)
    print(text_out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text_out + "\n")


if __name__ == "__main__":
    main()
