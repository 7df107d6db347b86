"""convdiff: convolutional diffusion denoisers and video/4D generators for diffusers + accelerate."""

# The diffusers base-class names are bound at package level so that model_index.json entries that point
# into convdiff resolve their loading methods (reference/ecosystem.md §2.3).
from diffusers import ConfigMixin, DiffusionPipeline, ModelMixin, SchedulerMixin  # noqa: F401

from .models.dic import DiCModel
from .models.dico import DiCoModel
from .registry import MODELS, create_model, model_spec

__version__ = "0.1.0"
__all__ = ["DiCModel", "DiCoModel", "MODELS", "create_model", "model_spec"]
