"""The dataset contract: one object owns a benchmark's images, training pairs, queries and protocol.

The evaluator never asks which dataset it holds; every protocol detail (what counts as a hit, which
image is excluded from a query's ranking, which candidates a subset metric ranks, how per-set figures
are summarised) is expressed through `EvalSet` and `CIRDataset.summarize`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from cirlab.datasets.simulated_user import SimulatedUser
from cirlab.utils.errors import CirlabError
from cirlab.utils.options import NoOptions, parse_options
from cirlab.utils.registry import Registry

Image.MAX_IMAGE_PIXELS = 64_000_000


@dataclass
class TrainPair:
    """A training triple: reference image index, modification text, target image index."""

    source: int
    text: str
    target: int


@dataclass
class EvalSet:
    """One retrieval problem: queries ranked against one gallery under one protocol.

    Image references are dataset image indices. `query_labels[kind][q]` and `gallery_labels[kind][g]`
    are integer labels; a gallery item is a hit for query q under `kind` when the labels are equal.
    The first kind is the primary recall ("recall@K"); the others are reported as "<kind>_recall@K".
    `exclude[q]` is a gallery position removed from q's ranking (-1: none). `candidates[q]`, when given,
    lists gallery positions for a subset recall (CIRR's Recall_subset).
    """

    name: str
    query_images: list[int]
    query_texts: list[str]
    gallery_images: list[int]
    query_labels: dict[str, np.ndarray]
    gallery_labels: dict[str, np.ndarray]
    exclude: np.ndarray
    ks: tuple[int, ...] = (1, 5, 10, 50, 100)
    candidates: list[np.ndarray] | None = None
    subset_ks: tuple[int, ...] = (1, 2, 3)
    query_ids: list[str] | None = None
    protocol: str = ""

    @property
    def num_queries(self) -> int:
        return len(self.query_images)


class CIRDataset:
    """Base class of every benchmark; subclasses register with `DATASETS.register(name)`."""

    name: ClassVar[str] = ""
    #: The typed dataset options (`--dataset-option`, config.json's dataset_options); `self.options` holds them.
    Options: ClassVar[type] = NoOptions
    #: Default image side length fed to encoders for this benchmark.
    image_size: ClassVar[int] = 224
    #: Random crops are label-preserving (false for CSS, whose positions carry meaning); used by augment=crop_flip.
    train_augment: ClassVar[bool] = True
    #: Learning-rate multiplier of an ImageNet-initialised image trunk in the released TIRG/ComposeAE training
    #: (0.1 on real images; CSS trains its trunk from scratch at 1.0).
    backbone_lr_mult: ClassVar[float] = 0.1
    #: Horizontal flips are label-preserving (false when texts say "left"/"right").
    flip_ok: ClassVar[bool] = True
    #: The splits `cirlab data stats` counts, and the split with public targets to evaluate on.
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    eval_split: ClassVar[str] = "test"

    def __init__(self, root: str | Path, split: str, **options: Any) -> None:
        self.root = Path(root)
        self.split = split
        self.options = parse_options(type(self).Options, options, "dataset", self.name)

    # images -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        raise NotImplementedError

    def image_path(self, index: int) -> Path:
        raise NotImplementedError

    def image_name(self, index: int) -> str:
        """A stable, human-readable id of an image (its file name by default)."""
        return self.image_path(index).name

    def load_image(self, index: int) -> Image.Image:
        return load_rgb(self.image_path(index))

    def load_batch(self, indices: Sequence[int], transform: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
        """Images `indices`, each preprocessed by `transform`, stacked into one (B, C, H, W) batch."""
        return torch.stack([transform(self.load_image(int(i))) for i in indices])

    # training -----------------------------------------------------------------------------------
    def train_texts(self) -> list[str]:
        """Every modification text of the split (used to build the LSTM vocabulary)."""
        raise NotImplementedError

    def sample_pairs(self, rng: np.random.Generator, n: int) -> list[TrainPair]:
        """Draw `n` training pairs using only `rng` (so a batch is a pure function of its seed)."""
        raise NotImplementedError

    def epoch_size(self) -> int:
        """Training samples per epoch in the released loaders (`len(trainset)`): what `--num_epochs` counts."""
        raise NotImplementedError

    # evaluation ---------------------------------------------------------------------------------
    def eval_sets(self) -> list[EvalSet]:
        raise NotImplementedError

    def summarize(self, per_set: dict[str, dict[str, float]]) -> dict[str, float]:
        """Combine per-EvalSet metrics into the headline figures (default: the single set's)."""
        if len(per_set) == 1:
            return dict(next(iter(per_set.values())))
        keys = set.intersection(*(set(m) for m in per_set.values()))
        return {k: float(np.mean([m[k] for m in per_set.values()])) for k in sorted(keys)}

    def simulated_user(self) -> SimulatedUser | None:
        """A user for multi-turn interactive evaluation (`cirlab interactive-eval`), or None when this benchmark
        cannot state the difference between two of its images (every real-image benchmark)."""
        return None

    def stats(self) -> dict[str, Any]:
        """Counts a user checks after a download: pairs, queries, gallery, missing images."""
        sets = self.eval_sets()
        return {
            "images": len(self),
            "queries": sum(s.num_queries for s in sets),
            "gallery": sum(len(s.gallery_images) for s in sets),
        }


DATASETS: Registry[type[CIRDataset]] = Registry("dataset")


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as RGB, turning missing or corrupt files into one clear CirlabError."""
    path = Path(path)
    if not path.is_file():
        raise CirlabError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CirlabError(f"corrupt or unreadable image {path}: {exc}") from None


def build_dataset(name: str, root: str | Path, split: str, **options: Any) -> CIRDataset:
    """Instantiate a registered dataset, with a clear error when its root is missing (options are checked first:
    a misspelt option is named even without the data)."""
    cls = DATASETS.get(name)
    parse_options(cls.Options, options, "dataset", name)
    if not Path(root).exists():
        raise CirlabError(f"--data-root {root} does not exist")
    return cls(root, split, **options)
