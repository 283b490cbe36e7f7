"""Inference: a model folder or run directory loaded with its preprocessing (`load` -> `Pipeline`), the one
batched embedding path, device and precision choice, the feature cache and torchrun helpers. Evaluation, indexing
and serving import this layer, never `cirlab.training`."""

from cirlab.datasets.transforms import Preprocess
from cirlab.inference.embedding import embed_batches, map_batches, unit_vectors
from cirlab.inference.pipeline import Pipeline, load
from cirlab.inference.precision import PRECISIONS, autocast, check_precision
from cirlab.inference.run_spec import RunSpec, dataset_preprocess
from cirlab.utils.device import resolve_device

__all__ = ["PRECISIONS", "Pipeline", "Preprocess", "RunSpec", "autocast", "check_precision", "dataset_preprocess",
           "embed_batches", "load", "map_batches", "resolve_device", "unit_vectors"]
