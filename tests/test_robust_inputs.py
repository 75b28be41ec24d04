"""Damaged manifests, unscorable eval folders and misleading messages: typed errors that name the input and the fix."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from maskst.cli.run import main as run_main
from maskst.engines.manifest import load_manifest
from maskst.errors import EngineError, InputError
from maskst.sweep.cli import eval_main


def _invoke(command, *args):
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


# ---------------------------------------------------------------- manifest.json edited or damaged


def _edited(engines, tmp_path, edit):
    """A copy of ``engines`` whose manifest.json went through ``edit(data)``."""
    folder = tmp_path / "engines"
    shutil.copytree(engines, folder)
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return folder


def _cut_layers(data, strides_too):
    model = data["model"]
    model["cross_attention_layers"] = model["cross_attention_layers"][:1]
    if strides_too:
        model["cross_attention_strides"] = model["cross_attention_strides"][:1]


EDITS = {  # edit -> what the error must name
    "no graphs": (lambda d: d.pop("graphs"), "graphs is missing"),
    "no model": (lambda d: d.pop("model"), "model is missing"),
    "versions null": (lambda d: d.update(versions=None), "versions is null"),
    "maskst version a number": (lambda d: d["versions"].update(maskst=1), "versions.maskst is 1"),
    "file record without size": (lambda d: d["files"]["unet.onnx"].pop("size"), "files['unet.onnx'].size is missing"),
    "file size a string": (lambda d: d["files"]["unet.onnx"].update(size="big"), "files['unet.onnx'].size is 'big'"),
    "graph entry a string": (lambda d: d["graphs"].update(unet="x"), "graphs.unet is 'x'"),
    "graph without spec": (lambda d: d["graphs"]["unet"].pop("spec"), "graphs.unet.spec is missing"),
    "spec without inputs": (lambda d: d["graphs"]["unet"]["spec"].pop("inputs"), "graphs.unet.spec is not a graph IO spec"),
    "spec dim range reversed": (lambda d: d["graphs"]["unet"]["spec"]["dims"]["h"].update(min=99),
                                "graphs.unet.spec is not a graph IO spec"),
    "optional factor not derived": (lambda d: d["graphs"]["unet"]["spec"].update(optional_factors=["h"]),
                                    'graphs.unet.spec.optional_factors is ["h"]; expected names of derived dimensions (B)'),
    "vae_scale_factor 0": (lambda d: d["model"].update(vae_scale_factor=0), "model.vae_scale_factor is 0"),
    "max_regions a string": (lambda d: d["model"].update(max_regions="4"), "model.max_regions is '4'"),
    "layers cut": (lambda d: _cut_layers(d, False), "model.cross_attention_layers lists 1 layers but "
                                                    "model.cross_attention_strides has 4"),
    "layers and strides cut": (lambda d: _cut_layers(d, True), "model.cross_attention_layers lists 1 layers but "
                                                               "graph unet's ip_scale input has 4 rows"),
    "control graph unknown": (lambda d: d["control"].update(lineart={"graph": "nope"}), "control.lineart.graph is 'nope'"),
    "file outside the folder": (lambda d: d["files"].update({"../x.png": {"size": 1, "sha256": "0" * 64}}),
                                "a path in files is '../x.png'"),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_damaged_manifest_is_an_engine_error_naming_the_field(tiny_engines, tmp_path, name):
    edit, field = EDITS[name]
    folder = _edited(tiny_engines, tmp_path, edit)
    with pytest.raises(EngineError) as caught:
        load_manifest(folder, verify_hashes=False)
    message = str(caught.value)
    assert str(folder / "manifest.json") in message and field in message, message
    assert "maskst-export" in message


@pytest.mark.parametrize("name", ["no graphs", "versions null", "graph entry a string", "vae_scale_factor 0",
                                  "layers cut"])
def test_damaged_manifest_exits_4_without_traceback(tiny_engines, style_image, tmp_path, name):
    edit, field = EDITS[name]
    folder = _edited(tiny_engines, tmp_path, edit)
    out = tmp_path / "x.png"
    result = _invoke(run_main, "--engines", folder, "--prompt", "a cat", "--style", style_image, "--steps", "2",
                     "--height", "64", "--width", "64", "--quiet", "--out", out)
    assert result.exit_code == 4, result.output
    assert field in result.stderr and "Traceback" not in result.output and not out.exists()


def test_every_fixture_engines_manifest_loads(tiny_engines, wide_engines, wide_control_engines, sdxl_engines):
    for folder in (tiny_engines, wide_engines, wide_control_engines, sdxl_engines):
        assert load_manifest(folder).data["graphs"]


# ---------------------------------------------------------------- maskst-eval: nothing (or not everything) scored


@pytest.fixture(scope="module")
def generated(tiny_engines, style_image, tmp_path_factory):
    """One maskst-run PNG with its maskst metadata."""
    out = tmp_path_factory.mktemp("generated") / "cat.png"
    result = _invoke(run_main, "--engines", tiny_engines, "--prompt", "a cat", "--style", style_image, "--content",
                     "a house", "--steps", "2", "--height", "64", "--width", "64", "--quiet", "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_eval_with_nothing_scorable_exits_2_naming_the_folder_and_reasons(tiny_engines, tmp_path):
    text_only, no_meta = tmp_path / "text", tmp_path / "nometa"
    text_only.mkdir()
    no_meta.mkdir()
    (text_only / "a.png").write_text("not an image")
    Image.new("RGB", (64, 64)).save(no_meta / "b.png")
    for folder, name in ((text_only, "a.png"), (no_meta, "b.png")):
        report = tmp_path / f"{folder.name}.json"
        result = _invoke(eval_main, "--engines", tiny_engines, "--results", folder, "--threads", "1", "--quiet",
                         "--json", report)
        assert result.exit_code == 2, result.output
        assert str(folder) in result.stderr and f"{name}: missing, or no maskst metadata" in result.stderr
        assert not report.exists() and "Traceback" not in result.output


def test_eval_warns_with_the_count_when_some_were_skipped(tiny_engines, generated, tmp_path):
    shutil.copy(generated, tmp_path / "cat.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "plain.png")
    result = _invoke(eval_main, "--engines", tiny_engines, "--results", tmp_path, "--threads", "1", "--quiet")
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warning == ["warning: 1 of 2 images were not scored (plain.png: missing, or no maskst metadata)"]


@pytest.fixture
def full_disk_for(monkeypatch):
    """Make every write into the temporary file of ``path``'s atomic replace fail with ENOSPC (the disk fills up
    mid-write); other files open as usual."""
    import io
    import os

    fdopen = os.fdopen

    class FullDisk(io.RawIOBase):
        def __init__(self, fd):
            self.fd = fd

        def writable(self):
            return True

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            if not self.closed:
                os.close(self.fd)
            super().close()

    def arm(path):
        def fake(fd, *args, **kwargs):
            name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
            if name.startswith(f".{path.name}.") and name.endswith(".tmp"):
                return io.BufferedWriter(FullDisk(fd))
            return fdopen(fd, *args, **kwargs)

        monkeypatch.setattr(os, "fdopen", fake)

    return arm


@pytest.mark.parametrize("flag", ["--json", "--csv", "--plot"])
def test_eval_report_on_a_full_disk_is_an_input_error_and_the_old_report_stays(tiny_engines, generated, tmp_path,
                                                                               flag, full_disk_for):
    if flag == "--plot":
        pytest.importorskip("matplotlib")
    report = tmp_path / "out" / "eval.png"
    report.parent.mkdir()
    report.write_bytes(b"the previous report")
    full_disk_for(report)
    shutil.copy(generated, tmp_path / "cat.png")
    result = _invoke(eval_main, "--engines", tiny_engines, "--results", tmp_path, "--threads", "1", "--quiet",
                     flag, report)
    assert result.exit_code == 2, result.output
    assert f"{flag} {report} could not be written: the disk holding {report.parent} is full" in result.stderr
    assert "Traceback" not in result.output
    assert report.read_bytes() == b"the previous report"  # the old report kept, no half-written one
    assert sorted(p.name for p in report.parent.iterdir()) == ["eval.png"]  # no temporary file left


def test_eval_writes_whole_reports(tiny_engines, generated, tmp_path):
    pytest.importorskip("matplotlib")
    shutil.copy(generated, tmp_path / "cat.png")
    out = tmp_path / "out"
    out.mkdir()
    result = _invoke(eval_main, "--engines", tiny_engines, "--results", tmp_path, "--threads", "1", "--quiet",
                     "--json", out / "e.json", "--csv", out / "e.csv", "--plot", out / "e.png")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "e.json").read_text())
    assert [image["file"] for image in report["images"]] == ["cat.png"]
    rows = (out / "e.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[0].startswith("file,method,style_score") and rows[1].startswith("cat.png,")
    with Image.open(out / "e.png") as chart:
        assert chart.format == "PNG" and chart.size[0] > 100
    assert sorted(p.name for p in out.iterdir()) == ["e.csv", "e.json", "e.png"]


def test_eval_plot_must_be_a_png(tiny_engines, generated, tmp_path):
    shutil.copy(generated, tmp_path / "cat.png")
    result = _invoke(eval_main, "--engines", tiny_engines, "--results", tmp_path, "--threads", "1", "--quiet",
                     "--plot", tmp_path / "eval.svg")
    assert result.exit_code == 2 and "eval.png" in result.stderr and not (tmp_path / "eval.svg").exists()


# ---------------------------------------------------------------- messages that name what the user gave


def test_deepcache_pipeline_names_the_interval_asked_for(tiny_engines):
    from maskst.runtime.pipeline import MaskstPipeline

    with pytest.raises(EngineError, match=r"--deepcache-interval 3: .* maskst-export --deepcache"):
        MaskstPipeline(tiny_engines, deepcache=3)
    with pytest.raises(EngineError) as caught:
        MaskstPipeline(tiny_engines, deepcache=True)
    assert "--deepcache-interval 2" not in str(caught.value) and "maskst-export --deepcache" in str(caught.value)


def test_size_outside_the_engines_range_is_said_in_pixels(tiny_engines, style_image, tmp_path):
    result = _invoke(run_main, "--engines", tiny_engines, "--prompt", "a cat", "--style", style_image, "--steps", "2",
                     "--height", "8", "--width", "64", "--quiet", "--out", tmp_path / "x.png")
    assert result.exit_code == 2
    assert "height 8 px is outside the engines' range [32, 128] px" in result.stderr
    assert "height/8" not in result.stderr


def test_check_dims_scale_shows_the_users_units_and_leaves_others_alone():
    from maskst.contract.spec import DimRange, GraphSpec, TensorSpec

    spec = GraphSpec("g", (TensorSpec("x", "float32", ("N", "h")),), (), {"N": DimRange(1, 1, 2), "h": DimRange(4, 8, 16)})
    with pytest.raises(InputError, match=r"^height 136 px is outside the engines' range \[32, 128\] px \(g\)"):
        spec.check_dims({"h": 17}, what={"h": "height"}, scale={"h": (8, "px")})
    with pytest.raises(InputError, match=r"^num_images=3 is outside the range the engines were built for \[1, 2\]"):
        spec.check_dims({"N": 3}, what={"N": "num_images"}, scale={"h": (8, "px")})


def test_load_image_names_masks_and_empty_paths(tmp_path):
    from maskst.images import load_image
    from maskst.regions import load_mask_image

    with pytest.raises(InputError, match=r"^mask of region 2: mask .*nomask.png: no such file"):
        load_mask_image(tmp_path / "nomask.png", 1)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"^mask of region 1: mask .*empty.png: the file is empty"):
        load_mask_image(tmp_path / "empty.png", 0)
    with pytest.raises(InputError, match=r"^style image .*nostyle.png: no such file"):  # the default label
        load_image(tmp_path / "nostyle.png")
    with pytest.raises(InputError, match=r"^style image '': empty path"):
        load_image("")


def test_missing_region_mask_is_not_called_a_style_image(tiny_engines, style_image, tmp_path):
    result = _invoke(run_main, "--engines", tiny_engines, "--prompt", "a cat", "--region", style_image,
                     tmp_path / "nomask.png", "a house", "--steps", "2", "--height", "64", "--width", "64", "--quiet",
                     "--out", tmp_path / "x.png")
    assert result.exit_code == 2
    assert "mask of region 1: mask" in result.stderr and "style image" not in result.stderr


def test_fp32_ops_need_fp16_and_real_op_types():
    from maskst.export.options import ExportOptions, Precision

    ExportOptions(precision=Precision.FP16, fp32_ops=("Softmax", "LayerNormalization")).validate()
    with pytest.raises(InputError, match=r"--fp32-op Softmax: .* --precision is fp32; add --precision fp16"):
        ExportOptions(fp32_ops=("Softmax",)).validate()  # used to be ignored without a word
    with pytest.raises(InputError, match=r"--fp32-op 'softmax': not an ONNX operator type .*case-sensitive"):
        ExportOptions(precision=Precision.FP16, fp32_ops=("Softmax", "softmax")).validate()


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_scheduler_is_refused_not_taken_as_the_default(value):
    from maskst.generation import GenerationConfig

    with pytest.raises(InputError, match="unknown scheduler ''; choose one of: pndm"):
        GenerationConfig.create(prompt="a cat", scheduler=value)
    assert GenerationConfig.create(prompt="a cat", scheduler=None).scheduler is None


def test_eval_without_matplotlib_refuses_plot_before_scoring(tiny_engines, generated, tmp_path, monkeypatch):
    import importlib.util

    import maskst.sweep.evaluate as evaluate

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else find_spec(name, *a))
    monkeypatch.setattr(evaluate, "evaluate", lambda *a, **k: pytest.fail("scored before refusing --plot"))
    shutil.copy(generated, tmp_path / "cat.png")
    result = _invoke(eval_main, "--engines", tiny_engines, "--results", tmp_path, "--threads", "1", "--quiet",
                     "--plot", tmp_path / "eval.png")
    assert result.exit_code == 6, result.output  # BackendError: a missing optional library
    assert 'pip install "maskst[bench]"' in result.stderr and not (tmp_path / "eval.png").exists()


def test_a_request_refused_by_the_engines_leaves_no_progress_bar(tiny_engines, style_image, tmp_path):
    """The denoise bar starts with the first step; before, an empty 'denoise: 0step' bar stood above the error."""
    result = _invoke(run_main, "--engines", tiny_engines, "--prompt", "a cat", "--style", style_image,
                     "--steps", "2", "--height", "512", "--width", "64", "--out", tmp_path / "x.png")
    assert result.exit_code == 2 and "height 512 px is outside the engines' range" in result.stderr
    assert "denoise" not in result.stderr and not list(tmp_path.iterdir())
    result = _invoke(run_main, "--engines", tiny_engines, "--prompt", "a cat", "--style", style_image,
                     "--steps", "2", "--height", "64", "--width", "64", "--out", tmp_path / "x.png")
    assert result.exit_code == 0 and "denoise" in result.stderr  # the bar is there when the steps run
