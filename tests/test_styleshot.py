"""StyleShot with MaskST (issue 13): style-aware encoder, three-way masked conditioning, 6 style tokens, content fusion.

Parity runs on the 'styleshot-tiny-wide' fixtures (other UNet, text, CLIP and CNN widths, depths and heads than
the 'styleshot-tiny' set used while developing; its style_aware_encoder.bin also carries the position_ids older
transformers saved) against the PyTorch reference written from StyleShot's code (maskst.reference_styleshot),
same seed, same initial latents.
"""

import json
import shutil
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskst.control import ControlAspectWarning
from maskst.errors import CheckpointError, EngineError, InputError
from maskst.generation import EmptyContentWarning, GenerationConfig, initial_noise
from maskst.images import load_image

SIZE = dict(height=72, width=120)  # latent 9 x 15
NOISE = (2, 4, 9, 15)


def _export(paths, out, **extra):
    from maskst.export.exporter import ExportRequest, export_engines
    from maskst.export.options import ExportOptions

    options = dict(min_size=64, opt_size=64, max_size=128, max_batch=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_engines(ExportRequest(base=paths.base, ip_adapter=None, styleshot=paths.styleshot,
                                            content_encoder=paths.content_encoder, out=out,
                                            options=ExportOptions(**options), **extra), progress=False)


@pytest.fixture(scope="module")
def ss_tiny(tmp_path_factory):
    from maskst.fixtures import write_fixtures

    return write_fixtures(tmp_path_factory.mktemp("fixtures") / "styleshot_tiny", "styleshot-tiny", seed=0)


@pytest.fixture(scope="module")
def ss_wide(tmp_path_factory):
    from maskst.fixtures import write_fixtures

    return write_fixtures(tmp_path_factory.mktemp("fixtures") / "styleshot_wide", "styleshot-tiny-wide", seed=5)


@pytest.fixture(scope="module")
def wide_engines(ss_wide, tmp_path_factory):
    return _export(ss_wide, tmp_path_factory.mktemp("engines") / "styleshot_wide", lineart_model=ss_wide.lineart_model)


@pytest.fixture(scope="module")
def reference(ss_wide):
    from maskst.reference_styleshot import StyleShotReference
    from maskst.styleshot_checkpoints import resolve_styleshot_checkpoints

    ckpt = resolve_styleshot_checkpoints(ss_wide.base, ss_wide.styleshot, None, ss_wide.content_encoder)
    return StyleShotReference(ckpt, ss_wide.lineart_model)


@pytest.fixture(scope="module")
def pipeline(wide_engines):
    from maskst.runtime.pipeline import MaskstPipeline

    with MaskstPipeline(wide_engines.folder) as pipe:
        yield pipe


def _pattern(width: int, height: int, seed: int = 3) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    checks = ((np.sin(x / 7.0) > 0) ^ (np.cos(y / 5.0) > 0)) * 180 + 40
    noise = np.random.default_rng(seed).integers(0, 20, (height, width))
    return np.stack([checks + noise // 2, 255 - checks, (x * 255 // max(1, width - 1))], -1).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("styleshot_images")
    rng = np.random.default_rng(21)
    paths = {"style": folder / "style.png", "style2": folder / "style2.png", "control": folder / "control.png"}
    y, x = np.mgrid[0:530, 0:701] / 60.0  # landscape, odd crop offsets after the 512 resize
    img = np.stack([np.sin(3 * x + y), np.cos(2 * y), np.sin(x * y)], -1) * 0.4 + 0.5 + 0.05 * rng.standard_normal((530, 701, 3))
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(paths["style"])
    Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)).save(paths["style2"])  # portrait, upscaled
    Image.fromarray(_pattern(150, 100)).save(paths["control"])  # another size and aspect than the output
    return paths


def _config(**extra):
    values = dict(prompt="a photo of a dog in the city", content="a ship", steps=4, num_images=2, seed=7, **SIZE)
    values.update(extra)
    return GenerationConfig.create(**values)


# ---------------------------------------------------------------- style input: crop, patches, shuffle


def test_shuffle_reproduces_torch_randperm_without_torch():
    import torch

    from maskst.styleshot import shuffle_permutations

    seeds = list(range(300)) + [2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 7, 10**12 + 39, 2**62 + 5, 2**63 - 1]
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        want = [torch.randperm(n, generator=generator).numpy() for n in (8, 16, 32)]
        got = shuffle_permutations(seed)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b, err_msg=f"seed {seed}")


@pytest.mark.parametrize("size", [(701, 530), (200, 300), (512, 512), (517, 1029), (640, 513)])
def test_patches_match_styleshots_processor(size):
    """maskst.styleshot (numpy, the runtime) == the reference's StyleProcessor (PIL + torch), bit for bit: crop
    offsets (round half to even), the recursive quadrant order and the seeded shuffle."""
    from maskst.reference_styleshot import style_processor
    from maskst.styleshot import style_patches

    rng = np.random.default_rng(size[0])
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    for seed in (0, 42, 2**40 + 3):
        got = style_patches(image, seed)
        want = style_processor(image, seed)
        for name, tensor in zip(("high_patches", "middle_patches", "low_patches"), want):
            assert got[name].dtype == np.float32 and got[name].shape == (1, *tensor.shape)
            np.testing.assert_array_equal(got[name][0], tensor.numpy(), err_msg=f"{name} seed {seed}")


def test_patch_geometry_is_styleshots():
    from maskst.styleshot import CROP, patch_origins

    origins = patch_origins()
    assert [len(origins[k]) for k in ("high", "middle", "low")] == [8, 16, 32]
    assert origins["high"][:2] == [(0, 0), (128, 128)]  # top-left quadrant: its TL and BR 128 patches
    assert origins["middle"][:2] == [(128, 0), (192, 64)]  # then its bottom-left 128 patch: TL and BR 64 patches
    assert origins["low"][:2] == [(192, 0), (224, 32)]
    covered = np.zeros((CROP, CROP), int)
    for name, side in (("high", 128), ("middle", 64), ("low", 32)):
        for y, x in origins[name]:
            covered[y:y + side, x:x + side] += 1
    assert covered.max() == 1 and covered.sum() == 8 * 128**2 + 16 * 64**2 + 32 * 32**2  # disjoint patches


def test_three_way_conditioning_masks_each_embedding_on_its_own():
    """maskst masks each of the 3 embeddings against e_c (the method); the seed's StyleShot loop would mask
    embeddings 2 and 3 against its previous result: a different mask (the documented deviation)."""
    from maskst.masking import content_mask
    from maskst.styleshot import condition_style_embeds

    rng = np.random.default_rng(3)
    e = rng.standard_normal((3, 64)).astype(np.float32)
    e_c = rng.standard_normal(64).astype(np.float32)
    e_hat, mask = condition_style_embeds(e, e_c, "maskst", "kmeans")
    for k in range(3):
        np.testing.assert_array_equal(mask[k], content_mask(e[k], e_c, "kmeans"))
        np.testing.assert_array_equal(e_hat[k], e[k] * ~mask[k])
    chained, content = [], e_c
    for k in range(3):  # LinLLLL/MaskST ip_adapter_styleshot: neg_content_embd overwritten inside the loop
        m = content_mask(e[k], content, "kmeans")
        chained.append(m)
        content = np.where(m, e[k], 0)
    assert not np.array_equal(np.stack(chained)[1:], mask[1:])
    instant, _ = condition_style_embeds(e, e_c, "instantstyle", content_scale=1.0)
    want = e - (np.linalg.norm(e, axis=1, keepdims=True) / np.linalg.norm(e_c)) * e_c
    np.testing.assert_allclose(instant, want, rtol=1e-5, atol=1e-6)
    plain, plain_mask = condition_style_embeds(e, None, "styleshot")
    np.testing.assert_array_equal(plain, e)
    assert not plain_mask.any()


# ---------------------------------------------------------------- pre-flight


def test_adapter_state_rounds_to_k_ip_and_to_v_ip_through_float16(ss_wide):
    import torch

    from maskst.styleshot_checkpoints import resolve_styleshot_checkpoints, styleshot_adapter_state

    ckpt = resolve_styleshot_checkpoints(ss_wide.base, ss_wide.styleshot, None, ss_wide.content_encoder)
    raw = torch.load(ss_wide.ip_bin, weights_only=True)
    state = styleshot_adapter_state(ckpt)
    assert set(state) == {"image_proj", "ip_adapter", "controlnet"}
    for key, value in state["ip_adapter"].items():
        original = raw[f"adapter_modules.{key}"]
        assert value.dtype == torch.float32 and torch.equal(value, original.half().float())
        assert not torch.equal(value, original)  # random float32 weights are not float16 values
    assert torch.equal(state["image_proj"]["0.proj.weight"], raw["style_image_proj_modules.0.proj.weight"])
    assert ckpt.adapter.num_tokens == 6 and ckpt.family == "styleshot"
    assert ckpt.image_encoder_config["cnn_widths"] == [12, 20, 36]


def _copy_styleshot(paths, tmp_path):
    folder = tmp_path / "styleshot"
    shutil.copytree(paths.styleshot, folder)
    return folder


def _edit_bin(path, edit):
    import torch

    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def test_preflight_refuses_missing_and_foreign_parts_naming_the_file(ss_tiny, ss_wide, tmp_path):
    """Every refusal comes before any work (the engines folder is never created), naming the file."""
    import torch

    from maskst.export.exporter import ExportRequest, export_engines

    out = tmp_path / "engines"

    def refused(styleshot, match, content=ss_tiny.content_encoder, **extra):
        request = ExportRequest(base=ss_tiny.base, ip_adapter=None, styleshot=styleshot, content_encoder=content,
                                out=out, **extra)
        with pytest.raises((CheckpointError, InputError), match=match) as err:
            export_engines(request, progress=False)
        assert not out.exists()
        return str(err.value)

    folder = _copy_styleshot(ss_tiny, tmp_path / "a")
    ip_bin, encoder = folder / "pretrained_weight" / "ip.bin", folder / "pretrained_weight" / "style_aware_encoder.bin"
    encoder.unlink()
    refused(folder, f"{encoder} is missing")
    shutil.copy(ss_tiny.style_aware_encoder, encoder)
    for group, role in (("style_image_proj_modules", "style projections"), ("adapter_modules", "IP attention"),
                        ("controlnet", "content-fusion encoder")):
        shutil.copy(ss_tiny.ip_bin, ip_bin)
        _edit_bin(ip_bin, lambda s, g=group: [s.pop(k) for k in [k for k in s if k.startswith(g + ".")]])
        message = refused(folder, f"{ip_bin} has no {group}")
        assert role in message
    # one tensor missing, one of another shape, an unknown group: each named with the file
    shutil.copy(ss_tiny.ip_bin, ip_bin)
    _edit_bin(ip_bin, lambda s: s.pop("adapter_modules.3.to_v_ip.weight"))
    refused(folder, rf"{ip_bin}: missing adapter_modules\.3\.to_v_ip\.weight")
    shutil.copy(ss_tiny.ip_bin, ip_bin)
    _edit_bin(ip_bin, lambda s: s.update({"adapter_modules.1.to_k_ip.weight": torch.zeros(40, 32)}))
    refused(folder, r"adapter_modules\.1\.to_k_ip\.weight has shape \[40, 32\], expected \[32, 32\]")
    shutil.copy(ss_tiny.ip_bin, ip_bin)
    _edit_bin(ip_bin, lambda s: s.update({"image_proj_model.proj.weight": torch.zeros(2)}))
    refused(folder, rf"{ip_bin}: image_proj_model\.proj\.weight belong to no part of a StyleShot ip\.bin")
    # a foreign ip.bin: another StyleShot's (another base: token width 48, not this UNet's 32), an h94 adapter file
    shutil.copy(ss_wide.ip_bin, ip_bin)
    refused(folder, r"makes 2 tokens 48 wide, but the base UNet .* cross-attends 32-wide tokens")
    torch.save({"image_proj": {"proj.weight": torch.zeros(2)}, "ip_adapter": {}}, ip_bin)
    refused(folder, "is an h94 IP-Adapter checkpoint")
    ip_bin.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    refused(folder, "Git LFS pointer")
    shutil.copy(ss_tiny.ip_bin, ip_bin)
    # the style-aware encoder: another width than the content encoder's vision config, a tensor missing
    shutil.copy(ss_wide.style_aware_encoder, encoder)
    message = refused(folder, r"style-aware encoder .* is 40 wide .* describes a 32-wide transformer")
    assert str(encoder) in message and str(ss_tiny.content_encoder / "config.json") in message
    shutil.copy(ss_tiny.style_aware_encoder, encoder)
    _edit_bin(encoder, lambda s: s.pop("image_encoder.vision_model.post_layernorm.weight"))
    refused(folder, rf"{encoder}: missing image_encoder\.vision_model\.post_layernorm\.weight")
    _edit_bin(encoder, lambda s: [s.pop(k) for k in [k for k in s if k.startswith("cnn.")]])
    refused(folder, "not StyleShot's pretrained_weight/style_aware_encoder.bin")
    # the content encoder: a text-only CLIP folder has no vision config; the wide one another projection
    text_only = tmp_path / "text_only"
    shutil.copytree(ss_tiny.content_encoder, text_only)
    config = json.loads((text_only / "config.json").read_text())
    (text_only / "config.json").write_text(json.dumps(config["text_config"] | {"model_type": "clip_text_model"}))
    refused(ss_tiny.styleshot, "not a full CLIPModel config", content=text_only)
    refused(ss_tiny.styleshot, "describes a 40-wide transformer", content=ss_wide.content_encoder)
    refused(ss_tiny.styleshot, "no folder given", content=None)
    refused(ss_tiny.styleshot, "StyleShot has no CLIP image encoder", image_encoder=ss_tiny.content_encoder)
    refused(tmp_path / "nowhere", "does not exist")
    refused(ss_tiny.styleshot, "--controlnet with --styleshot", controlnets=(ss_tiny.base / "unet",))
    with pytest.raises(InputError, match="exclude each other"):
        export_engines(ExportRequest(base=ss_tiny.base, ip_adapter=ss_tiny.ip_bin, styleshot=ss_tiny.styleshot,
                                     content_encoder=ss_tiny.content_encoder, out=out), progress=False)


# ---------------------------------------------------------------- export


def test_export_records_styleshot_graphs_with_parity(wide_engines, ss_wide):
    manifest = wide_engines
    graphs = manifest.data["graphs"]
    assert set(graphs) == {"text_encoder", "style_encoder", "content_encoder", "image_conditioner", "unet",
                           "vae_decoder", "content_fusion", "lineart"}
    for name, graph in graphs.items():
        assert graph["parity"] and all(r["passed"] for r in graph["parity"]), name
        assert max(r["max_abs_err"] for r in graph["parity"]) < 1e-4, name
    assert manifest.model["family"] == "styleshot" and manifest.model["num_tokens"] == 6
    assert manifest.model["adapter_kind"] == "styleshot" and manifest.model["image_embed_dim"] == 72
    style = manifest.graph_spec("style_encoder")
    assert [(t.name, t.shape) for t in style.inputs] == [
        ("high_patches", ("N", 8, 3, 128, 128)), ("middle_patches", ("N", 16, 3, 64, 64)),
        ("low_patches", ("N", 32, 3, 32, 32))]
    assert style.outputs[0].shape == ("N", 3, 72)
    conditioner = manifest.graph_spec("image_conditioner")
    assert conditioner.inputs[0].shape == ("N", 3, 72) and conditioner.outputs[0].shape == ("N", 6, 48)
    assert conditioner.outputs[1].shape == ("N", 3, 72)
    # every method code x mask mode, and the degenerate rows, were compared with PyTorch (2 outputs each)
    assert len(graphs["image_conditioner"]["parity"]) == 2 * 8
    unet = manifest.graph_spec("unet")
    assert {t.name: t.shape for t in unet.inputs}["ip_tokens"] == ("B", "R", 6, 48)
    fusion = manifest.data["control"]["controlnets"]
    assert [c["graph"] for c in fusion] == ["content_fusion"]
    assert fusion[0]["reads"] == ["sample", "timestep", "ip_tokens"]
    assert [t.name for t in manifest.graph_spec("content_fusion").inputs][:3] == ["sample", "timestep", "ip_tokens"]
    assert {"ip_adapter", "style_aware_encoder", "content_encoder"} <= set(manifest.data["sources"])
    assert "image_encoder" not in manifest.data["sources"]


# ---------------------------------------------------------------- end-to-end parity (the "done when")


@pytest.mark.parametrize("method,mode", [("styleshot", "kmeans"), ("maskst", "kmeans"), ("maskst", "quantile"),
                                         ("instantstyle", "kmeans")])
@pytest.mark.parametrize("driven", ["text", "image"])
def test_maskst_run_matches_the_styleshot_reference(reference, pipeline, images, method, mode, driven):
    extra = dict(control_image=[images["control"]], control_scale=0.8) if driven == "image" else {}
    config = _config(method=method, mask_mode=mode, theta=0.6, content_scale=0.9, **extra)
    noise = initial_noise(7, NOISE)
    style = load_image(images["style"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ControlAspectWarning)
        got = pipeline.generate(config, [style], latents=noise)
        want = reference.generate(config, style, latents=noise)
    np.testing.assert_array_equal(got.mask, want.mask)
    assert got.mask.shape == (3, 72) and (got.masked_elements > 0) == (method == "maskst")
    diff = np.abs(got.images.astype(int) - want.images.astype(int))
    assert diff.max() <= 2, f"max pixel difference {diff.max()}/255"
    assert want.images.std() > 10
    if driven == "image":  # the content fusion matters
        plain = pipeline.generate(_config(method=method, mask_mode=mode, theta=0.6, content_scale=0.9), [style],
                                  latents=noise)
        assert np.abs(plain.images.astype(int) - got.images.astype(int)).max() > 20


@pytest.mark.parametrize("driven", ["text", "image"])
def test_guidance_one_matches_the_reference_without_guidance(reference, pipeline, images, driven):
    """diffusers skips guidance at 1: the content fusion then sees the style context of the positive half alone."""
    extra = dict(control_image=[images["control"]], control_scale=0.8) if driven == "image" else {}
    config = _config(method="maskst", guidance=1.0, steps=3, **extra)
    noise = initial_noise(7, NOISE)
    style = load_image(images["style"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ControlAspectWarning)
        got = pipeline.generate(config, [style], latents=noise)
        want = reference.generate(config, style, latents=noise)
    assert np.abs(got.images.astype(int) - want.images.astype(int)).max() <= 2


def test_lineart_content_and_files_match_the_reference(reference, pipeline, images):
    """Image-driven with StyleShot's lineart preprocessing, the style read from its file, num_images 1."""
    config = _config(method="maskst", num_images=1, style=[images["style2"]], control_image=[images["control"]],
                     control_preprocess="lineart", seed=11)
    noise = initial_noise(11, (1, 4, 9, 15))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ControlAspectWarning)
        got = pipeline.generate(config, latents=noise)
        want = reference.generate(config, load_image(images["style2"]), latents=noise)
    assert np.abs(got.images.astype(int) - want.images.astype(int)).max() <= 2
    np.testing.assert_array_equal(got.mask, want.mask)


def test_the_seed_shuffles_the_patches_and_the_cache_keys_on_it(pipeline, reference, images):
    config = _config(method="styleshot", steps=1, num_images=1, style=[images["style"]])
    first = pipeline.style.embeds(config)
    again = pipeline.style.embeds(config)
    other = pipeline.style.embeds(_config(method="styleshot", steps=1, num_images=1, seed=8, style=[images["style"]]))
    assert again is first  # cached by file identity and seed
    assert np.abs(first - other).max() > 1e-3  # another shuffle: other embeddings (positions are learned)
    np.testing.assert_allclose(first[0], reference.encode_style(load_image(images["style"]), 7), atol=1e-4)


# ---------------------------------------------------------------- requests StyleShot engines refuse or adapt


def test_requests_styleshot_engines_refuse_or_adapt(pipeline, images):
    style = [images["style"]]
    with pytest.raises(InputError, match="method 'ip-adapter' does not run on .*StyleShot engines; choose one of: "
                                         "styleshot, maskst, instantstyle"):
        pipeline.generate(_config(method="ip-adapter", style=style))
    with pytest.raises(InputError, match="StyleShot takes one style image per request"):
        pipeline.generate(_config(style=style * 2))
    with pytest.raises(InputError, match="regional multi-style is not available on StyleShot engines"):
        pipeline.generate(_config(content="", regions=[(images["style"], images["control"], "a ship")]))
    with pytest.raises(InputError, match="one control image per ControlNet"):
        pipeline.generate(_config(style=style, control_image=[images["control"]] * 2))
    with pytest.warns(EmptyContentWarning, match="running as 'styleshot'"):
        result = pipeline.generate(_config(style=style, content="", steps=1, num_images=1))
    assert result.method.value == "styleshot" and result.masked_elements == 0
    with pytest.raises(EngineError, match="no CLIP image encoder"):
        pipeline.encode_style([load_image(images["style"])])


def test_styleshot_method_is_refused_on_ip_adapter_engines(tiny_engines, style_image):
    from maskst.runtime.pipeline import MaskstPipeline

    with MaskstPipeline(tiny_engines) as pipe:
        with pytest.raises(InputError, match="method 'styleshot' does not run on .*IP-Adapter engines"):
            pipe.generate(GenerationConfig.create(prompt="a cat", style=[style_image], method="styleshot",
                                                  height=64, width=64, steps=1))


# ---------------------------------------------------------------- CLI


def test_export_and_run_cli_text_and_image_driven_and_batch(ss_tiny, images, tmp_path):
    from maskst.cli.export import main as export_main
    from maskst.cli.run import main as run_main

    engines = tmp_path / "engines"
    args = ["--base", ss_tiny.base, "--styleshot", ss_tiny.styleshot, "--content-encoder", ss_tiny.content_encoder,
            "--min-size", "64", "--opt-size", "64", "--max-size", "128", "--max-batch", "2", "--quiet"]
    result = CliRunner().invoke(export_main, [str(a) for a in args + ["--out", engines]])
    assert result.exit_code == 0, result.output
    assert "content_fusion" in json.loads(result.output[result.output.index("{"):])["parity_max_abs_err"]
    both = CliRunner().invoke(export_main, [str(a) for a in args + ["--ip-adapter", ss_tiny.ip_bin, "--out", tmp_path / "x"]])
    assert both.exit_code == 2 and "exclude each other" in both.output
    foreign = CliRunner().invoke(export_main, [str(a) for a in ["--base", ss_tiny.base, "--styleshot", ss_tiny.base,
                                                                "--content-encoder", ss_tiny.content_encoder,
                                                                "--out", tmp_path / "y"]])
    assert foreign.exit_code == 3 and "pretrained_weight/ip.bin is missing" in foreign.output
    assert not (tmp_path / "y").exists()
    help_text = CliRunner().invoke(export_main, ["--help"]).output
    assert "--styleshot" in help_text

    out = tmp_path / "cat.png"
    run = ["--engines", engines, "--prompt", "a cat", "--style", images["style"], "--content", "a house", "--steps", "2",
           "--height", "64", "--width", "64", "--quiet", "--seed", "5"]
    result = CliRunner().invoke(run_main, [str(a) for a in run + ["--method", "maskst", "--out", out, "--json"]])
    assert result.exit_code == 0, result.output
    meta = json.loads(Image.open(out).text["maskst"])
    assert meta["family"] == "styleshot" and meta["method"] == "maskst" and meta["shuffle_seed"] == 5
    assert meta["style_input"] == "styleshot" and meta["style_crop"] == 512 and meta["masked_elements"] > 0
    image_out = tmp_path / "house.png"
    result = CliRunner().invoke(run_main, [str(a) for a in run + ["--method", "styleshot", "--control-image",
                                                                    images["control"], "--control-scale", "0.7",
                                                                    "--out", image_out]])
    assert result.exit_code == 0, result.output
    meta = json.loads(Image.open(image_out).text["maskst"])
    assert meta["method"] == "styleshot" and meta["control_scale"] == [0.7] and meta["masked_elements"] == 0
    refused = CliRunner().invoke(run_main, [str(a) for a in run + ["--method", "ip-adapter", "--out", out]])
    assert refused.exit_code == 2 and "choose one of: styleshot, maskst, instantstyle" in refused.output
    lineart = CliRunner().invoke(run_main, [str(a) for a in run + ["--control-image", images["control"],
                                                                    "--control-preprocess", "lineart", "--out", out]])
    assert lineart.exit_code == 2 and "--lineart-model" in lineart.output  # exported without the annotator

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps(job) for job in [
        {"prompt": "a cat", "style": str(images["style"]), "content": "a house", "method": "maskst", "seed": 3},
        {"prompt": "a dog", "style": str(images["style2"]), "method": "instantstyle", "content": "noise",
         "control_image": str(images["control"]), "control_scale": None, "name": "dog"},
        {"prompt": "a cow", "style": [str(images["style"]), str(images["style2"])], "method": "styleshot"},
    ]) + "\n")
    result = CliRunner().invoke(run_main, [str(a) for a in ["--engines", engines, "--batch", jobs, "--out-dir",
                                                            tmp_path / "batch", "--steps", "1", "--height", "64",
                                                            "--width", "64", "--quiet"]])
    assert result.exit_code == 1  # one job failed, the others ran
    lines = [json.loads(line) for line in (tmp_path / "batch" / "results.jsonl").read_text().splitlines()]
    assert [line["status"] for line in lines] == ["ok", "ok", "error"]
    assert "one style image per request" in lines[2]["error"] and lines[2]["exit_code"] == 2
    assert json.loads(Image.open(tmp_path / "batch" / "dog.png").text["maskst"])["shuffle_seed"] == 0


# ---------------------------------------------------------------- other backends and precisions


def test_fp16_engines_and_openvino_run_styleshot_close_to_fp32(ss_tiny, pipeline, images, tmp_path):
    """fp16 engines (the conditioner and VAE stay fp32) and OpenVINO f32 on an image-driven maskst request."""
    from maskst.export.exporter import ExportRequest, export_engines
    from maskst.export.options import ExportOptions, Precision
    from maskst.runtime.pipeline import MaskstPipeline

    config = _config(method="maskst", control_image=[images["control"]], style=[images["style"]], steps=3)
    noise = initial_noise(7, NOISE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ControlAspectWarning)
        want = pipeline.generate(config, latents=noise)
        with MaskstPipeline(pipeline.manifest.folder, backend="openvino-f32") as ov:
            got = ov.generate(config, latents=noise)
        assert np.abs(got.images.astype(int) - want.images.astype(int)).max() <= 2
        np.testing.assert_array_equal(got.mask, want.mask)  # the conditioner runs on ONNX Runtime
        options = ExportOptions(min_size=64, opt_size=64, max_size=128, max_batch=2, precision=Precision.FP16)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            manifest = export_engines(ExportRequest(base=ss_tiny.base, ip_adapter=None, styleshot=ss_tiny.styleshot,
                                                    content_encoder=ss_tiny.content_encoder, out=tmp_path / "fp16",
                                                    options=options), progress=False)
        assert "image_conditioner" in manifest.data["fp16"]["fp32_graphs"]
        with MaskstPipeline(manifest.folder) as fp16:
            result = fp16.generate(_config(method="maskst", control_image=[images["control"]], style=[images["style"]],
                                           steps=2, num_images=1), latents=initial_noise(7, (1, 4, 9, 15)))
    assert result.images.shape == (1, 72, 120, 3) and np.isfinite(result.images).all()
