"""Interrupted and concurrent builds, non-finite values, long prompts: nothing lost, clear errors."""

import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from maskst.engines.manifest import load_manifest
from maskst.errors import NonFiniteError


def _export_args(fixtures, out):
    return ["--base", str(fixtures.base), "--ip-adapter", str(fixtures.ip_adapter), "--content-encoder",
            str(fixtures.content_encoder), "--out", str(out), "--min-size", "32", "--opt-size", "64",
            "--max-size", "128", "--max-batch", "2", "--quiet"]


def test_killed_export_leaves_the_previous_folder_exactly_as_it_was(tiny, tiny_engines, tmp_path):
    out = tmp_path / "engines"
    shutil.copytree(tiny_engines, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    proc = subprocess.Popen([sys.executable, "-m", "maskst.cli.export", *_export_args(tiny, out), "--force"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".staging-engines-*/*.onnx")):
        time.sleep(0.05)  # kill it mid-build, once the first graph has been written to staging
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    load_manifest(out)  # still a complete, verifiable engines folder
    from maskst.engines.folder import staging_folder

    dead = list(tmp_path.glob(".staging-*"))
    assert dead  # the killed build's staging folder
    with staging_folder(out) as fresh:  # the next build clears the dead build's leftovers
        assert [p for p in tmp_path.glob(".staging-*")] == [fresh]
        shutil.rmtree(fresh)


def test_second_export_into_a_locked_folder_names_the_holder(tiny, tmp_path):
    from maskst.engines.folder import build_lock
    from maskst.cli.export import main as export_main

    out = tmp_path / "engines"
    with build_lock(out, timeout=0):
        result = CliRunner().invoke(export_main, _export_args(tiny, out))
    assert result.exit_code == 4
    assert f"pid {os.getpid()}" in result.output and "another maskst-export is building" in result.output
    assert not out.exists()


def test_interrupted_publish_is_recovered(tiny_engines, tmp_path):
    """A build that died between its two renames: the old set sits aside; the next build restores it."""
    from maskst.engines.folder import staging_folder

    out = tmp_path / "engines"
    shutil.copytree(tiny_engines, tmp_path / ".staging-engines-old-999")
    with staging_folder(out):
        pass
    load_manifest(out)


def test_full_disk_during_a_build_is_a_clear_engines_error_and_keeps_the_previous_set(tiny_engines, tmp_path):
    """ENOSPC from whatever writes a graph: EngineError (exit 4) naming the folder, the free space and the fix;
    the partial set removed, the previous engines untouched. Other errors pass through unchanged."""
    import errno

    from maskst.engines.folder import staging_folder
    from maskst.errors import EngineError

    out = tmp_path / "engines"
    shutil.copytree(tiny_engines, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(EngineError) as info:
        with staging_folder(out) as staging:
            (staging / "unet.onnx").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(staging / "unet.onnx.data"))
    message = str(info.value)
    assert info.value.exit_code == 4
    assert str(tmp_path) in message and "GiB are free" in message and "maskst-export --out" in message
    assert "No space left on device" in message and f"the engines already in {out} are unchanged" in message
    assert isinstance(info.value.__cause__, OSError)
    assert not list(tmp_path.glob(".staging-*"))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    with pytest.raises(RuntimeError, match="^an unrelated failure$"):  # plenty of space: not the disk
        with staging_folder(tmp_path / "other"):
            raise RuntimeError("an unrelated failure")
    assert not list(tmp_path.glob(".staging-*"))


def test_non_finite_values_name_the_stage_and_write_nothing(tiny_engines, style_image, tmp_path, monkeypatch):
    from maskst.generation import GenerationConfig
    from maskst.images import load_image
    from maskst.runtime.pipeline import MaskstPipeline

    with MaskstPipeline(tiny_engines) as pipe:
        vae = pipe.runners["vae_decoder"]
        original = vae._infer

        def nan_images(feed):
            out = original(feed)
            out["images"][...] = np.nan
            return out

        monkeypatch.setattr(vae, "_infer", nan_images)
        config = GenerationConfig.create(prompt="a cat", content="a house", steps=2, height=64, width=64)
        with pytest.raises(NonFiniteError, match="stage vae_decoder produced NaN.*fp32"):
            pipe.generate(config, [load_image(style_image)])


def test_long_prompt_is_truncated_with_a_warning_naming_the_dropped_words(tiny):
    from maskst.tokenization import PromptTruncatedWarning, load_tokenizer, tokenize

    tokenizer = load_tokenizer(tiny.base / "tokenizer")
    prompt = " ".join(["cat"] * 80) + " zebra unicorn"
    with pytest.warns(PromptTruncatedWarning, match="zebra unicorn"):
        ids = tokenize(tokenizer, [prompt], "prompt")
    assert ids.shape == (1, 77) and ids[0, -1] == tokenizer.eos_token_id
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenize(tokenizer, ["a short prompt"], "prompt")


def test_checkpoint_errors_through_the_export_cli(tiny, tmp_path):
    from maskst.cli.export import main as export_main

    models = tmp_path / "models"
    shutil.copytree(tiny.ip_adapter.parent, models)
    (models / tiny.ip_adapter.name).write_text("version https://git-lfs.github.com/spec/v1\nsize 1\n")
    args = _export_args(tiny, tmp_path / "e")
    args[args.index("--ip-adapter") + 1] = str(models / tiny.ip_adapter.name)
    result = CliRunner().invoke(export_main, args)
    assert result.exit_code == 3 and "Git LFS pointer" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "e").exists()


def test_style_embeddings_are_cached_by_file_identity(tiny_engines, style_image, tmp_path):
    """A sweep encodes each reference image once; an edited file is encoded again."""
    from PIL import Image

    from maskst.generation import GenerationConfig
    from maskst.runtime.pipeline import MaskstPipeline

    style = tmp_path / "style.png"
    shutil.copy(style_image, style)
    calls = []
    with MaskstPipeline(tiny_engines) as pipe:
        runner = pipe.runners["image_encoder"]
        original = runner._infer
        runner._infer = lambda feed: calls.append(1) or original(feed)
        for content in ("a house", "a dog"):
            pipe.generate(GenerationConfig.create(prompt="a cat", style=(style,), content=content, steps=1,
                                                  height=64, width=64))
        assert len(calls) == 1
        Image.open(style_image).rotate(90).save(style)  # same path, new content
        os.utime(style, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        pipe.generate(GenerationConfig.create(prompt="a cat", style=(style,), content="a dog", steps=1,
                                              height=64, width=64))
        assert len(calls) == 2


def test_full_disk_while_writing_fixtures_is_a_clear_checkpoint_error(tmp_path, monkeypatch):
    """The random checkpoints maskst-bench builds (17 GB full size): a full disk part-way is CheckpointError (exit 3)
    naming the folder and --cache-dir, with no partial set left behind."""
    import errno

    import maskst.fixtures as fixtures
    from maskst.errors import CheckpointError

    def no_space(folder, spec, seed):
        (folder / "model.safetensors").parent.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fixtures, "write_content_encoder", no_space)
    with pytest.raises(CheckpointError) as info:
        fixtures.write_fixtures(tmp_path / "fixtures", "tiny")
    assert info.value.exit_code == 3
    message = str(info.value)
    assert str(tmp_path) in message and "GiB are free" in message and "--cache-dir" in message
    assert list(tmp_path.iterdir()) == []  # neither the fixtures nor their staging folder
