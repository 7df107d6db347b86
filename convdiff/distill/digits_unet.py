"""Old module path of the MNIST ΔConvFusion teacher (now convdiff/models/label_conditioned_unet.py).

Pipeline folders saved before the move name `convdiff.distill.digits_unet` in their model_index.json, and diffusers
looks the class and the base-class names up on that module, so it keeps exposing them.
"""

from diffusers import ConfigMixin, ModelMixin  # noqa: F401 (names for model_index.json)

from ..models.label_conditioned_unet import LabelConditionedUNet  # noqa: F401
