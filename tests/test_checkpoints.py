"""Loading checkpoints in the real layouts, and pre-flight errors that name file, expected and found."""

import json
import shutil

import numpy as np
import pytest

from maskst.checkpoints import AdapterKind, load_adapter_state_dict, resolve_checkpoints
from maskst.errors import CheckpointError


def _resolve(f, **override):
    args = dict(base=f.base, ip_adapter=f.ip_adapter, image_encoder=f.image_encoder, content_encoder=f.content_encoder)
    args.update(override)
    return resolve_checkpoints(**args)


def test_real_layout_resolves_and_reads_adapter_shapes(tiny):
    ckpt = _resolve(tiny)
    assert ckpt.adapter.kind is AdapterKind.BASE
    assert ckpt.adapter.num_tokens == 4 and ckpt.adapter.cross_attention_dim == 32
    assert len(ckpt.cross_attention_layers) == len(ckpt.adapter.layer_widths) == 4
    assert ckpt.cross_attention_layers[-1].startswith("mid_block")  # attn_processors order: down, up, mid
    # the image encoder folder defaults to models/image_encoder beside the adapter file
    assert _resolve(tiny, image_encoder=None).image_encoder == tiny.image_encoder
    plus = _resolve(tiny, ip_adapter=tiny.ip_adapter_plus)
    assert plus.adapter.kind is AdapterKind.PLUS and plus.adapter.num_tokens == 16


def test_bin_and_safetensors_hold_the_same_weights(tiny):
    a, b = load_adapter_state_dict(tiny.ip_adapter), load_adapter_state_dict(tiny.ip_adapter_bin)
    for group in ("image_proj", "ip_adapter"):
        assert a[group].keys() == b[group].keys()
        for key in a[group]:
            np.testing.assert_array_equal(a[group][key].numpy(), b[group][key].numpy())


def test_diffusers_loads_the_fixture_adapter(tiny):
    """The h94 key naming is right: diffusers' own loader accepts the file."""
    import torch
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(tiny.base / "unet"), torch_dtype=torch.float32)
    unet._load_ip_adapter_weights([load_adapter_state_dict(tiny.ip_adapter)])
    assert unet.encoder_hid_proj is not None


def test_adapter_for_another_base_names_both_files_and_the_dimension(tiny, tiny_wide):
    with pytest.raises(CheckpointError) as err:
        _resolve(tiny, ip_adapter=tiny_wide.ip_adapter, image_encoder=tiny.image_encoder)
    msg = str(err.value)
    assert str(tiny_wide.ip_adapter) in msg and str(tiny.base / "unet" / "config.json") in msg
    assert "48" in msg and "32" in msg


def test_image_encoder_of_another_clip_is_refused(tiny, tiny_wide):
    with pytest.raises(CheckpointError, match="projection_dim 72.*expects.*projection_dim 48"):
        _resolve(tiny, image_encoder=tiny_wide.image_encoder)


def test_content_encoder_of_another_clip_is_refused(tiny, tiny_wide):
    with pytest.raises(CheckpointError, match="content encoder .* projects text to 72 values.*projects images to 48"):
        _resolve(tiny, content_encoder=tiny_wide.content_encoder)


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder", "tokenizer", "scheduler"])
def test_base_missing_a_component(tiny, tmp_path, component):
    base = tmp_path / "base"
    shutil.copytree(tiny.base, base)
    shutil.rmtree(base / component)
    with pytest.raises(CheckpointError, match=f"no {component}/ folder"):
        _resolve(tiny, base=base)


def test_truncated_safetensors_and_lfs_pointer_are_refused(tiny, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny.ip_adapter.parent, models)
    adapter = models / tiny.ip_adapter.name
    data = adapter.read_bytes()
    adapter.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        _resolve(tiny, ip_adapter=adapter, image_encoder=tiny.image_encoder)
    adapter.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 44642768\n")
    with pytest.raises(CheckpointError, match="Git LFS pointer"):
        _resolve(tiny, ip_adapter=adapter, image_encoder=tiny.image_encoder)
    adapter.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        _resolve(tiny, ip_adapter=adapter, image_encoder=tiny.image_encoder)


def test_sdxl_style_adapter_is_named(tiny, tmp_path):
    """An adapter whose tokens are 2048 wide (SDXL) on an SD 1.x-like base: the family is named."""
    import torch
    from safetensors.torch import save_file

    state = load_adapter_state_dict(tiny.ip_adapter)
    flat = {"image_proj.proj.weight": torch.zeros(4 * 2048, 48), "image_proj.proj.bias": torch.zeros(4 * 2048),
            "image_proj.norm.weight": torch.ones(2048), "image_proj.norm.bias": torch.zeros(2048)}
    for key, value in state["ip_adapter"].items():
        flat[f"ip_adapter.{key}"] = torch.zeros(value.shape[0], 2048)
    path = tmp_path / "ip-adapter_sdxl.safetensors"
    save_file(flat, str(path))
    with pytest.raises(CheckpointError, match="Stable Diffusion XL"):
        _resolve(tiny, ip_adapter=path, image_encoder=tiny.image_encoder)


def test_fixture_layout_matches_the_real_one(tiny):
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tiny.base / "tokenizer" / name).is_file()
        assert (tiny.content_encoder / name).is_file()
    index = json.loads((tiny.base / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert json.loads((tiny.content_encoder / "config.json").read_text())["model_type"] == "clip"
    from maskst.tokenization import load_tokenizer

    tokenizer = load_tokenizer(tiny.base / "tokenizer")
    ids = tokenizer("a photo of a cat").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.convert_ids_to_tokens(ids[1:4]) == ["a</w>", "photo</w>", "of</w>"]  # whole-word merges


def test_fixtures_are_deterministic(tiny, tmp_path):
    from maskst.fixtures import FixtureSpec, PRESETS, ip_adapter_state_dict

    a = ip_adapter_state_dict(PRESETS["tiny"], 3)
    b = ip_adapter_state_dict(PRESETS["tiny"], 3)
    c = ip_adapter_state_dict(PRESETS["tiny"], 4)
    key = "proj.weight"
    np.testing.assert_array_equal(a["image_proj"][key].numpy(), b["image_proj"][key].numpy())
    assert not np.array_equal(a["image_proj"][key].numpy(), c["image_proj"][key].numpy())
    assert isinstance(PRESETS["full"], FixtureSpec) and PRESETS["full"].unet_channels == (320, 640, 1280, 1280)


def test_sdxl_like_base_is_refused_before_any_work(tiny, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny.base, base)
    config = json.loads((base / "unet" / "config.json").read_text())
    config["addition_embed_type"] = "text_time"
    (base / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="Stable Diffusion XL"):
        _resolve(tiny, base=base)
