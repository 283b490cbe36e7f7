"""Check a JSON object against a dataclass's annotations before building it from a file.

`check_fields(TrainConfig, data, "train")` reads the field types from the annotations (str, int, float, bool,
dict[K, V], list[T], tuple, X | None, Any, nested dataclasses as JSON objects), so a new field is checked without
new code. A wrong type is one CirlabError naming the field, e.g. `train.model.embed_dim must be an integer, not
a string ('512')`. A field may also carry a lower bound, `field(default=32, metadata={"min": 1})`, checked the
same way.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from cirlab.utils.errors import CirlabError

_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a JSON object",
          list: "a list", tuple: "a list", type(None): "null"}


def _describe(value: Any) -> str:
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return f"{_NAMES.get(type(value), type(value).__name__)} ({shown})"


def _expected(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_expected(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a JSON object"
    return _NAMES.get(origin or tp, getattr(tp, "__name__", str(tp)))


def check_value(tp: Any, value: Any, where: str) -> Any:
    """`value` if it has type `tp` (ints are accepted and converted where a float is annotated)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return check_value(option, value, where)
            except CirlabError:
                continue
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return value  # the dataclass's own from_dict checks its fields
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is type(None) or tp is None:
        if value is None:
            return value
    elif origin is dict or tp is dict:
        if isinstance(value, dict):
            key_type, value_type = args or (Any, Any)
            return {check_value(key_type, k, f"{where} key"): check_value(value_type, v, f"{where}.{k}")
                    for k, v in value.items()}
    elif origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, list | tuple):
            item_type = args[0] if args and (origin is list or (len(args) == 2 and args[1] is Ellipsis)) else Any
            items = [check_value(item_type, v, f"{where}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if (origin or tp) is tuple else items
    elif isinstance(tp, type):
        if isinstance(value, tp):
            return value
    else:
        raise TypeError(f"check_value cannot check the annotation {tp!r} of {where}")
    raise CirlabError(f"{where} must be {_expected(tp)}, not {_describe(value)}")


def check_fields(cls: type, data: Any, where: str) -> dict[str, Any]:
    """`data` as keyword arguments for dataclass `cls`: a JSON object with known fields of the annotated types.

    Missing fields are left to the dataclass defaults; unknown fields and wrong types raise CirlabError."""
    if not isinstance(data, dict):
        raise CirlabError(f"{where} must be a JSON object, not {_describe(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise CirlabError(f"{where} has unknown fields: {unknown}")
    out = {name: check_value(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    for f in dataclasses.fields(cls):
        low = f.metadata.get("min")
        if low is not None and f.name in out and isinstance(out[f.name], int | float) and out[f.name] < low:
            raise CirlabError(f"{where}.{f.name} must be at least {low}, not {out[f.name]!r}")
    return out
