"""The embedded default: engines built once from the tiny fixtures, so maskst-run works with no downloads.

The default set lives in ``<cache>/default-<maskst version>/`` (cache: ``--cache-dir`` or
``~/.cache/maskst``). Its fixtures are published atomically with a ``fixture.json`` marker and its
engines with a manifest; a set that fails those checks is rebuilt, never half-used.
"""

from __future__ import annotations

import json
from pathlib import Path

from maskst import __version__
from maskst.engines.manifest import load_manifest
from maskst.errors import EngineError

DEFAULT_SIZE = 128  # image side the embedded engines are optimised for (their demo request's size)


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "maskst"


def default_engines(cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Path of the default engines folder, building it on first use (needs torch, ~30 s)."""
    from maskst.fixtures import FixturePaths, write_fixtures

    root = Path(cache_dir or default_cache_dir()) / f"default-{__version__}"
    engines = root / "engines"
    try:
        load_manifest(engines)
        return engines
    except EngineError:
        pass  # not built yet, or damaged: rebuild below
    paths = FixturePaths(root / "fixtures")
    marker = paths.root / "fixture.json"
    if not marker.is_file() or json.loads(marker.read_text()).get("preset") != "tiny":
        write_fixtures(paths.root, "tiny", seed=0)
    from maskst.export.exporter import ExportRequest, export_engines
    from maskst.export.options import ExportOptions

    export_engines(ExportRequest(base=paths.base, ip_adapter=paths.ip_adapter, content_encoder=paths.content_encoder,
                                 image_encoder=paths.image_encoder, out=engines, force=True, lock_timeout=600,
                                 options=ExportOptions(min_size=64, opt_size=DEFAULT_SIZE, max_size=512, max_batch=4)),
                   progress=progress)
    return engines
