"""Export: IO specs, the fused conditioner against the numpy masking, manifest and folder safety."""

import json
import warnings

import numpy as np
import pytest

from maskst.contract.spec import DimRange
from maskst.errors import EngineError, InputError
from maskst.masking import MaskMode, Method, condition_embeds


def test_manifest_records_parity_specs_sources_and_versions(tiny_engines):
    manifest = json.loads((tiny_engines / "manifest.json").read_text())
    assert set(manifest["graphs"]) == {"text_encoder", "image_encoder", "content_encoder", "image_conditioner",
                                       "unet", "vae_decoder"}
    for name, graph in manifest["graphs"].items():
        assert graph["parity"] and all(r["passed"] for r in graph["parity"]), name
        assert all(r["max_abs_err"] <= r["atol"] + 1e-3 for r in graph["parity"])
    unet = manifest["graphs"]["unet"]
    # parity ran at a shape other than the export (opt) shape
    assert unet["parity"][0]["shape"] == [4, 4, 4, 5]  # N=2 and an odd width: not the traced 2x4x9x9
    assert manifest["model"]["num_tokens"] == 4 and len(manifest["model"]["cross_attention_layers"]) == 4
    assert set(manifest["sources"]) >= {"unet", "ip_adapter", "image_encoder", "content_encoder"}
    assert manifest["versions"]["onnxruntime"] and manifest["versions"]["torch"]


def test_unet_graph_takes_scale_and_tokens_as_inputs(tiny_engines):
    import onnx

    model = onnx.load(str(tiny_engines / "unet.onnx"))
    names = [i.name for i in model.graph.input]
    # regions (maskst.regions): one mask input per latent stride of the cross-attention layers (tiny: 1, 2)
    assert names == ["sample", "timestep", "text_embeddings", "ip_tokens", "ip_scale", "region_mask_1", "region_mask_2"]
    shape = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert shape["sample"] == ["B", 4, "h", "w"]
    assert shape["ip_tokens"] == ["B", "R", 4, 32] and shape["ip_scale"] == [4, "R"]
    assert shape["region_mask_1"] == ["R", "h", "w"] and shape["region_mask_2"] == ["R", "h/2", "w/2"]


def _conditioner(tiny_engines):
    from maskst.engines.manifest import load_manifest
    from maskst.runtime.runners import OrtRunner

    manifest = load_manifest(tiny_engines)
    return OrtRunner(manifest.graph_spec("image_conditioner"), manifest.graph_path("image_conditioner"))


@pytest.mark.parametrize("mode", list(MaskMode))
def test_fused_conditioner_mask_equals_numpy_masking(tiny_engines, mode):
    rng = np.random.default_rng(0)
    with _conditioner(tiny_engines) as runner:
        for trial in range(40):
            e_i = rng.standard_normal((1, 48)).astype(np.float32)
            e_c = (rng.standard_normal((1, 48)) * (1 + 3 * (rng.random(48) < 0.1))).astype(np.float32)
            theta = float(rng.uniform(0.1, 0.95))
            out = runner.infer({"image_embeds": e_i, "content_embeds": e_c,
                                "method": np.array([Method.MASKST.index]), "mask_mode": np.array([mode.index]),
                                "theta": np.array([theta], np.float32), "content_scale": np.array([1.0], np.float32)})
            _, want = condition_embeds(e_i, e_c, "maskst", mode, theta=float(np.float32(theta)))
            np.testing.assert_array_equal(out["mask"], want, err_msg=f"trial {trial}")


def test_conditioner_degenerate_inputs_mask_nothing(tiny_engines):
    with _conditioner(tiny_engines) as runner:
        for e_i, e_c in [(np.zeros((1, 48)), np.ones((1, 48))), (np.ones((1, 48)), np.ones((1, 48)))]:
            out = runner.infer({"image_embeds": e_i.astype(np.float32), "content_embeds": e_c.astype(np.float32),
                                "method": np.array([2]), "mask_mode": np.array([0]),
                                "theta": np.array([0.7], np.float32), "content_scale": np.array([1.0], np.float32)})
            assert not out["mask"].any() and np.all(np.isfinite(out["ip_tokens"]))


def test_profile_and_dynamic_axes_derive_from_one_spec(tiny_engines):
    from maskst.engines.manifest import load_manifest

    spec = load_manifest(tiny_engines).graph_spec("unet")
    profile = spec.profile()
    # B = 2N with guidance, N without (min 1), latent = size / 8
    assert profile["sample"] == ((1, 4, 4, 4), (2, 4, 8, 8), (4, 4, 16, 16))
    assert profile["ip_scale"] == ((4, 1), (4, 1), (4, 4))  # R regions: 1..max_regions (default 4)
    assert profile["region_mask_2"] == ((1, 2, 2), (1, 4, 4), (4, 8, 8))  # ceil(h / 2)
    assert spec.dynamic_axes()["noise_pred"] == {0: "B", 2: "h", 3: "w"}
    with pytest.raises(InputError, match=r"dimension h=32 is outside the engine profile \[4, 16\]"):
        spec.check_feed({**spec.sample_inputs({"N": 1, "h": 8, "w": 8}),
                         "sample": np.zeros((2, 4, 32, 8), np.float32)})


def test_batch_is_twice_the_images_with_guidance_and_the_images_without(tiny_engines):
    """The UNet's B is 2 N (both guidance halves) or N (guidance off); an older manifest without the optional
    factor keeps B = 2 N only."""
    from maskst.contract.spec import GraphSpec
    from maskst.engines.manifest import load_manifest

    spec = load_manifest(tiny_engines).graph_spec("unet")  # N in [1, 2]
    assert spec.optional_factors == ("B",) and spec.dim_range("B") == DimRange(1, 2, 4)
    assert spec.resolve({"N": 2, "h": 8, "w": 8})["B"] == 4  # the default: guided
    assert spec.resolve({"N": 3, "B": 3, "h": 8, "w": 8})["B"] == 3
    with pytest.raises(InputError, match=r"dimension B=3 must be N=2 or 2 x N = 4"):
        spec.resolve({"N": 2, "B": 3})
    for rows in (1, 3, 4):  # an odd batch is a batch without guidance
        feed = spec.sample_inputs({"N": rows, "B": rows, "h": 8, "w": 8})
        spec.check_feed(feed)
        assert spec.dims_of(feed)["B"] == rows and spec.shapes(spec.dims_of(feed))["noise_pred"][0] == rows
    with pytest.raises(InputError, match=r"dimension B=5 is outside the engine profile \[1, 4\]"):
        spec.check_feed(spec.sample_inputs({"N": 5, "B": 5, "h": 8, "w": 8}))
    older = {key: value for key, value in spec.to_json().items() if key != "optional_factors"}
    older = GraphSpec.from_json(older)
    assert older.optional_factors == () and older.dim_range("B") == DimRange(2, 2, 4)
    with pytest.raises(InputError, match=r"dimension B=3 must be a multiple of 2"):
        older.check_feed(spec.sample_inputs({"N": 3, "B": 3, "h": 8, "w": 8}))


def test_existing_folder_needs_force_and_force_replaces_only_when_complete(tiny, tmp_path, export_fn, monkeypatch):
    from maskst.errors import ParityError
    from maskst.export import exporter

    out = tmp_path / "engines"
    export_fn(tiny, out, check_parity=False)
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(InputError, match="already holds an engines folder; pass --force"):
        export_fn(tiny, out, check_parity=False)

    def failing(*args, **kwargs):
        raise ParityError("simulated parity failure")

    monkeypatch.setattr(exporter, "raise_failures", failing)
    from maskst.export.exporter import ExportRequest, export_engines
    from maskst.export.options import ExportOptions

    with warnings.catch_warnings(), pytest.raises(ParityError):
        warnings.simplefilter("ignore")
        export_engines(ExportRequest(base=tiny.base, ip_adapter=tiny.ip_adapter, content_encoder=tiny.content_encoder,
                                     image_encoder=tiny.image_encoder, out=out, force=True,
                                     options=ExportOptions(min_size=32, opt_size=64, max_size=128, max_batch=2)),
                       progress=False)
    assert (out / "manifest.json").read_bytes() == before  # the previous good set is untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".staging")]  # no staging folder left behind


def test_corrupted_engine_files_are_refused(tiny_engines, tmp_path):
    import shutil

    from maskst.engines.manifest import load_manifest

    copy = tmp_path / "copy"
    shutil.copytree(tiny_engines, copy)
    data = bytearray((copy / "unet.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "unet.onnx").write_bytes(bytes(data))
    with pytest.raises(EngineError, match="unet.onnx was modified"):
        load_manifest(copy)
    (copy / "vae_decoder.onnx").write_bytes(b"x")
    with pytest.raises(EngineError, match="vae_decoder.onnx has 1 bytes"):
        load_manifest(copy, verify_hashes=False)
    (copy / "vae_decoder.onnx").unlink()
    with pytest.raises(EngineError, match="vae_decoder.onnx is missing"):
        load_manifest(copy, verify_hashes=False)
    manifest = json.loads((tiny_engines / "manifest.json").read_text())
    manifest["versions"]["maskst"] = "0.0.1"
    shutil.rmtree(copy)
    shutil.copytree(tiny_engines, copy)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match="written by maskst 0.0.1"):
        load_manifest(copy)


def test_conditioner_wire_format_is_recorded_and_checked_on_load(tiny_engines, tmp_path):
    """Reordering or renumbering Method / MaskMode must never silently change what built engines compute."""
    import shutil

    from maskst.contract.wire import MASK_MODE_CODES, METHOD_CODE_ALIASES, METHOD_CODES
    from maskst.engines.manifest import load_manifest

    manifest = json.loads((tiny_engines / "manifest.json").read_text())
    assert manifest["wire_format"]["image_conditioner"] == {"method": METHOD_CODES, "mask_mode": MASK_MODE_CODES}
    assert [m.index for m in Method] == [METHOD_CODES[METHOD_CODE_ALIASES.get(m.value, m.value)] for m in Method]
    # StyleShot's plain method is a name for the plain code, not a code of its own: manifests are unchanged
    assert Method.STYLESHOT.index == Method.IP_ADAPTER.index and "styleshot" not in METHOD_CODES
    copy = tmp_path / "copy"
    shutil.copytree(tiny_engines, copy)
    swapped = dict(manifest)
    swapped["wire_format"] = {"image_conditioner": {"method": {**METHOD_CODES, "maskst": 1, "instantstyle": 2},
                                                    "mask_mode": MASK_MODE_CODES}}
    (copy / "manifest.json").write_text(json.dumps(swapped))
    with pytest.raises(EngineError, match=r"method 'instantstyle': engines use code 2, this maskst 1[\s\S]*rebuild"):
        load_manifest(copy)
    del swapped["wire_format"]
    (copy / "manifest.json").write_text(json.dumps(swapped))
    with pytest.raises(EngineError, match="records no conditioner wire format"):
        load_manifest(copy)


def test_model_family_is_detected_recorded_and_checked(tiny, tiny_engines, tmp_path):
    import shutil

    from maskst.engines.manifest import load_manifest
    from maskst.errors import CheckpointError
    from maskst.families import FAMILIES, detect_family
    from maskst.runtime.pipeline import MaskstPipeline

    family = detect_family(tiny.base)
    assert family is FAMILIES["sd15"]
    manifest = json.loads((tiny_engines / "manifest.json").read_text())
    assert manifest["model"]["family"] == "sd15" and list(manifest["graphs"]) == list(family.graphs)
    base = tmp_path / "base"
    shutil.copytree(tiny.base, base)
    index = json.loads((base / "model_index.json").read_text())
    (base / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyPipeline"}))
    with pytest.raises(CheckpointError, match=r"_class_name 'KandinskyPipeline'.*sd15: StableDiffusionPipeline"):
        detect_family(base)
    copy = tmp_path / "engines"
    shutil.copytree(tiny_engines, copy)
    manifest["model"]["family"] = "kandinsky"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    load_manifest(copy)  # the folder itself is intact; the runtime refuses the family it does not know
    with pytest.raises(EngineError, match="model family 'kandinsky'"):
        MaskstPipeline(copy)
