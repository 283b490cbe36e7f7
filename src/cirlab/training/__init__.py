"""Training: the run config, the run directory, checkpoints and the loop."""

from cirlab.training.config import TrainConfig
from cirlab.training.run_dir import LoadedRun, load_config, load_model, load_run, make_transform, open_dataset
from cirlab.training.trainer import Trainer

__all__ = ["LoadedRun", "TrainConfig", "Trainer", "load_config", "load_model", "load_run", "make_transform",
           "open_dataset"]
