"""Typed options: every registered model, encoder and dataset declares its options as a dataclass, and this one
parser turns them into instances.

Values arrive as CLI strings (`--model-option word_mask=on`), as the JSON guesses `parse_key_values` makes of
them (`1`, `true`, `[1, 2]`), or as config.json values; `parse_options` converts each to its field's annotation
(bool, int, float, str, `Literal[...]` choices, `X | None`, `list[T]`, `tuple[T, ...]`, `dict[K, V]`, `Any`) and
refuses unknown keys with one line that lists the known ones. Booleans are read one way everywhere
(`parse_bool`). `describe_options` gives the rows `cirlab train --list-options` prints; help texts live in the
fields' metadata (`option(default, "help")`).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from cirlab.utils.errors import CirlabError

T = TypeVar("T")

TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_bool(value: Any) -> bool:
    """The one reading of a boolean: a bool, the integers 0/1, or true/false, 1/0, yes/no, on/off (any case).

    Anything else raises `argparse.ArgumentTypeError` (so it serves as an argparse `type=`)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise argparse.ArgumentTypeError(f"expected true or false (true/false, 1/0, yes/no, on/off), not {value!r}")


@dataclasses.dataclass
class NoOptions:
    """The options of a component that has none: every key is refused."""


def option(default: Any, text: str) -> Any:
    """A dataclass field with a default (lists and dicts are copied per instance) and a help text."""
    if isinstance(default, list | dict | set):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata={"help": text})
    return dataclasses.field(default=default, metadata={"help": text})


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _expected(tp: Any) -> str:
    """The annotation in words, for error messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_union(tp):
        return " or ".join(_expected(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    words = {bool: "true or false (true/false, 1/0, yes/no, on/off)", int: "an integer", float: "a number",
             str: "a string", type(None): "null", dict: "a JSON object", list: "a list", tuple: "a list"}
    return words.get(origin or tp, getattr(tp, "__name__", str(tp)))


def type_name(tp: Any) -> str:
    """The annotation as `--list-options` shows it: bool, int, float, str, a|b|c, list[int], dict[str, float]."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return "any"
    if tp is type(None):
        return "null"
    if _is_union(tp):
        return " | ".join(type_name(a) for a in args)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (list, tuple, dict):
        shown = [type_name(a) for a in args if a is not Ellipsis]
        return f"{'list' if origin is tuple else origin.__name__}[{', '.join(shown)}]"
    return getattr(tp, "__name__", str(tp))


def _json_container(value: Any, tp: Any) -> Any:
    """A string given for a list/dict option: JSON, or (lists only) comma-separated items."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if typing.get_origin(tp) in (list, tuple) or tp in (list, tuple):
            return [item.strip() for item in text.split(",") if item.strip()]
        return value


def convert(tp: Any, value: Any, where: str) -> Any:
    """`value` converted to annotation `tp`; a CirlabError naming `where` when it cannot be."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if _is_union(tp):
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() == "null")):
            return None
        for arm in args:
            if arm is type(None):
                continue
            try:
                return convert(arm, value, where)
            except CirlabError:
                continue
    elif origin is Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and not isinstance(choice, str)
                                   and value.strip() == str(choice)):
                return choice
    elif tp is bool:
        try:
            return parse_bool(value)
        except argparse.ArgumentTypeError:
            pass
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is dict or tp is dict:
        value = _json_container(value, tp)
        if isinstance(value, dict):
            key_type, value_type = args or (Any, Any)
            return {convert(key_type, k, f"{where} key"): convert(value_type, v, f"{where}[{k!r}]")
                    for k, v in value.items()}
    elif origin in (list, tuple) or tp in (list, tuple):
        value = _json_container(value, tp)
        if isinstance(value, list | tuple):
            fixed = origin is tuple and args and args[-1] is not Ellipsis
            if fixed and len(value) != len(args):
                raise CirlabError(f"{where} must be a list of {len(args)} items, not {value!r}")
            types_ = args if fixed else [args[0] if args else Any] * len(value)
            items = [convert(t, v, f"{where}[{i}]") for i, (t, v) in enumerate(zip(types_, value, strict=True))]
            return tuple(items) if origin is tuple or tp is tuple else items
    else:
        raise TypeError(f"options cannot read the annotation {tp!r} of {where}")
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    raise CirlabError(f"{where} must be {_expected(tp)}, not {shown}")


def option_names(cls: type) -> list[str]:
    """The options a dataclass declares, sorted."""
    return sorted(f.name for f in dataclasses.fields(cls) if f.init)


def parse_options(cls: type[T], raw: Mapping[str, Any] | None, kind: str, owner: str) -> T:
    """An instance of options dataclass `cls` from `raw` (CLI strings or JSON values).

    `kind` and `owner` name the options in errors, e.g. ("model", "crn") -> `crn: unknown model option 'foo';
    known: ...`. Unknown keys and values that do not convert are one CirlabError line."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{owner}: the {kind} options class {cls!r} is not a dataclass")
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise CirlabError(f"{owner}: {kind} options must be a JSON object, not {type(raw).__name__}")
    known = option_names(cls)
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise CirlabError(f"{owner}: unknown {kind} option{plural} {', '.join(repr(k) for k in unknown)}; "
                          f"known: {', '.join(known) if known else 'none (it takes no options)'}")
    hints = typing.get_type_hints(cls)
    values = {key: convert(hints[key], value, f"{owner}: {kind} option {key}") for key, value in raw.items()}
    return cls(**values)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def normalize_options(cls: type, raw: Mapping[str, Any] | None, kind: str, owner: str) -> dict[str, Any]:
    """`raw` checked and converted (`word_mask: "on"` -> `true`), as the JSON dict config.json stores: only the
    keys that were given, so that a run keeps following the defaults it did not set."""
    parsed = parse_options(cls, raw, kind, owner)
    return {key: _jsonable(getattr(parsed, key)) for key in (raw or {})}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def describe_options(cls: type) -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) for every option of `cls`, in declaration order."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = _default(f)
        shown = ("(required)" if default is dataclasses.MISSING else default if isinstance(default, str)
                 else json.dumps(_jsonable(default)))
        rows.append((f.name, type_name(hints[f.name]), shown, str(f.metadata.get("help", ""))))
    return rows


def drop_retired_fields(data: Any, retired: Mapping[str, Any], where: str) -> Any:
    """A config.json object without the fields cirlab no longer has. A retired field that still holds its old
    default is dropped silently (it never changed anything); any other value is an error, since the file asks
    for something this version cannot do."""
    if not isinstance(data, dict):
        return data
    for name, default in retired.items():
        if name in data and data[name] != default:
            raise CirlabError(f"{where}.{name} is no longer supported (it was never used); remove it from the file "
                              f"(value {data[name]!r})")
    return {k: v for k, v in data.items() if k not in retired}
