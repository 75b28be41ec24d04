"""maskst-run and maskst-export through their click CLIs: outputs, metadata, exit codes, bad input."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskst.cli.run import main as run_main


def _run(args):
    return CliRunner().invoke(run_main, [str(a) for a in args], catch_exceptions=False)


def _base_args(engines, style, out):
    return ["--engines", engines, "--prompt", "a cat", "--style", style, "--content", "a house", "--steps", "2",
            "--height", "64", "--width", "64", "--quiet", "--out", out]


def test_run_writes_png_with_generation_metadata(tiny_engines, style_image, tmp_path):
    out = tmp_path / "cat.png"
    result = _run(_base_args(tiny_engines, style_image, out) + ["--json", "--seed", "5"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["images"] == [str(out)]
    meta = json.loads(Image.open(out).text["maskst"])
    assert meta["prompt"] == "a cat" and meta["content"] == "a house" and meta["seed"] == 5
    assert meta["method"] == "maskst" and meta["masked_elements"] == summary["masked_elements"] > 0
    assert meta["steps"] == 2 and meta["scheduler"] == "pndm" and meta["height"] == 64
    assert len(meta["engines_manifest"]) == 16
    assert np.asarray(Image.open(out)).shape == (64, 64, 3)


def test_more_images_than_the_engines_batch_are_all_written(tiny_engines, style_image, tmp_path):
    """--num-images 3 on engines exported with --max-batch 2: two batches, three PNGs, each with its index, the
    request's values and the same image as a batch of one on its slice of the request's noise would give."""
    from maskst.generation import initial_noise

    out = tmp_path / "cat.png"
    result = _run(_base_args(tiny_engines, style_image, out) + ["--json", "--num-images", "3", "--seed", "5"])
    assert result.exit_code == 0, result.output
    paths = json.loads(result.output.strip().splitlines()[-1])["images"]
    assert len(paths) == 3 and len(set(paths)) == 3
    metas = [json.loads(Image.open(p).text["maskst"]) for p in paths]
    assert [m["image_index"] for m in metas] == [0, 1, 2] and {m["seed"] for m in metas} == {5}
    np.save(tmp_path / "third.npy", initial_noise(5, (3, 4, 8, 8))[2:])
    single = tmp_path / "single.png"
    assert _run(_base_args(tiny_engines, style_image, single) + ["--init-latents", tmp_path / "third.npy"]).exit_code == 0
    diff = np.abs(np.asarray(Image.open(paths[2])).astype(int) - np.asarray(Image.open(single)).astype(int))
    assert diff.max() == 0  # the third image is the second batch's only image: the same request on the same noise


@pytest.mark.parametrize("limit", [1, 2, 4, 7])
def test_image_batches_are_the_fewest_and_as_even_as_can_be(limit):
    from types import SimpleNamespace

    from maskst.runtime.pipeline import MaskstPipeline

    engines = SimpleNamespace(max_images=limit)
    for n in range(1, 30):
        sizes = MaskstPipeline.image_batches(engines, n)
        assert sum(sizes) == n and max(sizes) <= limit and len(sizes) == -(-n // limit)
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert MaskstPipeline.image_batches(SimpleNamespace(max_images=4), 5) == [3, 2]  # not 4 + 1


def test_init_latents_reproduce_the_seed(tiny_engines, style_image, tmp_path):
    from maskst.generation import initial_noise

    np.save(tmp_path / "noise.npy", initial_noise(9, (1, 4, 8, 8)))
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert _run(_base_args(tiny_engines, style_image, a) + ["--seed", "9"]).exit_code == 0
    assert _run(_base_args(tiny_engines, style_image, b) + ["--init-latents", tmp_path / "noise.npy"]).exit_code == 0
    np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((1, 4, 4, 4), np.float32))
    result = _run(_base_args(tiny_engines, style_image, tmp_path / "c.png") + ["--init-latents", bad])
    assert result.exit_code == 2 and "[1, 4, 4, 4]" in result.output and "[1, 4, 8, 8]" in result.output


@pytest.mark.parametrize("flag,value,message", [
    ("--height", "60", "height=60 must be a positive multiple of 8"),
    ("--width", "70", "width=70 must be a positive multiple of 8"),
    ("--height", "512", "height 512 px is outside the engines' range [32, 128] px"),
    ("--num-images", "0", "num_images=0 must be a positive integer"),
    ("--theta", "1.5", "theta=1.5"),
    ("--target-block", "up_blocks.9", "target block 'up_blocks.9' matches no cross-attention layer"),
    ("--layer-scales", "1,2", "layer_scales has 2 values but the UNet has 4"),
])
def test_bad_requests_are_refused_before_any_work(tiny_engines, style_image, tmp_path, flag, value, message):
    out = tmp_path / "x.png"
    result = _run(_base_args(tiny_engines, style_image, out) + [flag, value])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists() and not list(tmp_path.iterdir())


def test_unwritable_output_and_bad_style_are_refused(tiny_engines, style_image, tmp_path):
    result = _run(_base_args(tiny_engines, style_image, tmp_path / "missing" / "x.png"))
    assert result.exit_code == 2 and "does not exist" in result.output
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    result = _run(_base_args(tiny_engines, not_image, tmp_path / "y.png"))
    assert result.exit_code == 2 and "notes.png" in result.output
    assert not (tmp_path / "y.png").exists()


def test_missing_or_foreign_engines_folder(tmp_path, style_image):
    result = _run(_base_args(tmp_path / "nowhere", style_image, tmp_path / "x.png"))
    assert result.exit_code == 4 and "does not exist" in result.output
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    result = _run(_base_args(tmp_path / "fake", style_image, tmp_path / "x.png"))
    assert result.exit_code == 4 and "not a maskst engines manifest" in result.output


def test_batch_mode_reports_bad_jobs_and_runs_the_others(tiny_engines, style_image, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    lines = [
        {"name": "ok1", "prompt": "a cat", "style": str(style_image), "content": "a house", "seed": 1},
        {"name": "bad_size", "prompt": "a cat", "style": str(style_image), "height": 60},
        "not json",
        {"name": "missing_style", "prompt": "a dog", "style": str(tmp_path / "nope.png")},
        {"name": "ok2", "prompt": "a dog", "style": str(style_image), "content": "a house", "method": "instantstyle"},
    ]
    jobs.write_text("\n".join(json.dumps(l) if isinstance(l, dict) else l for l in lines) + "\n")
    out_dir = tmp_path / "out"
    result = _run(["--engines", tiny_engines, "--batch", jobs, "--out-dir", out_dir, "--steps", "2",
                   "--height", "64", "--width", "64", "--quiet"])
    assert result.exit_code == 1  # some jobs failed
    records = [json.loads(l) for l in (out_dir / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok", "error", "error", "error", "ok"]
    assert "height=60" in records[1]["error"] and "not valid JSON" in records[2]["error"]
    assert "nope.png" in records[3]["error"]
    assert sorted(p.name for p in out_dir.glob("*.png")) == ["ok1.png", "ok2.png"]


def test_export_cli_refuses_existing_folder_and_bad_sizes(tiny, tiny_engines, tmp_path):
    from maskst.cli.export import main as export_main

    args = ["--base", tiny.base, "--ip-adapter", tiny.ip_adapter, "--content-encoder", tiny.content_encoder, "--quiet"]
    result = CliRunner().invoke(export_main, [str(a) for a in args + ["--out", tiny_engines]])
    assert result.exit_code == 2 and "pass --force" in result.output
    result = CliRunner().invoke(export_main, [str(a) for a in args + ["--out", tmp_path / "e", "--min-size", "100"]])
    assert result.exit_code == 2 and "min_size=100 must be a multiple of 8" in result.output
    assert not (tmp_path / "e").exists()
    help_text = CliRunner().invoke(export_main, ["--help"]).output
    assert "--ip-adapter" in help_text and "Exit codes" in help_text


def _odd_images(tmp_path):
    rng = np.random.default_rng(3)
    rgb = (rng.random((40, 56, 3)) * 255).astype(np.uint8)
    rgba = np.dstack([rgb, np.full((40, 56), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray((rng.random((40, 56)) * 65535).astype(np.uint16)).save(tmp_path / "sixteen.png")
    Image.fromarray(rgb).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.png").write_bytes(b"")


@pytest.mark.parametrize("name,exit_code", [("rgba.png", 0), ("palette.png", 0), ("cmyk.jpg", 0), ("sixteen.png", 0),
                                            ("truncated.jpg", 2), ("empty.png", 2)])
def test_odd_style_images_through_the_cli(tiny_engines, tmp_path, name, exit_code):
    _odd_images(tmp_path)
    out = tmp_path / "out.png"
    result = _run(_base_args(tiny_engines, tmp_path / name, out))
    assert result.exit_code == exit_code, result.output
    assert out.exists() == (exit_code == 0)
    if exit_code:
        assert name in result.output and "Traceback" not in result.output


def test_compile_cache_limit_through_the_cli(tiny_engines, style_image, tmp_path):
    """--compile-cache-limit reaches the OpenVINO cache (a limit below one blob: each blob written removes every
    other, so the last one is left), is refused at 0 and beside --no-compile-cache, before any work."""
    pytest.importorskip("openvino")
    cache, out = tmp_path / "cache", tmp_path / "cat.png"
    args = _base_args(tiny_engines, style_image, out) + ["--backend", "openvino-f32", "--compile-cache", cache]
    result = _run(args + ["--compile-cache-limit", "1e-9"])
    assert result.exit_code == 0, result.output
    assert len(list(cache.rglob("*.blob"))) == 1  # 1 byte: every blob written removed the ones before it
    out.unlink()
    for extra, message in ((["--compile-cache-limit", "0"], "0.0 is not in the range x>0"),
                           (["--compile-cache-limit", "2", "--no-compile-cache"], "turns off; give one of the two")):
        result = _run(args + extra)
        assert result.exit_code == 2 and message in result.output, result.output
        assert not out.exists()
