"""ONNX Runtime's optimized graphs cached on disk, for the CPU provider (``ort-cpu``): a fast cold start.

Creating an ONNX Runtime session at ``ORT_ENABLE_ALL`` runs its graph optimizations (constant folding, fusions, the
NCHWc layout of convolutions) on every load. On the full-size SD 1.5 UNet (3.4 GB, 2 Zen 4 cores) that took 15.1 s
and 3,456 MiB peak RSS, against 1.7 s at the basic level. ONNX Runtime can write the optimized graph out
(``SessionOptions.optimized_model_filepath``, its initializers in an external data file); a later process loads that
file with the optimizations off in 1.2 s and 1,180 MiB, with the same outputs bit for bit and the same speed per
call (``python bench/issue15_ort_session_load.py``; docs/benchmarks.md, "Results on an AMD EPYC Zen 4").

The optimized graph is only valid where it was made: the NCHWc transformer picks kernels for this CPU (ONNX Runtime
warns so when it writes one), so the key holds the CPU model and ISA flags, the onnxruntime version and the source
graph files (path, size, modification time: a re-export changes it), as the OpenVINO blobs' key does
(:mod:`maskst.runtime.blob_cache`, whose records and eviction serve both). Layout: ``<cache>/cpu/<graph>-<key>.onnx``
with ``.onnx.data`` (the weights) and ``.onnx.json`` (the record). Written through a temporary folder and moved into
place weights first, so a reader finds a whole entry or none; an entry ONNX Runtime cannot load is removed and the
graph optimized again; a failed write (full disk, read-only folder) only costs the cache, never the session.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from maskst.runtime.blob_cache import (LOCK_SUFFIX, WEIGHTS_SUFFIX, cpu_identity, forget_blob, graph_files, key_digest,
                                       mark_used, record_blob, tidy_after_write)

log = logging.getLogger(__name__)

ENTRY_SUFFIX = ".onnx"
PROVIDER_FOLDER = "cpu"  # only the CPU provider's optimized graphs are cached
WEIGHTS_MIN_BYTES = 1024  # initializers at least this large go to the external data file (the rest stay inline)


def default_ort_cache_dir() -> Path:
    """Where optimized ONNX Runtime graphs are cached unless the caller names another folder (or disables it)."""
    return Path.home() / ".cache" / "maskst" / "onnxruntime"


def entry_path(cache_dir: Path, graph: str, path: Path) -> Path:
    """The cache entry (``.onnx``) of graph ``graph`` (file ``path``) optimized on this machine."""
    import onnxruntime

    key = {"files": graph_files(path), "onnxruntime": onnxruntime.__version__, "cpu": cpu_identity(),
           "level": "ORT_ENABLE_ALL"}
    return Path(cache_dir) / PROVIDER_FOLDER / f"{graph}-{key_digest(key)}{ENTRY_SUFFIX}"


def cached_session(cache_dir: Path, graph: str, source: Path, make_options, providers,
                   limit_bytes: int | None = None) -> tuple[object | None, str | None]:
    """(session, "cache") loaded from the cache, or (session, "optimized") made from ``source`` now and stored;
    (None, None) when the cache cannot be used (the caller then makes its session without it). ``limit_bytes``:
    after storing, the least recently used entries go until the cache takes at most that (None: no limit).

    One process at a time optimizes and stores an entry (a lock file beside it): the others wait, then load what it
    stored, rather than each writing its own copy of the weights (Ray sweep workers starting together)."""
    from filelock import FileLock

    entry = entry_path(cache_dir, graph, source)
    session = load_cached(entry, make_options, providers)
    if session is not None:
        mark_used(entry)
        return session, "cache"
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(f"{entry}{LOCK_SUFFIX}")
        lock.acquire()
    except OSError as exc:
        log.info("ONNX Runtime cache: %s cannot be written (%s); not caching", entry.parent, exc)
        return None, None
    try:
        session = load_cached(entry, make_options, providers)  # stored by another process while this one waited
        if session is not None:
            mark_used(entry)
            return session, "cache"
        session = optimize_and_store(source, entry, make_options, providers, limit_bytes)
        return (session, "optimized") if session is not None else (None, None)
    finally:
        lock.release()


def load_cached(entry: Path, make_options, providers):
    """A session of the cached optimized graph ``entry`` (``make_options()``: the caller's fresh ``SessionOptions``,
    optimizations turned off here), or None when there is no entry or ONNX Runtime refuses it (then it is removed)."""
    import onnxruntime as ort

    if not entry.is_file():
        return None
    options = make_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # done when it was written
    try:
        return ort.InferenceSession(str(entry), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own pybind exception types (Fail, InvalidGraph, ...)
        log.warning("ONNX Runtime cache: %s could not be loaded (%s); optimizing the graph again", entry, exc)
        forget_blob(entry)
        return None


def optimize_and_store(source: Path, entry: Path, make_options, providers, limit_bytes: int | None = None):
    """A session of ``source`` optimized at ``ORT_ENABLE_ALL``, its optimized graph written to ``entry`` on the way
    (``make_options()``: the caller's fresh ``SessionOptions``). None when the session could not be made, for a
    failed write or for the graph itself (the caller then makes it without the cache, which reports a bad graph);
    the session without an entry when only moving the written files into place failed. Nothing partial is left."""
    import onnxruntime as ort

    folder = entry.parent
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{entry.stem}.", dir=folder))
    except OSError as exc:
        log.info("ONNX Runtime cache: %s cannot be written (%s); not caching", folder, exc)
        return None
    weights = Path(f"{entry}{WEIGHTS_SUFFIX}")
    options = make_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(staging / entry.name)
    # ONNX Runtime warns at every write that an NCHWc graph is only for this machine: the key says so already
    options.log_severity_level = max(options.log_severity_level, 3)
    # the model refers to its weights by this file name, relative to its own folder: staged under the final name
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", weights.name)
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                     str(WEIGHTS_MIN_BYTES))
    try:
        try:
            session = ort.InferenceSession(str(source), options, providers=providers)
        except Exception as exc:  # ONNX Runtime's pybind types: a failed write (Fail) or a bad graph
            log.info("ONNX Runtime cache: %s was not optimized and stored (%s); not caching", source.name, exc)
            return None
        try:  # the session is good from here: a failed move or record costs the entry, not the optimization
            if (staging / weights.name).is_file():
                os.replace(staging / weights.name, weights)  # weights first: the graph names them
            os.replace(staging / entry.name, entry)
            record_blob(entry, graph_files(source))
        except OSError as exc:
            log.info("ONNX Runtime cache: the optimized %s was not stored (%s)", source.name, exc)
            forget_blob(entry)
            return session
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    tidy_after_write(folder.parent, entry, limit_bytes, ENTRY_SUFFIX)  # stale entries are never hit again
    return session
