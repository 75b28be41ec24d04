"""Engines folders on disk: build lock, staging folder, atomic publish (DESIGN section 5).

A build takes ``.<name>.lock`` beside the engines folder (a second build waits, then fails naming
the holder), writes everything into a hidden staging folder in the same parent directory and
publishes it with ``os.rename``. An interrupted build leaves the previous folder untouched; its
staging folder is removed by the next build.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from filelock import FileLock, Timeout

from maskst.disk import disk_full_message, is_disk_full
from maskst.errors import EngineError, InputError

MANIFEST_NAME = "manifest.json"
STAGING_PREFIX = ".staging-"


def _lock_paths(out: Path) -> tuple[Path, Path]:
    return out.parent / f".{out.name}.lock", out.parent / f".{out.name}.lock.json"


@contextlib.contextmanager
def build_lock(out: Path, timeout: float):
    """Exclusive build lock of one engines folder; names the holder if it cannot be taken."""
    lock_path, info_path = _lock_paths(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = json.loads(info_path.read_text())
        except (OSError, json.JSONDecodeError):
            holder = {"pid": "unknown"}
        raise EngineError(
            f"another maskst-export is building {out} (pid {holder.get('pid')} on {holder.get('host', '?')}, "
            f"since {holder.get('started', '?')}); wait for it to finish or use another --out folder"
        ) from None
    try:
        info_path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                         "started": time.strftime("%Y-%m-%dT%H:%M:%S")}))
        yield
    finally:
        info_path.unlink(missing_ok=True)
        lock.release()


def check_destination(out: Path, force: bool) -> None:
    """Refuse to build over an existing engines folder (or any non-empty folder) without force."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder path")
    if out.is_dir() and any(out.iterdir()):
        what = "an engines folder" if (out / MANIFEST_NAME).exists() else "a non-empty folder"
        if not force:
            raise InputError(
                f"--out {out} already holds {what}; pass --force to replace it (the old one is kept until the new "
                "set is complete) or choose another folder"
            )
        if not (out / MANIFEST_NAME).exists():
            raise InputError(f"--out {out} is {what} that is not a maskst engines folder; refusing to replace it even with --force")
    probe_dir = out.parent if not out.exists() else out
    probe_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(probe_dir, os.W_OK):
        raise InputError(f"--out {out}: {probe_dir} is not writable")


@contextlib.contextmanager
def staging_folder(out: Path):
    """A fresh hidden folder beside ``out``; removed on any failure. Yields its path."""
    for old in out.parent.glob(f"{STAGING_PREFIX}{out.name}-old-*"):
        if not out.exists():  # a build died between its two renames: the old set is the good one
            os.rename(old, out)
    for stale in out.parent.glob(f"{STAGING_PREFIX}{out.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted build (we hold the lock)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{out.name}-", dir=out.parent))
    try:
        yield staging
    except BaseException as exc:
        full = is_disk_full(exc, out.parent)  # looked at before the partial set is removed: that frees the disk
        shutil.rmtree(staging, ignore_errors=True)
        if full:
            raise EngineError(
                disk_full_message(out.parent, "the engines", exc, "maskst-export --out, maskst-bench --cache-dir")
                + ". Nothing was published" + (f"; the engines already in {out} are unchanged" if out.exists() else "")
            ) from exc
        raise


def publish(staging: Path, out: Path) -> None:
    """Replace ``out`` by the complete ``staging`` folder with renames on one filesystem.

    The old folder is renamed aside first and deleted only after the new one is in place, so at
    every moment either the old or the new complete set exists.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; a published folder is not
    old = None
    if out.exists():
        old = out.parent / f"{STAGING_PREFIX}{out.name}-old-{os.getpid()}"
        os.rename(out, old)
    try:
        os.rename(staging, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
