"""SDXL end to end: maskst-export then maskst's pipeline against diffusers' StableDiffusionXLPipeline.

Runs on the 'sdxl-tiny-wide' fixtures (widths, depths, heads, levels and layer count other than the
'sdxl-tiny' set used while developing), for both adapter families of h94's sdxl_models:
ip-adapter_sdxl (ViT-bigG image_embeds; content embedding = SDXL's own pooled text_encoder_2 output)
and ip-adapter_sdxl_vit-h (ViT-H; laion content encoder), for every method x mask mode, from the
same initial latents. fp32 on CPU: images agree within 2/255 per pixel (measured: max 1/255).
"""

import itertools

import numpy as np
import pytest

from maskst.generation import GenerationConfig, initial_noise
from maskst.images import load_image

METHODS = ("maskst", "instantstyle", "ip-adapter")
MODES = ("kmeans", "quantile")
ADAPTERS = ("bigg", "vit-h")


def _checkpoints(fixtures, adapter):
    """(ip_adapter, image_encoder, content_encoder) of an adapter kind; None = the family's default."""
    if adapter == "bigg":
        return fixtures.ip_adapter, None, None
    return fixtures.ip_adapter_vit_h, fixtures.image_encoder_vit_h, fixtures.content_encoder


@pytest.fixture(scope="module", params=ADAPTERS)
def pair(request, sdxl_wide, export_checkpoints, tmp_path_factory):
    """(maskst pipeline, diffusers reference) of one adapter, exported from the sdxl-tiny-wide set."""
    from maskst.families import resolve_checkpoints
    from maskst.reference import ReferencePipeline
    from maskst.runtime.pipeline import MaskstPipeline

    ip_adapter, image_encoder, content_encoder = _checkpoints(sdxl_wide, request.param)
    manifest = export_checkpoints(sdxl_wide.base, ip_adapter, image_encoder, content_encoder,
                                  tmp_path_factory.mktemp("engines") / f"sdxl-wide-{request.param}",
                                  min_size=64, opt_size=64, max_size=128)
    assert manifest.model["family"] == "sdxl"
    assert all(r["passed"] for g in manifest.data["graphs"].values() for r in g["parity"])
    family, ckpt = resolve_checkpoints(sdxl_wide.base, ip_adapter, image_encoder, content_encoder)
    with MaskstPipeline(manifest.folder) as pipe:
        yield request.param, pipe, ReferencePipeline(ckpt)


@pytest.mark.parametrize("method,mode", list(itertools.product(METHODS, MODES)))
def test_sdxl_image_matches_diffusers(pair, style_image, method, mode):
    adapter, pipe, reference = pair
    config = GenerationConfig.create(prompt="a photo of a dog in the city", content="a ship", method=method,
                                     mask_mode=mode, theta=0.8, content_scale=0.8, steps=4, height=72, width=120,
                                     num_images=2, seed=7)
    noise = initial_noise(7, (2, 4, 9, 15))  # latent sizes not divisible by the UNet's downsampling (4)
    style = [load_image(style_image)]
    want = reference.generate(config, style, latents=noise)
    got = pipe.generate(config, style, latents=noise)
    np.testing.assert_array_equal(got.mask, want.mask)
    if method == "maskst":
        assert got.masked_elements > 0
    diff = np.abs(got.images.astype(int) - want.images.astype(int))
    assert diff.max() <= 2, f"{adapter} {method} {mode}: max pixel difference {diff.max()}/255"
    assert want.images.std() > 10  # a real image, not a constant


@pytest.mark.parametrize("negative,guidance", [("", 7.5), ("blurry, low quality", 7.5), ("", 1.0)])
def test_sdxl_setting_of_the_paper_matches_diffusers(pair, style_image, negative, guidance):
    """MaskST's SDXL setting: style block only (up_blocks.0.attentions.1), quantile theta 0.8, scale 1.0,
    the base's own scheduler (Euler); an empty negative prompt is zeros (force_zeros_for_empty_prompt). At guidance 1
    (off) the UNet runs the prompt's half alone, with its pooled text embeds and time ids."""
    adapter, pipe, reference = pair
    config = GenerationConfig.create(prompt="a cat", content="a house", method="maskst", mask_mode="quantile",
                                     theta=0.8, scale=1.0, target_blocks=["up_blocks.0.attentions.1"], steps=3,
                                     height=64, width=64, seed=3, negative_prompt=negative, guidance=guidance)
    style = [load_image(style_image)]
    got = pipe.generate(config, style)
    want = reference.generate(config, style)
    np.testing.assert_array_equal(got.mask, want.mask)
    assert np.abs(got.images.astype(int) - want.images.astype(int)).max() <= 2
    from maskst.generation import layer_scales

    selected = layer_scales(pipe.layer_names, config)
    assert 0 < selected.sum() < len(selected)  # the style block only


@pytest.mark.parametrize("blocks,diffusers_scale", [
    (["up_blocks.0.attentions.1"], {"up": {"block_0": [0.0, 1.0, 0.0]}}),  # InstantStyle's style block
    (["down_blocks.2.attentions.1", "up_blocks.0.attentions.1"],
     {"down": {"block_2": [0.0, 1.0]}, "up": {"block_0": [0.0, 1.0, 0.0]}}),  # style + layout
])
def test_sdxl_target_blocks_select_what_diffusers_instantstyle_scales_select(pair, blocks, diffusers_scale):
    """maskst's --target-block (InstantStyle's block names) against diffusers' own set_ip_adapter_scale dicts of
    its InstantStyle docs, on the reference's SDXL UNet: the same layers get the adapter, the others scale 0.
    The reference sets its scales with maskst's layer_scales, so its parity alone could not catch a wrong pick."""
    from maskst.generation import layer_scales

    _, pipe, reference = pair
    reference.pipe.set_ip_adapter_scale(diffusers_scale)
    want = [proc.scale[0] for proc in reference.ip_processors]
    config = GenerationConfig.create(prompt="a cat", scale=1.0, target_blocks=blocks)
    got = layer_scales(pipe.layer_names, config).tolist()
    assert got == want and 0 < sum(got) < len(got)


def test_sdxl_plus_vit_h_matches_diffusers_and_refuses_masking(sdxl_wide, export_checkpoints, tmp_path, style_image):
    from maskst.errors import InputError
    from maskst.families import resolve_checkpoints
    from maskst.reference import ReferencePipeline
    from maskst.runtime.pipeline import MaskstPipeline

    args = (sdxl_wide.base, sdxl_wide.ip_adapter_plus, sdxl_wide.image_encoder_vit_h, sdxl_wide.content_encoder)
    manifest = export_checkpoints(*args, tmp_path / "plus", min_size=64, opt_size=64, max_size=128)
    assert manifest.model["adapter_kind"] == "plus" and manifest.model["num_tokens"] == 16
    reference = ReferencePipeline(resolve_checkpoints(*args)[1])
    config = GenerationConfig.create(prompt="a cat", method="ip-adapter", steps=3, height=64, width=64, seed=2)
    style = [load_image(style_image)]
    with MaskstPipeline(manifest.folder) as pipe:
        got, want = pipe.generate(config, style), reference.generate(config, style)
        assert np.abs(got.images.astype(int) - want.images.astype(int)).max() <= 2
        with pytest.raises(InputError, match="Plus"):
            pipe.generate(GenerationConfig.create(prompt="a cat", content="a dog", steps=2, height=64, width=64), style)


def test_sdxl_regions_match_diffusers(pair, style_image, tmp_path):
    """Regional multi-style on SDXL (both adapters): two styles in two masks, each masked with its own
    content, against StableDiffusionXLPipeline with ip_adapter_masks from the same noise."""
    from PIL import Image

    adapter, pipe, reference = pair
    y, x = np.mgrid[0:64, 0:96]
    masks = []
    for name, inside in (("left", x < 56), ("right", x > 40)):
        masks.append(tmp_path / f"{name}.png")
        Image.fromarray(np.where(inside, 230, 20).astype(np.uint8)).convert("RGB").save(masks[-1])
    second = tmp_path / "style2.png"
    gradient = np.stack([*np.meshgrid(np.linspace(0, 255, 90), np.linspace(255, 0, 70)), np.full((70, 90), 128.0)], -1)
    Image.fromarray(gradient.astype(np.uint8)).save(second)
    config = GenerationConfig.create(prompt="a photo of a dog in the city", method="maskst", mask_mode="quantile",
                                     theta=0.8, steps=4, num_images=1, seed=7, height=64, width=96,
                                     regions=[(style_image, masks[0], "a ship"), (second, masks[1], "a cat")],
                                     region_scales="1.0,0.6")
    noise = initial_noise(7, (1, 4, 8, 12))
    want = reference.generate(config, latents=noise)
    got = pipe.generate(config, latents=noise)
    np.testing.assert_array_equal(got.region_masks, want.mask)
    diff = np.abs(got.images.astype(int) - want.images.astype(int))
    assert diff.max() <= 2, f"{adapter}: max pixel difference {diff.max()}/255"
