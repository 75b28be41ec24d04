"""Image-driven style transfer through ControlNet (issue 12).

Engines: the 'tiny-wide' fixtures (other widths, depths and heads than the 'tiny' set used while
developing) exported with their ControlNet (ControlNetModel.from_unet of the fixture UNet, random
zero-convs) and the random-weight lineart annotator. Reference: diffusers'
StableDiffusionControlNetPipeline + load_ip_adapter + ip_adapter_image_embeds, same noise, same
control image (maskst.reference_control).
"""

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from maskst.control import ControlAspectWarning
from maskst.errors import CheckpointError, InputError
from maskst.generation import GenerationConfig, initial_noise
from maskst.images import load_image

CASES = [("maskst", "kmeans"), ("maskst", "quantile"), ("instantstyle", "kmeans"), ("instantstyle", "quantile"),
         ("ip-adapter", "kmeans"), ("ip-adapter", "quantile")]
SIZE = dict(height=72, width=120)  # latent 9 x 15: not multiples of the UNet's downsampling


def _pattern(width: int, height: int, seed: int = 3) -> np.ndarray:
    """uint8 [H, W, 3] with edges and gradients (something for Canny and lineart to find)."""
    y, x = np.mgrid[0:height, 0:width]
    checks = ((np.sin(x / 7.0) > 0) ^ (np.cos(y / 5.0) > 0)) * 180 + 40
    noise = np.random.default_rng(seed).integers(0, 20, (height, width))
    return np.stack([checks + noise // 2, 255 - checks, (x * 255 // max(1, width - 1))], -1).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("control")
    paths = {"wide": folder / "wide.png", "exact": folder / "exact.png", "default": folder / "default.png",
             "gray": folder / "gray.png", "rgba": folder / "rgba.png", "bad": folder / "bad.png",
             "tiny": folder / "tiny.png"}
    Image.fromarray(_pattern(150, 100)).save(paths["wide"])  # another size and aspect than the output
    Image.fromarray(_pattern(120, 72, seed=4)).save(paths["exact"])  # the output size
    Image.fromarray(_pattern(130, 75, seed=5)).save(paths["default"])  # -> 128 x 72 when no size is given
    Image.fromarray(_pattern(120, 72, seed=6)[:, :, 0]).save(paths["gray"])  # mode L
    rgba = np.concatenate([_pattern(120, 72, seed=7), np.tile(np.linspace(0, 255, 120, dtype=np.uint8), (72, 1))[:, :, None]], -1)
    Image.fromarray(rgba, "RGBA").save(paths["rgba"])
    paths["bad"].write_text("not an image")
    Image.fromarray(_pattern(5, 5)).save(paths["tiny"])
    return paths


@pytest.fixture(scope="module")
def reference(tiny_wide):
    from maskst.checkpoints import resolve_checkpoints
    from maskst.reference_control import ControlNetReference

    ckpt = resolve_checkpoints(tiny_wide.base, tiny_wide.ip_adapter, tiny_wide.image_encoder, tiny_wide.content_encoder)
    return ControlNetReference(ckpt, (tiny_wide.controlnet,), tiny_wide.lineart_model)


@pytest.fixture(scope="module")
def pipeline(wide_control_engines):
    from maskst.runtime.pipeline import MaskstPipeline

    with MaskstPipeline(wide_control_engines) as pipe:
        yield pipe


def _config(control, **extra):
    values = dict(prompt="a photo of a dog in the city", content="a ship", theta=0.6, content_scale=0.8, steps=4,
                  num_images=2, seed=7, **SIZE)
    if control is not None:
        values["control_image"] = [control]
    values.update(extra)
    return GenerationConfig.create(**values)


# ---------------------------------------------------------------- export


def test_export_records_controlnet_and_lineart_graphs_with_parity(wide_control_engines, tiny_wide):
    from maskst.control_checkpoints import unet_residuals
    from maskst.engines.manifest import load_manifest
    from maskst.export.controlnet import residual_names

    manifest = load_manifest(wide_control_engines)
    graphs = manifest.data["graphs"]
    assert set(graphs) == {"text_encoder", "image_encoder", "content_encoder", "image_conditioner", "unet",
                           "vae_decoder", "controlnet_0", "lineart"}
    for name, graph in graphs.items():
        assert graph["parity"] and all(r["passed"] for r in graph["parity"]), name
    down, mid = unet_residuals(json.loads((tiny_wide.base / "unet" / "config.json").read_text()))
    names = residual_names(len(down))
    assert len(names) == 10  # tiny-wide: conv_in + 3 blocks x 2 resnets + 2 downsamplers, and the mid block
    unet = manifest.graph_spec("unet")
    masks = [t.name for t in unet.inputs if t.name.startswith("region_mask_")]  # the regional inputs
    assert [t.name for t in unet.inputs] == ["sample", "timestep", "text_embeddings", "ip_tokens", "ip_scale", *masks,
                                             *names]
    controlnet = manifest.graph_spec("controlnet_0")
    assert [t.name for t in controlnet.outputs] == list(names)
    shapes = controlnet.shapes({"N": 1, "h": 9, "w": 15})
    for name, r in zip(names, down + (mid,)):
        assert shapes[name] == (2, r.channels, -(-9 // r.stride), -(-15 // r.stride)), name
    # every residual output was compared with PyTorch (at an odd latent width)
    assert {r["output"] for r in graphs["controlnet_0"]["parity"]} == set(names)
    assert manifest.data["control"]["controlnets"][0]["graph"] == "controlnet_0"
    assert manifest.data["control"]["lineart"]["graph"] == "lineart"
    assert {"controlnet_0", "lineart"} <= set(manifest.data["sources"])


def test_divided_dims_follow_their_base_and_round_trip():
    from maskst.contract.spec import DimRange, GraphSpec, TensorSpec

    spec = GraphSpec(name="g", inputs=(TensorSpec("x", "float32", ("B", 3, "h", "w")),
                                       TensorSpec("r", "float32", ("B", 5, "h4", "w4"))),
                     outputs=(TensorSpec("y", "float32", ("B", 5, "h4", "w4")),),
                     dims={"N": DimRange(1, 1, 2), "h": DimRange(4, 8, 16), "w": DimRange(4, 8, 16)},
                     derived={"B": ("N", 2)}, divided={"h4": ("h", 4), "w4": ("w", 4)})
    assert spec.shapes({"N": 1, "h": 9, "w": 15})["r"] == (2, 5, 3, 4)
    assert spec.profile()["r"] == ((2, 5, 1, 1), (2, 5, 2, 2), (4, 5, 4, 4))
    spec.check_feed({"x": np.zeros((2, 3, 9, 15), np.float32), "r": np.zeros((2, 5, 3, 4), np.float32)})
    with pytest.raises(InputError, match=r"h4=2 must be ceil\(h/4\) = 3"):
        spec.check_feed({"x": np.zeros((2, 3, 9, 15), np.float32), "r": np.zeros((2, 5, 2, 4), np.float32)})
    assert GraphSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_preflight_refuses_a_controlnet_of_another_base_naming_both_files(tiny, tiny_wide, tmp_path, export_fn):
    out = tmp_path / "engines"
    with pytest.raises(CheckpointError) as err:
        export_fn(tiny, out, controlnets=(tiny_wide.controlnet,))
    message = str(err.value)
    assert str(tiny_wide.controlnet / "config.json") in message and str(tiny.base / "unet" / "config.json") in message
    assert "cross_attention_dim 48 (UNet: 32)" in message and "block_out_channels" in message
    assert not out.exists()  # refused before any export work
    with pytest.raises(CheckpointError, match="_class_name 'UNet2DConditionModel'"):
        export_fn(tiny, out, controlnets=(tiny.base / "unet",))
    with pytest.raises(CheckpointError, match="does not exist"):
        export_fn(tiny, out, controlnets=(tmp_path / "missing",))
    with pytest.raises(CheckpointError, match=r"not an informative-drawings Generator\(3, 1, 3\)"):
        export_fn(tiny, out, controlnets=(tiny.controlnet,), lineart_model=tiny.ip_adapter_bin)
    assert not out.exists()


# ---------------------------------------------------------------- end-to-end parity (the "done when")


@pytest.mark.parametrize("scale", [1.0, 0.5])
@pytest.mark.parametrize("method,mode", CASES)
def test_image_driven_matches_the_diffusers_controlnet_reference(reference, pipeline, style_image, images, method,
                                                                 mode, scale):
    """--control-preprocess none, a control image of another size (both resize it), every method x mask mode."""
    config = _config(images["wide"], method=method, mask_mode=mode, control_scale=scale)
    noise = initial_noise(7, (2, 4, 9, 15))
    style = [load_image(style_image)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ControlAspectWarning)
        got = pipeline.generate(config, style, latents=noise)
        want = reference.generate(config, style, latents=noise)
    np.testing.assert_array_equal(got.mask, want.mask)
    diff = np.abs(got.images.astype(int) - want.images.astype(int))
    assert diff.max() <= 2, f"max pixel difference {diff.max()}/255"
    assert want.images.std() > 10
    plain = pipeline.generate(_config(None, method=method, mask_mode=mode), style, latents=noise)
    assert np.abs(plain.images.astype(int) - got.images.astype(int)).max() > 20  # the ControlNet matters


def test_image_driven_at_guidance_one_matches_diffusers_without_guidance(reference, pipeline, style_image, images):
    config = _config(images["wide"], guidance=1.0, control_scale=0.8, steps=3)
    noise = initial_noise(7, (2, 4, 9, 15))
    style = [load_image(style_image)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ControlAspectWarning)
        got = pipeline.generate(config, style, latents=noise)
        want = reference.generate(config, style, latents=noise)
    assert np.abs(got.images.astype(int) - want.images.astype(int)).max() <= 2


@pytest.mark.parametrize("preprocess", ["canny", "lineart", "lineart-inverted"])
def test_preprocessed_control_images_match_the_reference(reference, pipeline, style_image, images, preprocess):
    config = _config(images["exact"], control_preprocess=preprocess, control_scale=0.8)
    noise = initial_noise(8, (2, 4, 9, 15))
    style = [load_image(style_image)]
    got = pipeline.generate(config, style, latents=noise)
    want = reference.generate(config, style, latents=noise)
    assert np.abs(got.images.astype(int) - want.images.astype(int)).max() <= 2
    control = np.asarray(reference.control_image(images["exact"], config.control_preprocess_of(0), 72, 120))
    # lineart: ONNX Runtime vs torch may land on either side of a uint8 step
    assert np.abs(got.control_images[0].astype(int) - control.astype(int)).max() <= (0 if preprocess == "canny" else 1)


def test_requests_without_control_image_are_unchanged(wide_engines, pipeline, style_image):
    """Engines with a ControlNet, asked without control image, give the very image of engines without one."""
    from maskst.runtime.pipeline import MaskstPipeline

    config = _config(None, steps=3)
    style = [load_image(style_image)]
    with MaskstPipeline(wide_engines) as plain:
        want = plain.generate(config, style)
    got = pipeline.generate(config, style)
    np.testing.assert_array_equal(got.images, want.images)
    assert got.control_images == () and "control_preprocess" not in got.timings_ms


# ---------------------------------------------------------------- preprocessing and image policies


def test_canny_is_cv2_canny_100_200_stacked_to_three_channels(pipeline, style_image, images):
    import cv2

    style = [load_image(style_image)]
    result = pipeline.generate(_config(images["exact"], control_preprocess="canny", steps=1, num_images=1), style)
    edges = cv2.Canny(np.asarray(Image.open(images["exact"]).convert("RGB")), 100, 200)
    np.testing.assert_array_equal(result.control_images[0], np.stack([edges] * 3, axis=-1))
    assert set(np.unique(edges)) == {0, 255}
    with pytest.warns(ControlAspectWarning, match="stretched"):  # another size: Canny of the Lanczos resize
        result = pipeline.generate(_config(images["wide"], control_preprocess="canny", steps=1, num_images=1), style)
    resized = np.asarray(Image.open(images["wide"]).convert("RGB").resize((120, 72), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(result.control_images[0], np.stack([cv2.Canny(resized, 100, 200)] * 3, axis=-1))


def test_lineart_inverted_is_the_negative_of_lineart(pipeline, style_image, images):
    style = [load_image(style_image)]
    line, inverted = (pipeline.generate(_config(images["exact"], control_preprocess=p, steps=1, num_images=1),
                                        style).control_images[0] for p in ("lineart", "lineart-inverted"))
    np.testing.assert_array_equal(inverted, 255 - line)
    assert line.std() > 0 and (line[:, :, 0] == line[:, :, 2]).all()


def test_grayscale_and_rgba_control_images(pipeline, style_image, images, tmp_path):
    """Grayscale: 3 equal channels (as diffusers' convert_to_rgb); RGBA: composited on white first."""
    style = [load_image(style_image)]
    gray_rgb = tmp_path / "gray_rgb.png"
    Image.open(images["gray"]).convert("RGB").save(gray_rgb)
    rgba = Image.open(images["rgba"])
    on_white = tmp_path / "on_white.png"
    Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB").save(on_white)
    for odd, plain in ((images["gray"], gray_rgb), (images["rgba"], on_white)):
        a = pipeline.generate(_config(odd, steps=2, num_images=1), style)
        b = pipeline.generate(_config(plain, steps=2, num_images=1), style)
        np.testing.assert_array_equal(a.control_images[0], b.control_images[0])
        np.testing.assert_array_equal(a.images, b.images)
    assert (a.control_images[0][:, :, 0] != np.asarray(rgba)[:, :, 0]).any()  # transparency was not dropped


def test_output_size_comes_from_the_control_image(images):
    config = GenerationConfig.create(prompt="a cat", control_image=[images["default"]])  # 130 x 75
    assert (config.height, config.width) == (72, 128)  # rounded down to multiples of 8, as diffusers
    config = GenerationConfig.create(prompt="a cat", control_image=[images["default"]], height=64)
    assert (config.height, config.width) == (64, 128)
    assert GenerationConfig.create(prompt="a cat").height is None  # text-driven: the engines' family default
    with pytest.raises(InputError, match="5x5 pixels"):
        GenerationConfig.create(prompt="a cat", control_image=[images["tiny"]])


def test_bad_control_requests_are_refused(images, tmp_path):
    from maskst.engines.manifest import Manifest
    from maskst.runtime.control import check_control_request

    with pytest.raises(InputError, match="control image .*bad.png: not an image file"):
        GenerationConfig.create(prompt="a cat", control_image=[images["bad"]])
    with pytest.raises(InputError, match="control image .*missing.png: no such file"):
        GenerationConfig.create(prompt="a cat", control_image=[tmp_path / "missing.png"])
    for bad, match in (({"control_scale": 0.5}, "without a control image"),
                       ({"control_preprocess": "canny"}, "without a control image"),
                       ({"control_image": [images["exact"]], "control_preprocess": "sobel"}, "choose one of: none, canny"),
                       ({"control_image": [images["exact"]], "control_scale": [1.0, 0.5, 0.2]}, "3 values for 1"),
                       ({"control_image": [images["exact"]], "control_scale": float("nan")}, "finite")):
        with pytest.raises(InputError, match=match):
            GenerationConfig.create(prompt="a cat", **SIZE, **bad)
    config = GenerationConfig.create(prompt="a cat", control_image=[images["exact"]] * 2, control_preprocess="lineart")
    no_control = Manifest(tmp_path, {"graphs": {}})
    with pytest.raises(InputError, match="have no ControlNet: export them with maskst-export ... --controlnet"):
        check_control_request(no_control, config)
    one = Manifest(tmp_path, {"control": {"controlnets": [{"graph": "controlnet_0", "residuals": []}], "lineart": None}})
    with pytest.raises(InputError, match="2 control images given; .* have 1 ControlNet"):
        check_control_request(one, config)
    with pytest.raises(InputError, match="needs the lineart graph.*--lineart-model sk_model.pth"):
        check_control_request(one, GenerationConfig.create(prompt="a cat", control_image=[images["exact"]],
                                                           control_preprocess="lineart"))


def test_control_images_are_cached_like_style_images(pipeline, style_image, images, monkeypatch):
    import maskst.runtime.control as control

    loads = []
    original = control.load_control_image
    monkeypatch.setattr(control, "load_control_image", lambda path: loads.append(path) or original(path))
    pipeline.clear_caches()
    style = [load_image(style_image)]
    for seed in (1, 2):
        pipeline.generate(_config(images["exact"], control_preprocess="lineart", steps=1, num_images=1, seed=seed), style)
    assert len(loads) == 1  # the second request reused the preprocessed image
    pipeline.generate(_config(images["exact"], control_preprocess="canny", steps=1, num_images=1), style)
    assert len(loads) == 2  # another preprocessing is another entry


# ---------------------------------------------------------------- CLI and batch


def _run(args):
    from click.testing import CliRunner

    from maskst.cli.run import main

    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_cli_image_driven_run_saves_the_control_image_and_metadata(wide_control_engines, style_image, images, tmp_path):
    import cv2

    out, saved = tmp_path / "out.png", tmp_path / "control.png"
    result = _run(["--engines", str(wide_control_engines), "--prompt", "a cat", "--style", str(style_image),
                   "--content", "a ship", "--steps", "2", "--control-image", str(images["default"]),
                   "--control-preprocess", "canny", "--control-scale", "0.5", "--save-control", str(saved),
                   "--out", str(out), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["control_images"] == [str(saved)]
    image = Image.open(out)
    assert image.size == (128, 72)  # from the 130 x 75 control image
    meta = json.loads(image.text["maskst"])
    assert meta["control_image"] == [str(images["default"])] and meta["control_preprocess"] == ["canny"]
    assert meta["control_scale"] == [0.5] and (meta["height"], meta["width"]) == (72, 128)
    resized = np.asarray(Image.open(images["default"]).convert("RGB").resize((128, 72), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(np.asarray(Image.open(saved)), np.stack([cv2.Canny(resized, 100, 200)] * 3, -1))


def test_cli_refuses_bad_control_requests_before_any_engine_loads(wide_engines, style_image, images, tmp_path):
    base = ["--prompt", "a cat", "--style", str(style_image), "--out", str(tmp_path / "o.png"), "--quiet"]
    cases = [
        (["--engines", str(tmp_path / "nowhere"), "--control-image", str(images["bad"])], "control image"),
        (["--engines", str(wide_engines), "--control-image", str(images["exact"])], "--controlnet"),
        (["--engines", str(wide_engines), "--control-scale", "0.5"], "without a control image"),
        (["--engines", str(wide_engines), "--save-control", str(tmp_path / "c.png")], "--save-control needs --control-image"),
    ]
    for args, message in cases:
        result = _run(base + args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert not (tmp_path / "o.png").exists()


def test_batch_jobs_take_control_fields(wide_control_engines, style_image, images, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    common = {"prompt": "a cat", "style": str(style_image), "content": "a ship", "steps": 1}
    lines = [{**common, "name": "canny", "control_image": str(images["exact"]), "control_preprocess": "canny",
              "control_scale": 0.5},
             {**common, "name": "sized", "control_image": str(images["default"])},
             {**common, "name": "bad", "control_image": str(images["bad"])},
             {**common, "name": "plain", "height": 64, "width": 64}]
    jobs.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = _run(["--engines", str(wide_control_engines), "--batch", str(jobs), "--out-dir", str(tmp_path / "out"),
                   "--quiet"])
    assert result.exit_code == 1  # one job failed, the others ran
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok", "error", "ok"]
    assert "control image" in records[2]["error"] and records[2]["exit_code"] == 2
    assert Image.open(tmp_path / "out" / "sized.png").size == (128, 72)
    assert json.loads(Image.open(tmp_path / "out" / "canny.png").text["maskst"])["control_scale"] == [0.5]
    assert "control_image" not in json.loads(Image.open(tmp_path / "out" / "plain.png").text["maskst"])


# ---------------------------------------------------------------- several ControlNets, other backends


def test_two_controlnets_sum_their_residuals_as_diffusers(tiny, tmp_path, export_fn, style_image, images):
    from maskst.checkpoints import resolve_checkpoints
    from maskst.fixtures import PRESETS, write_controlnet
    from maskst.reference_control import ControlNetReference
    from maskst.runtime.pipeline import MaskstPipeline

    second = tmp_path / "controlnet_b"
    write_controlnet(second, tiny.base, PRESETS["tiny"], seed=9)
    engines = export_fn(tiny, tmp_path / "engines", min_size=32, opt_size=64, max_size=64,
                        controlnets=(tiny.controlnet, second)).folder
    ckpt = resolve_checkpoints(tiny.base, tiny.ip_adapter, tiny.image_encoder, tiny.content_encoder)
    reference = ControlNetReference(ckpt, (tiny.controlnet, second))
    config = GenerationConfig.create(prompt="a cat", content="a house", steps=3, height=48, width=64, seed=3,
                                     control_image=[images["exact"], images["gray"]], control_preprocess=["none", "canny"],
                                     control_scale=[1.0, 0.5])
    style = [load_image(style_image)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ControlAspectWarning)
        want = reference.generate(config, style)
        with MaskstPipeline(engines) as pipe:
            got = pipe.generate(config, style)
            one = pipe.generate(GenerationConfig.create(**{**_fields(config), "control_image": [images["exact"]],
                                                           "control_preprocess": ["none"], "control_scale": [1.0]}), style)
    assert np.abs(got.images.astype(int) - want.images.astype(int)).max() <= 2
    assert np.abs(got.images.astype(int) - one.images.astype(int)).max() > 20  # the second ControlNet counted


def _fields(config):
    import dataclasses

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def test_openvino_runs_control_engines(wide_control_engines, pipeline, style_image, images):
    pytest.importorskip("openvino")
    from maskst.runtime.pipeline import MaskstPipeline

    config = _config(images["exact"], control_preprocess="lineart", steps=2, num_images=1)
    style = [load_image(style_image)]
    want = pipeline.generate(config, style)
    with MaskstPipeline(wide_control_engines, backend="openvino-f32", threads=1, compile_cache=False) as ov:
        got = ov.generate(config, style)
    assert np.abs(got.control_images[0].astype(int) - want.control_images[0].astype(int)).max() <= 1
    diff = np.abs(got.images.astype(int) - want.images.astype(int))
    assert diff.max() <= 2, diff.max()


def test_fp16_and_tensorrt_paths_run_control_engines(tiny, tmp_path, export_fn, style_image, images, monkeypatch):
    """--precision fp16 converts and checks the ControlNet graph (lineart stays fp32); the image stays within the
    fp16 tolerance of the fp32 reference; the TensorRT path (plans of every graph, maskst's TrtRunner) runs the
    13-output ControlNet graph, on this GPU-less machine on tests/test_gpu_path.py's fake TensorRT."""
    import shutil

    from test_gpu_path import _check_fake_plans, _fake_plan_builder, _fake_tensorrt, _install_fake_gpu

    from maskst.checkpoints import resolve_checkpoints
    from maskst.engines import tensorrt as trt_engines
    from maskst.engines.manifest import write_manifest
    from maskst.export.options import ExportOptions, Precision
    from maskst.reference_control import ControlNetReference
    from maskst.runtime.pipeline import MaskstPipeline

    manifest = export_fn(tiny, tmp_path / "fp16", min_size=32, opt_size=64, max_size=64, precision=Precision.FP16,
                         controlnets=(tiny.controlnet,), lineart_model=tiny.lineart_model)
    graphs = manifest.data["graphs"]
    assert graphs["controlnet_0"]["precision"] == "fp16" and graphs["lineart"]["precision"] == "fp32"
    assert graphs["controlnet_0"]["fp16_parity"] and all(r["passed"] for r in graphs["controlnet_0"]["fp16_parity"])
    assert manifest.data["fp16"]["fp32_graphs"] == ["image_conditioner", "vae_decoder", "lineart"]
    config = GenerationConfig.create(prompt="a cat", content="a house", steps=3, height=48, width=64, seed=2,
                                     control_image=[images["exact"]], control_preprocess="lineart", control_scale=0.7)
    style = [load_image(style_image)]
    ckpt = resolve_checkpoints(tiny.base, tiny.ip_adapter, tiny.image_encoder, tiny.content_encoder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ControlAspectWarning)
        want = ControlNetReference(ckpt, (tiny.controlnet,), tiny.lineart_model).generate(config, style)
        with MaskstPipeline(manifest.folder, threads=1) as pipe:
            fp16_images = pipe.generate(config, style).images
        diff = np.abs(fp16_images.astype(int) - want.images.astype(int))
        assert want.images.std() > 10 and diff.max() <= 3 and diff.mean() <= 0.5, (diff.max(), diff.mean())

        trt = _fake_tensorrt("10.8.0.43")
        _install_fake_gpu(monkeypatch, trt)
        folder = tmp_path / "trt"
        shutil.copytree(manifest.folder, folder)
        (folder / "manifest.json").unlink()
        data = {k: v for k, v in manifest.data.items() if k not in ("format", "schema", "files")}
        options = ExportOptions(precision=Precision.FP16, min_size=32, opt_size=64, max_size=64, max_batch=2)
        section = trt_engines.build_plans(folder, data["graphs"], options, progress=False,
                                          plan_builder=_fake_plan_builder(trt), plan_checker=_check_fake_plans)
        assert {"controlnet_0", "lineart", "unet"} <= set(section["plans"])
        assert section["parity"]["checked"] and all(r["passed"] for r in section["parity"]["results"])
        write_manifest(folder, {**data, "tensorrt": section})
        with MaskstPipeline(folder, backend="trt") as pipe:
            np.testing.assert_array_equal(pipe.generate(config, style).images, fp16_images)


@pytest.mark.slow
def test_bench_measures_image_driven_requests(wide_control_engines, wide_engines, tmp_path):
    """maskst-bench --image-driven: the ControlNet-step row and an image-driven end to end, against the
    diffusers ControlNet reference (its ControlNet folder read from the engines manifest)."""
    from click.testing import CliRunner

    from maskst.bench.bench import CONTROL_STAGE
    from maskst.bench.cli import bench_main

    out = tmp_path / "bench.json"
    args = ["--engines", str(wide_control_engines), "--image-driven", "--height", "64", "--width", "64", "--steps", "2",
            "--repeats", "1", "--warmup", "0", "--threads", "1", "--backends", "ort-cpu", "--no-cold-start",
            "--json", str(out), "--quiet"]
    result = CliRunner().invoke(bench_main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["settings"]["image_driven"] and report["models"]["controlnet"]
    for name in ("reference", "ort-cpu"):
        assert CONTROL_STAGE in report["stages_ms"][name]  # the ControlNet stage is reported (its value is a timing)
    assert report["image_diff_vs_reference"]["ort-cpu"]["max_abs"] <= 2
    assert "ControlNet step (one call)" in result.output and "end to end, image-driven" in result.output
    result = CliRunner().invoke(bench_main, ["--engines", str(wide_engines), "--image-driven", "--quiet"])
    assert result.exit_code == 2 and "have no ControlNet" in result.output


def test_sweep_with_a_control_image_runs_and_resumes(wide_control_engines, style_image, images, tmp_path):
    """maskst-sweep's run options are GenerationConfig's fields: a control image applies to every job, is part
    of each job's key and metadata, and a rerun does no work."""
    from click.testing import CliRunner

    from maskst.sweep.cli import sweep_main

    (tmp_path / "prompts.txt").write_text("a cat\n")
    (tmp_path / "styles.csv").write_text(f"style,content\n{style_image},a ship\n")
    args = [str(a) for a in ("--engines", wide_control_engines, "--prompts", tmp_path / "prompts.txt", "--styles",
                             tmp_path / "styles.csv", "--methods", "maskst,ip-adapter", "--out-dir", tmp_path / "out",
                             "--steps", "1", "--threads", "1", "--control-image", images["exact"],
                             "--control-preprocess", "canny", "--quiet", "--json")]
    first = CliRunner().invoke(sweep_main, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    pngs = sorted((tmp_path / "out").glob("*.png"))
    assert len(pngs) == 2 and all(Image.open(p).size == (120, 72) for p in pngs)  # the control image's size
    assert json.loads(Image.open(pngs[0]).text["maskst"])["control_preprocess"] == ["canny"]
    mtimes = [p.stat().st_mtime_ns for p in pngs]
    again = CliRunner().invoke(sweep_main, args, catch_exceptions=False)
    assert again.exit_code == 0 and [p.stat().st_mtime_ns for p in pngs] == mtimes


@pytest.mark.parametrize("method,mode", [("maskst", "kmeans"), ("instantstyle", "quantile")])
def test_regions_with_a_control_image_match_diffusers(reference, pipeline, style_image, images, tmp_path, method, mode):
    """Image-driven and regional at once: two styles in two masks, each masked with its own content, on the
    ControlNet engines, against diffusers' ControlNet pipeline with ip_adapter_masks (same noise)."""
    from maskst.regions import RegionMaskWarning

    y, x = np.mgrid[0:64, 0:96]
    masks = []
    for name, inside in (("left", x < 56), ("right", x > 40)):
        masks.append(tmp_path / f"{name}.png")
        Image.fromarray(np.where(inside, 230, 20).astype(np.uint8)).convert("RGB").save(masks[-1])
    second = tmp_path / "style2.png"
    Image.fromarray(_pattern(112, 80, seed=9)).save(second)
    config = GenerationConfig.create(prompt="a photo of a dog in the city", method=method, mask_mode=mode, theta=0.6,
                                     content_scale=0.8, steps=4, num_images=1, seed=7, height=64, width=96,
                                     regions=[(style_image, masks[0], "a ship"), (second, masks[1], "a cat")],
                                     region_scales="1.0,0.6", control_image=[images["wide"]], control_scale=0.8)
    noise = initial_noise(7, (1, 4, 8, 12))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ControlAspectWarning)
        warnings.simplefilter("ignore", RegionMaskWarning)
        got = pipeline.generate(config, latents=noise)
        want = reference.generate(config, None, latents=noise)
    np.testing.assert_array_equal(got.region_masks, want.mask)
    diff = np.abs(got.images.astype(int) - want.images.astype(int))
    assert diff.max() <= 2, f"max pixel difference {diff.max()}/255"
    assert want.images.std() > 10
