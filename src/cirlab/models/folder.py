"""A model is a directory: `config.json` + `model.safetensors` + the text encoder's assets (e.g. `vocab.json`).

config.json of a model folder:
  {"cirlab_version": ..., "model": ModelConfig, "preprocess": {"size", "pad", "mean", "std"}}
A run directory is a model folder plus what only training needs: its config.json adds "train" (the whole
TrainConfig, whose "model" entry must equal the top-level one) beside `metrics.json`, `tb/` and `checkpoint/`.
Run directories written before model folders existed hold only {"cirlab_version", "train"}: the model config is
then read from "train.model" (the preprocess block is derived from the train config by `cirlab.inference`).

Nothing in a folder is an absolute path that must stay valid: loading reads only the folder itself, so it can be
moved or copied. (A model config may name the file its image trunk started from, `image_weights`; loading does
not read it, the trunk's trained weights are in model.safetensors.) Nothing is pickled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from cirlab import __version__
from cirlab.datasets.transforms import Preprocess
from cirlab.models.base import CompositionModel, ModelConfig, build_model
from cirlab.utils.device import resolve_device
from cirlab.utils.errors import CirlabError
from cirlab.utils.io import load_tensors, read_json, save_tensors_atomic, write_json_atomic

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def read_folder_config(directory: str | Path) -> dict[str, Any]:
    """A model folder's (or run directory's) config.json as a JSON object with a model config in it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CirlabError(f"run directory or model folder not found: {directory}" if directory.name != CONFIG_FILE else
                          f"pass the folder that holds {CONFIG_FILE}, not the file: {directory.parent}")
    path = directory / CONFIG_FILE
    data = read_json(path, "run config")
    if not isinstance(data, dict) or not ("model" in data or isinstance(data.get("train"), dict)):
        raise CirlabError(f"{path} is not a cirlab model or run config (no 'model' or 'train' entry)")
    return data


def folder_model_config(data: Mapping[str, Any], path: Path) -> ModelConfig:
    """The model config of a folder's config.json: "model", or "train.model" in a run directory of before model
    folders; both present must agree (they are written together)."""
    train = data.get("train")
    if "model" in data:
        if isinstance(train, dict) and "model" in train and train["model"] != data["model"]:
            raise CirlabError(f"{path}: 'model' and 'train.model' differ; a run directory keeps them equal "
                              "(edit both, or delete the top-level 'model' to use 'train.model')")
        raw, where = data["model"], "model"
    else:
        raw, where = train.get("model", {}), "train.model"
    try:
        return ModelConfig.from_dict(raw, where)
    except CirlabError as exc:
        raise CirlabError(f"{path}: {exc}") from None


def write_folder_config(directory: str | Path, config: ModelConfig, preprocess: Preprocess | None,
                        extra: Mapping[str, Any] | None = None) -> None:
    """Write config.json: the model config, the preprocess block (omitted when None) and `extra` entries (a run
    directory's "train")."""
    data: dict[str, Any] = {"cirlab_version": __version__, "model": config.to_dict()}
    if preprocess is not None:
        data["preprocess"] = preprocess.to_dict()
    data.update(extra or {})
    write_json_atomic(Path(directory) / CONFIG_FILE, data)


def save_weights(directory: str | Path, model: CompositionModel) -> None:
    save_tensors_atomic(Path(directory) / WEIGHTS_FILE, model.state_dict(), metadata={"format": "pt"})


def save_model_folder(model: CompositionModel, directory: str | Path, preprocess: Preprocess | None = None,
                      extra: Mapping[str, Any] | None = None) -> None:
    """Write the whole folder (each file atomically): config.json, the text assets, then the weights."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_folder_config(directory, model.config, preprocess, extra)
    model.text_encoder.save_assets(directory)
    save_weights(directory, model)


def load_model_folder(directory: str | Path, device: str | torch.device = "cpu") -> CompositionModel:
    """Rebuild the model of a folder from its config, assets and weights, in eval mode on `device`."""
    directory = Path(directory)
    config = folder_model_config(read_folder_config(directory), directory / CONFIG_FILE)
    target = resolve_device(device)
    state = load_tensors(directory / WEIGHTS_FILE)
    model = build_model(replace(config, image_weights=""), assets_dir=directory)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CirlabError(f"{directory / WEIGHTS_FILE} does not match its config: missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}")
    model.config = config
    return model.to(target).eval()
