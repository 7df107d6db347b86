from diffusers import ConfigMixin, ModelMixin  # noqa: F401

from .dic import DiCModel
from .dico import DiCoModel

__all__ = ["DiCModel", "DiCoModel"]
