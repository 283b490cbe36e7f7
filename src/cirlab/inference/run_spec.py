"""What a run directory says about its data, read without the training code.

A run's config.json holds the whole `TrainConfig` under "train" (`cirlab.training` owns that dataclass and its
checks); evaluation, indexing, serving and the reports need only a few of its fields: which dataset (name, root,
options, evaluation split), how it was preprocessed (for runs saved before the "preprocess" block existed) and
how to evaluate it (batch size, precision, feature cache). `RunSpec` is those fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cirlab.datasets import DATASETS, CIRDataset, build_dataset
from cirlab.datasets.transforms import Preprocess
from cirlab.models import CompositionModel
from cirlab.utils.errors import CirlabError
from cirlab.utils.fields import check_value

#: RunSpec field -> (type, required): what is read from the "train" entry; other entries are training's.
_READ: dict[str, tuple[Any, bool]] = {
    "dataset": (str, True), "data_root": (str, True), "dataset_options": (dict[str, Any], False),
    "eval_split": (str, False), "eval_batch_size": (int, False), "image_size": (int, False), "pad": (str, False),
    "precision": (str, False), "feature_cache": (bool, False),
}


def dataset_preprocess(dataset: str, image_size: int, pad: str, model: CompositionModel) -> Preprocess:
    """The evaluation preprocessing of a run on `dataset`: `image_size`, or the dataset class's default when it is
    0, the `pad` mode, and the image encoder's mean/std."""
    size = image_size or DATASETS.get(dataset).image_size
    return Preprocess(size=size, pad=pad, mean=model.image_encoder.mean, std=model.image_encoder.std)


@dataclass(frozen=True)
class RunSpec:
    """The data side of a run: its dataset and how it is evaluated (a read-only view of config.json's "train")."""

    dataset: str
    data_root: str
    dataset_options: dict[str, Any] = field(default_factory=dict)
    eval_split: str = ""  # "": the dataset's evaluation split
    eval_batch_size: int = 128
    image_size: int = 0  # 0: the dataset's default
    pad: str = "none"
    precision: str = "fp32"  # the autocast the run trained (and evaluates during training) with
    feature_cache: bool = False
    #: The whole "train" entry as saved, for reports that show the training settings.
    train: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        DATASETS.get(self.dataset)  # an unknown dataset is one CirlabError listing the registered ones
        if not self.eval_split:
            object.__setattr__(self, "eval_split", DATASETS.get(self.dataset).eval_split)
        if self.eval_batch_size < 1:
            raise CirlabError(f"eval_batch_size must be positive, not {self.eval_batch_size}")

    @classmethod
    def from_train_dict(cls, train: Any, where: str = "train") -> RunSpec:
        """Read the fields evaluation needs from a config.json "train" entry (or `TrainConfig.to_dict()`); their
        types are checked (CirlabError naming `where` and the field), the other entries are left to training."""
        if not isinstance(train, Mapping):
            raise CirlabError(f"{where} must be a JSON object")
        values: dict[str, Any] = {}
        for name, (tp, required) in _READ.items():
            if name not in train:
                if required:
                    raise CirlabError(f"{where}: field {name!r} is missing")
                continue
            values[name] = check_value(tp, train[name], f"{where}.{name}")
        return cls(**values, train=dict(train))

    @property
    def model_name(self) -> str:
        model = self.train.get("model")
        return str(model.get("name", "?")) if isinstance(model, Mapping) else "?"

    def open_dataset(self, split: str | None = None, data_root: str | Path | None = None,
                     **options: Any) -> CIRDataset:
        """The run's dataset on `split` (default: its evaluation split); `data_root` when the data moved since
        training, `options` over the run's dataset options (e.g. another gallery protocol)."""
        return build_dataset(self.dataset, data_root or self.data_root, split or self.eval_split,
                             **{**self.dataset_options, **options})

    def preprocess(self, model: CompositionModel) -> Preprocess:
        """The preprocessing this run evaluates with (for runs saved without a "preprocess" block)."""
        return dataset_preprocess(self.dataset, self.image_size, self.pad, model)
