"""The run directory: `config.json` + `model.safetensors` + text-encoder assets, loadable without pickle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cirlab import __version__
from cirlab.datasets import DATASETS, CIRDataset, build_dataset
from cirlab.datasets.transforms import ImageTransform
from cirlab.models import CompositionModel, build_model
from cirlab.training.config import TrainConfig
from cirlab.utils.errors import CirlabError
from cirlab.utils.io import load_tensors, read_json, save_tensors_atomic, write_json_atomic

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"


def save_config(run_dir: Path, config: TrainConfig) -> None:
    write_json_atomic(Path(run_dir) / CONFIG_FILE, {"cirlab_version": __version__, "train": config.to_dict()})


def load_config(run_dir: str | Path) -> TrainConfig:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CirlabError(f"run directory not found: {run_dir}")
    data = read_json(run_dir / CONFIG_FILE, "run config")
    if not isinstance(data, dict) or "train" not in data:
        raise CirlabError(f"{run_dir / CONFIG_FILE} is not a cirlab run config (no 'train' entry)")
    return TrainConfig.from_dict(data["train"])


def save_model(run_dir: Path, model: CompositionModel) -> None:
    save_tensors_atomic(Path(run_dir) / WEIGHTS_FILE, model.state_dict(), metadata={"format": "pt"})


def load_model(run_dir: str | Path, config: TrainConfig | None = None) -> tuple[CompositionModel, TrainConfig]:
    """Rebuild the model of a run directory from its config and weights (no pickle involved)."""
    run_dir = Path(run_dir)
    config = config or load_config(run_dir)
    model = build_model(config.model, assets_dir=run_dir)
    state = load_tensors(run_dir / WEIGHTS_FILE)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CirlabError(f"{run_dir / WEIGHTS_FILE} does not match its config: missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}")
    model.eval()
    return model, config


def make_transform(config: TrainConfig, model: CompositionModel, train: bool) -> ImageTransform:
    """The preprocessing of a run: the dataset's image size unless overridden, the encoder's mean/std; training
    adds random crops and flips only with `augment="crop_flip"` (the releases resize and centre-crop)."""
    dataset_cls = DATASETS.get(config.dataset)
    size = config.image_size or dataset_cls.image_size
    return ImageTransform(size=size, train=train and config.augment == "crop_flip" and dataset_cls.train_augment,
                          flip=getattr(dataset_cls, "flip_ok", True), pad=config.pad,
                          mean=model.image_encoder.mean, std=model.image_encoder.std)


def open_dataset(config: TrainConfig, split: str, data_root: str | None = None) -> CIRDataset:
    return build_dataset(config.dataset, data_root or config.data_root, split, **config.dataset_options)


@dataclass
class LoadedRun:
    """A trained run ready to use: model in eval mode, its config and its eval-time preprocessing."""

    run_dir: Path
    model: CompositionModel
    config: TrainConfig
    transform: ImageTransform

    @torch.no_grad()
    def embed_images(self, images: list) -> torch.Tensor:
        x = torch.stack([self.transform(img) for img in images])
        return torch.nn.functional.normalize(self.model.embed_target(x), dim=-1)

    @torch.no_grad()
    def compose(self, images: list, texts: list[str]) -> torch.Tensor:
        x = torch.stack([self.transform(img) for img in images])
        return torch.nn.functional.normalize(self.model.compose(x, texts), dim=-1)


def load_run(run_dir: str | Path) -> LoadedRun:
    model, config = load_model(run_dir)
    return LoadedRun(Path(run_dir), model, config, make_transform(config, model, train=False))
