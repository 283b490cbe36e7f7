"""The Python API behind `import cirlab` (see README, "Python API"): the names `cirlab/__init__.py` exports.

Like the CLI, this module sits on top of every layer: it is the one place outside `cirlab.cli` that reaches the
training code (`recipe`, `train`). Everything here is what a command runs, so that a script and `cirlab ...` give
the same results: `evaluate` is `cirlab eval`'s evaluation, `train` is `cirlab train`'s trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cirlab.datasets import DATASETS, build_dataset
from cirlab.evaluation import evaluate, make_cached_eval_fn, make_eval_fn
from cirlab.inference import Pipeline, RunSpec, distributed, load
from cirlab.models import MODELS
from cirlab.training import TrainConfig, Trainer
from cirlab.training.checkpoint import has_checkpoint
from cirlab.training.recipes import list_recipes, recipe
from cirlab.training.run_dir import check_new_run_dir, removed_on_failure
from cirlab.utils.device import resolve_device
from cirlab.utils.errors import CirlabError

__all__ = ["Pipeline", "TrainConfig", "build_dataset", "evaluate", "list_datasets", "list_models", "list_recipes",
           "load", "recipe", "train"]


def list_models() -> list[str]:
    """Names of the registered composition models (`recipe(..., model={"name": ...})`, `cirlab train --model`)."""
    return MODELS.names()


def list_datasets() -> list[str]:
    """Names of the registered datasets (`build_dataset(name, root, split)`)."""
    return DATASETS.names()


def train(config: TrainConfig, out: str | Path, *, resume: bool = False, evaluate: bool = True,
          progress: bool = True, eval_progress: bool | None = None) -> dict[str, Any]:
    """Train `config` into the run directory `out` with the trainer `cirlab train` runs; returns its summary
    ({"iterations", "train_seconds", "interrupted"} and, when `evaluate`, the final "metrics" on the run's eval
    split). A new run refuses an `out` that holds one; `resume=True` continues `out` from its checkpoint. A run
    that fails before its first checkpoint leaves nothing behind. `cirlab.load(out)` then loads it."""
    run_dir = Path(out)
    ctx = distributed.init_from_env(resolve_device(config.device))
    if resume:
        if not has_checkpoint(run_dir):
            raise CirlabError(f"--resume: no checkpoint in {run_dir}")
    else:
        check_new_run_dir(run_dir)
    distributed.barrier(ctx)  # every rank has checked the run directory before rank 0 writes into it
    evaluate_fn = None
    if evaluate:
        run = RunSpec.from_train_dict(config.to_dict())
        shown = progress if eval_progress is None else eval_progress
        evaluate_fn = (make_cached_eval_fn(run, run_dir, progress=shown) if config.feature_cache
                       else make_eval_fn(run, progress=shown))
    with removed_on_failure(run_dir, enabled=ctx.is_main and not resume):
        return Trainer(config, run_dir, evaluate_fn, progress=progress).train(resume=resume)
