"""cirlab: composed image retrieval toolkit.

    import cirlab
    pipe = cirlab.load("runs/tirg", device="cuda")        # a run directory or model folder -> model + preprocessing
    q = pipe.compose(images, texts)                      # PIL images + strings -> (B, D) unit vectors on the device
    g = pipe.embed(images)                               # gallery vectors, same space
    ds = cirlab.build_dataset("fashioniq", root, "val")  # a dataset object, as the CLI builds it
    result = cirlab.evaluate(pipe, ds)                   # the metrics `cirlab eval --json` prints
    cfg = cirlab.recipe("tirg_css", iters=5, data_root="data/css")
    cirlab.train(cfg, out="runs/x")                      # the trainer `cirlab train` runs
    cirlab.list_models(); cirlab.list_recipes(); cirlab.list_datasets()

The names are imported on first use, so `import cirlab` (and the `cirlab` command) stays light until then.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "load": "cirlab.inference",
    "Pipeline": "cirlab.inference",
    "Preprocess": "cirlab.inference",
    "build_dataset": "cirlab.datasets",
    "evaluate": "cirlab.evaluation",
    "recipe": "cirlab.training.recipes",
    "list_recipes": "cirlab.training.recipes",
    "TrainConfig": "cirlab.training",
    "train": "cirlab.api",
    "list_models": "cirlab.api",
    "list_datasets": "cirlab.api",
    "CirlabError": "cirlab.utils.errors",
}

__all__ = ["CirlabError", "Pipeline", "Preprocess", "TrainConfig", "__version__", "build_dataset", "evaluate",
           "list_datasets", "list_models", "list_recipes", "load", "recipe", "train"]

if TYPE_CHECKING:
    from cirlab.api import list_datasets, list_models, train
    from cirlab.datasets import build_dataset
    from cirlab.evaluation import evaluate
    from cirlab.inference import Pipeline, Preprocess, load
    from cirlab.training import TrainConfig
    from cirlab.training.recipes import list_recipes, recipe
    from cirlab.utils.errors import CirlabError


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cirlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
