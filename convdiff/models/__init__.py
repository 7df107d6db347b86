from diffusers import ConfigMixin, ModelMixin  # noqa: F401

from .dic import DiCModel
from .dico import DiCoModel

__all__ = ["DiCModel", "DiCoModel"]

from .controlnet import ControlNet, MultiControlNet  # noqa: E402

__all__ += ["ControlNet", "MultiControlNet"]

from .layered_unet import LayeredUNetModel  # noqa: E402

__all__ += ["LayeredUNetModel"]

from .video import InflatedFourDModel, InflatedVideoModel, inflate  # noqa: E402

__all__ += ["InflatedFourDModel", "InflatedVideoModel", "inflate"]

from .diffit import DiffiTModel  # noqa: E402
from .diffit_unet import DiffiTUNetModel  # noqa: E402
from .label_conditioned_unet import LabelConditionedUNet  # noqa: E402

__all__ += ["DiffiTModel", "DiffiTUNetModel", "LabelConditionedUNet"]
