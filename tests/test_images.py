"""Style-image loading (odd modes, EXIF, refusals) and CLIP preprocessing parity with transformers."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from maskst.errors import CheckpointError, InputError
from maskst.images import (
    BACKGROUND,
    CLIP_MEAN,
    CLIP_STD,
    clip_preprocess,
    load_image,
    preprocessor_params_from_config,
)

# --------------------------------------------------------------------------------------------
# Parity with transformers' slow (PIL/NumPy) CLIPImageProcessor
# --------------------------------------------------------------------------------------------

# clip_preprocess repeats transformers' operations one for one (same PIL resize on uint8, same
# crop offsets, float64 rescale then float32, float32 (x - mean) / std), so the outputs are
# expected to be bit-identical. The 1e-5 tolerance (~40 float32 ulps at |x| ~ 2) only leaves
# room for a different NumPy evaluating the float32 arithmetic in another order / with FMA;
# any real mismatch (off-by-one resize or crop, different filter, rescale after resize) gives
# errors of order 1e-2 or more.
ATOL = 1e-5

SIZES_WH = [(300, 200), (200, 300), (224, 224), (97, 513), (1000, 640), (225, 224), (50, 31)]


def _reference_processor(**kwargs):
    """The PIL-backend CLIP processor: `CLIPImageProcessorPil` in transformers 5, where plain
    `CLIPImageProcessor` is the torchvision one; the slow `CLIPImageProcessor` in 4.x."""
    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, "CLIPImageProcessorPil", None)
    if cls is None:
        cls = transformers.CLIPImageProcessor
    return cls(**kwargs)


def _reference(images, **kwargs):
    proc = _reference_processor(**kwargs)
    return np.asarray(proc(images=images, return_tensors="np")["pixel_values"])


def _random_image(w, h, seed, mode="RGB"):
    rng = np.random.default_rng(seed)
    channels = len(mode)
    noise = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    # Noise plus a smooth ramp: noise stresses the bicubic kernel, the ramp catches any
    # off-by-one in crop position (noise alone would mostly average that out).
    ramp = (np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, channels))).astype(np.uint8)
    arr = np.where(rng.random((h, w, 1)) < 0.5, noise, ramp)
    return Image.fromarray(arr, mode=mode)


@pytest.mark.parametrize("w,h", SIZES_WH)
def test_clip_preprocess_matches_transformers(w, h):
    img = _random_image(w, h, seed=w * 1000 + h)
    ours = clip_preprocess([img])
    ref = _reference([img])
    assert ours.dtype == np.float32
    assert ours.shape == (1, 3, 224, 224) == ref.shape
    assert np.max(np.abs(ours - ref)) <= ATOL


def test_clip_preprocess_batch_and_defaults():
    imgs = [_random_image(w, h, seed=i) for i, (w, h) in enumerate(SIZES_WH)]
    ours = clip_preprocess(imgs)
    assert ours.shape == (len(imgs), 3, 224, 224) and ours.flags.c_contiguous
    assert np.max(np.abs(ours - _reference(imgs))) <= ATOL
    # Single image accepted as well.
    assert np.array_equal(clip_preprocess(imgs[0]), ours[:1])


def test_clip_preprocess_rgba_input_matches_transformers():
    # Non-RGB inputs are composited over white on both sides.
    img = _random_image(120, 90, seed=7, mode="RGBA")
    assert np.max(np.abs(clip_preprocess([img]) - _reference([img]))) <= ATOL


def test_clip_preprocess_crop_larger_than_resize_pads_like_transformers():
    # crop 256x240 after a 224 shortest-edge resize of a landscape image: padding along height.
    img = _random_image(300, 200, seed=3)
    ours = clip_preprocess([img], size=224, crop_size=(256, 240))
    ref = _reference([img], size={"shortest_edge": 224}, crop_size={"height": 256, "width": 240})
    assert ours.shape == (1, 3, 256, 240) == ref.shape
    assert np.max(np.abs(ours - ref)) <= ATOL


@pytest.mark.parametrize(
    "config",
    [
        # Old CLIPFeatureExtractor form, as in SD 1.5's feature_extractor/preprocessor_config.json.
        {"size": 224, "crop_size": 224, "resample": 3,
         "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)},
        # New dict forms.
        {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 200}, "resample": 2},
        {"size": {"height": 240, "width": 260}, "crop_size": {"height": 224, "width": 224},
         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
    ],
)
def test_preprocessor_params_from_config_matches_transformers(config):
    params = preprocessor_params_from_config(config)
    imgs = [_random_image(300, 200, seed=1), _random_image(97, 513, seed=2)]
    ours = clip_preprocess(imgs, **params)
    ref = _reference(imgs, **config)
    assert ours.shape == ref.shape
    assert np.max(np.abs(ours - ref)) <= ATOL


def test_preprocessor_params_from_config_forms():
    old = preprocessor_params_from_config({"size": 224, "crop_size": 224, "resample": 3})
    assert old["size"] == 224 and old["crop_size"] == (224, 224)
    assert old["resample"] == Image.Resampling.BICUBIC
    assert old["mean"] == CLIP_MEAN and old["std"] == CLIP_STD
    assert preprocessor_params_from_config({}) == old
    new = preprocessor_params_from_config(
        {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}}
    )
    assert new == old
    square = preprocessor_params_from_config({"size": 224, "default_to_square": True})
    assert square["size"] == (224, 224)
    assert preprocessor_params_from_config({"size": [240, 260]})["size"] == (240, 260)


@pytest.mark.parametrize(
    "config,key",
    [
        ({"do_center_crop": False}, "do_center_crop"),
        ({"rescale_factor": 1.0}, "rescale_factor"),
        ({"size": {"shortest_edge": 224, "longest_edge": 448}}, "size"),
        ({"crop_size": {"shortest_edge": 224}}, "crop_size"),
        ({"resample": 42}, "resample"),
        ({"image_mean": [0.5, 0.5]}, "image_mean"),
    ],
)
def test_preprocessor_params_from_config_refuses(config, key):
    with pytest.raises(CheckpointError, match=key):
        preprocessor_params_from_config(config)


def test_clip_preprocess_refuses_bad_input():
    with pytest.raises(InputError):
        clip_preprocess([])
    with pytest.raises(InputError):
        clip_preprocess([np.zeros((4, 4, 3), np.uint8)])


def test_images_module_does_not_import_torch():
    code = (
        "import sys, maskst.images; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------
# Loading odd image types
# --------------------------------------------------------------------------------------------


def _pixels(img):
    assert img.mode == "RGB"
    return np.asarray(img)


def test_load_rgb_roundtrip(tmp_path):
    img = _random_image(31, 17, seed=0)
    img.save(tmp_path / "rgb.png")
    out = load_image(tmp_path / "rgb.png")
    assert out.size == (31, 17)
    assert np.array_equal(_pixels(out), np.asarray(img))


def test_load_rgba_composites_over_white(tmp_path):
    assert BACKGROUND == (255, 255, 255)
    arr = np.array([[[255, 0, 0, 0], [255, 0, 0, 255], [0, 0, 0, 128]]], dtype=np.uint8)
    Image.fromarray(arr, mode="RGBA").save(tmp_path / "rgba.png")
    px = _pixels(load_image(str(tmp_path / "rgba.png")))
    assert px[0, 0].tolist() == [255, 255, 255]  # fully transparent -> background
    assert px[0, 1].tolist() == [255, 0, 0]  # opaque -> unchanged
    assert all(abs(int(v) - 127) <= 1 for v in px[0, 2])  # half black over white -> mid grey


def test_load_la_composites_over_white(tmp_path):
    arr = np.array([[[0, 0], [40, 255]]], dtype=np.uint8)
    Image.fromarray(arr, mode="LA").save(tmp_path / "la.png")
    px = _pixels(load_image(tmp_path / "la.png"))
    assert px[0, 0].tolist() == [255, 255, 255] and px[0, 1].tolist() == [40, 40, 40]


def test_load_palette_with_transparency(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 0
    img.save(tmp_path / "p.png", transparency=0)
    px = _pixels(load_image(tmp_path / "p.png"))
    assert px[0, 0].tolist() == [255, 255, 255] and px[0, 1].tolist() == [0, 0, 255]


def test_load_cmyk(tmp_path):
    arr = np.array([[[0, 0, 0, 0], [0, 0, 0, 255], [255, 0, 0, 0]]], dtype=np.uint8)
    Image.fromarray(arr, mode="CMYK").save(tmp_path / "cmyk.tif")
    px = _pixels(load_image(tmp_path / "cmyk.tif"))
    assert px[0].tolist() == [[255, 255, 255], [0, 0, 0], [0, 255, 255]]


def test_load_grayscale_and_1bit(tmp_path):
    Image.fromarray(np.array([[0, 100, 255]], dtype=np.uint8), mode="L").save(tmp_path / "l.png")
    assert _pixels(load_image(tmp_path / "l.png"))[0, :, 0].tolist() == [0, 100, 255]
    one = Image.new("1", (2, 1))
    one.putpixel((1, 0), 1)
    one.save(tmp_path / "one.png")
    assert _pixels(load_image(tmp_path / "one.png"))[0].tolist() == [[0, 0, 0], [255, 255, 255]]


_SIXTEEN = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)


def _check_sixteen(out):
    px = _pixels(out)
    assert np.array_equal(px[..., 0], px[..., 2])
    assert px[0, 0, 0] == 0 and px[0, 1, 0] == 1 and px[0, 3, 0] == 255  # scaled, not clipped
    assert abs(int(px[0, 2, 0]) - 128) <= 1


def test_load_16bit_png_i16(tmp_path):
    Image.fromarray(_SIXTEEN).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode in ("I;16", "I")  # Pillow version dependent
    _check_sixteen(load_image(tmp_path / "g16.png"))


def test_load_16bit_big_endian_tiff(tmp_path):
    img = Image.frombytes("I;16B", (4, 1), _SIXTEEN.astype(">u2").tobytes())
    img.save(tmp_path / "g16b.tif")
    assert Image.open(tmp_path / "g16b.tif").mode == "I;16B"
    _check_sixteen(load_image(tmp_path / "g16b.tif"))


def test_load_mode_i_tiff(tmp_path):
    Image.fromarray(_SIXTEEN.astype(np.int32)).save(tmp_path / "gi.tif")
    assert Image.open(tmp_path / "gi.tif").mode == "I"
    _check_sixteen(load_image(tmp_path / "gi.tif"))


def test_load_applies_exif_orientation(tmp_path):
    # 40x20 stored landscape: left half red, right half blue. Orientation 6 means "rotate 90
    # degrees clockwise to display", so the result is 20x40 with red on top, blue at the bottom.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "rot.jpg")
    assert out.size == (20, 40)
    px = _pixels(out).astype(int)
    assert px[5, 10, 0] > 200 and px[5, 10, 2] < 50  # top is red
    assert px[35, 10, 2] > 200 and px[35, 10, 0] < 50  # bottom is blue


# --------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------


def _refused(path, *words):
    with pytest.raises(InputError) as info:
        load_image(path)
    message = str(info.value)
    assert path.name in message
    for word in words:
        assert word in message.lower()
    # No chained PIL exception for a CLI to print.
    err = info.value
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    return message


def test_refuses_missing_file(tmp_path):
    _refused(tmp_path / "nope.png", "no such file")


def test_refuses_directory(tmp_path):
    (tmp_path / "styles").mkdir()
    _refused(tmp_path / "styles", "directory")


def test_refuses_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    _refused(tmp_path / "empty.png", "empty")


def test_refuses_non_image(tmp_path):
    (tmp_path / "notes.png").write_text("this is not an image\n" * 10)
    _refused(tmp_path / "notes.png", "not an image")


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_refuses_truncated_image(tmp_path, ext):
    full = tmp_path / f"full.{ext}"
    _random_image(256, 256, seed=5).save(full)
    data = full.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[: len(data) // 2])
    _refused(cut, "truncated")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("side", [40, 50])  # 1600 px: PIL warns; 2500 px (> 2x limit): PIL raises
def test_refuses_decompression_bomb(tmp_path, monkeypatch, side):
    path = tmp_path / f"bomb{side}.png"
    Image.new("RGB", (side, side)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # test-only; the library never changes it
    filters_before = list(warnings.filters)
    _refused(path, "pixels", "decompression")
    assert list(warnings.filters) == filters_before  # the local "error" filter did not leak
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_bomb_check_uses_pil_limit_only(tmp_path, monkeypatch):
    # Raising the limit (a user's explicit choice) lets the same image through.
    path = tmp_path / "big.png"
    Image.new("RGB", (50, 50)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    assert load_image(path).size == (50, 50)
