"""convdiff: convolutional diffusion denoisers and video/4D generators for diffusers + accelerate.

The names below load on first use (`import convdiff` itself imports neither torch nor diffusers), so the
command line starts fast.
"""

from .lazy import lazy_attributes

__version__ = "0.1.0"
__all__ = ["DiCModel", "DiCoModel", "MODELS", "create_model", "model_spec"]

# The diffusers base-class names stay resolvable as package attributes: model_index.json entries that point
# into convdiff look up their loading methods there (diffusers' pipeline_loading_utils, which calls
# `getattr(module, "ModelMixin", None)` and the like on the module named in the entry).
_LAZY = {
    "ConfigMixin": "diffusers", "DiffusionPipeline": "diffusers", "ModelMixin": "diffusers", "SchedulerMixin": "diffusers",
    "DiCModel": "convdiff.models.dic", "DiCoModel": "convdiff.models.dico",
    "MODELS": "convdiff.registry", "create_model": "convdiff.registry", "model_spec": "convdiff.registry",
}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
