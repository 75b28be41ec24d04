"""Click options derived from :class:`maskst.generation.GenerationConfig`: one source of defaults.

Every request field becomes ``--field-name`` with the field's help and default (shown, never passed:
an option the user did not give is absent, so ``--height 0`` is a value to refuse, not "default").
Batch-job and sweep fields are the same field names (:data:`REQUEST_FIELDS`).
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from pathlib import Path

import click

from maskst.errors import InputError
from maskst.generation import GenerationConfig, Region

REQUEST_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(GenerationConfig))


def _parse_floats(ctx, param, text: str | None):
    if not text:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} must be comma-separated numbers, e.g. 0,0,1,1") from None


def _click_kwargs(hint) -> dict:
    """click type / multiplicity for a field's type hint."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"type": click.Choice([m.value for m in hint])}
    if typing.get_origin(hint) is tuple:
        item = args[0]
        if item is Region:  # --region STYLE_IMAGE MASK_IMAGE CONTENT_TEXT (repeatable)
            path = click.Path(path_type=Path, dir_okay=False)
            return {"multiple": True, "type": click.Tuple([path, path, str]), "metavar": "STYLE MASK CONTENT"}
        if item is float:
            return {"type": str, "callback": _parse_floats}
        if isinstance(item, type) and issubclass(item, enum.Enum):
            return {"multiple": True, "type": click.Choice([m.value for m in item])}
        return {"multiple": True, "type": click.Path(path_type=Path) if item is Path else item}
    if hint is Path:
        return {"type": click.Path(path_type=Path, dir_okay=False)}
    return {"type": hint}


def _shown(value) -> str:
    if isinstance(value, enum.Enum):
        return value.value
    if value in ((), None, ""):
        return ""
    return str(value)


def request_options(defaults: dict | None = None, exclude: tuple[str, ...] = ()):
    """Decorator: one click option per GenerationConfig field (except ``exclude``). ``defaults``
    overrides the defaults shown in --help (e.g. a benchmark's smaller size); none is passed."""
    hints = typing.get_type_hints(GenerationConfig)

    def decorate(func):
        for field in reversed(dataclasses.fields(GenerationConfig)):
            if field.name in exclude:
                continue
            default = (defaults or {}).get(field.name, field.default)
            help_text = field.metadata["help"]
            if default is not dataclasses.MISSING and _shown(default):
                help_text += f"  [default: {_shown(default)}]"
            flag = field.metadata.get("flag") or "--" + field.name.replace("_", "-")
            func = click.option(flag, field.name, default=None, help=help_text, **_click_kwargs(hints[field.name]))(func)
        return func

    return decorate


def given_request(values: dict) -> dict:
    """The request fields the user actually gave (absent options and empty repeats left out)."""
    return {k: v for k, v in values.items() if k in REQUEST_FIELDS and v is not None and v != ()}


def request_from(values: dict, **fallback) -> GenerationConfig:
    """GenerationConfig from given options over ``fallback`` values, validated (InputError on the first bad one)."""
    given = given_request(values)
    merged = {**{k: v for k, v in fallback.items() if v is not None}, **given}
    if "prompt" not in merged:
        raise InputError("--prompt is required")
    return GenerationConfig.create(**merged)
