"""Paper setups as files: `cirlab/recipes/<model>_<dataset>.json`, each a complete TrainConfig minus the data root.

A recipe names the paper it reproduces (`paper`) and where its settings come from (`source`: the released command
or script). `recipe(name, data_root=..., iters=5)` gives the TrainConfig with overrides; `--set model.embed_dim=256`
on the command line does the same with dotted keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from cirlab.models import ModelConfig
from cirlab.training.config import TrainConfig
from cirlab.utils.errors import CirlabError

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"


@dataclass(frozen=True)
class Recipe:
    name: str
    paper: str
    source: str
    train: dict[str, Any]


def list_recipes() -> list[str]:
    """Names of the shipped recipes."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.json"))


def load_recipe(name: str) -> Recipe:
    path = RECIPE_DIR / f"{name}.json"
    if not path.is_file():
        raise CirlabError(f"unknown recipe {name!r}; choose from: {', '.join(list_recipes())}")
    data = json.loads(path.read_text())
    return Recipe(name=name, paper=data["paper"], source=data["source"], train=data["train"])


def apply_overrides(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys on a TrainConfig dict: `iters`, `model.embed_dim`, `dataset_options.categories`,
    `model.options.local_t`. The first key must be a TrainConfig field (under `model`, a ModelConfig field); deeper
    keys go into dict fields. Unknown keys are errors listing the valid ones."""
    out = json.loads(json.dumps(config))
    train_keys = {f.name: f.type for f in fields(TrainConfig)}
    model_keys = {f.name: f.type for f in fields(ModelConfig)}
    for key, value in overrides.items():
        path = key.split(".")
        known = train_keys
        node = out
        for depth, part in enumerate(path[:-1]):
            if known is not None and part not in known:
                raise CirlabError(f"unknown setting {key!r}; valid here: {', '.join(sorted(known))}")
            if known is not None and "dict" not in str(known[part]) and part != "model":
                raise CirlabError(f"setting {'.'.join(path[:depth + 1])!r} has no sub-settings")
            known = model_keys if (depth == 0 and part == "model") else None
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CirlabError(f"setting {'.'.join(path[:depth + 1])!r} has no sub-settings")
        last = path[-1]
        if known is not None and (last not in known or (known is train_keys and last == "model")):
            raise CirlabError(f"unknown setting {key!r}; valid here: {', '.join(sorted(known))}")
        node[last] = value
    if "iters" in overrides and "epochs" not in overrides:
        out["epochs"] = 0  # an explicit length in iterations replaces a length in epochs
    return out


def recipe(name: str, data_root: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """The TrainConfig of a shipped recipe with `data_root` and TrainConfig overrides (`model={...}` for the
    model's fields), e.g. `recipe("tirg_css", data_root="data/css", iters=5)`."""
    settings = dict(load_recipe(name).train)
    if data_root is not None:
        settings["data_root"] = str(data_root)
    model = overrides.pop("model", None)
    dotted = {**overrides, **{f"model.{k}": v for k, v in (model or {}).items()}}
    return TrainConfig.from_dict(apply_overrides(settings, dotted))
