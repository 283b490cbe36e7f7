"""Datasets: each benchmark is one registered `CIRDataset` that owns its pairs, queries and protocol."""

from cirlab.datasets import css  # noqa: F401  (registers "css")
from cirlab.datasets.base import DATASETS, CIRDataset, EvalSet, TrainPair, build_dataset, load_rgb

__all__ = ["DATASETS", "CIRDataset", "EvalSet", "TrainPair", "build_dataset", "load_rgb"]
