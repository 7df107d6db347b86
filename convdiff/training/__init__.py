"""Training: recipes, objectives, deterministic batches, atomic checkpoints and the accelerate loop."""

from .config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config"]
