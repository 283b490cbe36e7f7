"""Evaluate a pipeline on a dataset (`evaluate`, which `cirlab.evaluate` and `cirlab eval` both run), a run
directory (`evaluate_run`), or a model while it trains (`make_eval_fn`, `make_cached_eval_fn`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cirlab.datasets import CIRDataset
from cirlab.evaluation.evaluator import evaluate_dataset, score_eval_sets
from cirlab.inference import Pipeline, RunSpec, embed_batches, load
from cirlab.inference.feature_cache import FeatureCache, build_feature_cache
from cirlab.models import CompositionModel
from cirlab.utils.errors import CirlabError

#: A callback the trainer calls with its model: the evaluation result ({"metrics", "per_set", ...}).
EvalFn = Callable[[CompositionModel], dict[str, Any]]


def evaluate(pipe: Pipeline, dataset: CIRDataset, progress: bool = False) -> dict[str, Any]:
    """Recall@K of `pipe` on `dataset` under the dataset's protocol: {"dataset", "split", "model", "queries",
    "gallery", the metrics ("recall@1", ...), "protocol", "per_set"} (what `cirlab eval --json` prints)."""
    result = evaluate_dataset(pipe, dataset, progress)
    return {"dataset": dataset.name, "split": dataset.split, "model": pipe.model.config.name,
            "queries": result["queries"], "gallery": result["gallery"], **result["metrics"],
            "protocol": result["protocol"], "per_set": result["per_set"]}


def evaluate_run(run_dir: str | Path, split: str | None = None, data_root: str | None = None,
                 progress: bool = True, dataset_options: dict[str, Any] | None = None,
                 device: str = "cpu", precision: str = "fp32") -> dict[str, Any]:
    """Load a run directory and `evaluate` it on `split` (default: its evaluation split) of its dataset.

    `dataset_options` override the run's saved ones (e.g. another gallery protocol); `precision` is the autocast
    of the forward passes, fp32 by default whatever the run trained with."""
    if not Path(run_dir).is_dir():
        raise CirlabError(f"run directory not found: {run_dir}")
    pipe = load(run_dir, device=device, precision=precision)
    dataset = pipe.open_dataset(split, data_root, **(dataset_options or {}))
    return evaluate(pipe, dataset, progress)


def training_pipeline(model: CompositionModel, run: RunSpec) -> Pipeline:
    """The pipeline of a model being trained: the run's preprocessing, precision and evaluation batch size."""
    return Pipeline(model, run.preprocess(model), run, precision=run.precision, batch_size=run.eval_batch_size)


def make_eval_fn(run: RunSpec, split: str | None = None, progress: bool = True) -> EvalFn:
    """An evaluation callback for the trainer. The eval split is opened now, before any training, so that
    missing or malformed evaluation data stops the run at once instead of after hours of training."""
    dataset = run.open_dataset(split)

    def evaluate_model(model: CompositionModel) -> dict[str, Any]:
        return evaluate_dataset(training_pipeline(model, run), dataset, progress)

    return evaluate_model


def make_cached_eval_fn(run: RunSpec, run_dir: Path, split: str | None = None, progress: bool = True,
                        batch_size: int = 512) -> EvalFn:
    """An evaluation callback that scores on cached features of the eval split (the cache is built on first use,
    when the model's frozen encoders exist; the split itself is opened now, like `make_eval_fn`)."""
    dataset = run.open_dataset(split)
    split = dataset.split
    sets = dataset.eval_sets()
    state: dict[str, FeatureCache] = {}

    @torch.no_grad()
    def evaluate_model(model: CompositionModel) -> dict[str, Any]:
        if "cache" not in state:
            texts = [t for s in sets for t in s.query_texts]
            state["cache"] = build_feature_cache(model, dataset, run.preprocess(model).transform(), run_dir, split,
                                                 texts, progress)
        cache, device = state["cache"], next(model.parameters()).device
        model.eval()

        def vectors(count: int, encode: Callable[[list[int]], torch.Tensor]) -> torch.Tensor:
            return embed_batches(count, encode, model.embed_dim, batch_size=batch_size, device=device,
                                 precision=run.precision)

        return score_eval_sets(
            dataset, sets,
            lambda s: vectors(len(s.gallery_images), lambda rows: model.target_features(
                cache.image_feats([s.gallery_images[r] for r in rows], device))),
            lambda s: vectors(s.num_queries, lambda rows: model.compose_features(
                cache.image_feats([s.query_images[r] for r in rows], device),
                cache.text_feats([s.query_texts[r] for r in rows], device))))

    return evaluate_model
