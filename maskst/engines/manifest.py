"""manifest.json of an engines folder: what was built from what, with which versions, and its parity.

Loading checks the manifest before any graph is deserialised: format and schema, the maskst
version that wrote it, the structure and types of every field the runtime reads (:func:`check_structure`),
every listed file present with its recorded size and (unless skipped) SHA-256. Anything off is an :class:`maskst.errors.EngineError` naming the file and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import re
from importlib import metadata
from pathlib import Path

from maskst import __version__
from maskst.contract.files import sha256
from maskst.contract.wire import wire_format_differences
from maskst.engines.folder import MANIFEST_NAME
from maskst.errors import EngineError, MaskstError
from maskst.contract.spec import GraphSpec
from maskst.regions import MASK_INPUT_PREFIX

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

    @property
    def unguided_batch(self) -> bool:
        """Whether every graph whose batch B derives from N (the denoising graphs) also takes B = N, one row per image
        without classifier-free guidance (``GraphSpec.optional_factors``); engines exported before take 2N only."""
        specs = [self.graph_spec(name) for name in self.data["graphs"]]
        return all("B" in spec.optional_factors for spec in specs if "B" in spec.derived)

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
    versions = data.get("versions")
    written_by = versions.get("maskst") if isinstance(versions, dict) else None
    if data.get("schema") != SCHEMA:
        raise EngineError(
            f"{path} has manifest schema {data.get('schema')} (written by maskst {written_by}); "
            f"this maskst {__version__} reads schema {SCHEMA}: {REBUILD_HINT}"
        )
    check = _Checker(path)
    check.get(data, "versions", "versions", dict)
    check.get(versions, "maskst", "versions.maskst", str)
    if written_by.split(".")[:2] != __version__.split(".")[:2]:
        raise EngineError(
            f"{path} was written by maskst {written_by}; this is maskst {__version__}: {REBUILD_HINT}"
        )
    check_structure(path, data)
    differences = wire_format_differences(data.get("wire_format", {}).get("image_conditioner"))
    if differences:  # the graph compares method / mask-mode codes: other codes would compute another method
        raise EngineError(f"{path}: the image conditioner was built with other method / mask-mode codes than this "
                          f"maskst uses ({'; '.join(differences)}); {REBUILD_HINT}")
    for name, graph in data["graphs"].items():
        if graph["file"] not in data["files"]:
            raise EngineError(f"{path}: graph {name} file {graph['file']} is not recorded; {REBUILD_HINT}")
    for rel, record in data["files"].items():
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


# ---------------------------------------------------------------- structure and types

_MISSING = object()
_SHA256 = re.compile(r"[0-9a-f]{64}")
_KINDS = {dict: "an object", list: "a list", str: "a string", int: "an integer", bool: "true or false",
          float: "a number", type(None): "null"}


class _Checker:
    """Typed reads of one manifest: EngineError naming the file, the field, its value and the fix."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, field: str, value, expected: str) -> EngineError:
        shown = "missing" if value is _MISSING else f"{_short(value)}"
        return EngineError(f"{self.path}: {field} is {shown}; expected {expected} (the manifest was edited or "
                           f"damaged): {REBUILD_HINT}")

    def get(self, parent: dict, key: str, field: str, *kinds, optional: bool = False, check=None, expected=None):
        """``parent[key]`` if it is one of ``kinds`` (bool is never an int here) and passes ``check``; a missing
        key is None when ``optional``."""
        value = parent.get(key, _MISSING)
        if value is _MISSING and optional:
            return None
        self.value(value, field, *kinds, check=check, expected=expected)
        return value

    def value(self, value, field: str, *kinds, check=None, expected=None):
        wanted = expected or " or ".join(_KINDS[k] for k in kinds)
        if value is _MISSING or not _is_kind(value, kinds) or (check is not None and not check(value)):
            raise self.fail(field, value, wanted)
        return value


def _is_kind(value, kinds) -> bool:
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, tuple(k for k in kinds if k is not bool)) or (float in kinds and isinstance(value, int))


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _positive(value) -> bool:
    return value > 0


def check_structure(path: Path, data: dict) -> None:
    """EngineError naming the field when the manifest's structure or types are not what maskst-export writes
    (an edited or damaged file), so the runtime can index it without a traceback. Optional sections (fp16,
    tensorrt, int8, control, DeepCache / ControlNet / StyleShot graphs) are checked when present."""
    check = _Checker(path)
    check.get(data, "precision", "precision", str)
    for key in ("options", "sources", "fp16"):
        check.get(data, key, key, dict, optional=True)
    check.get(data, "graph_revision", "graph_revision", int, optional=True)
    wire = check.get(data, "wire_format", "wire_format", dict, optional=True)
    if wire is not None:
        codes = check.get(wire, "image_conditioner", "wire_format.image_conditioner", dict, type(None), optional=True)
        for field, table in (codes or {}).items():
            check.value(table, f"wire_format.image_conditioner.{field}", dict)

    files = check.get(data, "files", "files", dict)
    for rel, record in files.items():
        field = f"files[{rel!r}]"
        parts = Path(rel).parts
        if not rel or Path(rel).is_absolute() or ".." in parts:
            raise check.fail("a path in files", rel, "a path inside the engines folder")
        check.value(record, field, dict)
        check.get(record, "size", f"{field}.size", int, check=lambda v: v >= 0, expected="a byte count (integer >= 0)")
        check.get(record, "sha256", f"{field}.sha256", str, check=_SHA256.fullmatch,
                  expected="a SHA-256 (64 lowercase hex digits)")

    graphs = check.get(data, "graphs", "graphs", dict, check=bool, expected="an object of at least one graph")
    specs = {}
    for name, graph in graphs.items():
        field = f"graphs.{name}"
        check.value(graph, field, dict)
        check.get(graph, "file", f"{field}.file", str, check=bool, expected="a file name")
        specs[name] = _graph_spec(check, graph.get("spec", _MISSING), f"{field}.spec")
        int8 = check.get(graph, "int8", f"{field}.int8", dict, type(None), optional=True)
        if int8:
            for key in ("file", "weights"):
                check.get(int8, key, f"{field}.int8.{key}", str, check=bool, expected="a file name")

    model = check.get(data, "model", "model", dict)
    check.get(model, "family", "model.family", str)
    for key in ("vae_scale_factor", "latent_channels", "max_regions"):
        check.get(model, key, f"model.{key}", int, check=_positive, expected="an integer > 0")
    layers = check.get(model, "cross_attention_layers", "model.cross_attention_layers", list,
                       check=lambda v: v and all(isinstance(x, str) for x in v),
                       expected="a non-empty list of layer names")
    strides = check.get(model, "cross_attention_strides", "model.cross_attention_strides", list,
                        check=lambda v: all(_is_kind(x, (int,)) and x > 0 for x in v),
                        expected="a list of latent strides (integers > 0)")
    if len(strides) != len(layers):
        raise EngineError(f"{path}: model.cross_attention_layers lists {len(layers)} layers but "
                          f"model.cross_attention_strides has {len(strides)} strides; expected one stride per layer "
                          f"(the manifest was edited or damaged): {REBUILD_HINT}")
    check.get(model, "scheduler_config", "model.scheduler_config", dict)
    check.get(model, "adapter_kind", "model.adapter_kind", str, optional=True)
    check.get(model, "force_zeros_for_empty_prompt", "model.force_zeros_for_empty_prompt", bool, optional=True)
    content = check.get(model, "content_embedding", "model.content_embedding", dict, optional=True)
    if content is not None:
        for key in ("graph", "output"):
            check.get(content, key, f"model.content_embedding.{key}", str)
    # the UNet graphs' ip_scale [L, R] has one row per cross-attention layer, region_mask_<s> one input per stride:
    # a model section that disagrees with its own graphs would fail at the first request, as if the request were bad
    for name, spec in specs.items():
        for tensor in spec.inputs:
            if tensor.name == "ip_scale" and tensor.shape and isinstance(tensor.shape[0], int) \
                    and tensor.shape[0] != len(layers):
                raise EngineError(f"{path}: model.cross_attention_layers lists {len(layers)} layers but graph {name}'s "
                                  f"ip_scale input has {tensor.shape[0]} rows (the manifest was edited or damaged): "
                                  f"{REBUILD_HINT}")
            stride = tensor.name[len(MASK_INPUT_PREFIX):] if tensor.name.startswith(MASK_INPUT_PREFIX) else None
            if stride is not None and (not stride.isdigit() or int(stride) not in strides):
                raise EngineError(f"{path}: graph {name} has input {tensor.name} but model.cross_attention_strides "
                                  f"{strides} has no stride {stride} (the manifest was edited or damaged): {REBUILD_HINT}")

    control = check.get(data, "control", "control", dict, type(None), optional=True) or {}
    nets = check.get(control, "controlnets", "control.controlnets", list, type(None), optional=True) or []
    lineart = check.get(control, "lineart", "control.lineart", dict, type(None), optional=True)
    for field, entry in [*((f"control.controlnets[{i}]", e) for i, e in enumerate(nets)), ("control.lineart", lineart)]:
        if entry is None and field == "control.lineart":
            continue
        check.value(entry, field, dict)
        check.get(entry, "graph", f"{field}.graph", str, check=graphs.__contains__,
                  expected=f"the name of one of the graphs ({', '.join(graphs)})")

    int8 = check.get(data, "int8", "int8", dict, optional=True)
    if int8 is not None:
        check.get(int8, "scheme", "int8.scheme", str)
        check.get(int8, "graphs", "int8.graphs", list)
    trt = check.get(data, "tensorrt", "tensorrt", dict, type(None), optional=True)
    if trt:
        plans = check.get(trt, "plans", "tensorrt.plans", dict)
        for name, record in plans.items():
            check.value(record, f"tensorrt.plans.{name}", dict)
            check.get(record, "file", f"tensorrt.plans.{name}.file", str, check=bool, expected="a file name")


def _graph_spec(check: _Checker, raw, field: str) -> GraphSpec:
    """The graph's IO spec, parsed; every symbolic dimension of a shape must have a range."""
    check.value(raw, field, dict)
    try:
        spec = GraphSpec.from_json(raw)
    except (KeyError, TypeError, ValueError, AttributeError, MaskstError) as exc:
        detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise EngineError(f"{check.path}: {field} is not a graph IO spec ({detail}; the manifest was edited or "
                          f"damaged): {REBUILD_HINT}") from None
    check.value(spec.name, f"{field}.name", str)
    for dim, r in spec.dims.items():
        check.value([r.min, r.opt, r.max], f"{field}.dims.{dim}", list,
                    check=lambda v: all(_is_kind(x, (int,)) for x in v), expected="integers min <= opt <= max")
    for table in ("derived", "divided"):
        for dim, rule in getattr(spec, table).items():
            check.value(list(rule), f"{field}.{table}.{dim}", list,
                        check=lambda v: (len(v) == 2 and isinstance(v[0], str) and v[0] in spec.dims
                                        and _is_kind(v[1], (int,)) and v[1] > 0),
                        expected=f"[a dimension of dims ({', '.join(spec.dims)}), an integer > 0]")
    for dim in spec.optional_factors:
        if dim not in spec.derived:
            raise check.fail(f"{field}.optional_factors", list(spec.optional_factors),
                             f"names of derived dimensions ({', '.join(spec.derived) or 'none'})")
    known = set(spec.dims) | set(spec.derived) | set(spec.divided)
    for tensor in spec.inputs + spec.outputs:
        where = f"{field} tensor {tensor.name!r} shape"
        check.value(tensor.name, f"{field} tensor name", str)
        check.value(tensor.dtype, f"{where[:-6]} dtype", str)
        for d in tensor.shape:
            if not (_is_kind(d, (int,)) and d > 0) and not (isinstance(d, str) and d in known):
                raise check.fail(where, list(tensor.shape), f"sizes > 0 or dimension names with a range ({', '.join(sorted(known))})")
    return spec
