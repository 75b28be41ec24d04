"""What a sweep keeps on disk, and how a rerun knows a job is finished.

A job's *identity* (``key``, 16 hex digits) is the SHA-256 of: its GenerationConfig values (every
field, style paths absolute), the engines digest (the manifest hash that ``maskst-run`` also writes
into PNG metadata) and the SHA-256 of each style file. Each PNG of a job carries the usual
``maskst`` JSON text chunk (:func:`maskst.runtime.output.generation_metadata`) plus a ``sweep``
object with that key. A job is finished when every one of its PNGs exists and its ``maskst`` chunk
names the job's key and engines digest; anything else (missing file, other options, other engines,
an edited style image, unreadable metadata) is redone and overwritten. PNGs are written atomically
(temporary file + rename), so a file under its final name is complete; the check reads only the
text chunk, not the pixels.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from pathlib import Path

from PIL import Image

from maskst.errors import EngineError
from maskst.generation import CONTROL_FIELDS

UNREADABLE = "unreadable"
MANIFEST_NAME = "manifest.json"


def config_values(config) -> dict:
    """GenerationConfig -> JSON-ready dict (enums by value, paths as text, tuples as lists);
    ``GenerationConfig.create(**values)`` rebuilds the same config."""
    values = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name in CONTROL_FIELDS and value == ():
            continue  # text-driven: the job key of a sweep made before ControlNet support stays the same
        if isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = [str(v) if isinstance(v, Path) else v.to_json() if hasattr(v, "to_json") else v for v in value]
        values[field.name] = value
    return values


def file_digest(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes, or ``unreadable``: such a job then fails with the loader's message."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return UNREADABLE


def job_key(config, engines_digest: str, style_digests: tuple[str, ...]) -> str:
    """The job identity written into its PNGs (16 hex digits)."""
    text = json.dumps({"config": config_values(config), "engines": engines_digest, "style_files": list(style_digests)},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def engines_digest(folder: Path) -> str:
    """The engines digest without loading any graph: the first 16 hex digits of the SHA-256 of
    ``manifest.json``, as ``MaskstPipeline(...).manifest.digest`` reports it (workers check that
    their pipeline agrees before writing anything)."""
    path = Path(folder) / MANIFEST_NAME
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError as exc:
        raise EngineError(f"--engines {folder}: {path} could not be read ({exc.strerror or exc}); "
                          "build an engines folder with maskst-export") from None


def read_metadata(path: Path) -> dict | None:
    """The ``maskst`` JSON text chunk of a PNG, or None when the file is missing or has no valid chunk."""
    try:
        with Image.open(path) as image:
            text = image.text.get("maskst") if hasattr(image, "text") else None
    except (OSError, SyntaxError, ValueError):  # missing, not an image, broken chunks
        return None
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def is_finished(job, out_dir: Path) -> bool:
    """True when every PNG of ``job`` (a :class:`~maskst.sweep.grid.SweepJob`) is in ``out_dir`` with its key."""
    for name in job.images:
        meta = read_metadata(Path(out_dir) / name)
        sweep = (meta or {}).get("sweep")
        if not isinstance(sweep, dict) or sweep.get("key") != job.key or meta.get("engines_manifest") != job.engines_digest:
            return False
    return True
