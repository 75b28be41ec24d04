"""End-to-end parity: maskst's ONNX Runtime pipeline against the diffusers reference, same noise.

Runs on the 'tiny-wide' fixtures (widths, depths, head sizes and token count other than the
'tiny' set used while developing). fp32 on CPU: images must agree within 2/255 per pixel; the
only expected difference is float32 rounding order between ONNX Runtime and PyTorch, which moves
a few pixels across a rounding boundary (measured: max 1/255).
"""

import numpy as np
import pytest

from maskst.generation import GenerationConfig, initial_noise
from maskst.images import load_image
from maskst.runtime.pipeline import PipelineCallback

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


@pytest.mark.parametrize("scheduler", [None, "unipc"])
@pytest.mark.parametrize("scale", [1.0, 0.4])
@pytest.mark.parametrize("method,mode", CASES)
def test_image_matches_reference(reference, pipeline, style_image, method, mode, scale, scheduler):
    config = GenerationConfig.create(prompt="a photo of a dog in the city", content="a ship", method=method,
                                     mask_mode=mode, theta=0.6, scale=scale, content_scale=0.8, steps=5,
                                     height=72, width=120, scheduler=scheduler, num_images=2, seed=7)
    noise = initial_noise(7, (2, 4, 9, 15))  # latent sizes not divisible by the UNet's downsampling (4)
    style = [load_image(style_image)]
    want = reference.generate(config, style, latents=noise)
    got = pipeline.generate(config, style, latents=noise)
    np.testing.assert_array_equal(got.mask, want.mask)
    diff = np.abs(got.images.astype(int) - want.images.astype(int))
    assert diff.max() <= 2, f"max pixel difference {diff.max()}/255"
    assert want.images.std() > 10  # a real image, not a constant


@pytest.mark.parametrize("blocks,diffusers_scale", [
    (["up_blocks.1"], {"up": {"block_1": 1.0}}),
    (["down_blocks.0.attentions.1", "mid_block", "up_blocks.2.attentions.0"],
     {"down": {"block_0": [0.0, 1.0]}, "mid": 1.0, "up": {"block_2": [1.0, 0.0, 0.0]}}),
])
def test_target_blocks_select_what_diffusers_instantstyle_scales_select(reference, pipeline, blocks, diffusers_scale):
    """--target-block against diffusers' own set_ip_adapter_scale dicts (its InstantStyle API) on the reference's
    UNet: the same layers get the adapter. The reference sets its scales with maskst's layer_scales, so its image
    parity alone could not catch a wrong pick."""
    from maskst.generation import layer_scales

    reference.pipe.set_ip_adapter_scale(diffusers_scale)
    want = [proc.scale[0] for proc in reference.ip_processors]
    got = layer_scales(pipeline.layer_names, GenerationConfig.create(prompt="a cat", scale=1.0, target_blocks=blocks))
    assert got.tolist() == want and 0 < sum(want) < len(want)


def test_seed_alone_reproduces_the_reference(reference, pipeline, style_image):
    """Both pipelines draw the seed's noise the same way (maskst.generation.initial_noise)."""
    config = GenerationConfig.create(prompt="a cat", content="a house", steps=3, height=64, width=64, seed=123)
    style = [load_image(style_image)]
    diff = np.abs(pipeline.generate(config, style).images.astype(int) - reference.generate(config, style).images.astype(int))
    assert diff.max() <= 2


def test_init_latents_file_alone_reproduces_the_reference(reference, pipeline, style_image, tmp_path):
    """A request's --init-latents file is the starting noise of both pipelines (not the seed's)."""
    path = tmp_path / "noise.npy"
    np.save(path, initial_noise(99, (1, 4, 8, 8)))
    request = dict(prompt="a cat", content="a house", steps=3, height=64, width=64, seed=123)
    style = [load_image(style_image)]
    from_file = GenerationConfig.create(**request, init_latents=path)
    want = reference.generate(from_file, style).images.astype(int)
    assert np.abs(pipeline.generate(from_file, style).images.astype(int) - want).max() <= 2
    seeded = reference.generate(GenerationConfig.create(**request), style).images.astype(int)
    assert np.abs(seeded - want).max() > 10  # the file, not the seed, was used


def test_guidance_one_matches_diffusers_without_guidance(reference, pipeline, style_image):
    """At guidance 1 diffusers skips guidance and reads the IP-Adapter embeds as the positive half alone; maskst's
    uncond + 1 * (cond - uncond) is that prediction. Before the reference passed both halves as positives (65/255)."""
    request = dict(prompt="a photo of a dog in the city", content="a ship", steps=3, height=64, width=64,
                   num_images=2, seed=5)
    style = [load_image(style_image)]
    want = reference.generate(GenerationConfig.create(**request, guidance=1.0), style)
    got = pipeline.generate(GenerationConfig.create(**request, guidance=1.0), style)
    assert np.abs(got.images.astype(int) - want.images.astype(int)).max() <= 2
    guided = reference.generate(GenerationConfig.create(**request, guidance=3.0), style)
    assert np.abs(guided.images.astype(int) - want.images.astype(int)).max() > 10  # guidance mattered here


@pytest.mark.parametrize("guidance", [0.0, 0.5])
def test_guidance_below_one_is_off_as_in_diffusers(reference, pipeline, style_image, guidance):
    """diffusers runs no classifier-free guidance at guidance_scale <= 1 (its do_classifier_free_guidance), so 0 and
    0.5 are the prompt's prediction alone there; maskst gives the same image, and the same as at 1, bit for bit."""
    request = dict(prompt="a photo of a dog in the city", content="a ship", steps=3, height=64, width=64,
                   num_images=2, seed=5)
    style = [load_image(style_image)]
    want = reference.generate(GenerationConfig.create(**request, guidance=guidance), style)
    got = pipeline.generate(GenerationConfig.create(**request, guidance=guidance), style)
    assert np.abs(got.images.astype(int) - want.images.astype(int)).max() <= 2
    at_one = pipeline.generate(GenerationConfig.create(**request, guidance=1.0), style)
    np.testing.assert_array_equal(got.images, at_one.images)
    assert not GenerationConfig.create(**request, guidance=1.0).guided and GenerationConfig.create(**request).guided


class _UNetBatches(PipelineCallback):
    """The batch (rows of ``sample``) of every UNet call."""

    def __init__(self):
        self.rows = []

    def on_infer_inputs(self, graph, feed):
        if graph == "unet":
            self.rows.append(feed["sample"].shape[0])


def test_guidance_off_runs_the_positive_half_alone(pipeline, style_image):
    """As diffusers, a request without guidance (<= 1) runs the UNet on its N images, not on 2 N rows of which half
    would be thrown away; with guidance it runs both halves."""
    style = [load_image(style_image)]
    request = dict(prompt="a cat", content="a house", steps=2, height=64, width=64, seed=1)
    seen = _UNetBatches()
    pipeline.add_callback(seen)
    try:
        for guidance, images in [(1.0, 1), (0.0, 2), (7.5, 1), (5.0, 2)]:
            seen.rows.clear()
            pipeline.generate(GenerationConfig.create(**request, guidance=guidance, num_images=images), style)
            assert seen.rows and set(seen.rows) == {images * (2 if guidance > 1 else 1)}, (guidance, images, seen.rows)
    finally:
        pipeline.callbacks.remove(seen)


def test_engines_without_the_unguided_batch_run_both_halves(reference, wide_engines, style_image, tmp_path,
                                                            two_row_copy):
    """Engines exported before the UNet took B = N (no ``optional_factors`` in their specs) still serve a request
    without guidance: both halves run and the positive one is the prediction, as diffusers' image."""
    from maskst.runtime.pipeline import MaskstPipeline

    older = two_row_copy(wide_engines, tmp_path / "engines")
    config = GenerationConfig.create(prompt="a photo of a dog in the city", content="a ship", steps=3, height=64,
                                     width=64, num_images=2, seed=5, guidance=0.0)
    style = [load_image(style_image)]
    seen = _UNetBatches()
    with MaskstPipeline(older, callbacks=[seen]) as pipe:
        assert not pipe.unguided_batch
        got = pipe.generate(config, style)
    assert seen.rows and set(seen.rows) == {4}  # 2 images x both halves
    want = reference.generate(config, style)
    assert np.abs(got.images.astype(int) - want.images.astype(int)).max() <= 2


def test_scale_method_and_layers_change_without_reexport(pipeline, style_image):
    style = [load_image(style_image)]
    base = dict(prompt="a cat", content="a house", steps=3, height=64, width=64, seed=1)
    images = {}
    for key, extra in {"full": {}, "half": {"scale": 0.5}, "inst": {"method": "instantstyle"},
                       "blocks": {"target_blocks": ["up_blocks.1"]}, "zero": {"scale": 0.0}}.items():
        images[key] = pipeline.generate(GenerationConfig.create(**base, **extra), style).images.astype(int)
    for key in ("half", "inst", "blocks", "zero"):
        assert np.abs(images[key] - images["full"]).max() > 0, key


def test_adapter_scale_zero_gives_the_same_image_for_every_method(reference, style_image):
    style = [load_image(style_image)]
    noise = initial_noise(2, (1, 4, 8, 8))
    images = [reference.generate(GenerationConfig.create(prompt="a cat", content="a house", method=m, scale=0.0,
                                                         steps=3, height=64, width=64), style, latents=noise).images
              for m in ("maskst", "instantstyle", "ip-adapter")]
    np.testing.assert_array_equal(images[0], images[1])
    np.testing.assert_array_equal(images[0], images[2])


def test_maskst_with_an_all_false_mask_equals_ip_adapter(reference, pipeline, style_image):
    """quantile mode at theta=1 masks nothing (nothing exceeds the maximum)."""
    style = [load_image(style_image)]
    noise = initial_noise(4, (1, 4, 8, 8))
    common = dict(prompt="a cat", content="a house", steps=3, height=64, width=64)
    masked = GenerationConfig.create(**common, method="maskst", mask_mode="quantile", theta=1.0)
    plain = GenerationConfig.create(**common, method="ip-adapter")
    for pipe in (reference, pipeline):
        a, b = pipe.generate(masked, style, latents=noise), pipe.generate(plain, style, latents=noise)
        assert not a.mask.any()
        np.testing.assert_array_equal(a.images, b.images)


def test_empty_content_runs_as_ip_adapter_with_a_warning(pipeline, style_image):
    from maskst.generation import EmptyContentWarning

    style = [load_image(style_image)]
    with pytest.warns(EmptyContentWarning):
        result = pipeline.generate(GenerationConfig.create(prompt="a cat", content="  ", steps=2, height=64, width=64), style)
    assert result.method.value == "ip-adapter" and result.masked_elements == 0


def test_plus_adapter_matches_reference_and_refuses_masking(tiny, tmp_path, export_fn, style_image):
    """IP-Adapter Plus (Resampler, 16 tokens, penultimate hidden states): ip-adapter method only."""
    import dataclasses

    from maskst.checkpoints import resolve_checkpoints
    from maskst.errors import InputError
    from maskst.reference import ReferencePipeline
    from maskst.runtime.pipeline import MaskstPipeline

    plus = dataclasses.replace(tiny, root=tiny.root)
    engines = export_fn(type("Plus", (), {"base": plus.base, "ip_adapter": plus.ip_adapter_plus,
                                           "image_encoder": plus.image_encoder,
                                           "content_encoder": plus.content_encoder})(), tmp_path / "plus")
    manifest = engines.data
    assert manifest["model"]["num_tokens"] == 16 and manifest["model"]["adapter_kind"] == "plus"
    assert all(r["passed"] for g in manifest["graphs"].values() for r in g["parity"])
    reference = ReferencePipeline(resolve_checkpoints(tiny.base, tiny.ip_adapter_plus, tiny.image_encoder,
                                                      tiny.content_encoder))
    config = GenerationConfig.create(prompt="a cat", method="ip-adapter", steps=3, height=64, width=64, seed=2)
    style = [load_image(style_image)]
    with MaskstPipeline(engines.folder) as pipe:
        got = pipe.generate(config, style)
        want = reference.generate(config, style)
        assert np.abs(got.images.astype(int) - want.images.astype(int)).max() <= 2
        with pytest.raises(InputError, match="Plus"):
            pipe.generate(GenerationConfig.create(prompt="a cat", content="a dog", steps=2, height=64, width=64), style)


def test_more_images_than_a_batch_holds_run_in_batches_and_match_the_reference(reference, pipeline, style_image):
    """num_images above the engines' --max-batch (2 here): maskst runs a batch of 2 and one of 1 on slices of the
    request's noise; the reference runs all 3 in one batch. Same tolerance as above."""
    import dataclasses

    assert pipeline.max_images == 2
    config = GenerationConfig.create(prompt="a photo of a dog in the city", content="a ship", method="maskst",
                                     mask_mode="kmeans", theta=0.6, steps=4, height=64, width=96, num_images=3, seed=7)
    noise = initial_noise(7, (3, 4, 8, 12))
    style = [load_image(style_image)]
    steps = []
    got = pipeline.generate(config, style, latents=noise, progress=lambda step, total: steps.append((step, total)))
    want = reference.generate(config, style, latents=noise)
    assert got.images.shape == want.images.shape == (3, 64, 96, 3)
    np.testing.assert_array_equal(got.mask, want.mask)
    diff = np.abs(got.images.astype(int) - want.images.astype(int))
    assert diff.max() <= 2, f"max pixel difference {diff.max()}/255"
    assert want.images.std() > 10
    total = len(steps)  # one progress run over both batches: 1..2T of 2T
    assert total % 2 == 0 and steps == [(i, total) for i in range(1, total + 1)]
    # each batch is an ordinary request on its slice of the noise, and the seed's noise is the same noise
    first = pipeline.generate(dataclasses.replace(config, num_images=2), style, latents=noise[:2])
    np.testing.assert_array_equal(got.images[:2], first.images)
    np.testing.assert_array_equal(pipeline.generate(config, style).images, got.images)
    assert set(got.timings_ms) == set(first.timings_ms)
