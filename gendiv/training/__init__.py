from .checkpoint import CheckpointError
from .config import ConfigError, load_config
from .diffusion import DiffusionTrainer, TrainConfig, train
from .loop import NonFiniteError, RunConfig

__all__ = ["CheckpointError", "ConfigError", "load_config", "DiffusionTrainer", "TrainConfig", "train", "NonFiniteError",
           "RunConfig"]
from .distill import DistillConfig, DistillTrainer, distill  # noqa: E402

__all__ += ["DistillConfig", "DistillTrainer", "distill"]
