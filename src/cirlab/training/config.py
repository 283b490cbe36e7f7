"""One dataclass per run: every training choice, saved as config.json beside the weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from cirlab.models import ModelConfig
from cirlab.utils.errors import CirlabError


@dataclass
class TrainConfig:
    """A training run. Defaults follow TIRG's CSS recipe (SGD 0.01, momentum 0.9, batch 32, soft triplet)."""

    dataset: str = "css"
    data_root: str = "data/css"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    eval_split: str = "test"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: str = "soft_triplet"
    optimizer: str = "sgd"  # "sgd" (TIRG, ComposeAE) or "adam"/"adamw" (CRN, Combiner)
    iters: int = 160_000
    batch_size: int = 32
    lr: float = 0.01
    lr_decay_every: int = 50_000
    lr_decay: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-6
    backbone_lr_mult: float = 1.0  # TIRG: 1.0 on CSS (from scratch), 0.1 for ImageNet-initialised trunks
    grad_clip: float = 0.0
    seed: int = 0
    eval_every: int = 0  # 0: evaluate only at the end
    checkpoint_every: int = 500
    log_every: int = 20
    workers: int = 0
    image_size: int = 0  # 0: the dataset's default
    pad: str = "none"  # "none" | "target_pad" | "square_pad"
    minutes: float = 0.0  # wall-clock budget; 0: none
    eval_batch_size: int = 128
    device: str = "auto"  # "auto" (cuda when available), "cpu", "cuda", "cuda:1", ...
    feature_cache: bool = False  # frozen encoders: encode every image/text once, train on the cached features
    comment: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise CirlabError(f"config.json has unknown training fields: {sorted(unknown)}")
        data["model"] = ModelConfig.from_dict(data.get("model", {}))
        return cls(**data)
