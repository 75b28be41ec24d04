"""SDXL as a model family: fixtures, pre-flight refusals, export, CLI (default size, batch, metadata),
fp16 on ONNX Runtime CPU, OpenVINO, bench / profile. End-to-end parity: tests/test_sdxl_parity.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskst.errors import CheckpointError, InputError
from maskst.families import resolve_checkpoints
from maskst.generation import GenerationConfig, initial_noise
from maskst.images import load_image


def _resolve(f, **override):
    args = dict(base=f.base, ip_adapter=f.ip_adapter, image_encoder=None, content_encoder=None)
    args.update(override)
    return resolve_checkpoints(**args)


# --------------------------------------------------------------------------- fixtures in the real layout


def test_sdxl_fixture_layout_is_the_real_one(sdxl_tiny):
    index = json.loads((sdxl_tiny.base / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline" and index["force_zeros_for_empty_prompt"] is True
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    for folder in ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler"):
        assert (sdxl_tiny.base / folder / ("scheduler_config.json" if folder == "scheduler" else "config.json")).is_file()
    for folder in ("tokenizer", "tokenizer_2"):
        for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
            assert (sdxl_tiny.base / folder / name).is_file()
    from maskst.tokenization import load_tokenizer

    assert load_tokenizer(sdxl_tiny.base / "tokenizer_2").pad_token_id == 0  # "!" pads, as SDXL's tokenizer_2
    assert load_tokenizer(sdxl_tiny.base / "tokenizer").pad_token == "<|endoftext|>"
    assert sdxl_tiny.ip_adapter.parent.name == "sdxl_models" and sdxl_tiny.ip_adapter_bin.is_file()
    assert sdxl_tiny.image_encoder == sdxl_tiny.ip_adapter.parent / "image_encoder"
    assert sdxl_tiny.image_encoder_vit_h.parent.name == "models"
    for path in (sdxl_tiny.ip_adapter_vit_h, sdxl_tiny.ip_adapter_plus, sdxl_tiny.content_encoder / "config.json"):
        assert path.is_file()


@pytest.mark.parametrize("weight", ["ip-adapter_sdxl.safetensors", "ip-adapter_sdxl.bin",
                                    "ip-adapter_sdxl_vit-h.safetensors", "ip-adapter-plus_sdxl_vit-h.safetensors"])
def test_diffusers_loads_every_fixture_adapter(sdxl_tiny, weight):
    """h94 key naming and shapes are right: diffusers' own SDXL loader accepts each file."""
    import torch
    from diffusers import UNet2DConditionModel

    from maskst.checkpoints import load_adapter_state_dict

    unet = UNet2DConditionModel.from_pretrained(str(sdxl_tiny.base / "unet"), torch_dtype=torch.float32)
    unet._load_ip_adapter_weights([load_adapter_state_dict(sdxl_tiny.ip_adapter.parent / weight)])
    assert unet.encoder_hid_proj is not None


def test_sdxl_full_preset_has_the_real_architecture():
    """sdxl-full reads the real SDXL base 1.0 and ViT-bigG configs (checked on the meta device: no weights)."""
    from maskst.checkpoints import unet_cross_attention_widths
    from maskst.fixtures import SDXL_PRESETS, _bigg_vision_config, _sdxl_text_configs, sdxl_unet_config

    spec = SDXL_PRESETS["sdxl-full"]
    unet = sdxl_unet_config(spec)
    assert unet["cross_attention_dim"] == 2048 and unet["projection_class_embeddings_input_dim"] == 2816
    assert len(unet_cross_attention_widths(unet)) == 70
    first, second = _sdxl_text_configs(spec, 49408)
    assert (first["hidden_size"], second["hidden_size"], second["projection_dim"]) == (768, 1280, 1280)
    bigg = _bigg_vision_config(spec)
    assert (bigg["hidden_size"], bigg["projection_dim"], bigg["num_hidden_layers"]) == (1664, 1280, 48)
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.device("meta"):  # the published parameter counts (h94's card: bigG 1844.9M)
        counts = {"unet": UNet2DConditionModel.from_config(unet),
                  "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**second)),
                  "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**bigg))}
    counts = {k: round(sum(p.numel() for p in m.parameters()) / 1e6, 1) for k, m in counts.items()}
    assert counts == {"unet": 2567.5, "text_encoder_2": 694.7, "image_encoder": 1844.9}, counts


# --------------------------------------------------------------------------- pre-flight


def test_bigg_adapter_resolves_with_the_bases_own_content_encoder(sdxl_tiny):
    family, ckpt = _resolve(sdxl_tiny)
    assert family.name == "sdxl" and ckpt.family == "sdxl"
    assert ckpt.image_encoder == sdxl_tiny.image_encoder  # default: image_encoder/ beside the adapter file
    assert ckpt.content_encoder == sdxl_tiny.base / "text_encoder_2"
    assert ckpt.content_tokenizer_folder == sdxl_tiny.base / "tokenizer_2"
    assert ckpt.content_graph == ("text_encoder_2", "text_embeds") and ckpt.shared_content_encoder
    assert ckpt.image_embed_dim == 40 and ckpt.adapter.cross_attention_dim == 80
    assert "up_blocks.0.attentions.1.transformer_blocks.0.attn2" in ckpt.cross_attention_layers
    assert family.export_graphs(ckpt) == ("text_encoder", "text_encoder_2", "image_encoder", "image_conditioner",
                                          "unet", "vae_decoder")
    assert set(ckpt.weight_files()) == {"unet", "vae", "text_encoder", "text_encoder_2", "ip_adapter", "image_encoder"}
    # the same, named explicitly
    assert _resolve(sdxl_tiny, content_encoder=sdxl_tiny.base / "text_encoder_2")[1].shared_content_encoder


def test_vit_h_adapters_resolve_with_the_laion_content_encoder(sdxl_tiny):
    for adapter in (sdxl_tiny.ip_adapter_vit_h, sdxl_tiny.ip_adapter_plus):
        family, ckpt = _resolve(sdxl_tiny, ip_adapter=adapter, image_encoder=sdxl_tiny.image_encoder_vit_h,
                                content_encoder=sdxl_tiny.content_encoder)
        assert not ckpt.shared_content_encoder and "content_encoder" in family.export_graphs(ckpt)
        assert ckpt.content_tokenizer_folder == sdxl_tiny.content_encoder


def test_bigg_adapter_with_a_vit_h_encoder_is_refused(sdxl_tiny):
    with pytest.raises(CheckpointError) as err:
        _resolve(sdxl_tiny, image_encoder=sdxl_tiny.image_encoder_vit_h)
    msg = str(err.value)
    assert str(sdxl_tiny.image_encoder_vit_h / "config.json") in msg and str(sdxl_tiny.ip_adapter) in msg
    assert "projection_dim 48" in msg and "projection_dim 40" in msg and "sdxl_models/image_encoder" in msg


def test_vit_h_adapter_with_the_bigg_encoder_beside_it_is_refused_naming_the_right_one(sdxl_tiny):
    with pytest.raises(CheckpointError) as err:
        _resolve(sdxl_tiny, ip_adapter=sdxl_tiny.ip_adapter_vit_h, content_encoder=sdxl_tiny.content_encoder)
    msg = str(err.value)
    assert str(sdxl_tiny.image_encoder / "config.json") in msg and "projection_dim 40" in msg
    assert "projection_dim 48" in msg and "--image-encoder IP-Adapter/models/image_encoder" in msg


def test_vit_h_adapter_without_a_content_encoder_is_refused(sdxl_tiny):
    with pytest.raises(CheckpointError, match="content encoder: no folder given.*projection_dim 48.*projects text to 40"):
        _resolve(sdxl_tiny, ip_adapter=sdxl_tiny.ip_adapter_vit_h, image_encoder=sdxl_tiny.image_encoder_vit_h)


def test_content_space_of_another_width_is_refused(sdxl_tiny):
    """bigG adapter (1280-d space) with the laion ViT-H text tower (1024-d): refused naming both files."""
    with pytest.raises(CheckpointError) as err:
        _resolve(sdxl_tiny, content_encoder=sdxl_tiny.content_encoder)
    msg = str(err.value)
    assert str(sdxl_tiny.content_encoder / "config.json") in msg and str(sdxl_tiny.image_encoder / "config.json") in msg
    assert "projects text to 48 values" in msg and "projects images to 40" in msg


def test_sd15_adapter_on_sdxl_and_sdxl_adapter_on_sd15_are_refused(sdxl_tiny, tiny):
    with pytest.raises(CheckpointError) as err:
        _resolve(sdxl_tiny, ip_adapter=tiny.ip_adapter, image_encoder=tiny.image_encoder)
    msg = str(err.value)
    assert str(tiny.ip_adapter) in msg and str(sdxl_tiny.base / "unet" / "config.json") in msg
    assert "32 wide" in msg and "expects 80" in msg and "sdxl_models/ for SDXL" in msg
    with pytest.raises(CheckpointError, match="80 wide, the UNet expects 32"):
        resolve_checkpoints(tiny.base, sdxl_tiny.ip_adapter, sdxl_tiny.image_encoder, tiny.content_encoder)


def test_incomplete_or_mixed_sdxl_base_is_refused(sdxl_tiny, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(sdxl_tiny.base, base)
    shutil.rmtree(base / "tokenizer_2")
    with pytest.raises(CheckpointError, match="no tokenizer_2/ folder.*Stable Diffusion XL"):
        _resolve(sdxl_tiny, base=base)
    shutil.copytree(sdxl_tiny.base / "tokenizer_2", base / "tokenizer_2")
    config = json.loads((base / "text_encoder_2" / "config.json").read_text())
    (base / "text_encoder_2" / "config.json").write_text(json.dumps({**config, "projection_dim": 56}))
    with pytest.raises(CheckpointError, match="projection_class_embeddings_input_dim is 88.*projection_dim 56"):
        _resolve(sdxl_tiny, base=base)
    (base / "text_encoder_2" / "config.json").write_text(json.dumps({**config, "hidden_size": 40}))
    with pytest.raises(CheckpointError, match="give 72-wide prompt embeddings.*cross_attention_dim .* is 80"):
        _resolve(sdxl_tiny, base=base)


def test_export_refuses_a_mismatch_before_any_work(sdxl_tiny, tmp_path):
    from maskst.cli.export import main as export_main

    out = tmp_path / "engines"
    args = ["--base", sdxl_tiny.base, "--ip-adapter", sdxl_tiny.ip_adapter, "--image-encoder",
            sdxl_tiny.image_encoder_vit_h, "--out", out, "--quiet"]
    result = CliRunner().invoke(export_main, [str(a) for a in args])
    assert result.exit_code == 3 and "projection_dim 40" in result.output
    assert not out.exists() and not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- export


def test_sdxl_engines_manifest_and_graph_specs(sdxl_engines):
    from maskst.engines.manifest import load_manifest

    manifest = load_manifest(sdxl_engines)
    model = manifest.model
    assert model["family"] == "sdxl" and model["force_zeros_for_empty_prompt"] is True
    assert model["content_embedding"] == {"graph": "text_encoder_2", "output": "text_embeds"}
    assert set(manifest.data["graphs"]) == {"text_encoder", "text_encoder_2", "image_encoder", "image_conditioner",
                                            "unet", "vae_decoder"}
    assert all(r["passed"] for g in manifest.data["graphs"].values() for r in g["parity"])
    assert "content_encoder" not in manifest.data["sources"] and "text_encoder_2" in manifest.data["sources"]
    unet = manifest.graph_spec("unet")
    inputs = {t.name: t.shape for t in unet.inputs}
    masks = [t.name for t in unet.inputs if t.name.startswith("region_mask_")]  # regional inputs, one per stride
    assert masks and [t.name for t in unet.inputs] == ["sample", "timestep", "text_embeddings", "text_embeds", "time_ids",
                                                       "ip_tokens", "ip_scale", *masks]
    assert inputs["text_embeddings"] == ("B", 77, 80) and inputs["text_embeds"] == ("B", 40)
    assert inputs["time_ids"] == ("B", 6) and inputs["ip_scale"] == (len(model["cross_attention_layers"]), "R")
    te2 = manifest.graph_spec("text_encoder_2")
    assert [t.name for t in te2.outputs] == ["text_embeddings", "text_embeds"]
    assert manifest.graph_spec("text_encoder").outputs[0].shape == ("B", 77, 32)
    # TensorRT profiles derive from the spec: every UNet input, sizes in latents
    profile = unet.profile()
    # max_batch 2; B = 2N with guidance, N (min 1) without
    assert profile["time_ids"] == ((1, 6), (2, 6), (4, 6)) and profile["sample"][2] == (4, 4, 128, 128)
    for folder in ("tokenizer", "tokenizer_2"):
        assert (sdxl_engines / folder / "vocab.json").is_file()


def test_engines_missing_a_graph_of_the_family_are_refused(sdxl_engines, tmp_path):
    from maskst.errors import EngineError
    from maskst.runtime.pipeline import MaskstPipeline

    folder = tmp_path / "engines"
    shutil.copytree(sdxl_engines, folder)
    data = json.loads((folder / "manifest.json").read_text())
    del data["graphs"]["text_encoder_2"]
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(EngineError, match="no text_encoder_2 graph.*Stable Diffusion XL"):
        MaskstPipeline(folder)


def test_maskst_content_embedding_is_sdxls_pooled_text_encoder_2_output(sdxl_tiny, sdxl_engines):
    """For the bigG adapter the content embedding is diffusers' own pooled prompt embedding of the content text."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    from maskst.runtime.pipeline import MaskstPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(sdxl_tiny.base), add_watermarker=False,
                                                     torch_dtype=torch.float32, local_files_only=True)
    with torch.no_grad():
        _, _, pooled, _ = pipe.encode_prompt("a ship", device="cpu", do_classifier_free_guidance=False)
    with MaskstPipeline(sdxl_engines) as maskst_pipe:
        content = maskst_pipe.encode_content("a ship")
        inputs = maskst_pipe.prompt_inputs("a ship", "")
    np.testing.assert_allclose(content, pooled.numpy(), atol=1e-5)
    np.testing.assert_allclose(inputs["text_embeds"][1:], pooled.numpy(), atol=1e-5)
    assert not inputs["text_embeds"][0].any() and not inputs["text_embeddings"][0].any()  # force_zeros


# --------------------------------------------------------------------------- request sizes and the CLI


def test_open_sizes_are_the_familys_default(sdxl_engines, tiny_engines):
    from maskst.runtime.pipeline import MaskstPipeline

    config = GenerationConfig.create(prompt="a cat")
    assert config.height is None and config.width is None
    assert config.sized(1024).height == 1024 and GenerationConfig.create(prompt="a", height=64).sized(1024).height == 64
    for value in (0, -8, 60):
        with pytest.raises(InputError, match=f"height={value} must be a positive multiple of 8"):
            GenerationConfig.create(prompt="a cat", height=value)
    with MaskstPipeline(sdxl_engines) as pipe:
        assert (pipe.resolve(config).height, pipe.resolve(config).width) == (1024, 1024)
        assert pipe.resolve(GenerationConfig.create(prompt="a", width=64)).height == 1024
    with MaskstPipeline(tiny_engines) as pipe:  # SD 1.5: 512, outside the tiny engines' range: named
        assert pipe.resolve(config).height == 512
        with pytest.raises(InputError, match=r"height 512 px is outside the engines' range \[32, 128\] px"):
            pipe.check_request(config)


def _run(args):
    from maskst.cli.run import main as run_main

    return CliRunner().invoke(run_main, [str(a) for a in args], catch_exceptions=False)


def test_run_cli_on_sdxl_engines_at_the_family_default_size(sdxl_engines, style_image, tmp_path):
    out = tmp_path / "cat.png"
    result = _run(["--engines", sdxl_engines, "--prompt", "a cat", "--style", style_image, "--content", "a house",
                   "--steps", "1", "--quiet", "--json", "--out", out, "--threads", "2"])
    assert result.exit_code == 0, result.output
    meta = json.loads(Image.open(out).text["maskst"])
    assert meta["family"] == "sdxl" and (meta["height"], meta["width"]) == (1024, 1024)
    assert meta["scheduler"] == "euler" and meta["masked_elements"] > 0
    assert np.asarray(Image.open(out)).shape == (1024, 1024, 3)


def test_run_cli_sdxl_options_and_batch(sdxl_engines, style_image, tmp_path):
    base = ["--engines", sdxl_engines, "--prompt", "a cat", "--style", style_image, "--content", "a house",
            "--steps", "2", "--height", "64", "--width", "72", "--quiet"]
    out = tmp_path / "block.png"
    result = _run(base + ["--target-block", "up_blocks.0.attentions.1", "--mask-mode", "quantile", "--theta", "0.8",
                          "--out", out])
    assert result.exit_code == 0, result.output
    meta = json.loads(Image.open(out).text["maskst"])
    assert meta["target_blocks"] == ["up_blocks.0.attentions.1"] and meta["family"] == "sdxl"
    layers = 8  # sdxl-tiny: the SDXL pattern down_blocks.1 (2), up_blocks.0 (4), mid (2)
    result = _run(base + ["--layer-scales", ",".join(["0.5"] * layers), "--out", tmp_path / "scales.png"])
    assert result.exit_code == 0, result.output
    result = _run(base + ["--layer-scales", "1,1", "--out", tmp_path / "bad.png"])
    assert result.exit_code == 2 and f"the UNet has {layers} cross-attention layers" in result.output
    result = _run(base + ["--height", "0", "--out", tmp_path / "zero.png"])
    assert result.exit_code == 2 and "height=0 must be a positive multiple of 8" in result.output
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps(j) for j in [
        {"name": "a", "prompt": "a cat", "style": str(style_image), "content": "a house", "seed": 1},
        {"name": "b", "prompt": "a dog", "style": str(style_image), "content": "a house", "method": "instantstyle",
         "negative_prompt": "blurry"},
        {"name": "c", "prompt": "a dog", "style": str(style_image), "height": 4096},
    ]) + "\n")
    result = _run(["--engines", sdxl_engines, "--batch", jobs, "--out-dir", tmp_path / "batch", "--steps", "2",
                   "--height", "64", "--width", "64", "--quiet"])
    assert result.exit_code == 1
    records = [json.loads(line) for line in (tmp_path / "batch" / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok", "error"] and "height 4096 px" in records[2]["error"]
    assert json.loads(Image.open(tmp_path / "batch" / "b.png").text["maskst"])["family"] == "sdxl"


def test_export_cli_on_sdxl_without_content_encoder(sdxl_tiny, tmp_path):
    from maskst.cli.export import main as export_main

    out = tmp_path / "engines"
    args = ["--base", sdxl_tiny.base, "--ip-adapter", sdxl_tiny.ip_adapter_bin, "--out", out, "--quiet",
            "--max-batch", "1", "--min-size", "64", "--max-size", "128", "--opt-size", "64"]
    result = CliRunner().invoke(export_main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert set(summary["parity_max_abs_err"]) == {"text_encoder", "text_encoder_2", "image_encoder",
                                                  "image_conditioner", "unet", "vae_decoder"}
    assert max(summary["parity_max_abs_err"].values()) < 1e-4
    # the SD 1.5 path still needs its content encoder: a checkpoint error, not a usage error
    from maskst.fixtures import FixturePaths  # noqa: F401  (SD 1.5 fixtures come from conftest)


def test_sd15_export_without_content_encoder_is_a_checkpoint_error(tiny, tmp_path):
    from maskst.cli.export import main as export_main

    result = CliRunner().invoke(export_main, [str(a) for a in ["--base", tiny.base, "--ip-adapter", tiny.ip_adapter,
                                                               "--out", tmp_path / "e", "--quiet"]])
    assert result.exit_code == 3 and "--content-encoder" in result.output
    assert not (tmp_path / "e").exists()


# --------------------------------------------------------------------------- fp16 and OpenVINO


@pytest.fixture(scope="module")
def sdxl_fp16(sdxl_tiny, export_checkpoints, tmp_path_factory):
    from maskst.export.options import Precision

    return export_checkpoints(sdxl_tiny.base, sdxl_tiny.ip_adapter, None, None,
                              tmp_path_factory.mktemp("engines") / "sdxl-fp16", precision=Precision.FP16,
                              min_size=64, opt_size=64, max_size=128)


def test_sdxl_fp16_engines_run_on_ort_cpu_close_to_fp32(sdxl_fp16, sdxl_engines, style_image):
    from maskst.runtime.pipeline import MaskstPipeline

    manifest = sdxl_fp16
    assert manifest.precision == "fp16" and manifest.data["fp16"]["parity"]["checked"]
    graphs = manifest.data["graphs"]
    for name in ("text_encoder", "text_encoder_2", "image_encoder", "unet"):  # the rest stays fp32
        assert graphs[name]["precision"] == "fp16" and all(r["passed"] for r in graphs[name]["fp16_parity"])
    config = GenerationConfig.create(prompt="a cat", content="a house", mask_mode="quantile", theta=0.8, steps=3,
                                     height=64, width=64, seed=4)
    style = [load_image(style_image)]
    noise = initial_noise(4, (1, 4, 8, 8))
    with MaskstPipeline(manifest.folder) as half, MaskstPipeline(sdxl_engines) as full:
        got, want = half.generate(config, style, latents=noise), full.generate(config, style, latents=noise)
    np.testing.assert_array_equal(got.mask, want.mask)  # the conditioner stays fp32: the same mask
    diff = np.abs(got.images.astype(int) - want.images.astype(int))
    assert diff.max() <= 8 and diff.mean() < 1.0, (diff.max(), diff.mean())


def test_sdxl_trt_plans_on_a_fake_tensorrt(sdxl_fp16, tmp_path, monkeypatch):
    """--target trt on SDXL graphs, with test_gpu_path's fake TensorRT (no GPU here): one plan per graph
    with profiles derived from the specs (time_ids and text_embeds included), the trt backend runs the
    whole SDXL request and gives ONNX Runtime's image."""
    from test_gpu_path import _check_fake_plans, _fake_plan_builder, _fake_tensorrt, _install_fake_gpu

    from maskst.engines import tensorrt as trt_engines
    from maskst.engines.manifest import write_manifest
    from maskst.export.options import ExportOptions, Precision
    from maskst.generation import DEMO_STYLE
    from maskst.runtime.pipeline import MaskstPipeline

    trt = _fake_tensorrt("11.1.0")
    _install_fake_gpu(monkeypatch, trt)
    folder = tmp_path / "engines"
    shutil.copytree(sdxl_fp16.folder, folder)
    (folder / "manifest.json").unlink()
    data = {k: v for k, v in sdxl_fp16.data.items() if k not in ("format", "schema", "files")}
    options = ExportOptions(precision=Precision.FP16, min_size=64, opt_size=64, max_size=128, max_batch=2)
    section = trt_engines.build_plans(folder, data["graphs"], options, progress=False,
                                      plan_builder=_fake_plan_builder(trt), plan_checker=_check_fake_plans)
    assert set(section["plans"]) == set(data["graphs"])
    profile = section["plans"]["unet"]["profile"]
    # B = 2N with guidance, N without: min 1
    assert profile["time_ids"] == [[1, 6], [2, 6], [4, 6]] and profile["text_embeds"] == [[1, 40], [2, 40], [4, 40]]
    assert profile["sample"] == [[1, 4, 8, 8], [2, 4, 8, 8], [4, 4, 16, 16]]
    assert section["parity"]["checked"] and all(r["passed"] for r in section["parity"]["results"])
    write_manifest(folder, {**data, "tensorrt": section})
    config = GenerationConfig.create(prompt="a cat", style=(DEMO_STYLE,), content="a house", steps=3, height=64,
                                     width=64, seed=1)
    with MaskstPipeline(folder, threads=1) as pipeline:
        expected = pipeline.generate(config).images
    with MaskstPipeline(folder, backend="trt") as pipeline:
        np.testing.assert_array_equal(pipeline.generate(config).images, expected)


def test_sdxl_on_openvino_f32_matches_onnx_runtime(sdxl_engines, style_image):
    pytest.importorskip("openvino")
    from maskst.runtime.pipeline import MaskstPipeline

    config = GenerationConfig.create(prompt="a cat", content="a house", steps=2, height=64, width=64, seed=1)
    style = [load_image(style_image)]
    with MaskstPipeline(sdxl_engines, backend="openvino-f32", compile_cache=False) as ov, \
            MaskstPipeline(sdxl_engines) as ort:
        a, b = ov.generate(config, style), ort.generate(config, style)
    assert set(ov.runners) == set(ort.runners)
    assert np.abs(a.images.astype(int) - b.images.astype(int)).max() <= 2


# --------------------------------------------------------------------------- bench and profile


@pytest.mark.slow
def test_bench_and_profile_take_the_family(tmp_path):
    from maskst.bench.cli import bench_main, profile_main

    cache = tmp_path / "cache"
    common = ["--preset", "tiny", "--family", "sdxl", "--cache-dir", str(cache), "--height", "64", "--width", "64",
              "--steps", "2", "--threads", "1", "--quiet"]
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(bench_main, common + ["--repeats", "1", "--warmup", "0", "--backends", "ort-cpu",
                                                      "--no-cold-start", "--json", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["models"]["source"] == "random-sdxl-tiny" and report["models"]["content_encoder"] is None
    assert set(report["end_to_end_ms"]) == {"reference", "ort-cpu"}
    assert report["image_diff_vs_reference"]["ort-cpu"]["max_abs"] <= 2
    assert "--family sdxl" in report["command"]
    result = CliRunner().invoke(profile_main, common + ["--out-dir", str(tmp_path / "prof")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "prof" / "profile.json").read_text())
    assert {"text_encoder", "text_encoder_2", "unet"} <= {row["stage"] for row in summary["stages"]}
    result = CliRunner().invoke(bench_main, ["--engines", str(tmp_path), "--family", "sdxl", "--quiet"])
    assert result.exit_code == 2 and "drop --family" in result.output
