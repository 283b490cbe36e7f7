"""Training: the run config, the run directory, checkpoints and the loop (a program on top of the library: only
the CLI and `cirlab.train` import it; loading a trained run is `cirlab.inference.load`)."""

from cirlab.training.config import TrainConfig
from cirlab.training.run_dir import load_config, make_transform, open_dataset
from cirlab.training.trainer import Trainer

__all__ = ["TrainConfig", "Trainer", "load_config", "make_transform", "open_dataset"]
