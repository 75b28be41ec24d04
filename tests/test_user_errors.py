"""Mistakes a new user makes, through the real maskst-run CLI: exit code 2 and one clear line
(the input, the value, the fix), no traceback, nothing written."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from maskst.cli.run import main as run_main


def _run(args):
    return CliRunner().invoke(run_main, [str(a) for a in args])


def _base_args(engines, style, out):
    return ["--engines", engines, "--prompt", "a cat", "--style", style, "--content", "a house", "--steps", "2",
            "--height", "64", "--width", "64", "--quiet", "--out", out]


def _refused(result, *parts):
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(error) == 1, result.output
    for part in parts:
        assert part in error[0], error[0]


# --------------------------------------------------------------------------- output paths under a file


@pytest.mark.parametrize("out", ["afile/x.png", "afile/sub/x.png"])
def test_out_under_a_regular_file_is_refused_before_any_work(tmp_path, style_image, out):
    (tmp_path / "afile").write_text("not a folder")
    # the engines folder does not exist: refusing with exit 2 (not 4) shows the check runs first
    result = _run(_base_args(tmp_path / "no-engines", style_image, tmp_path / out))
    _refused(result, f"--out {tmp_path / out}", f"{tmp_path / 'afile'} is a file, not a folder", "choose a path")
    assert (tmp_path / "afile").read_text() == "not a folder"


def test_out_dir_under_a_regular_file_is_refused_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "a cat"}) + "\n")
    result = _run(["--engines", tmp_path / "no-engines", "--batch", jobs, "--out-dir", tmp_path / "afile" / "sub",
                   "--quiet"])
    _refused(result, f"--out-dir {tmp_path / 'afile' / 'sub'}", f"{tmp_path / 'afile'} is a file, not a folder")


# --------------------------------------------------------------------------- text that is not UTF-8


@pytest.mark.parametrize("flag,what", [("--prompt", "prompt"), ("--negative-prompt", "negative prompt"),
                                       ("--content", "content text")])
def test_text_with_undecodable_bytes_is_refused(tiny_engines, style_image, tmp_path, flag, what):
    # a shell passes --prompt $'\xff\xfe' to Python as surrogate escapes (PEP 383)
    out = tmp_path / "x.png"
    result = _run(_base_args(tiny_engines, style_image, out) + [flag, "\udcff\udcfe"])
    _refused(result, f"{what} holds bytes that are not UTF-8", r"b'\xff\xfe'", f"pass the {what} as UTF-8")
    assert not out.exists()


def test_undecodable_prompt_bytes_from_a_real_command_line(tiny_engines, style_image, tmp_path):
    out = tmp_path / "x.png"
    args = [str(a) for a in _base_args(tiny_engines, style_image, out)]
    args[args.index("--prompt") + 1] = b"\xff\xfe"  # raw argv bytes, as the shell passes them
    proc = subprocess.run([sys.executable, "-m", "maskst.cli.run", *args], capture_output=True, timeout=300)
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert r"prompt holds bytes that are not UTF-8 text (b'\xff\xfe'); pass the prompt as UTF-8" in stderr
    assert not out.exists()


def test_batch_job_with_undecodable_text_fails_alone(tiny_engines, tmp_path, style_image):
    jobs = tmp_path / "jobs.jsonl"
    # JSON "\udcff" is a lone surrogate too
    jobs.write_text('{"name": "bad", "content": "\\udcff", "style": "%s"}\n{"name": "good", "style": "%s"}\n'
                    % (style_image, style_image))
    result = _run(["--engines", tiny_engines, "--batch", jobs, "--out-dir", tmp_path / "out", "--prompt", "a cat",
                   "--steps", "2", "--height", "64", "--width", "64", "--quiet"])
    assert result.exit_code == 1, result.output
    bad, good = (json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines())
    assert bad["status"] == "error" and bad["exit_code"] == 2 and "content text holds bytes" in bad["error"]
    assert good["status"] == "ok" and not (tmp_path / "out" / "bad.png").exists()


@pytest.mark.parametrize("flag", ["--height", "--width"])
def test_zero_size_is_refused_not_taken_as_the_default(tmp_path, style_image, flag):
    """Only an absent option means "default"; 0 is a value, and not a size. Refused before any engine loads
    (the engines folder does not even exist: exit 2, not the engines error 4)."""
    result = CliRunner().invoke(run_main, ["--engines", str(tmp_path / "missing"), "--prompt", "a cat",
                                           "--style", str(style_image), flag, "0", "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 2, result.output
    assert f"{flag[2:]}=0 must be a positive multiple of 8" in result.output
    assert not (tmp_path / "x.png").exists()


def test_undecodable_prompt_is_refused_before_any_engine_loads(tmp_path, style_image):
    result = CliRunner().invoke(run_main, ["--engines", str(tmp_path / "missing"), "--prompt", "\udcff\udcfe",
                                           "--style", str(style_image), "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "not UTF-8" in result.output, result.output
