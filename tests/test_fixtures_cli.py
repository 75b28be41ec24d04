"""maskst-fixtures OUT_DIR: someone's folder is refused and left untouched, a previous fixture set is replaced only
once the new one is complete, a bad --seed or an unwritable place is a clear error without a traceback.

The model writers are stubbed (each writes one small file): these tests are about the folder handling."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest
from click.testing import CliRunner

import maskst.fixtures as fixtures
from maskst.errors import InputError


@pytest.fixture
def fast_writers(monkeypatch):
    def writer(name):
        def write(path, *args):  # a folder (base/, ...) or a file (annotators/sk_model.pth)
            file = path if path.suffix else path / f"{name}.bin"
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(repr(args[-1]).encode())  # the seed
        return write

    for name in ("write_base", "write_ip_adapter", "write_content_encoder", "write_controlnet", "write_lineart_model"):
        monkeypatch.setattr(fixtures, name, writer(name))


def _cli(*args):
    from maskst.cli.fixtures import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def test_a_folder_of_someone_elses_files_is_refused_and_left_untouched(tmp_path, fast_writers):
    work = tmp_path / "sw"
    (work / "run1").mkdir(parents=True)
    (work / "prompts.txt").write_text("a cat\n")
    (work / "run1" / "results.jsonl").write_text("{}\n")
    before = _snapshot(work)
    result = _cli(work)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert f"OUT_DIR {work} is not empty" in result.stderr and "not a fixture set" in result.stderr
    assert "new or empty folder" in result.stderr
    assert _snapshot(work) == before
    assert [p.name for p in tmp_path.iterdir()] == ["sw"]  # no staging folder left beside it


def test_a_fixture_set_with_added_files_is_refused(tmp_path, fast_writers):
    out = tmp_path / "fx"
    assert _cli(out).exit_code == 0
    (out / "engines").mkdir()
    (out / "engines" / "manifest.json").write_text("{}")
    before = _snapshot(out)
    result = _cli(out, "--preset", "tiny-wide")
    assert result.exit_code == 2
    assert "also holds engines" in result.stderr and "left untouched" in result.stderr
    assert _snapshot(out) == before


def test_a_previous_fixture_set_is_replaced(tmp_path, fast_writers):
    out = tmp_path / "fx"
    assert _cli(out, "--seed", "1").exit_code == 0
    result = _cli(out, "--preset", "tiny-wide", "--seed", "2")
    assert result.exit_code == 0, result.output
    assert "replaced the previous fixture set" in result.stderr and "preset tiny, seed 1" in result.stderr
    assert json.loads((out / "fixture.json").read_text()) == {"preset": "tiny-wide", "seed": 2}
    assert json.loads(result.stdout)["base"] == str(out / "base")
    assert [p.name for p in tmp_path.iterdir()] == ["fx"]  # the old set and the staging folder are gone


def test_an_empty_folder_is_filled_with_a_normal_mode(tmp_path, fast_writers):
    out = tmp_path / "empty"
    out.mkdir()
    paths = fixtures.write_fixtures(out, "tiny", seed=0)
    assert paths.root == out and (out / "fixture.json").is_file() and (out / "base").is_dir()
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # what mkdir gives, not mkdtemp's 0700


def test_a_failed_rebuild_leaves_the_previous_set_untouched(tmp_path, fast_writers, monkeypatch):
    out = tmp_path / "fx"
    fixtures.write_fixtures(out, "tiny", seed=0)
    before = _snapshot(out)

    def broken(folder, *args):
        (folder / "partial.bin").parent.mkdir(parents=True, exist_ok=True)
        (folder / "partial.bin").write_bytes(b"half")
        raise RuntimeError("writer failed")

    monkeypatch.setattr(fixtures, "write_controlnet", broken)
    with pytest.raises(RuntimeError, match="writer failed"):
        fixtures.write_fixtures(out, "tiny", seed=7)
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["fx"]


def test_full_disk_prints_the_checkpoint_error_without_traceback(tmp_path, fast_writers, monkeypatch):
    def no_space(folder, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fixtures, "write_content_encoder", no_space)
    result = _cli(tmp_path / "fx")
    assert result.exit_code == 3
    assert result.stderr.startswith("error: the disk holding") and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seed", ["99999999999999999999", "-1", str(2**63)])
def test_seed_out_of_range_is_refused(tmp_path, fast_writers, seed):
    result = _cli(tmp_path / "fx", "--seed", seed)
    assert result.exit_code == 2
    assert result.stderr == f"error: --seed {seed} must be an integer in [0, 2**63); choose a seed in that range, e.g. 0\n"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match=r"seed -5 must be an integer in \[0, 2\*\*63\)"):
        fixtures.write_fixtures(tmp_path / "fx", "tiny", seed=-5)


def test_largest_seed_is_accepted(tmp_path, fast_writers):
    assert _cli(tmp_path / "fx", "--seed", str(2**63 - 1)).exit_code == 0


def test_an_unwritable_place_is_input_error(tmp_path, fast_writers):
    (tmp_path / "file").write_text("x")
    result = _cli(tmp_path / "file" / "fx")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "cannot create a folder in" in result.stderr and "choose a writable location" in result.stderr


def test_a_link_to_a_fixture_set_keeps_the_link(tmp_path, fast_writers):
    real = tmp_path / "real"
    fixtures.write_fixtures(real, "tiny", seed=0)
    link = tmp_path / "link"
    link.symlink_to(real)
    fixtures.write_fixtures(link, "tiny-wide", seed=3)
    assert link.is_symlink()
    assert json.loads((real / "fixture.json").read_text()) == {"preset": "tiny-wide", "seed": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]
