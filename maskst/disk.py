"""Telling a full disk from other failures while large files are written (engines, random checkpoints), so the
writers can raise their typed error with the free space and the fix instead of a library's traceback."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

# A write that fails with less than this free is taken to be the full disk: the libraries that write graphs and
# weights (onnx, OpenVINO's serializer, TensorRT, safetensors) do not all raise OSError(ENOSPC).
FULL_DISK_BYTES = 64 * 2**20


def is_disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether ``exc``, raised while writing into ``folder``, is the disk running out of space: ENOSPC / EDQUOT,
    or any error (not an interrupt) while fewer than :data:`FULL_DISK_BYTES` are free there. Look before the
    partial files are removed: removing them frees the disk."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return False
    try:
        return shutil.disk_usage(folder).free < FULL_DISK_BYTES
    except OSError:
        return False


def free_gib(folder: Path) -> str:
    """The free space on ``folder``'s disk, e.g. "3.2 GiB"."""
    return f"{shutil.disk_usage(folder).free / 2**30:.1f} GiB"


def disk_full_message(folder: Path, what: str, exc: BaseException, fix: str) -> str:
    """The one wording of a full disk for the writers' typed errors, once the partial files are removed: where,
    what was being written, the library's own message, the space free now, and ``fix`` (where else to write)."""
    return (f"the disk holding {folder} filled up while {what} were written ({exc}); {free_gib(folder)} are free "
            f"there now that the partial set is removed. Free space there or write them to a larger disk ({fix})")
