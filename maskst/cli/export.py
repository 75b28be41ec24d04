"""maskst-export: build an engines folder from local checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import click

from maskst.cli.common import EXIT_CODES_HELP, run_cli
from maskst.deepcache import CALIBRATION_INTERVAL
from maskst.errors import InputError
from maskst.engines.int8 import Int8Scheme
from maskst.export.options import ExportOptions, Precision, Target

DEFAULTS = ExportOptions()  # the one source of the export defaults


def _family_sizes(index: int) -> str:
    """The families' default export sizes, for --help (from maskst.families: one source)."""
    from maskst.families import FAMILIES

    return "[default: the model family's: " + ", ".join(f"{f.name} {f.export_sizes[index]}" for f in FAMILIES.values()) + "]"


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
               epilog=EXIT_CODES_HELP)
@click.option("--base", required=True, type=click.Path(path_type=Path),
              help="diffusers Stable Diffusion 1.5 or SDXL folder (model_index.json, unet/, vae/, text_encoder/, ...); "
                   "the model family is read from its model_index.json.")
@click.option("--ip-adapter", type=click.Path(path_type=Path),
              help="IP-Adapter file, e.g. IP-Adapter/models/ip-adapter_sd15.safetensors (or .bin), "
                   "IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors. One of --ip-adapter / --styleshot is required.")
@click.option("--styleshot", type=click.Path(path_type=Path),
              help="StyleShot folder (e.g. a download of Gaojunyao/StyleShot or StyleShot_lineart) holding "
                   "pretrained_weight/ip.bin and pretrained_weight/style_aware_encoder.bin, instead of --ip-adapter: "
                   "StyleShot engines for an SD 1.5 --base (style-aware encoder, 6 style tokens, content-fusion "
                   "ControlNet); --content-encoder is then the laion ViT-H/14 CLIP folder.")
@click.option("--image-encoder", type=click.Path(path_type=Path),
              help="CLIP image encoder folder. Default: image_encoder/ beside the adapter file "
                   "(the SDXL *_vit-h adapters need IP-Adapter/models/image_encoder).")
@click.option("--content-encoder", type=click.Path(path_type=Path),
              help="transformers CLIP folder of the same CLIP as the image encoder, for the content text "
                   "(ViT-H/14: laion/CLIP-ViT-H-14-laion2B-s32B-b79K). Required for SD 1.5, StyleShot (whose style-aware "
                   "transformer its vision config describes) and the SDXL *_vit-h adapters; "
                   "default for ip-adapter_sdxl (ViT-bigG): the base's own text_encoder_2 (pooled, projected).")
@click.option("--controlnet", "controlnets", multiple=True, type=click.Path(path_type=Path),
              help="diffusers ControlNetModel folder for this base (e.g. a canny or lineart ControlNet for SD 1.5): adds its "
                   "graph and a UNet that takes its residuals, for maskst-run --control-image. Repeat for several "
                   "(their residuals are summed, one --control-image each, in this order).")
@click.option("--lineart-model", type=click.Path(path_type=Path, dir_okay=False),
              help="informative-drawings sk_model.pth (lllyasviel/Annotators): adds the lineart graph, for "
                   "maskst-run --control-preprocess lineart.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Engines folder to create.")
@click.option("--force", is_flag=True, help="Replace an existing engines folder (only once the new one is complete).")
@click.option("--precision", type=click.Choice([p.value for p in Precision]), default=DEFAULTS.precision.value,
              show_default=True)
@click.option("--target", type=click.Choice([t.value for t in Target]), default=DEFAULTS.target.value, show_default=True,
              help="onnx: ONNX graphs for ONNX Runtime; trt: plus TensorRT plans (NVIDIA GPU required).")
@click.option("--min-size", type=int, default=None,
              help="Smallest image side the engines accept (px). " + _family_sizes(0))
@click.option("--opt-size", type=int, default=None,
              help="Image side to optimise for (px; TensorRT profiles). " + _family_sizes(1))
@click.option("--max-size", type=int, default=None,
              help="Largest image side (px). " + _family_sizes(2))
@click.option("--max-batch", type=int, default=DEFAULTS.max_batch, show_default=True, help="Most images per request.")
@click.option("--max-regions", type=int, default=DEFAULTS.max_regions, show_default=True,
              help="Most style regions per request (maskst-run --region); 1..N run on one engine set.")
@click.option("--opset", type=int, default=DEFAULTS.opset, show_default=True)
@click.option("--fp32-op", "fp32_ops", multiple=True, help="Extra ONNX op types kept in fp32 by --precision fp16.")
@click.option("--int8", is_flag=True,
              help="Also write OpenVINO int8 IRs of the UNet and the VAE decoder (NNCF), with --deepcache also of "
                   "unet_deep and unet_shallow, with the calibrated schemes also of the image encoder (int8 weights and "
                   "activations), for maskst-run --backend openvino-int8; the fp32 ONNX graphs stay for "
                   "every other backend. Needs pip install 'maskst[int8]'. Calibration runs one generation per "
                   "calibration prompt on the new engines (OpenVINO, --calibration-size, 10 steps), with --deepcache "
                   f"a second one with DeepCache on (interval {CALIBRATION_INTERVAL}) for the DeepCache graphs. Only "
                   "with --precision fp32.")
@click.option("--int8-scheme", type=click.Choice([s.value for s in Int8Scheme]), default=DEFAULTS.int8_scheme.value,
              show_default=True,
              help="hybrid: int8 weight-only MatMuls + int8 convolutions (weights and activations), calibrated; "
                   "weights: int8 weight-only MatMuls and convolutions (no calibration; the recorded inputs still measure the error); weights-matmul: MatMuls only; "
                   "full: int8 MatMuls and convolutions (weights and activations), calibrated.")
@click.option("--calibration-prompts", type=click.Path(path_type=Path, dir_okay=False),
              help="Text file with one calibration prompt per line ('#' comments and blank lines skipped) for --int8 "
                   f"[default: {len(DEFAULTS.calibration_prompts)} built-in prompts, maskst.export.options."
                   "DEFAULT_CALIBRATION_PROMPTS]. Use prompts like your own requests.")
@click.option("--calibration-size", type=int, default=None,
              help="Image side (px) of the --int8 calibration generations [default: --opt-size]; the size of your "
                   "requests is the natural choice (the cost grows with it).")
@click.option("--calibration-styles", "calibration_styles", multiple=True,
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Style image for the --int8 calibration generations (repeatable) [default: the demo style image]. "
                   "Generation i uses a view of image i mod N (the image itself, then mirrored, cropped, turned, grey, "
                   "recoloured), so the image encoder is calibrated and checked on different pictures. Use images "
                   "like your own styles.")
@click.option("--deepcache", is_flag=True,
              help="Also write the DeepCache step-caching graphs unet_deep (full UNet + cached feature) and "
                   "unet_shallow (the shallow layers that reuse it), for maskst-run --deepcache-interval N. Adds a "
                   "second full UNet file to the folder (with --int8 their int8 IRs too); not with --controlnet / --styleshot.")
@click.option("--skip-parity", is_flag=True, help="Do not compare the graphs with PyTorch after export (not recommended).")
@click.option("--wait", type=float, default=0.0, show_default=True,
              help="Seconds to wait for another export into the same folder to finish.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@run_cli
def main(base, ip_adapter, styleshot, image_encoder, content_encoder, controlnets, lineart_model, out, force, precision,
         target, min_size, opt_size, max_size, max_batch, max_regions, opset, fp32_ops, int8, int8_scheme, calibration_prompts,
         calibration_size, calibration_styles, deepcache, skip_parity, wait, quiet):
    """Export the model family's networks (plus ControlNets and the lineart annotator, if given) to ONNX,
    check each against PyTorch, write the manifest.

    \b
    maskst-export --base stable-diffusion-v1-5 \\
                  --ip-adapter IP-Adapter/models/ip-adapter_sd15.safetensors \\
                  --content-encoder CLIP-ViT-H-14-laion2B-s32B-b79K --out engines/sd15
    maskst-export --base stable-diffusion-xl-base-1.0 \\
                  --ip-adapter IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors --out engines/sdxl
    maskst-export ... --deepcache --out engines/sd15-deepcache   # for maskst-run --deepcache-interval 3
    maskst-export ... --controlnet control_v11p_sd15_canny --lineart-model Annotators/sk_model.pth --out engines/cn
    maskst-export --base stable-diffusion-v1-5 --styleshot StyleShot \\
                  --content-encoder CLIP-ViT-H-14-laion2B-s32B-b79K --out engines/styleshot
    """
    from maskst.export.exporter import ExportRequest, export_engines
    from maskst.families import detect_family
    from maskst.runtime.calibration import read_prompts

    if (calibration_prompts is not None or calibration_size is not None or calibration_styles) and not int8:
        raise InputError("--calibration-prompts / --calibration-size / --calibration-styles are for --int8; add --int8 "
                         "or leave them out")
    prompts = read_prompts(calibration_prompts) if calibration_prompts is not None else DEFAULTS.calibration_prompts

    request = ExportRequest(base=base, ip_adapter=ip_adapter, styleshot=styleshot, content_encoder=content_encoder, out=out)
    layout, _ = request.adapter()  # exactly one of --ip-adapter / --styleshot: a clear error, no work
    family_sizes = detect_family(base, layout).export_sizes  # a base that is no pipeline folder: a clear error, no work
    min_size, opt_size, max_size = (given if given is not None else default
                                    for given, default in zip((min_size, opt_size, max_size), family_sizes))
    options = ExportOptions(precision=Precision(precision), target=Target(target),
                            max_batch=max_batch, max_regions=max_regions, min_size=min_size, opt_size=opt_size, max_size=max_size,
                            opset=opset, fp32_ops=tuple(fp32_ops), check_parity=not skip_parity,
                            int8=int8, int8_scheme=Int8Scheme(int8_scheme), calibration_prompts=prompts,
                            calibration_size=calibration_size, calibration_styles=tuple(calibration_styles),
                            deepcache=deepcache)
    request = ExportRequest(base=base, ip_adapter=ip_adapter, styleshot=styleshot, image_encoder=image_encoder,
                            content_encoder=content_encoder, controlnets=tuple(controlnets),
                            lineart_model=lineart_model, out=out, force=force, lock_timeout=wait, options=options)
    calibrate = None
    if int8:
        from maskst.engines.int8 import INT8_GRAPHS
        from maskst.runtime.calibration import calibration_recorder

        calibrate = calibration_recorder(prompts, INT8_GRAPHS, size=options.calibration_side,
                                         styles=options.calibration_styles)
    manifest = export_engines(request, progress=not quiet, calibrate=calibrate)
    worst = {name: max((r["max_abs_err"] for r in g["parity"]), default=None) for name, g in manifest.data["graphs"].items()}
    summary = {"engines": str(manifest.folder), "precision": manifest.precision, "parity_max_abs_err": worst}
    if "fp16" in manifest.data:
        summary["fp16"] = manifest.data["fp16"]
    if "int8" in manifest.data:  # the int8 graphs' error against fp32, relative to each output's peak (worst case)
        summary["int8_max_err_of_peak"] = {
            name: {output: max(values["max_err_of_peak"], default=None)
                   for output, values in manifest.data["graphs"][name]["int8"]["error"].items()}
            for name in manifest.data["int8"]["graphs"]}
    click.echo(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
