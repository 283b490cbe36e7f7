"""Evaluate a run directory (or a model mid-training) on a split of its dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cirlab.evaluation.evaluator import evaluate_dataset
from cirlab.models import CompositionModel
from cirlab.training import TrainConfig, load_model, make_transform, open_dataset
from cirlab.training.trainer import EvalFn, resolve_device


def make_eval_fn(config: TrainConfig, split: str | None = None, progress: bool = True) -> EvalFn:
    """An evaluation callback for the trainer. The eval split is opened now, before any training, so that
    missing or malformed evaluation data stops the run at once instead of after hours of training."""
    dataset = open_dataset(config, split or config.eval_split)

    def evaluate(model: CompositionModel) -> dict[str, Any]:
        transform = make_transform(config, model, train=False)
        return evaluate_dataset(model, dataset, transform, config.eval_batch_size, progress)

    return evaluate


def evaluate_run(run_dir: str | Path, split: str | None = None, data_root: str | None = None,
                 progress: bool = True, dataset_options: dict[str, Any] | None = None,
                 device: str = "cpu") -> dict[str, Any]:
    """Load a run and evaluate it; returns {"dataset", "split", "model", "queries", "gallery", metrics...}.

    `dataset_options` override the run's saved ones (e.g. another gallery protocol)."""
    model, config = load_model(run_dir)
    model.to(resolve_device(device))
    if dataset_options:
        config.dataset_options = {**config.dataset_options, **dataset_options}
    split = split or config.eval_split
    dataset = open_dataset(config, split, data_root)
    result = evaluate_dataset(model, dataset, make_transform(config, model, train=False), config.eval_batch_size,
                              progress)
    return {"dataset": config.dataset, "split": split, "model": config.model.name, "queries": result["queries"],
            "gallery": result["gallery"], **result["metrics"], "protocol": result["protocol"],
            "per_set": result["per_set"]}
