"""Datasets: each benchmark is one registered `CIRDataset` that owns its pairs, queries and protocol."""

from cirlab.datasets import cirr, css, fashion200k, fashioniq, mitstates, shoes  # noqa: F401  (registrations)
from cirlab.datasets.base import DATASETS, CIRDataset, EvalSet, TrainPair, build_dataset, load_rgb

__all__ = ["DATASETS", "CIRDataset", "EvalSet", "TrainPair", "build_dataset", "load_rgb"]
