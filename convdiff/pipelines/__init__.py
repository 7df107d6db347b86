"""diffusers `DiffusionPipeline`s over convdiff (and diffusers) denoisers."""

# Bound here too so model_index.json entries that name this package resolve their loading methods.
from diffusers import ConfigMixin, DiffusionPipeline, ModelMixin, SchedulerMixin  # noqa: F401

from .class_conditional import ClassConditionalPipeline
from .guidance import apply_guidance, guidance_scale_at, power_cosine_scale

__all__ = ["ClassConditionalPipeline", "apply_guidance", "guidance_scale_at", "power_cosine_scale"]

from .controlnet import ControlNetPipeline, LayeredControlNetPipeline  # noqa: E402

__all__ += ["ControlNetPipeline", "LayeredControlNetPipeline"]

from .layered import LayeredTextToImagePipeline  # noqa: E402
from .layered_scheduler import LayeredScheduler  # noqa: E402

__all__ += ["LayeredTextToImagePipeline", "LayeredScheduler"]

from .video import FourDPipeline, VideoPipeline  # noqa: E402
from .video_export import export_to_video, grid_4d  # noqa: E402

__all__ += ["FourDPipeline", "VideoPipeline", "export_to_video", "grid_4d"]

from .video_controlnet import FourDControlNetPipeline, VideoControlNetPipeline  # noqa: E402

__all__ += ["FourDControlNetPipeline", "VideoControlNetPipeline"]
