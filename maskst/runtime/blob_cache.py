"""The compiled-model caches on disk (the OpenVINO runner's blobs, ONNX Runtime's optimized graphs:
:mod:`maskst.runtime.ort_cache`): what each entry was made from, and the removal of entries that can never be hit
again.

A blob's cache key holds the path, size and modification time of the graph files it was compiled from
(:meth:`maskst.runtime.openvino_runner.OpenVinoRunner.blob_path`), so a re-export (``maskst-export --force``,
a benchmark's engines rebuilt for a new graph revision) makes every blob of the old files unreachable: ~1.7 GB
(bf16) to 3.5 GB (f32) per full-size UNet, shape and precision, which accumulated to 30 GB on the development VM
until its disk filled. Each blob therefore gets a record ``<blob>.json`` of those files, and writing a new blob
removes the blobs whose files have changed or gone. Blobs of other OpenVINO versions or CPUs are kept (they are
hit again when that version or machine comes back); so are blobs without a record.

Entries of files that have not changed still add up: OpenVINO writes one blob per input shape (a full-size UNet at
256 px, at 512 px and for two images are three blobs of ~1.7 GB each in bf16, ~3.5 GB in f32). A size limit
(``maskst-run --compile-cache-limit``; none by default, as OpenVINO's and ONNX Runtime's own caches) keeps each
cache under it by removing the least recently used entries after a new one is written (:func:`trim_to_limit`):
a hit marks its entry used (:func:`mark_used`, the record's modification time).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

RECORD_SUFFIX = ".json"  # <name>.blob -> <name>.blob.json
WEIGHTS_SUFFIX = ".data"  # an entry's external weights, if it has them (ONNX Runtime's <name>.onnx.data)
LOCK_SUFFIX = ".lock"  # an entry's writer lock, if its cache uses one (ONNX Runtime's; removed with a stale entry
#                        only: removing the lock of an entry in use would let a second writer in)


def key_digest(key: dict) -> str:
    """The short name part of a cache entry: a digest of everything the entry depends on (JSON-able ``key``)."""
    import hashlib

    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def cpu_identity() -> dict:
    """What a CPU-compiled entry depends on besides the model: the CPU model and its ISA flags."""
    from maskst.hardware import cpu_info

    cpu = cpu_info()
    if cpu.model is None and not cpu.flags:  # not Linux
        import platform

        return {"processor": platform.processor()}
    return {"model name": cpu.model, "flags": cpu.flags}


def graph_files(path: Path) -> dict[str, list]:
    """{file name: [resolved path, size, mtime_ns]} of a graph and its weights (``.onnx.data``, ``.bin``) that
    exist: what a compiled blob of ``path`` depends on."""
    files = {}
    for candidate in (path, Path(f"{path}.data"), path.with_suffix(".bin")):
        if candidate.is_file():
            stat = candidate.stat()
            files[candidate.name] = [str(candidate.resolve()), stat.st_size, stat.st_mtime_ns]
    return files


def record_blob(blob: Path, files: dict[str, list]) -> None:
    """Write ``blob``'s record (the graph files it was compiled from, as :func:`graph_files` gives them)."""
    record = Path(f"{blob}{RECORD_SUFFIX}")
    tmp = record.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"files": files}))
    tmp.replace(record)


def forget_blob(blob: Path) -> None:
    """Remove ``blob``, its record and its external weights (an entry the runtime refused to load)."""
    blob.unlink(missing_ok=True)
    Path(f"{blob}{RECORD_SUFFIX}").unlink(missing_ok=True)
    Path(f"{blob}{WEIGHTS_SUFFIX}").unlink(missing_ok=True)


def _unchanged(files: dict[str, list]) -> bool:
    for resolved, size, mtime_ns in files.values():
        try:
            stat = Path(resolved).stat()
        except OSError:
            return False
        if (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns):
            return False
    return True


def evict_stale_blobs(cache_dir: Path, suffix: str = ".blob") -> list[Path]:
    """Remove the entries under ``cache_dir`` (``<folder>/<name><suffix>``: OpenVINO's ``<precision>/<name>.blob``,
    ONNX Runtime's ``cpu/<name>.onnx``) whose recorded graph files have changed or gone, with their records and
    weights; returns the entries removed. A record that cannot be read (another process is
    writing it) leaves its blob alone. Removing a blob another process has mapped is safe: the mapping stays valid."""
    removed = []
    for record in Path(cache_dir).glob(f"*/*{suffix}{RECORD_SUFFIX}"):
        try:
            files = json.loads(record.read_text())["files"]
            stale = not _unchanged(files)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if stale:
            blob = record.with_suffix("")
            forget_blob(blob)
            Path(f"{blob}{LOCK_SUFFIX}").unlink(missing_ok=True)  # nobody writes an entry that can never be hit
            removed.append(blob)
    if removed:
        log.info("compiled-model cache: removed %d blob(s) of graph files that changed or are gone", len(removed))
    return removed


def mark_used(blob: Path) -> None:
    """Record a hit on ``blob``: its record's modification time is the entry's last use (what :func:`trim_to_limit`
    orders by). A record that cannot be touched (a read-only cache) only leaves the order as it was."""
    try:
        os.utime(f"{blob}{RECORD_SUFFIX}")
    except OSError:
        pass  # the entry stays usable; it is only ordered by its previous use


def _entry_bytes(blob: Path) -> int:
    total = 0
    for path in (blob, Path(f"{blob}{WEIGHTS_SUFFIX}"), Path(f"{blob}{RECORD_SUFFIX}")):
        try:
            total += path.stat().st_size
        except OSError:
            pass  # not there (an entry without external weights) or removed meanwhile by another process
    return total


def trim_to_limit(cache_dir: Path, limit_bytes: int, keep: Path, suffix: str = ".blob") -> list[Path]:
    """Remove the least recently used entries under ``cache_dir`` (laid out as for :func:`evict_stale_blobs`) until
    the recorded entries take at most ``limit_bytes``; never ``keep`` (the entry just written, which may alone be
    larger than the limit). Returns the entries removed. Entries without a record are not counted (as there).
    An entry another process has mapped stays valid for it (the mapping outlives the file); its writer lock is
    left in place (only a stale entry's lock goes: another writer may hold this one)."""
    entries = []
    for record in Path(cache_dir).glob(f"*/*{suffix}{RECORD_SUFFIX}"):
        try:
            used = record.stat().st_mtime_ns
        except OSError:
            continue  # removed meanwhile
        blob = record.with_suffix("")
        entries.append((used, blob, _entry_bytes(blob)))
    total = sum(size for _, _, size in entries)
    removed = []
    for _, blob, size in sorted(entries, key=lambda entry: entry[0]):
        if total <= limit_bytes:
            break
        if blob == keep:
            continue
        forget_blob(blob)
        total -= size
        removed.append(blob)
    if removed:
        log.info("compiled-model cache: removed %d least recently used entr%s to stay under %.1f GB", len(removed),
                 "y" if len(removed) == 1 else "ies", limit_bytes / 1e9)
    return removed


def tidy_after_write(cache_dir: Path, written: Path, limit_bytes: int | None, suffix: str = ".blob") -> None:
    """What every cache does after writing the entry ``written``: remove the entries of graph files since changed or
    gone (:func:`evict_stale_blobs`), then, with a limit, the least recently used beyond it (:func:`trim_to_limit`)."""
    evict_stale_blobs(cache_dir, suffix)
    if limit_bytes is not None:
        trim_to_limit(cache_dir, limit_bytes, keep=written, suffix=suffix)
