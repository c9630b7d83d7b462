"""Command-line flags generated from a configuration dataclass, so a setting is written once.

Each field becomes ``--field-name`` (or ``metadata["flag"]``) with the field's type, its
default in the help, ``metadata["help"]`` and ``metadata["choices"]``; a nested frozen
dataclass field (``ClipConfig.mel``) contributes its own fields. Flags are parsed with
``argparse.SUPPRESS`` defaults, so :func:`given` returns only what the user typed: the
jobs lay those over the defaults, or over the configuration a resumed run saved.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from typing import Any, Literal, get_args, get_origin, get_type_hints


def _flag_type(hint: Any) -> tuple[Any, tuple[Any, ...] | None]:
    """(base type, choices) of a field's annotation; ``X | None`` is ``X``."""
    if get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in get_args(hint) if arg is not type(None))
    if get_origin(hint) is Literal:
        return type(get_args(hint)[0]), get_args(hint)
    return hint, None


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered not in ("1", "0", "true", "false", "yes", "no"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true/false)")
    return lowered in ("1", "true", "yes")


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    defaults: Any = None,
    skip: tuple[str, ...] = (),
) -> None:
    """One flag per field of the dataclass ``cls``; help shows ``defaults``' values (or the fields')."""
    hints = get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip or field.metadata.get("flag") is False:
            continue
        default = getattr(defaults, field.name) if defaults is not None else field.default
        hint, choices = _flag_type(hints[field.name])
        if dataclasses.is_dataclass(hint):
            add_flags(parser, hint, default, skip)
            continue
        flag = field.metadata.get("flag") or "--" + field.name.replace("_", "-")
        help_text = field.metadata.get("help", "")
        shown = "" if default in (dataclasses.MISSING, None, "") else f" (default: {default})"
        options: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS, "help": help_text + shown}
        if hint is not bool and not (choices or field.metadata.get("choices")):
            options["metavar"] = field.metadata.get("metavar", flag.lstrip("-").upper().replace("-", "_"))
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
            continue
        if field.metadata.get("parse"):
            options["type"] = field.metadata["parse"]
        else:
            options["type"] = hint if hint in (int, float, str) else str
        options["choices"] = field.metadata.get("choices", choices)
        if field.metadata.get("repeat"):
            options["action"] = "append"
        parser.add_argument(flag, **options)


def given(namespace: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` (nested ones under their parent's name) the user gave on the command line."""
    values = vars(namespace)
    hints = get_type_hints(cls)
    found: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        hint, _ = _flag_type(hints[field.name])
        if dataclasses.is_dataclass(hint):
            nested = given(namespace, hint)
            if nested:
                found[field.name] = nested
        elif field.name in values:
            found[field.name] = values[field.name]
    return found


def build(cls: type, base: Any, changes: dict[str, Any]) -> Any:
    """``base`` with ``changes`` applied, nested dataclasses included (a frozen config is rebuilt, so it validates)."""
    updates = {}
    for name, value in changes.items():
        current = getattr(base, name)
        updates[name] = (
            build(type(current), current, value)
            if dataclasses.is_dataclass(current) and isinstance(value, dict)
            else value
        )
    return dataclasses.replace(base, **updates)


def check_range(
    flag: str,
    value: float | None,
    low: float | None = None,
    high: float | None = None,
    *,
    above: bool = False,
    multiple: int | None = None,
) -> None:
    """Raise a one-line ValueError unless ``low <= value <= high`` (``low < value`` with ``above``).

    The configs call it from ``__post_init__``, so a bad value is refused where the config is
    built: by argparse's error for a flag, before Ray starts, never inside a worker (where an
    exception makes Ray Train retry the run until ``--max-failures`` is used up). ``None``
    means "not set" and passes; NaN and infinities never do, since ``float`` flags parse them.
    """
    if value is None:
        return
    bad = isinstance(value, float) and not math.isfinite(value)
    bad = bad or (low is not None and (value <= low if above else value < low))
    bad = bad or (high is not None and value > high) or bool(multiple and value % multiple)
    if bad:
        parts = [f"above {low:g}" if above else f"at least {low:g}"] if low is not None else ["finite"]
        if high is not None:
            parts.append(f"at most {high:g}")
        if multiple:
            parts.append(f"a multiple of {multiple}")
        raise ValueError(f"{flag} must be {' and '.join(parts)}, not {value!r}")
