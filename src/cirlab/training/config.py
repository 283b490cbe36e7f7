"""One dataclass per run: every training choice, saved as config.json beside the weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cirlab.datasets import DATASETS
from cirlab.inference.precision import PRECISIONS
from cirlab.models import ModelConfig
from cirlab.utils.errors import CirlabError
from cirlab.utils.fields import check_fields

AUGMENTS = ("none", "crop_flip")
OPTIMIZERS = ("sgd", "adam", "adamw")
PADS = ("none", "target_pad", "square_pad")
POSITIVE = ("iters", "batch_size", "lr", "lr_decay", "adam_eps", "log_every", "eval_batch_size")
NON_NEGATIVE = ("epochs", "lr_decay_epochs", "lr_decay_until_epochs", "lr_decay_every", "lr_decay_until", "momentum",
                "weight_decay", "grad_clip", "eval_every", "checkpoint_every", "workers", "image_size", "minutes")


@dataclass
class TrainConfig:
    """A training run. Defaults follow TIRG's CSS recipe (SGD 0.01, momentum 0.9, batch 32, soft triplet)."""

    dataset: str = "css"
    data_root: str = "data/css"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    eval_split: str = ""  # "": the dataset's evaluation split (val for FashionIQ and CIRR, else test)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: str = "soft_triplet"
    optimizer: str = "sgd"  # "sgd" (TIRG, ComposeAE) or "adam"/"adamw" (CRN, Combiner)
    iters: int = 160_000
    epochs: int = 0  # > 0: train this many epochs of the dataset's epoch_size() instead (sets iters at start)
    lr_decay_epochs: int = 0  # > 0: lr_decay_every in epochs (CRN's --lr_decay)
    lr_decay_until_epochs: int = 0  # > 0: lr_decay_until in epochs (CRN's --max_decay_epoch)
    batch_size: int = 32
    lr: float = 0.01
    lr_decay_every: int = 0  # 0: never (google/tirg's default); its README passes 50,000 on Fashion200k/MIT-States
    lr_decay: float = 0.1
    lr_decay_until: int = 0  # no decay step at or after this iteration (CRN's --max_decay_epoch); 0: no limit
    momentum: float = 0.9
    adam_eps: float = 1e-8  # Adam/AdamW epsilon (CRN's --eps)
    weight_decay: float = 1e-6
    backbone_lr_mult: float | None = None  # None: the dataset's (google/tirg: 1.0 on CSS, 0.1 on real images)
    augment: str = "none"  # "none": resize + centre crop (the releases); "crop_flip": random crop (+ flip)
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
    precision: str = "fp32"  # "fp32", "bf16" or "fp16" (CUDA only): autocast of the forward passes
    compile: bool = False  # torch.compile the image path and composition head (eager after a failure)
    distinct_images: bool = False  # encode a batch's repeated images once (training/distinct.py; opt-in, not bitwise)

    def __post_init__(self) -> None:
        """Validation lives here, so that Python users get the same checks as the CLI."""
        dataset_cls = DATASETS.get(self.dataset)
        if not self.eval_split:
            self.eval_split = dataset_cls.eval_split
        splits = getattr(dataset_cls, "splits", ())
        for name in ("train_split", "eval_split"):
            if splits and getattr(self, name) not in splits:
                raise CirlabError(f"{name} {getattr(self, name)!r}: {self.dataset} has splits {', '.join(splits)}")
        for name, allowed in (("augment", AUGMENTS), ("optimizer", OPTIMIZERS), ("pad", PADS),
                              ("precision", PRECISIONS)):
            if getattr(self, name) not in allowed:
                raise CirlabError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if self.distinct_images and (self.compile or self.feature_cache):
            raise CirlabError("distinct_images does not combine with compile or feature_cache: choose one")
        for name in POSITIVE:
            if not getattr(self, name) > 0:
                raise CirlabError(f"{name} must be positive, not {getattr(self, name)!r}")
        for name in NON_NEGATIVE:
            if getattr(self, name) < 0:
                raise CirlabError(f"{name} must not be negative, not {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resolve_epochs(self, epoch_size: int) -> int:
        """Turn the epoch settings into iterations of `epoch_size` samples at this batch size (the releases' loaders
        drop the last partial batch); returns the iterations per epoch (0 when the run counts iterations)."""
        if not self.epochs:
            return 0
        per_epoch = max(epoch_size // self.batch_size, 1)
        self.iters = self.epochs * per_epoch
        if self.lr_decay_epochs:
            self.lr_decay_every = self.lr_decay_epochs * per_epoch
            self.lr_decay_until = self.lr_decay_until_epochs * per_epoch
        return per_epoch

    def trunk_lr_mult(self) -> float:
        """`backbone_lr_mult`, or the dataset's released default when it is None."""
        if self.backbone_lr_mult is not None:
            return float(self.backbone_lr_mult)
        return float(DATASETS.get(self.dataset).backbone_lr_mult)

    @classmethod
    def from_dict(cls, data: Any, where: str = "train") -> TrainConfig:
        """Rebuild from config.json's entry; every field is checked against its annotation (CirlabError)."""
        data = check_fields(cls, data, where)
        data["model"] = ModelConfig.from_dict(data.get("model", {}), f"{where}.model")
        return cls(**data)
