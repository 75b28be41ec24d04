"""Output files (save_png, write_atomic): a failed write is InputError with no partial file, new files get the
umask's mode, an overwritten file keeps its mode, symlinks are written through and special files are refused."""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskst.contract.files import write_atomic
from maskst.errors import InputError
from maskst.runtime.output import check_writable, save_png

IMAGE = np.full((8, 8, 3), 200, np.uint8)


def _save_png(path, what="output file"):
    save_png(path, IMAGE, {"prompt": "a cat"}, what=what)


def _write_text(path, what="output file"):
    write_atomic(path, "new\n", what=what)


WRITERS = [pytest.param(_save_png, id="save_png"), pytest.param(_write_text, id="write_atomic")]


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


class _FullDisk(io.RawIOBase):
    """The temporary file's fd as the lowest writer sees it: every write fails with ENOSPC."""

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


@pytest.fixture
def full_disk(monkeypatch):
    monkeypatch.setattr(os, "fdopen", lambda fd, *args, **kwargs: io.BufferedWriter(_FullDisk(fd)))


@pytest.mark.parametrize("write", WRITERS)
def test_new_file_gets_the_umask_mode_not_0600(tmp_path, umask_027, write):
    path = tmp_path / "out.png"
    write(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # 0o666 & ~0o027, what open(path, "w") gives


@pytest.mark.parametrize("write", WRITERS)
def test_overwritten_file_keeps_its_mode(tmp_path, write):
    path = tmp_path / "out.png"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.read_bytes() != b"old"


@pytest.mark.parametrize("write", WRITERS)
def test_full_disk_is_input_error_and_the_old_file_stays(tmp_path, full_disk, write):
    path = tmp_path / "out.png"
    path.write_bytes(b"previous result")
    with pytest.raises(InputError) as info:
        write(path, what="--out")
    message = str(info.value)
    assert info.value.exit_code == 2
    assert f"--out {path}" in message and "is full" in message and "No space left" in message
    assert "Free space there" in message
    assert path.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no temporary file left


@pytest.mark.parametrize("write", WRITERS)
def test_unwritable_folder_is_input_error_not_a_traceback(tmp_path, write):
    path = tmp_path / "missing" / "out.png"
    with pytest.raises(InputError, match=r"could not be written \(No such file or directory\); choose a location"):
        write(path)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_proc_is_not_mistaken_for_a_full_disk():
    """/proc shows 0 bytes free: a write error there is the OS's reason, not 'the disk is full'."""
    with pytest.raises(InputError) as info:
        _save_png(Path("/proc/maskst-test.png"))
    assert "is full" not in str(info.value) and "/proc/maskst-test.png" in str(info.value)


@pytest.mark.parametrize("write", WRITERS)
def test_fifo_is_refused_and_left_in_place(tmp_path, write):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="is a FIFO"):
        write(fifo, what="--out")
    with pytest.raises(InputError, match="is a FIFO"):
        check_writable(fifo)  # refused up front too, before any compute
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["fifo.png"]


@pytest.mark.parametrize("write", WRITERS)
def test_folder_is_refused(tmp_path, write):
    folder = tmp_path / "out.png"
    folder.mkdir()
    with pytest.raises(InputError, match="is a folder"):
        write(folder)
    assert folder.is_dir()


def test_symlink_is_written_through_to_its_target(tmp_path):
    target = tmp_path / "results" / "latest-target.png"
    target.parent.mkdir()
    target.write_bytes(b"old")
    target.chmod(0o644)
    link = tmp_path / "latest.png"
    link.symlink_to(target)
    _save_png(link)
    assert link.is_symlink() and link.resolve() == target.resolve()
    with Image.open(target) as image:
        assert image.size == (8, 8) and "a cat" in image.text["maskst"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.png", "results"]
    assert [p.name for p in target.parent.iterdir()] == ["latest-target.png"]


def test_png_content_and_metadata_are_written(tmp_path):
    path = tmp_path / "out.png"
    save_png(path, IMAGE, {"prompt": "a cat", "negative_prompt": "blurry", "seed": 3})
    with Image.open(path) as image:
        assert np.array_equal(np.asarray(image), IMAGE)
        assert '"seed": 3' in image.text["maskst"] and image.text["parameters"].startswith("a cat\nNegative prompt: blurry")
