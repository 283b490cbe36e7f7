"""Parsing helpers shared by command modules."""

from __future__ import annotations

import json
from typing import Any

from cirlab.utils.errors import CirlabError


def parse_key_values(items: list[str] | None, flag: str) -> dict[str, Any]:
    """`key=value` pairs; values are read as JSON when they parse (numbers, booleans, lists), else strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise CirlabError(f"{flag} expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def print_json_line(obj: dict[str, Any]) -> None:
    """The machine-readable result: one JSON object as the last line of stdout."""
    print(json.dumps(obj, sort_keys=False), flush=True)
