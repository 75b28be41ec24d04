"""Regional multi-style (issue 11): mask semantics against diffusers' own code, the request options,
the CLI (--region, --region-scales, batch "regions", PNG metadata) and bad input.

End-to-end parity with diffusers' ip_adapter_masks path is in tests/test_regions_parity.py.
"""

import json
import platform
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskst.cli.run import main as run_main
from maskst.errors import InputError
from maskst.generation import GenerationConfig
from maskst.regions import (
    RegionMasks,
    RegionMaskWarning,
    bicubic_resize,
    diffusers_mask_grid,
    downsample_mask,
    layer_strides,
    load_region_masks,
    preprocess_mask,
    region_mask_inputs,
)

X86 = platform.machine().lower() in ("x86_64", "amd64")


def _binary(rng, h, w):
    return (rng.random((h, w)) > 0.5).astype(np.float32)


# --------------------------------------------------------------------------- mask semantics vs diffusers / torch


def test_bicubic_resize_is_torchs_kernel_bit_for_bit():
    """Every size pair, up and down: the float32 values torch's CPU kernel computes (x86-64 builds,
    whose fused multiply-adds the numpy code reproduces); integer ratios are exact on any build."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    pairs = [tuple(int(v) for v in rng.integers(1, 160, 4)) for _ in range(150)]
    pairs += [(512, 512, 64, 64), (768, 512, 48, 32), (64, 96, 8, 12), (72, 120, 9, 15), (72, 120, 4, 10)]
    worst, inexact = 0.0, 0
    for ih, iw, oh, ow in pairs:
        for mask in (_binary(rng, ih, iw), np.ones((ih, iw), np.float32)):
            want = F.interpolate(torch.from_numpy(mask)[None, None], size=(oh, ow), mode="bicubic")[0, 0].numpy()
            got = bicubic_resize(mask, oh, ow)
            worst = max(worst, float(np.abs(got - want).max()))
            inexact += not np.array_equal(got, want)
            if ih % oh == 0 and iw % ow == 0:  # dyadic weights and sums: exact whatever the rounding order
                np.testing.assert_array_equal(got, want)
    assert worst <= 1e-6
    if X86:
        assert inexact == 0, f"{inexact} of {2 * len(pairs)} resizes differ from torch (max {worst})"


@pytest.mark.parametrize("height,width", [(64, 64), (512, 768), (72, 120), (120, 72), (64, 256), (200, 96)])
def test_downsample_equals_diffusers_for_every_layer_grid(height, width):
    import torch
    from diffusers.image_processor import IPAdapterMaskProcessor

    rng = np.random.default_rng(height + width)
    mask = _binary(rng, height, width)
    mask[: height // 2, : width // 3] = 1.0  # some structure, not only noise
    for stride in (1, 2, 4, 8):
        gh, gw = -(-height // 8 // stride), -(-width // 8 // stride)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # diffusers warns where its grid does not fill the layer
            want = IPAdapterMaskProcessor.downsample(torch.from_numpy(mask)[None], 2, gh * gw, 3)[0, :, 0].numpy()
        got = downsample_mask(mask, gh * gw)
        assert got.shape == (gh * gw,)
        if X86:
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, atol=1e-6)


def test_misaligned_grids_follow_diffusers_and_warn():
    """72 x 120 px: latent 9 x 15 -> 5 x 8 -> 3 x 4; diffusers gives the 5 x 8 layers a 4 x 10 mask."""
    assert diffusers_mask_grid(9 * 15, 72, 120) == (9, 15)
    assert diffusers_mask_grid(5 * 8, 72, 120) == (4, 10)
    pixels = RegionMasks(np.ones((1, 72, 120), np.float32))
    with pytest.warns(RegionMaskWarning, match="5x8 attention layers get diffusers' 4x10 mask grid"):
        inputs = region_mask_inputs(pixels, (1, 2, 4), 9, 15)
    assert {k: v.shape for k, v in inputs.items()} == {"region_mask_1": (1, 9, 15), "region_mask_2": (1, 5, 8),
                                                      "region_mask_4": (1, 3, 4)}


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA-opaque"])
def test_preprocess_equals_ip_adapter_mask_processor(mode):
    import torch
    from diffusers.image_processor import IPAdapterMaskProcessor

    rng = np.random.default_rng(1)
    gray = (rng.random((90, 135)) * 255).astype(np.uint8)  # gray levels around the 0.5 threshold, 2:3 aspect
    if mode == "L":
        image = Image.fromarray(gray)
    elif mode == "RGB":
        image = Image.fromarray(np.stack([gray, gray[::-1], gray[:, ::-1]], -1))
    else:
        image = Image.fromarray(np.dstack([gray, gray, gray, np.full_like(gray, 255)])).convert("RGB")
    want = IPAdapterMaskProcessor().preprocess([image], height=64, width=96)[0, 0].numpy()
    with torch.no_grad():
        np.testing.assert_array_equal(preprocess_mask(image, 64, 96), want)


def test_layer_strides_of_sd15_and_sdxl_layouts():
    sd15 = [f"down_blocks.{b}.attentions.{a}.transformer_blocks.0.attn2.processor" for b in range(3) for a in range(2)]
    sd15 += ["mid_block.attentions.0.transformer_blocks.0.attn2.processor"]
    sd15 += [f"up_blocks.{b}.attentions.{a}.transformer_blocks.0.attn2.processor" for b in range(1, 4) for a in range(3)]
    assert layer_strides(sd15, 4) == (1, 1, 2, 2, 4, 4, 8, 4, 4, 4, 2, 2, 2, 1, 1, 1)
    # SDXL: no attention in down block 0; blocks 1, 2 (2 and 10 transformer blocks); 3 down blocks
    sdxl = ["down_blocks.1.attentions.0.transformer_blocks.1.attn2.processor",
            "down_blocks.2.attentions.1.transformer_blocks.9.attn2.processor",
            "mid_block.attentions.0.transformer_blocks.0.attn2.processor",
            "up_blocks.0.attentions.2.transformer_blocks.3.attn2.processor",
            "up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"]
    assert layer_strides(sdxl, 3) == (2, 4, 4, 4, 2)


def test_graph_spec_divided_dims():
    from maskst.contract.spec import DimRange, GraphSpec, TensorSpec

    spec = GraphSpec("g", inputs=(TensorSpec("x", "float32", ("R", "h", "w")), TensorSpec("y", "float32", ("R", "h/2", "w/2"))),
                     outputs=(), dims={"R": DimRange(1, 1, 4), "h": DimRange(4, 8, 16), "w": DimRange(4, 8, 16)},
                     divided={"h/2": ("h", 2), "w/2": ("w", 2)})
    assert spec.resolve({"h": 9, "w": 15})["h/2"] == 5 and spec.resolve({"h": 9, "w": 15})["R"] == 1
    assert spec.dim_range("w/2") == DimRange(2, 4, 8)
    assert spec.profile()["y"] == ((1, 2, 2), (1, 4, 4), (4, 8, 8))
    spec.check_feed(spec.sample_inputs({"R": 3, "h": 9, "w": 15}))
    bad = {**spec.sample_inputs({"R": 1, "h": 9, "w": 15}), "y": np.zeros((1, 4, 8), np.float32)}
    with pytest.raises(InputError, match=r"h/2=4 must be ceil\(h/2\) = 5"):
        spec.check_feed(bad)
    assert GraphSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_max_regions_is_an_export_option_recorded_in_the_manifest(tiny_engines):
    from maskst.engines.manifest import load_manifest
    from maskst.export.options import ExportOptions

    manifest = load_manifest(tiny_engines)
    assert manifest.model["max_regions"] == 4  # the default
    assert manifest.model["cross_attention_strides"] == [1, 1, 1, 2]  # attn_processors order: down 0, up 1 (x2), mid
    assert manifest.graph_spec("unet").dim_range("R").max == 4
    assert manifest.graph_spec("image_conditioner").dims["N"].max == 4  # max(2 * max_batch, max_regions)
    for bad in (0, 17):
        with pytest.raises(InputError, match=f"max_regions={bad} must be an integer in \\[1, 16\\]"):
            ExportOptions(max_regions=bad).validate()


# --------------------------------------------------------------------------- the request


@pytest.fixture(scope="module")
def region_files(tmp_path_factory, style_image):
    """Two style images, masks of the 64 x 96 output (and of other sizes) in a folder."""
    root = tmp_path_factory.mktemp("regions")
    rng = np.random.default_rng(3)
    Image.fromarray((rng.random((70, 90, 3)) * 255).astype(np.uint8)).save(root / "style2.png")
    left = np.zeros((64, 96), np.uint8)
    left[:, :48] = 255
    Image.fromarray(left).save(root / "left.png")
    Image.fromarray(255 - left).save(root / "right.png")
    Image.fromarray(np.full((64, 96), 255, np.uint8)).save(root / "full.png")
    Image.fromarray(np.zeros((64, 96), np.uint8)).save(root / "black.png")
    Image.fromarray(np.full((32, 48), 255, np.uint8)).save(root / "half-size.png")  # same aspect: fine
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(root / "square.png")
    (root / "broken.png").write_bytes(b"not a png")
    return {"style": style_image, "style2": root / "style2.png", **{p.stem: p for p in root.glob("*.png")}}


def test_region_options_are_validated(region_files):
    f = region_files
    two = [(f["style"], f["left"], "a ship"), (f["style2"], f["right"], "")]
    config = GenerationConfig.create(prompt="a", regions=two, region_scales="1.0,0.6")
    assert config.region_scale_values() == (1.0, 0.6) and config.regions[1].content == ""
    job = GenerationConfig.create(prompt="a", regions=[{"style": str(f["style"]), "mask": str(f["left"]), "scale": 0.5}])
    assert job.region_scale_values() == (0.5,)
    for values, message in [
        (dict(regions=two, style=[f["style"]]), "--style and --region exclude each other"),
        (dict(regions=two, content="a ship"), "--content and --region exclude each other"),
        (dict(regions=two, region_scales="1"), "--region-scales has 1 value(s) for 2 region(s)"),
        (dict(region_scales="1"), "--region-scales needs --region"),
        (dict(regions=[{"style": "a.png"}]), "region 1: mask missing"),
        (dict(regions=[{"style": "a.png", "mask": "m.png", "colour": 1}]), "unknown key(s) ['colour']"),
        (dict(regions=[{"style": "a.png", "mask": "m.png", "scale": 0.5}], region_scales="1"), "region scales given twice"),
        (dict(regions="a.png"), "must be a list of regions"),
    ]:
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            GenerationConfig.create(prompt="a", **values)


def test_mask_files_are_checked(region_files):
    f = region_files
    masks = load_region_masks(GenerationConfig.create(prompt="a", regions=[(f["style"], f["left"], ""), (
        f["style"], f["half-size"], "")]).regions, 64, 96)
    assert masks.pixels.shape == (2, 64, 96) and masks.coverage == (0.5, 1.0) and masks.overlap == 0.5
    for mask, message in [(f["black"], "has no white pixel at 96x64"),
                          (f["square"], "is 64x64 (aspect 1.000) but the output is 96x64 (aspect 1.500)"),
                          (f["broken"], "mask of region 1"),
                          (f["style"].parent / "missing.png", "mask of region 1")]:
        regions = GenerationConfig.create(prompt="a", regions=[(f["style"], mask, "")]).regions
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_region_masks(regions, 64, 96)


# --------------------------------------------------------------------------- the CLI


def _run(args):
    return CliRunner().invoke(run_main, [str(a) for a in args])


def _regional_args(engines, out, *regions):
    args = ["--engines", engines, "--prompt", "a city", "--steps", "2", "--height", "64", "--width", "96",
            "--quiet", "--out", out]
    for region in regions:
        args += ["--region", *region]
    return args


def test_run_with_regions_writes_region_metadata(tiny_engines, region_files, tmp_path):
    f = region_files
    out = tmp_path / "city.png"
    result = _run(_regional_args(tiny_engines, out, (f["style"], f["left"], "a house"), (f["style2"], f["right"], ""))
                  + ["--region-scales", "1.0,0.6", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    meta = json.loads(Image.open(out).text["maskst"])
    assert meta["method"] == "maskst" and meta["style"] == [] and meta["content"] == ""
    first, second = meta["regions"]
    assert first == {"style": str(f["style"]), "mask": str(f["left"]), "content": "a house", "scale": 1.0,
                     "method": "maskst", "masked_elements": first["masked_elements"], "coverage": 0.5}
    assert first["masked_elements"] > 0 and second["masked_elements"] == 0  # no content text: nothing masked
    assert second["method"] == "ip-adapter" and second["scale"] == 0.6 and second["content"] == ""
    assert meta["masked_elements"] == summary["masked_elements"] == first["masked_elements"]


def test_batch_jobs_take_regions(tiny_engines, region_files, tmp_path):
    f = region_files
    jobs = tmp_path / "jobs.jsonl"
    regions = [{"style": str(f["style"]), "mask": str(f["left"]), "content": "a house", "scale": 0.8},
               {"style": str(f["style2"]), "mask": str(f["right"]), "content": "a cat"}]
    lines = [{"name": "two", "prompt": "a city", "regions": regions},
             {"name": "plain", "prompt": "a city", "style": [str(f["style"])], "content": "a house"},
             {"name": "bad", "prompt": "a city", "regions": [{**regions[0], "mask": str(f["black"])}]}]
    jobs.write_text("\n".join(json.dumps(line) for line in lines))
    result = _run(["--engines", tiny_engines, "--batch", jobs, "--out-dir", tmp_path / "out", "--steps", "2",
                   "--height", "64", "--width", "96", "--quiet"])
    assert result.exit_code == 1, result.output  # one bad job; the others ran
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok", "error"]
    assert "has no white pixel" in records[2]["error"] and records[2]["exit_code"] == 2
    meta = json.loads(Image.open(tmp_path / "out" / "two.png").text["maskst"])
    assert [r["scale"] for r in meta["regions"]] == [0.8, 1.0]
    assert "regions" not in json.loads(Image.open(tmp_path / "out" / "plain.png").text["maskst"])


def test_one_full_region_equals_no_regions_and_scale_zero_equals_no_adapter(tiny_engines, region_files, tmp_path):
    """diffusers-style invariants, through the CLI: one region with an all-white mask is the plain
    request (identical PNG pixels); region scales 0 equal adapter scale 0."""
    f = region_files
    common = ["--engines", tiny_engines, "--prompt", "a city", "--steps", "2", "--height", "64", "--width", "96",
              "--quiet", "--seed", "4"]
    pixels = {}
    for name, extra in {"plain": ["--style", f["style"], "--content", "a house"],
                        "full": ["--region", f["style"], f["full"], "a house"],
                        "zero": ["--style", f["style"], "--content", "a house", "--scale", "0"],
                        "regions0": ["--region", f["style"], f["left"], "a house", "--region", f["style2"], f["right"],
                                     "a cat", "--region-scales", "0,0"]}.items():
        result = _run(common + extra + ["--out", tmp_path / f"{name}.png"])
        assert result.exit_code == 0, result.output
        pixels[name] = np.asarray(Image.open(tmp_path / f"{name}.png"))
    np.testing.assert_array_equal(pixels["full"], pixels["plain"])
    np.testing.assert_array_equal(pixels["regions0"], pixels["zero"])
    assert np.abs(pixels["plain"].astype(int) - pixels["zero"]).max() > 0  # the adapter does something


@pytest.mark.parametrize("case,message", [
    ("black", "has no white pixel at 96x64"),
    ("square", "would be stretched"),
    ("broken", "mask of region 1"),
    ("too-many", "5 regions given; these engines take at most 4 per request. Rebuild them with maskst-export --max-regions 5"),
    ("with-style", "--style and --region exclude each other"),
    ("scales", "--region-scales has 3 value(s) for 1 region(s)"),
])
def test_bad_regional_requests_exit_2_before_any_work(tiny_engines, region_files, tmp_path, case, message):
    f = region_files
    out = tmp_path / "x.png"
    regions = {"black": [(f["style"], f["black"], "")], "square": [(f["style"], f["square"], "")],
               "broken": [(f["style"], f["broken"], "")], "too-many": [(f["style"], f["left"], "")] * 5,
               "with-style": [(f["style"], f["left"], "")], "scales": [(f["style"], f["left"], "")]}[case]
    extra = {"with-style": ["--style", f["style"]], "scales": ["--region-scales", "1,1,1"]}.get(case, [])
    result = _run(_regional_args(tiny_engines, out, *regions) + extra)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and message in error[0], result.output
    assert not out.exists()
