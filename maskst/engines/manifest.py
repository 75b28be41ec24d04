"""manifest.json of an engines folder: what was built from what, with which versions, and its parity.

Loading checks the manifest before any graph is deserialised: format and schema, the maskst
version that wrote it, every listed file present with its recorded size and (unless skipped)
SHA-256. Anything off is an :class:`maskst.errors.EngineError` naming the file and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from importlib import metadata
from pathlib import Path

from maskst import __version__
from maskst.contract.files import sha256
from maskst.contract.wire import wire_format_differences
from maskst.engines.folder import MANIFEST_NAME
from maskst.errors import EngineError
from maskst.contract.spec import GraphSpec

FORMAT = "maskst-engines"
SCHEMA = 4  # 2: preprocessor_config.json in every folder; 3: the conditioner's wire format recorded;
# 4: regional UNet (ip_tokens [B, R, k, C], ip_scale [L, R], region_mask_<s>), max_regions and strides in "model"
REBUILD_HINT = "rebuild it with maskst-export --force"


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries an engines folder depends on (None if absent)."""
    out = {"python": platform.python_version(), "maskst": __version__}
    for dist in ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "diffusers", "transformers", "tensorrt", "openvino"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Parsed manifest.json. ``data`` is the raw JSON; accessors name what the runtime uses."""

    folder: Path
    data: dict

    @property
    def model(self) -> dict:
        return self.data["model"]

    @property
    def precision(self) -> str:
        return self.data["precision"]

    def graph_spec(self, name: str) -> GraphSpec:
        return GraphSpec.from_json(self.data["graphs"][name]["spec"])

    def graph_path(self, name: str) -> Path:
        return self.folder / self.data["graphs"][name]["file"]

    @property
    def digest(self) -> str:
        """Short hash of the manifest itself: identifies the engines set in PNG metadata."""
        return sha256(self.folder / MANIFEST_NAME)[:16]


def file_records(folder: Path) -> dict[str, dict]:
    """{relative path: {size, sha256}} of every file in a built folder except the manifest."""
    records = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST_NAME:
            records[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": sha256(path)}
    return records


def write_manifest(folder: Path, data: dict) -> None:
    data = {"format": FORMAT, "schema": SCHEMA, **data, "files": file_records(folder)}
    tmp = folder / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False))
    tmp.rename(folder / MANIFEST_NAME)


def load_manifest(folder: Path, verify_hashes: bool = True) -> Manifest:
    """Read and check an engines folder's manifest and files. Raises EngineError naming the problem."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise EngineError(f"engines folder {folder} does not exist; build one with maskst-export --out {folder}")
    if not path.is_file():
        raise EngineError(f"{folder} has no {MANIFEST_NAME}: it is not a complete maskst engines folder; {REBUILD_HINT}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EngineError(f"{path} is not valid JSON ({exc}); {REBUILD_HINT}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise EngineError(f"{path} is not a maskst engines manifest (format={data.get('format') if isinstance(data, dict) else None!r})")
    if data.get("schema") != SCHEMA:
        raise EngineError(
            f"{path} has manifest schema {data.get('schema')} (written by maskst {data.get('versions', {}).get('maskst')}); "
            f"this maskst {__version__} reads schema {SCHEMA}: {REBUILD_HINT}"
        )
    written_by = data.get("versions", {}).get("maskst", "?")
    if written_by.split(".")[:2] != __version__.split(".")[:2]:
        raise EngineError(
            f"{path} was written by maskst {written_by}; this is maskst {__version__}: {REBUILD_HINT}"
        )
    differences = wire_format_differences(data.get("wire_format", {}).get("image_conditioner"))
    if differences:  # the graph compares method / mask-mode codes: other codes would compute another method
        raise EngineError(f"{path}: the image conditioner was built with other method / mask-mode codes than this "
                          f"maskst uses ({'; '.join(differences)}); {REBUILD_HINT}")
    for name, graph in data.get("graphs", {}).items():
        if graph["file"] not in data.get("files", {}):
            raise EngineError(f"{path}: graph {name} file {graph['file']} is not recorded; {REBUILD_HINT}")
    for rel, record in data.get("files", {}).items():
        file = folder / rel
        if not file.is_file():
            raise EngineError(f"engines file {file} is missing; {REBUILD_HINT}")
        size = file.stat().st_size
        if size != record["size"]:
            raise EngineError(
                f"engines file {file} has {size} bytes but the manifest records {record['size']} "
                f"(truncated or replaced); {REBUILD_HINT}"
            )
        if verify_hashes and sha256(file) != record["sha256"]:
            raise EngineError(f"engines file {file} was modified after the build (SHA-256 differs from the manifest); {REBUILD_HINT}")
    return Manifest(folder, data)
