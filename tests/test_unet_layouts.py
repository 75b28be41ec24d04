"""A UNet laid out unlike SD 1.5: the layout of diffusers' own test models (first level without attention), with
linear projections, a head width per level, two transformer layers at one level and upcast attention. Exported,
checked per graph, and end to end against diffusers from the same noise: the exporter reads the UNet's
structure from the model, not from SD 1.5's layout (16 cross-attention layers here, in another order of widths)."""

import json
import shutil
import warnings

import numpy as np
import pytest

from maskst.generation import GenerationConfig, initial_noise
from maskst.images import load_image

LAYOUT = dict(down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
              up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
              use_linear_projection=True, attention_head_dim=[2, 4, 6], transformer_layers_per_block=[1, 2, 1],
              upcast_attention=True)


@pytest.fixture(scope="module")
def relaid(tmp_path_factory):
    """The tiny-wide fixture set with its UNet replaced by LAYOUT (random weights) and an IP-Adapter file whose
    to_k_ip / to_v_ip pairs fit that UNet's cross-attention layers."""
    import torch
    from diffusers import UNet2DConditionModel

    from maskst.fixtures import PRESETS, randomize_weights, adapter_state_dict, save_adapter, write_fixtures

    fixtures = write_fixtures(tmp_path_factory.mktemp("layout") / "fx", "tiny-wide", seed=3)
    config = json.loads((fixtures.base / "unet" / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")} | LAYOUT
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(config)
    randomize_weights(unet, 11)
    shutil.rmtree(fixtures.base / "unet")
    unet.save_pretrained(fixtures.base / "unet")
    widths = [unet.get_submodule(name.removesuffix(".processor")).to_q.out_features
              for name in unet.attn_processors if name.endswith("attn2.processor")]
    spec = PRESETS["tiny-wide"]
    save_adapter(adapter_state_dict(4, cross=spec.text_hidden, embed_dim=spec.projection_dim,
                                    vision_hidden=spec.vision_hidden, layer_widths=widths), fixtures.ip_adapter)
    return fixtures, widths


@pytest.fixture(scope="module")
def engines(relaid, export_fn, tmp_path_factory):
    fixtures, _ = relaid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_fn(fixtures, tmp_path_factory.mktemp("layout-engines") / "eng")


def test_the_layout_exports_with_its_own_cross_attention_layers(relaid, engines):
    _, widths = relaid
    assert len(widths) == 16 and widths[:2] == [32, 32] and widths[-1] == 48  # not SD 1.5's narrow-to-wide order
    layers = engines.model["cross_attention_layers"]
    assert len(layers) == 16 and layers[0].startswith("down_blocks.1.") and layers[-1].startswith("mid_block.")
    parity = engines.data["graphs"]["unet"]["parity"]
    assert parity and all(case["passed"] for case in parity)


@pytest.mark.parametrize("method", ["maskst", "instantstyle", "ip-adapter"])
def test_the_layout_matches_diffusers(relaid, engines, style_image, method):
    from maskst.checkpoints import resolve_checkpoints
    from maskst.reference import ReferencePipeline
    from maskst.runtime.pipeline import MaskstPipeline

    fixtures, _ = relaid
    reference = ReferencePipeline(resolve_checkpoints(fixtures.base, fixtures.ip_adapter, fixtures.image_encoder,
                                                      fixtures.content_encoder))
    config = GenerationConfig.create(prompt="a dog in the city", content="a ship", method=method, steps=4,
                                     height=72, width=104, num_images=2, seed=1, scale=0.8)
    noise = initial_noise(1, (2, 4, 9, 13))  # latent 9 x 13: odd, as the up-sampling's output sizes must follow
    style = [load_image(style_image)]
    want = reference.generate(config, style, latents=noise)
    with MaskstPipeline(engines.folder) as pipe:
        got = pipe.generate(config, style, latents=noise)
    np.testing.assert_array_equal(got.mask, want.mask)
    assert np.abs(got.images.astype(int) - want.images.astype(int)).max() <= 2  # fp32 rounding order (test_parity)
    assert want.images.std() > 10
