"""Parsing helpers shared by command modules: `key=value` flags, the typed-options check of a run, and the
`--list-options` table."""

from __future__ import annotations

import json
from typing import Any

from cirlab.datasets import DATASETS
from cirlab.encoders import resolve_image_encoder, resolve_text_encoder
from cirlab.models import MODELS
from cirlab.training import TrainConfig
from cirlab.utils.errors import CirlabError
from cirlab.utils.options import describe_options, normalize_options


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


def check_run_options(config: TrainConfig) -> None:
    """Check every options dict of a run against its typed options and store the converted values (`"on"` ->
    `true`), so that a misspelt key or a bad value stops `cirlab train` before the run directory exists."""
    config.model = config.model.checked()
    config.dataset_options = normalize_options(DATASETS.get(config.dataset).Options, config.dataset_options,
                                               "dataset", config.dataset)


def options_table(model: str, image_encoder: str, text_encoder: str, dataset: str) -> str:
    """What `cirlab train --list-options` prints: one section per component (name, type, default, help)."""
    sections = [
        (f"model {model} (--model-option KEY=VALUE)", MODELS.get(model).Options),
        (f"image encoder {image_encoder} (--image-option KEY=VALUE)", resolve_image_encoder(image_encoder).Options),
        (f"text encoder {text_encoder} (--text-option KEY=VALUE)", resolve_text_encoder(text_encoder).Options),
        (f"dataset {dataset} (--dataset-option KEY=VALUE)", DATASETS.get(dataset).Options),
    ]
    rows = {title: describe_options(cls) for title, cls in sections}
    header = ("name", "type", "default", "help")
    every = [header, *(row for table in rows.values() for row in table)]
    widths = [max(len(row[i]) for row in every) for i in range(3)]

    def line(row: tuple[str, str, str, str]) -> str:
        return "  " + "  ".join(f"{cell:<{w}}" for cell, w in zip(row[:3], widths, strict=True)) + f"  {row[3]}"

    lines = [line(header).rstrip()]
    for title, table in rows.items():
        lines += ["", title, *(line(row).rstrip() for row in table)] + ([] if table else ["  (no options)"])
    return "\n".join(lines)
