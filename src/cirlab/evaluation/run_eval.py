"""Evaluate a run directory (or a model mid-training) on a split of its dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cirlab.evaluation.evaluator import evaluate_dataset, model_device, score_eval_sets
from cirlab.models import CompositionModel
from cirlab.training import TrainConfig, load_model, make_transform, open_dataset
from cirlab.training.feature_cache import FeatureCache, build_feature_cache
from cirlab.training.precision import autocast, check_precision
from cirlab.training.trainer import EvalFn, resolve_device


def make_eval_fn(config: TrainConfig, split: str | None = None, progress: bool = True) -> EvalFn:
    """An evaluation callback for the trainer. The eval split is opened now, before any training, so that
    missing or malformed evaluation data stops the run at once instead of after hours of training."""
    dataset = open_dataset(config, split or config.eval_split)

    def evaluate(model: CompositionModel) -> dict[str, Any]:
        transform = make_transform(config, model, train=False)
        return evaluate_dataset(model, dataset, transform, config.eval_batch_size, progress, config.precision)

    return evaluate


def make_cached_eval_fn(config: TrainConfig, run_dir: Path, split: str | None = None, progress: bool = True,
                        batch_size: int = 512) -> EvalFn:
    """An evaluation callback that scores on cached features of the eval split (the cache is built on first use,
    when the model's frozen encoders exist; the split itself is opened now, like `make_eval_fn`)."""
    split = split or config.eval_split
    dataset = open_dataset(config, split)
    sets = dataset.eval_sets()
    state: dict[str, FeatureCache] = {}

    @torch.no_grad()
    def evaluate(model: CompositionModel) -> dict[str, Any]:
        if "cache" not in state:
            texts = [t for s in sets for t in s.query_texts]
            state["cache"] = build_feature_cache(model, dataset, make_transform(config, model, train=False), run_dir,
                                                 split, texts, progress)
        cache, device = state["cache"], next(model.parameters()).device
        model.eval()

        def in_batches(count: int, fn: Any) -> torch.Tensor:
            with autocast(device, config.precision):
                parts = [fn(slice(i, i + batch_size)) for i in range(0, count, batch_size)]
            return torch.cat([F.normalize(p.float(), dim=-1).cpu() for p in parts])

        return score_eval_sets(
            dataset, sets,
            lambda s: in_batches(len(s.gallery_images), lambda b: model.target_features(
                cache.image_feats(s.gallery_images[b], device))),
            lambda s: in_batches(s.num_queries, lambda b: model.compose_features(
                cache.image_feats(s.query_images[b], device), cache.text_feats(s.query_texts[b], device))))

    return evaluate


def evaluate_run(run_dir: str | Path, split: str | None = None, data_root: str | None = None,
                 progress: bool = True, dataset_options: dict[str, Any] | None = None,
                 device: str = "cpu", precision: str = "fp32") -> dict[str, Any]:
    """Load a run and evaluate it; returns {"dataset", "split", "model", "queries", "gallery", metrics...}.

    `dataset_options` override the run's saved ones (e.g. another gallery protocol); `precision` is the autocast
    of the encoders (cirlab.training.precision), fp32 by default whatever the run trained with."""
    model, config = load_model(run_dir)
    model.to(resolve_device(device))
    check_precision(precision, model_device(model))
    if dataset_options:
        config.dataset_options = {**config.dataset_options, **dataset_options}
    split = split or config.eval_split
    dataset = open_dataset(config, split, data_root)
    result = evaluate_dataset(model, dataset, make_transform(config, model, train=False), config.eval_batch_size,
                              progress, precision)
    return {"dataset": config.dataset, "split": split, "model": config.model.name, "queries": result["queries"],
            "gallery": result["gallery"], **result["metrics"], "protocol": result["protocol"],
            "per_set": result["per_set"]}
