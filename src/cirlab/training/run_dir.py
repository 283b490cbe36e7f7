"""The run directory: a model folder (`cirlab.models.folder`: config.json, model.safetensors, text assets) whose
config.json also holds the TrainConfig under "train", plus what only training needs: `metrics.json`, `tb/`,
`checkpoint/` (and `feature_cache/`). Loading it for use is `cirlab.inference.load`; this module writes it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cirlab.datasets import DATASETS, CIRDataset, build_dataset
from cirlab.datasets.transforms import ImageTransform, Preprocess
from cirlab.inference.run_spec import dataset_preprocess
from cirlab.models import CompositionModel
from cirlab.models.folder import CONFIG_FILE, WEIGHTS_FILE, save_model_folder, write_folder_config
from cirlab.training.checkpoint import CHECKPOINT_DIR, OLD_DIR, has_checkpoint
from cirlab.training.config import TrainConfig
from cirlab.utils.errors import CirlabError
from cirlab.utils.io import read_json

METRICS_FILE = "metrics.json"


def save_config(run_dir: Path, config: TrainConfig, preprocess: Preprocess) -> None:
    """config.json of a run, written when it starts: the model folder's entries (model config, preprocess block)
    and "train"."""
    write_folder_config(run_dir, config.model, preprocess, extra={"train": config.to_dict()})


def save_run_model(run_dir: Path, config: TrainConfig, model: CompositionModel, preprocess: Preprocess) -> None:
    """The run's model folder (config.json with "train", text assets, weights), written at every checkpoint."""
    save_model_folder(model, run_dir, preprocess, extra={"train": config.to_dict()})


def load_config(run_dir: str | Path) -> TrainConfig:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CirlabError(f"run directory not found: {run_dir}")
    return load_config_file(run_dir / CONFIG_FILE)


def load_config_file(path: str | Path) -> TrainConfig:
    """A run's `config.json` (`{"cirlab_version", "train": {...}}`), with errors naming the file."""
    data = read_json(Path(path), "run config")
    if not isinstance(data, dict) or "train" not in data:
        raise CirlabError(f"{path} is not a cirlab run config (no 'train' entry)")
    try:
        return TrainConfig.from_dict(data["train"])
    except CirlabError as exc:  # wrong field types or values: name the file
        raise CirlabError(f"run config {path}: {exc}") from None


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse (CirlabError) to start a new run where one, or part of one, already is: nothing is overwritten."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CirlabError(f"--out {run_dir} is a file, not a run directory")
    if (run_dir / CONFIG_FILE).exists():
        if has_checkpoint(run_dir):
            raise CirlabError(f"{run_dir} already holds a run; use --resume to continue it, or another --out")
        raise CirlabError(f"{run_dir} already holds a run with no checkpoint to resume; delete it or use another --out")
    found = [name for name in (WEIGHTS_FILE, METRICS_FILE, CHECKPOINT_DIR, OLD_DIR) if (run_dir / name).exists()]
    if found:
        raise CirlabError(f"{run_dir} holds files of an earlier run ({', '.join(found)}); use another --out")


def check_batch_size(batch_size: int, dataset: CIRDataset) -> None:
    """Refuse a batch larger than the split's training samples (pairs, or images for CSS): each batch is drawn
    in one go, so an absurd size would stall at iteration 0."""
    try:
        size = dataset.epoch_size()
    except NotImplementedError:
        size = len(dataset)
    if batch_size > size:
        raise CirlabError(f"--batch-size {batch_size} is larger than the {size} training samples of "
                          f"{dataset.name}/{dataset.split}; use at most {size}")


@contextmanager
def removed_on_failure(run_dir: Path, enabled: bool = True) -> Iterator[None]:
    """If the block fails before a checkpoint exists, delete what it created: the run directory when it was
    new (and the parent folders made for it, when left empty), else only the entries it added. Files that were
    there before are never touched; a run with a checkpoint is kept so that `--resume` can continue it."""
    run_dir = Path(run_dir)
    missing = [p for p in (run_dir, *run_dir.parents) if not p.exists() and not p.is_symlink()]
    before = set(os.listdir(run_dir)) if run_dir.is_dir() else set()
    try:
        yield
    except BaseException:
        if enabled and run_dir.is_dir() and not run_dir.is_symlink() and not has_checkpoint(run_dir):
            _remove_created(run_dir, missing, before)
        raise


def _remove_created(run_dir: Path, missing: list[Path], before: set[str]) -> None:
    if missing:
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in missing[1:]:  # innermost first; rmdir leaves a folder something else has filled
            try:
                parent.rmdir()
            except OSError:
                break
        return
    for name in set(os.listdir(run_dir)) - before:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """A run's `metrics.json` (written when training stops), checked: `iterations` (int), `interrupted` (bool),
    `train_seconds` (number); errors name the file and field."""
    path = Path(run_dir) / METRICS_FILE
    data = read_json(path, "run metrics")
    expected = {"iterations": (int,), "interrupted": (bool,), "train_seconds": (int, float)}
    if not isinstance(data, dict):
        raise CirlabError(f"run metrics {path} is not a JSON object")
    for key, types in expected.items():
        value = data.get(key)
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise CirlabError(f"run metrics {path}: '{key}' must be {' or '.join(t.__name__ for t in types)}, "
                              f"not {value!r}")
    return data


def run_preprocess(config: TrainConfig, model: CompositionModel) -> Preprocess:
    """The evaluation preprocessing of a run: the dataset's image size unless overridden, the pad mode, the
    encoder's mean/std (saved as the run's "preprocess" block)."""
    return dataset_preprocess(config.dataset, config.image_size, config.pad, model)


def make_transform(config: TrainConfig, model: CompositionModel, train: bool) -> ImageTransform:
    """The run's preprocessing as a transform; training adds random crops and flips only with
    `augment="crop_flip"` (the releases resize and centre-crop)."""
    dataset_cls = DATASETS.get(config.dataset)
    return run_preprocess(config, model).transform(
        train=train and config.augment == "crop_flip" and dataset_cls.train_augment,
        flip=getattr(dataset_cls, "flip_ok", True))


def open_dataset(config: TrainConfig, split: str, data_root: str | None = None) -> CIRDataset:
    return build_dataset(config.dataset, data_root or config.data_root, split, **config.dataset_options)
