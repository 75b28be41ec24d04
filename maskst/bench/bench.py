"""maskst-bench: the PyTorch reference and maskst's backends on the same inputs, in one run.

(Work in progress: the cache of random models comes first.)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from maskst import __version__

CACHE_MARKER = "bench-cache.json"
# Engines built for benchmarks accept every size from 128 px (64 for tiny) to 1024 px and up to 4 images.
_EXPORT_SIZES = {"full": dict(min_size=128, opt_size=512, max_size=1024, max_batch=4),
                 "tiny": dict(min_size=64, opt_size=128, max_size=512, max_batch=4),
                 "tiny-wide": dict(min_size=64, opt_size=128, max_size=512, max_batch=4)}


@dataclasses.dataclass(frozen=True)
class BenchModels:
    """Checkpoints (for the reference) and the engines folder built from them."""

    fixtures: object  # maskst.fixtures.FixturePaths, or None for user checkpoints given as paths
    base: Path | None
    ip_adapter: Path | None
    image_encoder: Path | None
    content_encoder: Path | None
    engines: Path


def random_models(cache_dir: Path, preset: str, seed: int = 0, progress: bool = True) -> BenchModels:
    """Random-weight checkpoints of ``preset`` and their engines, built once under ``cache_dir``.

    ``<cache>/bench-<preset>-<version>/`` holds ``fixtures/`` (with its ``fixture.json`` marker),
    ``engines/`` (with its manifest) and ``bench-cache.json``, written last, which ties the two
    together: the fixture marker it was built from and the manifest digest. Anything that does
    not check out is rebuilt (the fixtures only when their own marker is wrong), so an interrupted
    build is never half-used. The full preset takes a long time and ~15 GB of RAM the first time.
    """
    from maskst.engines.manifest import load_manifest
    from maskst.errors import EngineError
    from maskst.export.exporter import ExportRequest, export_engines
    from maskst.export.options import ExportOptions
    from maskst.fixtures import FixturePaths, write_fixtures

    root = Path(cache_dir) / f"bench-{preset}-{__version__}"
    paths = FixturePaths(root / "fixtures")
    engines = root / "engines"
    marker = root / CACHE_MARKER
    fixture_marker = paths.root / "fixture.json"
    wanted_fixture = {"preset": preset, "seed": seed}
    options = ExportOptions(**_EXPORT_SIZES[preset])

    def models() -> BenchModels:
        return BenchModels(paths, paths.base, paths.ip_adapter, paths.image_encoder, paths.content_encoder, engines)

    if marker.is_file() and fixture_marker.is_file():
        try:
            recorded = json.loads(marker.read_text())
            manifest = load_manifest(engines, verify_hashes=False)  # sizes only: hashing 6 GB takes a minute
            if (recorded.get("fixture") == json.loads(fixture_marker.read_text()) == wanted_fixture
                    and recorded.get("engines_manifest") == manifest.digest):
                return models()
        except (json.JSONDecodeError, EngineError):
            pass  # damaged or stale: rebuilt below
    marker.unlink(missing_ok=True)
    if not fixture_marker.is_file() or json.loads(fixture_marker.read_text()) != wanted_fixture:
        if progress:
            print(f"writing {preset} random-weight checkpoints to {paths.root} (once)", flush=True)
        write_fixtures(paths.root, preset, seed=seed)
    if progress:
        print(f"exporting engines to {engines} (once)", flush=True)
    manifest = export_engines(ExportRequest(base=paths.base, ip_adapter=paths.ip_adapter,
                                            image_encoder=paths.image_encoder, content_encoder=paths.content_encoder,
                                            out=engines, force=True, lock_timeout=3600, options=options),
                              progress=progress)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"fixture": wanted_fixture, "engines_manifest": manifest.digest,
                               "export_options": dataclasses.asdict(options) | {"precision": options.precision.value,
                                                                                "target": options.target.value}},
                              indent=2))
    tmp.rename(marker)
    return models()
