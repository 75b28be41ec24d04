"""The sweep grid: prompts x styles x methods x seeds, as frozen job records with deterministic names.

Inputs:

- a prompts file: one prompt per line (UTF-8); blank lines and lines starting with ``#`` are skipped;
- a styles CSV with a header and the columns ``style`` (image path; relative paths are relative to
  the CSV's folder) and ``content`` (the text of what the style image shows: the content to mask);
  other columns are ignored.

The grid is expanded in a stable order: prompt (outermost), style, method, seed (innermost); job
``index`` counts in that order. File names are ``p{prompt:03d}-s{style:03d}-{method}-seed{seed}.png``
(more digits when there are more than 1000 prompts or styles; ``-{k}`` before ``.png`` when a job
makes several images). Every check of user input happens in :meth:`SweepSpec.create`, so a bad
sweep is refused (``InputError``, exit code 2) before any engine loads. A style file that cannot
be read is *not* an input error here: its jobs fail one by one and the rest of the sweep runs.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

from maskst.errors import InputError
from maskst.generation import GenerationConfig, is_seed
from maskst.masking import Method
from maskst.sweep.store import config_values, file_digest, job_key

METHODS = tuple(m.value for m in Method)
# GenerationConfig fields a sweep sets once for every job (the grid sets prompt, style, content,
# method and seed).
# the grid's axes (prompts file, styles CSV, --methods, --seeds); every other request field is a shared run option
GRID_FIELDS = ("prompt", "style", "content", "method", "seed")
RUN_OPTIONS = tuple(f.name for f in dataclasses.fields(GenerationConfig) if f.name not in GRID_FIELDS)


@dataclasses.dataclass(frozen=True)
class StyleEntry:
    """One row of the styles CSV: an absolute image path and the content text to mask."""

    path: Path
    content: str
    row: int  # 1-based data row in the CSV (header excluded), for messages


@dataclasses.dataclass(frozen=True)
class SweepJob:
    """One generation of the grid. ``key`` identifies it for resume (see :func:`store.job_key`)."""

    index: int
    prompt_index: int
    style_index: int
    method: str  # requested method (the PNG metadata's ``method`` is the one that ran)
    seed: int
    name: str  # file stem
    config: GenerationConfig
    key: str
    engines_digest: str

    @property
    def images(self) -> tuple[str, ...]:
        """File names (relative to the output folder) of the job's images."""
        n = self.config.num_images
        return (f"{self.name}.png",) if n == 1 else tuple(f"{self.name}-{k}.png" for k in range(n))

    def to_json(self) -> str:
        """JSON text of the job (for Ray: rows carry plain strings); :meth:`from_json` inverts it."""
        return json.dumps({"index": self.index, "prompt_index": self.prompt_index, "style_index": self.style_index,
                           "method": self.method, "seed": self.seed, "name": self.name, "key": self.key,
                           "engines_digest": self.engines_digest, "config": config_values(self.config)})

    @classmethod
    def from_json(cls, text: str) -> "SweepJob":
        data = json.loads(text)
        return cls(config=GenerationConfig.create(**data.pop("config")), **data)


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: the grid axes and the run options every job shares."""

    prompts: tuple[str, ...]
    styles: tuple[StyleEntry, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    run_options: tuple[tuple[str, Any], ...]  # (GenerationConfig field, value), sorted by field

    @classmethod
    def create(cls, prompts_file: Path, styles_file: Path, methods: str | tuple[str, ...] = METHODS,
               seeds: str | tuple[int, ...] = (0,), run_options: dict | None = None) -> "SweepSpec":
        """Read and check every input; raise InputError naming the file, row or value and the fix."""
        options = {k: v for k, v in (run_options or {}).items() if v is not None}
        unknown = set(options) - set(RUN_OPTIONS)
        if unknown:
            raise InputError(f"unknown run option(s) {sorted(unknown)}; known: {', '.join(RUN_OPTIONS)}")
        spec = cls(prompts=read_prompts(Path(prompts_file)), styles=read_styles(Path(styles_file)),
                   methods=parse_methods(methods), seeds=parse_seeds(seeds),
                   run_options=tuple(sorted(options.items())))
        spec.config(0, 0, spec.methods[0], spec.seeds[0])  # the shared options, validated once
        return spec

    @property
    def size(self) -> int:
        return len(self.prompts) * len(self.styles) * len(self.methods) * len(self.seeds)

    def config(self, prompt_index: int, style_index: int, method: str, seed: int) -> GenerationConfig:
        style = self.styles[style_index]
        return GenerationConfig.create(prompt=self.prompts[prompt_index], style=(style.path,), content=style.content,
                                       method=method, seed=seed, **dict(self.run_options))

    def jobs(self, engines_digest: str) -> list[SweepJob]:
        """Every job of the grid in the stable order. Style files are hashed once each (for the job keys);
        an unreadable one gets the digest ``unreadable`` and its jobs fail when they run."""
        width = max(3, len(str(max(len(self.prompts), len(self.styles)) - 1)))
        digests = {entry.path: file_digest(entry.path) for entry in self.styles}
        jobs = []
        for i in range(len(self.prompts)):
            for j, entry in enumerate(self.styles):
                for method in self.methods:
                    for seed in self.seeds:
                        config = self.config(i, j, method, seed)
                        jobs.append(SweepJob(
                            index=len(jobs), prompt_index=i, style_index=j, method=method, seed=seed,
                            name=f"p{i:0{width}d}-s{j:0{width}d}-{method}-seed{seed}", config=config,
                            key=job_key(config, engines_digest, (digests[entry.path],)),
                            engines_digest=engines_digest))
        return jobs

    def to_dict(self) -> dict:
        """JSON-ready description (written to ``DIR/sweep.json``)."""
        return {"prompts": list(self.prompts),
                "styles": [{"style": str(s.path), "content": s.content} for s in self.styles],
                "methods": list(self.methods), "seeds": list(self.seeds),
                "run_options": {k: _jsonable(v) for k, v in self.run_options},
                "order": "prompt, style, method, seed", "jobs": self.size}


def _jsonable(value):
    """A run-option value as JSON: paths as text, enums by value, tuples (control images, scales) as lists."""
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return getattr(value, "value", value)


def read_prompts(path: Path) -> tuple[str, ...]:
    """Non-empty, non-comment lines of a UTF-8 text file, stripped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--prompts {path} could not be read as UTF-8 text ({exc})") from None
    prompts = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not prompts:
        raise InputError(f"--prompts {path} has no prompt; write one prompt per line")
    return prompts


def read_styles(path: Path) -> tuple[StyleEntry, ...]:
    """Rows of the styles CSV (columns ``style``, ``content``); paths made absolute against its folder."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [name.strip() for name in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"--styles {path} could not be read as a UTF-8 CSV file ({exc})") from None
    missing = [name for name in ("style", "content") if name not in header]
    if missing:
        raise InputError(f"--styles {path} has no column {', '.join(repr(m) for m in missing)} (header: {header}); "
                         "the first line must name the columns, e.g. 'style,content'")
    entries = []
    for number, row in enumerate(rows, start=1):
        row = {(k or "").strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in row.items()}
        if not any(row.values()):
            continue  # blank line
        if not row["style"]:
            raise InputError(f"--styles {path} row {number}: the style column is empty; give an image path")
        if not row["content"]:
            raise InputError(f"--styles {path} row {number} ({row['style']}): the content column is empty; name what "
                             "the style image shows (e.g. 'a ship'), the content that must not leak")
        image = Path(row["style"]).expanduser()
        image = image if image.is_absolute() else path.parent / image
        entries.append(StyleEntry(path=Path(image).absolute(), content=row["content"], row=number))
    if not entries:
        raise InputError(f"--styles {path} has no rows; add one line per style image: PATH,CONTENT")
    return tuple(entries)


def parse_methods(methods: str | tuple[str, ...]) -> tuple[str, ...]:
    """'maskst,ip-adapter' -> ('maskst', 'ip-adapter'); unknown or repeated names are refused."""
    names = tuple(m.strip() for m in methods.split(",")) if isinstance(methods, str) else tuple(methods)
    if not names or not all(names):
        raise InputError(f"--methods {methods!r}: give comma-separated method names from {', '.join(METHODS)}")
    for name in names:
        if name not in METHODS:
            raise InputError(f"--methods: unknown method {name!r}; choose from {', '.join(METHODS)}")
    if len(set(names)) != len(names):
        raise InputError(f"--methods {methods!r} names a method twice")
    return names


def parse_seeds(seeds: str | tuple[int, ...]) -> tuple[int, ...]:
    """'0,1,2' -> (0, 1, 2); each a non-negative integer, none repeated."""
    if isinstance(seeds, str):
        try:
            values = tuple(int(s) for s in seeds.split(","))
        except ValueError:
            raise InputError(f"--seeds {seeds!r} must be comma-separated integers, e.g. 0,1") from None
    else:
        values = tuple(seeds)
    if not values or not all(is_seed(v) for v in values):
        raise InputError(f"--seeds {seeds!r} must be integers in [0, 2**63)")
    if len(set(values)) != len(values):
        raise InputError(f"--seeds {seeds!r} names a seed twice")
    return values
