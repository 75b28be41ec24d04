"""Files: the one SHA-256 of maskst (checkpoint sources, engine files, TensorRT plans) and the one atomic write of an
output file (PNGs, JSON, text)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from maskst.disk import free_gib, is_disk_full
from maskst.errors import BackendError, InputError


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (checkpoints and UNets are GBs)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask can only be read by setting it,
    which races with other threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(folder: bool = False) -> int:
    """The mode a plain ``open(path, "w")`` (0o666) or ``mkdir`` (0o777) gives under the process umask; mkstemp
    and mkdtemp use 0600 / 0700, which hide results from everyone else."""
    return (0o777 if folder else 0o666) & ~_umask()


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device node"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def output_target(path: Path, what: str = "output file") -> tuple[Path, int | None]:
    """Where writing ``path`` lands, and the mode of the file there (None: no file yet).

    A symbolic link is followed, as ``open(path, "w")`` and a shell's ``>`` do: replacing the link itself would
    silently cut it from the file it names. Anything else that is not a regular file (a folder, a FIFO, a device node
    such as /dev/full) is refused: the atomic rename would replace it with a regular file."""
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        st = os.stat(target)
    except (FileNotFoundError, NotADirectoryError):
        return target, None  # a new file (or a bad folder, which the write itself reports)
    except OSError as exc:
        raise InputError(f"{what} {path} cannot be used ({exc.strerror or exc}); choose another location") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{what} {path} is {_kind(st.st_mode)}, not a regular file; give the path of a file "
                         f"(a new one, or an existing regular file to replace)")
    return target, stat.S_IMODE(st.st_mode)


def _write_error(exc: OSError, path: Path, folder: Path, what: str) -> InputError:
    """The typed error of a failed write: a full disk with the free space, anything else with the OS's reason."""
    # A write of ours reports its own errno; is_disk_full's low-free-space rule (for libraries that hide ENOSPC)
    # would call /proc or /sys, which show 0 bytes free, a full disk.
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT) or (exc.errno is None and is_disk_full(exc, folder))
    if full:
        try:
            free = f"; {free_gib(folder)} are free there"
        except OSError:
            free = ""
        return InputError(f"{what} {path} could not be written: the disk holding {folder} is full ({exc}){free}. "
                          f"Free space there or write it to another disk; the previous file, if any, is unchanged")
    return InputError(f"{what} {path} could not be written ({exc.strerror or exc}); choose a location in a "
                      f"writable folder; the previous file, if any, is unchanged")


@contextlib.contextmanager
def atomic_output(path: Path, what: str = "output file") -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content into; on success it replaces ``path`` in one rename, so a reader
    sees the old file or the new one, never half of one, and a failure leaves the old file (no temporary file left).

    The new file gets the mode a plain ``open(path, "w")`` gives (0o666 less the umask), or keeps the mode of the
    file it replaces (mkstemp's 0600 would hide results from the group and downgrade an existing file). An OSError
    while writing (full disk, read-only or missing folder) becomes InputError naming ``what``, the path and the fix."""
    path = Path(path)
    target, mode = output_target(path, what)
    folder = target.parent if str(target.parent) else Path(".")
    if mode is None:
        mode = default_mode()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise _write_error(exc, path, folder, what) from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(exc, path, folder, what) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, text: str, what: str = "output file") -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_output`: old file or new one, a normal file mode,
    InputError on a failed write)."""
    with atomic_output(path, what) as f:
        f.write(text.encode("utf-8"))


def check_chart_path(path: Path, what: str = "--plot") -> None:
    """Refuse a chart path before any compute: charts are PNG files (a ``.png`` name) and need matplotlib
    (BackendError naming the extra to install)."""
    import importlib.util

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"{what} {path}: the chart is written as PNG; give a .png name, e.g. {path.with_suffix('.png')}")
    if importlib.util.find_spec("matplotlib") is None:
        raise BackendError(f'{what} needs matplotlib: pip install "maskst[bench]"')


def agg_pyplot():
    """matplotlib's pyplot on the Agg backend (charts are files: no display on servers). The caller has checked that
    matplotlib is installed (:func:`check_chart_path`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path, what: str = "chart") -> None:
    """Save a matplotlib figure as PNG to ``path`` atomically (:func:`atomic_output`), then close it (pyplot keeps
    every open figure alive)."""
    try:
        with atomic_output(path, what) as f:
            figure.savefig(f, dpi=110, format="png")
    finally:
        import matplotlib.pyplot as plt  # the caller drew the figure: matplotlib is there

        plt.close(figure)
