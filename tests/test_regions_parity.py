"""Regional multi-style end to end: maskst's ONNX Runtime pipeline against diffusers' own regional path.

The reference is diffusers (``load_ip_adapter``, ``ip_adapter_image_embeds`` [2, R, D], each style
masked with its own content; ``cross_attention_kwargs={"ip_adapter_masks": [mask [1, R, H, W]]}``
from ``IPAdapterMaskProcessor.preprocess``; per-image scales ``[[s_1, ..., s_R]]`` on every IP-Adapter
processor), run from the same initial latents, on the 'tiny-wide' fixtures (other widths, depths,
head sizes and token count than the development ones; three UNet levels). fp32 on CPU: images
within 2/255 per pixel, every method x mask mode, R = 2 and 3.
"""

import warnings

import numpy as np
import pytest
from PIL import Image

from maskst.generation import GenerationConfig, initial_noise
from maskst.regions import RegionMaskWarning

CASES = [("maskst", "kmeans"), ("maskst", "quantile"), ("instantstyle", "kmeans"), ("ip-adapter", "kmeans")]


@pytest.fixture(scope="module")
def reference(tiny_wide):
    from maskst.checkpoints import resolve_checkpoints
    from maskst.reference import ReferencePipeline

    return ReferencePipeline(resolve_checkpoints(tiny_wide.base, tiny_wide.ip_adapter, tiny_wide.image_encoder,
                                                 tiny_wide.content_encoder))


@pytest.fixture(scope="module")
def pipeline(wide_engines):
    from maskst.runtime.pipeline import MaskstPipeline

    with MaskstPipeline(wide_engines) as pipe:
        yield pipe


def _masks(root, height, width):
    """Three masks of the output size with soft-edged shapes: two overlapping, pixels left uncovered."""
    y, x = np.mgrid[0:height, 0:width]
    shapes = {"left": x < 0.55 * width, "right": x > 0.45 * width,
              "disc": (y - 0.6 * height) ** 2 + (x - 0.3 * width) ** 2 < (0.3 * height) ** 2}
    paths = {}
    for name, inside in shapes.items():
        gray = np.where(inside, 230, 20).astype(np.uint8)  # not pure black / white: the threshold matters
        paths[name] = root / f"{name}-{width}x{height}.png"
        Image.fromarray(gray).convert("RGB").save(paths[name])
    return paths


@pytest.fixture(scope="module")
def styles(tmp_path_factory, style_image):
    root = tmp_path_factory.mktemp("region-styles")
    rng = np.random.default_rng(21)
    paths = [style_image]
    for i in range(2):
        y, x = np.mgrid[0:80, 0:112] / 20.0
        img = np.stack([np.cos((i + 2) * x), np.sin(y * (i + 1)), np.cos(x + y)], -1) * 0.45 + 0.5
        img = img + 0.05 * rng.standard_normal(img.shape)
        paths.append(root / f"style{i}.png")
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(paths[-1])
    return root, paths


def _config(styles, regions, method, mode, height, width, **extra):
    root, paths = styles
    masks = _masks(root, height, width)
    contents = ["a ship", "a cat", "a house"]
    chosen = [(paths[i], masks[m], contents[i]) for i, m in enumerate(regions)]
    return GenerationConfig.create(prompt="a photo of a dog in the city", regions=chosen, method=method, mask_mode=mode,
                                   theta=0.6, content_scale=0.8, steps=4, height=height, width=width, seed=7, **extra)


@pytest.mark.parametrize("regions", [("left", "right"), ("left", "right", "disc")], ids=["R2", "R3"])
@pytest.mark.parametrize("method,mode", CASES)
def test_regions_match_diffusers(reference, pipeline, styles, regions, method, mode):
    scales = "1.0,0.6" if len(regions) == 2 else "1.0,0.6,0.8"
    config = _config(styles, regions, method, mode, 64, 96, region_scales=scales, num_images=2)
    noise = initial_noise(7, (2, 4, 8, 12))
    want = reference.generate(config, latents=noise)
    got = pipeline.generate(config, latents=noise)
    np.testing.assert_array_equal(got.region_masks, want.mask)  # each style masked with its own content
    assert (got.region_masks[0].any() and got.region_masks[1].any()) == (method == "maskst")
    diff = np.abs(got.images.astype(int) - want.images.astype(int))
    assert diff.max() <= 2, f"max pixel difference {diff.max()}/255"
    assert want.images.std() > 10


def test_regions_at_guidance_one_match_diffusers(reference, pipeline, styles):
    """diffusers without guidance: the [R, D] region embeds as the positive half alone."""
    config = _config(styles, ("left", "right"), "maskst", "kmeans", 64, 96, guidance=1.0, num_images=2)
    noise = initial_noise(5, (2, 4, 8, 12))
    want = reference.generate(config, latents=noise)
    got = pipeline.generate(config, latents=noise)
    assert np.abs(got.images.astype(int) - want.images.astype(int)).max() <= 2


def test_misaligned_size_reproduces_diffusers_grid_rule(reference, pipeline, styles):
    """72 x 120 px (latent 9 x 15 -> 5 x 8 -> 3 x 4): diffusers' mask grids differ from the layer grids
    (4 x 10 over 5 x 8 queries); maskst applies the masks the same way, and warns."""
    config = _config(styles, ("left", "disc"), "maskst", "kmeans", 72, 120, region_scales="0.9,1.2",
                     scheduler="unipc", target_blocks=["up_blocks.1", "down_blocks.0"])
    noise = initial_noise(3, (1, 4, 9, 15))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = reference.generate(config, latents=noise)
    with pytest.warns(RegionMaskWarning, match="4x10 mask grid"):
        got = pipeline.generate(config, latents=noise)
    assert np.abs(got.images.astype(int) - want.images.astype(int)).max() <= 2


def test_regions_steer_the_image(pipeline, styles):
    """The masks are live: swapping two regions' masks changes the image; the swap of masks and styles
    together (the same request, regions listed in another order) does not."""
    root, paths = styles
    masks = _masks(root, 64, 96)
    common = dict(prompt="a dog", steps=3, height=64, width=96, seed=2, method="ip-adapter")
    a = GenerationConfig.create(regions=[(paths[1], masks["left"], ""), (paths[2], masks["right"], "")], **common)
    b = GenerationConfig.create(regions=[(paths[1], masks["right"], ""), (paths[2], masks["left"], "")], **common)
    c = GenerationConfig.create(regions=[(paths[2], masks["right"], ""), (paths[1], masks["left"], "")], **common)
    images = {k: pipeline.generate(v).images.astype(int) for k, v in dict(a=a, b=b, c=c).items()}
    assert np.abs(images["a"] - images["b"]).max() > 10
    assert np.abs(images["a"] - images["c"]).max() <= 1  # the sum over regions runs in another order


def test_one_full_region_is_diffusers_no_mask(reference, pipeline, styles, tmp_path):
    """diffusers-style invariant on both pipelines: one region with an all-white mask equals the plain
    request (maskst: identical pixels; the reference: within the 2/255 parity bound of maskst)."""
    root, paths = styles
    full = tmp_path / "full.png"
    Image.fromarray(np.full((64, 96), 255, np.uint8)).save(full)
    common = dict(prompt="a dog", steps=3, height=64, width=96, seed=5, method="maskst")
    regional = GenerationConfig.create(regions=[(paths[1], full, "a cat")], **common)
    plain = GenerationConfig.create(style=[paths[1]], content="a cat", **common)
    got_regional, got_plain = pipeline.generate(regional).images, pipeline.generate(plain).images
    np.testing.assert_array_equal(got_regional, got_plain)
    want = reference.generate(regional).images
    assert np.abs(want.astype(int) - got_plain.astype(int)).max() <= 2


def test_plus_adapter_regions_match_diffusers(tiny, tmp_path, export_fn, styles):
    """IP-Adapter Plus (Resampler, 16 tokens): the same regional graph, method ip-adapter."""
    from maskst.checkpoints import resolve_checkpoints
    from maskst.reference import ReferencePipeline
    from maskst.runtime.pipeline import MaskstPipeline

    engines = export_fn(type("Plus", (), {"base": tiny.base, "ip_adapter": tiny.ip_adapter_plus,
                                           "image_encoder": tiny.image_encoder,
                                           "content_encoder": tiny.content_encoder})(), tmp_path / "plus", check_parity=False)
    reference = ReferencePipeline(resolve_checkpoints(tiny.base, tiny.ip_adapter_plus, tiny.image_encoder,
                                                      tiny.content_encoder))
    config = _config(styles, ("left", "right"), "ip-adapter", "kmeans", 64, 96, region_scales="1.0,0.5")
    noise = initial_noise(1, (1, 4, 8, 12))
    with MaskstPipeline(engines.folder) as pipe:
        got = pipe.generate(config, latents=noise)
    want = reference.generate(config, latents=noise)
    assert np.abs(got.images.astype(int) - want.images.astype(int)).max() <= 2


def test_maskst_run_cli_reproduces_diffusers(reference, wide_engines, styles, tmp_path):
    """The same through maskst-run: --region x 3, --region-scales, --init-latents; the PNG's pixels."""
    from click.testing import CliRunner

    from maskst.cli.run import main as run_main

    config = _config(styles, ("left", "right", "disc"), "maskst", "quantile", 64, 96, region_scales="1.0,0.6,0.8")
    noise = initial_noise(11, (1, 4, 8, 12))
    np.save(tmp_path / "noise.npy", noise)
    args = ["--engines", wide_engines, "--prompt", config.prompt, "--method", "maskst", "--mask-mode", "quantile",
            "--theta", "0.6", "--content-scale", "0.8", "--steps", "4", "--height", "64", "--width", "96",
            "--init-latents", tmp_path / "noise.npy", "--region-scales", "1.0,0.6,0.8", "--quiet",
            "--out", tmp_path / "out.png"]
    for region in config.regions:
        args += ["--region", region.style, region.mask, region.content]
    result = CliRunner().invoke(run_main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    got = np.asarray(Image.open(tmp_path / "out.png")).astype(int)
    want = reference.generate(config, latents=noise).images[0].astype(int)
    assert np.abs(got - want).max() <= 2
