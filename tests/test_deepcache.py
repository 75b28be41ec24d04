"""DeepCache step caching (maskst-export --deepcache, maskst-run --deepcache-interval N) on tiny models.

* The split: the shallow graph fed with the deep graph's feature reproduces the deep graph's noise_pred at
  the same inputs (torch, SD 1.5 and SDXL, with regions): the cached feature is exactly what the last
  layer consumes, so a cached step differs from a full one only by the age of the feature.
* Export: both graphs parity-checked (non-regional and regional feeds), their IO as specified, the plain
  ``unet`` graph unchanged.
* End to end: maskst with ``--deepcache-interval N`` against diffusers with the published DeepCache helper
  (``DeepCacheSDHelper``, same interval, branch 0) from the same noise, within 1/255 per pixel (float32
  rounding order between ONNX Runtime and PyTorch; measured max 1/255); interval 1 is the plain run bit
  for bit; interval 3 differs from full computation.
* Refusals: bad intervals, control images, engines without the graphs, --deepcache with --controlnet.
"""

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from maskst.generation import GenerationConfig, initial_noise
from maskst.images import load_image

pytest.importorskip("DeepCache")


@pytest.fixture(scope="module")
def deepcache_engines(tiny_wide, export_fn, tmp_path_factory):
    """tiny-wide engines with --deepcache (the same sizes as the session's wide_engines)."""
    return export_fn(tiny_wide, tmp_path_factory.mktemp("engines") / "wide_deepcache", min_size=64, opt_size=64,
                     max_size=128, deepcache=True).folder


@pytest.fixture(scope="module")
def pipeline(deepcache_engines):
    from maskst.runtime.pipeline import MaskstPipeline

    with MaskstPipeline(deepcache_engines) as pipe:
        yield pipe


@pytest.fixture(scope="module")
def reference(tiny_wide):
    from maskst.checkpoints import resolve_checkpoints
    from maskst.reference import ReferencePipeline

    return ReferencePipeline(resolve_checkpoints(tiny_wide.base, tiny_wide.ip_adapter, tiny_wide.image_encoder,
                                                 tiny_wide.content_encoder))


def _modules(base, ip_adapter, image_encoder=None, content_encoder=None):
    from maskst.export import unet_deep, unet_shallow
    from maskst.export.options import ExportOptions
    from maskst.families import IP_ADAPTER_LAYOUT, detect_family

    family = detect_family(base, IP_ADAPTER_LAYOUT)
    ckpt = family.preflight(base, ip_adapter, image_encoder, content_encoder)
    state = family.adapter_state(ckpt)
    options = ExportOptions(min_size=64, opt_size=64, max_size=128, max_batch=2)
    return [(m.spec(ckpt, options), m.build_module(ckpt, state, options)) for m in (unet_deep, unet_shallow)], ckpt


def _split_holds(modules, regions: int):
    import torch

    from maskst.export import unet_deep

    (deep_spec, deep), (shallow_spec, shallow) = modules
    feeds = unet_deep.parity_feeds(deep_spec, {"N": 2, "h": 9, "w": 11, "R": 1})
    feed = next(f for f in feeds if f["ip_tokens"].shape[1] == regions)
    with torch.no_grad():
        noise, feature = deep(*(torch.from_numpy(feed[t.name]) for t in deep_spec.inputs))
        shallow_feed = {**feed, "deep_feature": feature.numpy()}
        again = shallow(*(torch.from_numpy(shallow_feed[t.name]) for t in shallow_spec.inputs))
    assert list(feature.shape) == [4, deep_spec.outputs[1].shape[1], 9, 11]
    assert float(noise.abs().max()) > 0.1
    # the same layers on the same tensors: only the traced ops' order may differ
    np.testing.assert_allclose(again.numpy(), noise.numpy(), rtol=0, atol=1e-5)
    return feature


@pytest.mark.parametrize("regions", [1, 3])
def test_shallow_graph_on_the_deep_feature_is_the_full_unet_sd15(tiny_wide, regions):
    modules, ckpt = _modules(tiny_wide.base, tiny_wide.ip_adapter, tiny_wide.image_encoder, tiny_wide.content_encoder)
    feature = _split_holds(modules, regions)
    assert feature.shape[1] == ckpt.unet_config["block_out_channels"][0] == 16


def test_shallow_graph_on_the_deep_feature_is_the_full_unet_sdxl(sdxl_tiny):
    """SDXL's last up block is an UpBlock2D: the shallow graph has no cross-attention, reads only the time
    and added embeddings' inputs and the feature."""
    modules, _ = _modules(sdxl_tiny.base, sdxl_tiny.ip_adapter)
    assert [t.name for t in modules[1][0].inputs] == ["sample", "timestep", "text_embeds", "time_ids", "deep_feature"]
    _split_holds(modules, 1)


def test_export_writes_both_graphs_parity_checked(deepcache_engines, wide_engines):
    manifest = json.loads((deepcache_engines / "manifest.json").read_text())
    graphs = manifest["graphs"]
    assert manifest["options"]["deepcache"] is True
    assert {"unet", "unet_deep", "unet_shallow"} <= set(graphs)
    deep, shallow = graphs["unet_deep"], graphs["unet_shallow"]
    assert [t["name"] for t in deep["spec"]["outputs"]] == ["noise_pred", "deep_feature"]
    assert deep["spec"]["outputs"][1]["shape"] == ["B", 16, "h", "w"]
    assert [t["name"] for t in shallow["spec"]["inputs"]] == ["sample", "timestep", "text_embeddings", "ip_tokens",
                                                              "ip_scale", "region_mask_1", "deep_feature"]
    for graph in (deep, shallow):  # the non-regional feed and regional ones (R = 2, 3, 4), every output checked
        assert len(graph["parity"]) >= 4 and all(r["passed"] for r in graph["parity"])
        assert max(r["max_abs_err"] for r in graph["parity"]) < 1e-4
    assert {r["output"] for r in deep["parity"]} == {"noise_pred", "deep_feature"}
    plain = json.loads((wide_engines / "manifest.json").read_text())
    assert plain["options"]["deepcache"] is False and "unet_deep" not in plain["graphs"]
    # the plain unet graph of a --deepcache export is the one of an export without it
    assert graphs["unet"]["spec"] == plain["graphs"]["unet"]["spec"]


# scheduler None: the fixture's PNDM, whose second timestep repeats (PLMS warm-up); the published helper numbers
# steps by ``timesteps.index(t)``, which counts that repeat (call 2) as step 1 again: with interval 3 its full
# steps are still 0, 3, 6 as maskst's ``i % N``, with interval 2 they are not (see maskst.reference._deepcache)
@pytest.mark.parametrize("interval,scheduler,steps", [(3, None, 7), (3, "unipc", 7), (2, "ddim", 5), (4, "euler", 6),
                                                      (2, "dpm++2m", 8)])
def test_deepcache_matches_the_published_deepcache_reference(reference, pipeline, style_image, interval, scheduler,
                                                             steps):
    config = GenerationConfig.create(prompt="a photo of a dog in the city", content="a ship", steps=steps, height=72,
                                     width=120, scheduler=scheduler, num_images=2, seed=7, deepcache_interval=interval)
    noise = initial_noise(7, (2, 4, 9, 15))
    style = [load_image(style_image)]
    want = reference.generate(config, style, latents=noise)
    got = pipeline.generate(config, style, latents=noise)
    diff = np.abs(got.images.astype(int) - want.images.astype(int))
    assert diff.max() <= 1, f"max pixel difference {diff.max()}/255"
    assert want.images.std() > 10
    # the reference did cache: its image is not the full computation's
    full = reference.generate(GenerationConfig.create(**{**_fields(config), "deepcache_interval": 1}), style,
                              latents=noise)
    assert np.abs(full.images.astype(int) - want.images.astype(int)).max() > 10


def test_deepcache_without_guidance_matches_the_reference(reference, pipeline, style_image):
    """At guidance 1 (off, diffusers' rule) the deep and shallow graphs run the prompt's half alone (B = N), the
    cached feature included, and match the published helper on diffusers' unguided run."""
    config = GenerationConfig.create(prompt="a photo of a dog in the city", content="a ship", steps=7, height=72,
                                     width=120, scheduler="unipc", num_images=2, seed=7, deepcache_interval=3,
                                     guidance=1.0)
    noise = initial_noise(7, (2, 4, 9, 15))
    style = [load_image(style_image)]
    want = reference.generate(config, style, latents=noise)
    got = pipeline.generate(config, style, latents=noise)
    assert np.abs(got.images.astype(int) - want.images.astype(int)).max() <= 1
    guided = reference.generate(GenerationConfig.create(**{**_fields(config), "guidance": 5.0}), style, latents=noise)
    assert np.abs(guided.images.astype(int) - want.images.astype(int)).max() > 10  # guidance mattered here


def _fields(config):
    import dataclasses

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def test_regional_request_with_deepcache_matches_the_reference(reference, pipeline, style_image, tmp_path):
    """Regions work with DeepCache: the masks are inputs of both graphs (the shallow layer's stride-1 mask)."""
    y, x = np.mgrid[0:64, 0:96]
    masks = []
    for name, inside in {"left": x < 50, "right": x > 40}.items():
        masks.append(tmp_path / f"{name}.png")
        Image.fromarray(np.where(inside, 230, 20).astype(np.uint8)).convert("RGB").save(masks[-1])
    config = GenerationConfig.create(prompt="a dog", regions=[(style_image, masks[0], "a ship"),
                                                              (style_image, masks[1], "")],
                                     region_scales="1.0,0.6", steps=5, height=64, width=96, seed=2,
                                     deepcache_interval=2, scheduler="unipc")
    noise = initial_noise(2, (1, 4, 8, 12))
    want = reference.generate(config, latents=noise)
    got = pipeline.generate(config, latents=noise)
    assert np.abs(got.images.astype(int) - want.images.astype(int)).max() <= 1


def test_interval_one_is_the_plain_run_and_three_is_not(pipeline, wide_engines, style_image):
    from maskst.runtime.pipeline import MaskstPipeline

    style = [load_image(style_image)]
    common = dict(prompt="a cat", content="a house", steps=6, height=64, width=64, seed=4)
    one = pipeline.generate(GenerationConfig.create(**common, deepcache_interval=1), style).images
    with MaskstPipeline(wide_engines) as plain_pipe:  # engines exported without --deepcache
        plain = plain_pipe.generate(GenerationConfig.create(**common), style).images
    np.testing.assert_array_equal(one, plain)
    three = pipeline.generate(GenerationConfig.create(**common, deepcache_interval=3), style).images
    diff = np.abs(three.astype(int) - plain.astype(int))
    assert diff.max() > 10 and diff.mean() > 1  # random weights: the cached feature's age shows
    # an interval above the step count: one full step, the rest cached; still finite and an image
    many = pipeline.generate(GenerationConfig.create(**common, deepcache_interval=100), style).images
    assert many.std() > 5 and not np.array_equal(many, three)


def test_a_deepcache_pipeline_loads_one_full_unet(deepcache_engines, pipeline, style_image):
    """MaskstPipeline(deepcache=True): unet_deep + unet_shallow instead of the plain unet; interval 3 gives the
    image of the lazily loading pipeline bit for bit, interval 1 runs unet_deep (the same UNet computation)."""
    from maskst.runtime.pipeline import MaskstPipeline

    style = [load_image(style_image)]
    common = dict(prompt="a cat", content="a house", steps=5, height=64, width=64, seed=8)
    with MaskstPipeline(deepcache_engines, deepcache=True) as deep_pipe:
        assert "unet" not in deep_pipe.runners and {"unet_deep", "unet_shallow"} <= set(deep_pipe.runners)
        for interval in (1, 3):
            config = GenerationConfig.create(**common, deepcache_interval=interval)
            got, want = deep_pipe.generate(config, style).images, pipeline.generate(config, style).images
            assert np.abs(got.astype(int) - want.astype(int)).max() <= (0 if interval > 1 else 1)


def test_graph_calls_follow_the_uniform_schedule(pipeline, style_image):
    from maskst.runtime.pipeline import PipelineCallback

    class Calls(PipelineCallback):
        def __init__(self):
            self.graphs = []

        def on_infer_start(self, graph):
            if graph.startswith("unet"):
                self.graphs.append(graph)

    calls = Calls()
    pipeline.add_callback(calls)
    try:
        pipeline.generate(GenerationConfig.create(prompt="a cat", content="a house", steps=7, height=64, width=64,
                                                  scheduler="ddim", deepcache_interval=3), [load_image(style_image)])
    finally:
        pipeline.callbacks.remove(calls)
    d, s = "unet_deep", "unet_shallow"
    assert calls.graphs == [d, s, s, d, s, s, d]


@pytest.mark.parametrize("value", [0, -2, 1001, 2.5, True, "3"])
def test_bad_interval_is_refused_naming_the_option(value):
    from maskst.errors import InputError

    with pytest.raises(InputError, match="--deepcache-interval"):
        GenerationConfig.create(prompt="a cat", deepcache_interval=value)


def test_deepcache_with_a_control_image_is_refused(style_image):
    from maskst.errors import InputError

    with pytest.raises(InputError, match="ControlNet residuals"):
        GenerationConfig.create(prompt="a cat", control_image=[style_image], deepcache_interval=3)


def test_engines_without_the_graphs_are_refused_before_any_work(wide_engines, style_image, tmp_path):
    from click.testing import CliRunner

    from maskst.cli.run import main as run_main

    out = tmp_path / "x.png"
    result = CliRunner().invoke(run_main, [str(a) for a in [
        "--engines", wide_engines, "--prompt", "a cat", "--style", style_image, "--content", "a house", "--steps", "3",
        "--height", "64", "--width", "64", "--quiet", "--out", out, "--deepcache-interval", "3"]])
    assert result.exit_code != 0 and "maskst-export --deepcache" in result.output and "unet_deep" in result.output
    assert not out.exists()
    from maskst.errors import EngineError
    from maskst.runtime.pipeline import MaskstPipeline

    with pytest.raises(EngineError, match="maskst-export --deepcache"):
        MaskstPipeline(wide_engines, deepcache=True)
    help_text = CliRunner().invoke(run_main, ["--help"]).output
    assert "--deepcache-interval" in help_text


def test_run_cli_with_deepcache_writes_its_metadata(deepcache_engines, style_image, tmp_path):
    from click.testing import CliRunner

    from maskst.cli.run import main as run_main

    out = tmp_path / "cat.png"
    result = CliRunner().invoke(run_main, [str(a) for a in [
        "--engines", deepcache_engines, "--prompt", "a cat", "--style", style_image, "--content", "a house",
        "--steps", "5", "--height", "64", "--width", "64", "--quiet", "--out", out, "--deepcache-interval", "2"]],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    meta = json.loads(Image.open(out).text["maskst"])
    assert meta["deepcache"] == {"interval": 2, "branch": 0, "full_steps": 3} and meta["steps"] == 5


def test_batch_with_a_deepcache_default(deepcache_engines, style_image, tmp_path):
    """--batch with --deepcache-interval 2: a line may turn it off (interval 1: unet_deep every step)."""
    from click.testing import CliRunner

    from maskst.cli.run import main as run_main

    jobs = tmp_path / "jobs.jsonl"
    lines = [{"name": "cached", "prompt": "a cat", "style": str(style_image), "content": "a house"},
             {"name": "full", "prompt": "a cat", "style": str(style_image), "content": "a house", "deepcache_interval": 1}]
    jobs.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out_dir = tmp_path / "out"
    result = CliRunner().invoke(run_main, [str(a) for a in [
        "--engines", deepcache_engines, "--batch", jobs, "--out-dir", out_dir, "--steps", "4", "--height", "64",
        "--width", "64", "--quiet", "--deepcache-interval", "2"]], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    cached = json.loads(Image.open(out_dir / "cached.png").text["maskst"])
    full = json.loads(Image.open(out_dir / "full.png").text["maskst"])
    assert cached["deepcache"]["interval"] == 2 and "deepcache" not in full
    a, b = (np.asarray(Image.open(out_dir / f"{n}.png")).astype(int) for n in ("cached", "full"))
    assert np.abs(a - b).max() > 0


def test_png_metadata_records_deepcache(pipeline, style_image, tmp_path):
    from maskst.runtime.output import generation_metadata

    style = [load_image(style_image)]
    config = GenerationConfig.create(prompt="a cat", content="a house", steps=4, height=64, width=64,
                                     deepcache_interval=3)
    meta = generation_metadata(config, pipeline.generate(config, style), pipeline)
    assert meta["deepcache"] == {"interval": 3, "branch": 0, "full_steps": 2}
    plain = GenerationConfig.create(prompt="a cat", content="a house", steps=4, height=64, width=64)
    assert "deepcache" not in generation_metadata(plain, pipeline.generate(plain, style), pipeline)


def test_export_refuses_deepcache_with_a_controlnet(tiny_wide, export_fn, tmp_path):
    from maskst.errors import InputError

    with warnings.catch_warnings(), pytest.raises(InputError, match="--deepcache with --controlnet"):
        warnings.simplefilter("ignore")
        export_fn(tiny_wide, tmp_path / "cn", min_size=64, opt_size=64, max_size=128, deepcache=True,
                  controlnets=(tiny_wide.controlnet,))
    assert not (tmp_path / "cn").exists()


def _style(seed: int):
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.uniform(0, 1, (96, 128, 3)) * 255).astype(np.uint8))]


def test_sdxl_deepcache_matches_the_published_deepcache_reference(sdxl_tiny, export_checkpoints, tmp_path):
    """SDXL: the shallow graph has no cross-attention (the last up block is an UpBlock2D) but the added
    embedding; maskst and diffusers' StableDiffusionXLPipeline with DeepCacheSDHelper agree within 1/255."""
    from maskst.families import resolve_checkpoints
    from maskst.reference import ReferencePipeline
    from maskst.runtime.pipeline import MaskstPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engines = export_checkpoints(sdxl_tiny.base, sdxl_tiny.ip_adapter, None, None, tmp_path / "sdxl",
                                     deepcache=True).folder
    reference = ReferencePipeline(resolve_checkpoints(sdxl_tiny.base, sdxl_tiny.ip_adapter, None, None)[1])
    style = _style(1)
    with MaskstPipeline(engines, deepcache=True) as pipe:
        for interval in (1, 3):
            config = GenerationConfig.create(prompt="a cat", content="a house", steps=6, height=64, width=64, seed=2,
                                             scheduler="unipc", deepcache_interval=interval)
            want = reference.generate(config, style)
            got = pipe.generate(config, style)
            assert np.abs(got.images.astype(int) - want.images.astype(int)).max() <= 1
            assert want.images.std() > 10


def test_plus_adapter_with_deepcache_matches_the_reference(tiny, export_checkpoints, tmp_path):
    """IP-Adapter Plus (16 tokens from the Resampler): the tokens are an input of both graphs."""
    from maskst.checkpoints import resolve_checkpoints
    from maskst.reference import ReferencePipeline
    from maskst.runtime.pipeline import MaskstPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engines = export_checkpoints(tiny.base, tiny.ip_adapter_plus, tiny.image_encoder, tiny.content_encoder,
                                     tmp_path / "plus", deepcache=True).folder
    reference = ReferencePipeline(resolve_checkpoints(tiny.base, tiny.ip_adapter_plus, tiny.image_encoder,
                                                      tiny.content_encoder))
    config = GenerationConfig.create(prompt="a cat", method="ip-adapter", steps=6, height=64, width=64, seed=2,
                                     scheduler="unipc", deepcache_interval=3)
    style = _style(1)
    with MaskstPipeline(engines, deepcache=True) as pipe:
        got = pipe.generate(config, style)
    assert np.abs(got.images.astype(int) - reference.generate(config, style).images.astype(int)).max() <= 1


def test_export_cli_offers_deepcache():
    from click.testing import CliRunner

    from maskst.cli.export import main as export_main

    help_text = CliRunner().invoke(export_main, ["--help"]).output
    assert "--deepcache" in help_text and "unet_shallow" in help_text


def test_cache_point_of_the_real_layouts_and_refusals():
    import json
    from pathlib import Path

    from maskst.deepcache import cache_point, full_steps, is_full_step
    from maskst.errors import CheckpointError

    sd15 = {"up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "layers_per_block": 2,
            "block_out_channels": [320, 640, 1280, 1280]}
    assert cache_point(sd15) == cache_point(sd15).__class__(up_block=3, feature_channels=320, cross_attention=True)
    sdxl = {"up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "layers_per_block": 2,
            "block_out_channels": [320, 640, 1280]}
    assert cache_point(sdxl).cross_attention is False and cache_point(sdxl).feature_channels == 320
    configs = Path(__file__).resolve().parents[2] / "shared" / "configs"  # the public checkpoints' (where present)
    for family, cross in (("sd15", True), ("sdxl", False)):
        path = configs / family / "unet_config.json"
        if path.is_file():
            point = cache_point(json.loads(path.read_text()))
            assert (point.feature_channels, point.cross_attention) == (320, cross), path
    with pytest.raises(CheckpointError, match="layers_per_block=0"):
        cache_point({**sd15, "layers_per_block": 0})
    with pytest.raises(CheckpointError, match="class_embed_type"):
        cache_point({**sd15, "class_embed_type": "timestep"})
    assert [is_full_step(i, 3) for i in range(7)] == [True, False, False, True, False, False, True]
    assert full_steps(10, 3) == 4 and full_steps(11, 3) == 4 and full_steps(5, 100) == 1
