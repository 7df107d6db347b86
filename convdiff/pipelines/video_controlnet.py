"""Controlled video and 4D sampling: `VideoPipeline` / `FourDPipeline` plus a `controlnet` component.

The ControlNet pipelines' design (controlnet.py) over the frames pipelines: no sampling step is copied; at every
denoiser call the ControlNet(s), built with `ControlNet.from_backbone(video_model)`, run on exactly the denoiser's
input and keywords (CFG batch, timestamps, cameras) and their per-frame residuals go to the denoiser
(docs/controlnet.md, "Controlled video"). Per call, `image` is the condition:
- shared by every frame: anything `ControlNetPipeline` takes (PIL, numpy, (C, H, W) / (N, C, H, W) tensors);
- one per frame: a (N, C, F, H, W) tensor (video) or one per view-time cell, (N, C, V, T, H, W) (4D), in [0, 1];
  it also sets `num_frames` (and `num_views`) when they are not given.
N is the batch or 1 (one for all samples). With overlapping windows (`window_frames`, or more frames than the
model's `max_frames`) the ControlNet runs on each window with its part of the per-frame conditions.
"""

import torch
# Bound here so model_index.json entries pointing at this module resolve their loading methods.
from diffusers import ConfigMixin, DiffusionPipeline, ModelMixin, SchedulerMixin  # noqa: F401

from .controlnet import ControlMixin, prepare_condition_image
from .video import FourDPipeline, VideoPipeline

RESIDUAL_KEYS = ("down_block_additional_residuals", "mid_block_additional_residual", "return_dict")


class FramesControlMixin(ControlMixin):
    """`ControlMixin` for the frames pipelines: conditions per frame, every denoiser keyword for the copy,
    guess-mode padding per stream, per-frame conditions cut to each window."""

    grid_arguments = ("num_frames",)  # the call's arguments that size the grid axes of a per-frame condition
    options = ("id2label", "sampling_defaults")  # the base pipeline's saved options that from_base carries over
    model_cpu_offload_seq = "text_encoder->controlnet->transformer->vae"

    @classmethod
    def from_base(cls, base, controlnet):
        """Put ControlNet(s) on a loaded video / 4D pipeline: its components and saved options, plus the ControlNet(s)."""
        options = {k: base.config[k] for k in cls.options if base.config.get(k) is not None}
        components = {k: v for k, v in base.components.items() if k != "controlnet"}
        return cls(controlnet=controlnet, **components, **options)

    @torch.no_grad()
    def __call__(self, image=None, class_labels=None, controlnet_conditioning_scale: float | list = 1.0,
                 control_guidance_start: float | list = 0.0, control_guidance_end: float | list = 1.0,
                 guess_mode: bool = False, batch_size: int | None = None, guidance_scale: float | None = None,
                 **kwargs):
        r"""Generate clips that follow the condition(s); the control arguments are `ControlNetPipeline.__call__`'s,
        the rest the base pipeline's. Checks the call, sizes the grid from a per-frame condition, then samples
        with the control residuals added at every denoiser call."""
        guidance_scale, kwargs["num_inference_steps"] = self.resolve_control_sampling(guidance_scale, kwargs)
        _, batch = self.check_call(class_labels, batch_size, guidance_scale, kwargs.get("output_type", "pil"),
                                   kwargs.get("generator"), kwargs["num_inference_steps"])
        axes = len(self.grid_arguments)
        per_frame = [im for im in (image if isinstance(image, (list, tuple)) else [image])
                     if torch.is_tensor(im) and im.ndim == 4 + axes]
        if per_frame:
            for name, size in zip(self.grid_arguments, per_frame[0].shape[2 : 2 + axes]):
                if kwargs.get(name) is None:
                    kwargs[name] = int(size)
        self._control_size = self.image_size(kwargs.get("height"), kwargs.get("width"))
        base_call = super().__call__
        return self.call_with_control(
            lambda: base_call(class_labels=class_labels, batch_size=batch_size, guidance_scale=guidance_scale, **kwargs),
            batch, image, controlnet_conditioning_scale, control_guidance_start, control_guidance_end, guess_mode)

    def sample_size(self) -> tuple[int, int]:
        return self._control_size

    def prepare_condition(self, image, batch: int, channels: int, height: int, width: int) -> torch.Tensor:
        axes = len(self.grid_arguments)
        if not (torch.is_tensor(image) and image.ndim == 4 + axes):
            return super().prepare_condition(image, batch, channels, height, width)
        count, grid = image.shape[0], tuple(image.shape[2 : 2 + axes])
        frames = image.movedim(1, 1 + axes).flatten(0, axes)  # (N*F, C, H, W): checked and resized as images
        frames = prepare_condition_image(frames, frames.shape[0], channels, height, width)
        frames = frames.unflatten(0, (count, *grid)).movedim(1 + axes, 1)
        if count == 1 and batch > 1:
            frames = frames.expand(batch, *frames.shape[1:])
        if frames.shape[0] != batch:
            raise ValueError(f"Got per-frame conditions for {count} samples but the batch has {batch}; give one set "
                             "per sample or one for all.")
        return frames

    def control_conditioning(self, kwargs: dict) -> dict:
        """Everything the inflated denoiser gets (class labels, timestamps, cameras, ...) but the residuals."""
        return {k: v for k, v in kwargs.items() if v is not None and k not in RESIDUAL_KEYS}

    def pad_unconditional(self, residual: torch.Tensor) -> torch.Tensor:
        """Zeros for the unconditional half in each stream (rows: stream, batch, view, time)."""
        streams = 2 if getattr(self.transformer, "two_stream", False) else 1
        rows = residual.unflatten(0, (streams, -1))
        return torch.cat([rows, torch.zeros_like(rows)], dim=1).flatten(0, 1)

    def control_images(self, state) -> list:
        """Per-frame conditions cut to the window being denoised (`state.window_start`, set by `predict`)."""
        images = super().control_images(state)
        if state.window_start is None:
            return images
        return [im.narrow(-3, state.window_start, state.window) if im.ndim > 4 else im for im in images]


class VideoControlNetPipeline(FramesControlMixin, VideoPipeline):
    r"""Video sampling (`VideoPipeline`) with ControlNet control.

    Args:
        transformer: the frozen inflated video model.
        controlnet: a `ControlNet` built from it (`ControlNet.from_backbone(video_model)`), a list of them or a
            `MultiControlNet`.
        scheduler, vae, id2label: as in `VideoPipeline`.

    Call it as `VideoPipeline` plus `image` (shared by all frames or one per frame, see the module docstring)
    and `ControlNetPipeline.__call__`'s control arguments.
    """

    def __init__(self, transformer: ModelMixin, controlnet: ModelMixin, scheduler: SchedulerMixin,
                 vae: ModelMixin | None = None, id2label: dict | None = None, text_encoder=None, tokenizer=None,
                 sampling_defaults: dict | None = None):
        controlnet = self.as_controlnet(controlnet, transformer)
        super().__init__(transformer, scheduler, vae=vae, id2label=id2label, text_encoder=text_encoder,
                         tokenizer=tokenizer, sampling_defaults=sampling_defaults)
        self.register_modules(controlnet=controlnet)


class FourDControlNetPipeline(FramesControlMixin, FourDPipeline):
    r"""4D sampling (`FourDPipeline`) with ControlNet control; `image` is shared by every view-time cell or one per
    cell, (N, C, V, T, H, W). Arguments as in `VideoControlNetPipeline`."""

    grid_arguments = ("num_views", "num_frames")
    options = (*FramesControlMixin.options, "first_view_mode")

    def __init__(self, transformer: ModelMixin, controlnet: ModelMixin, scheduler: SchedulerMixin,
                 vae: ModelMixin | None = None, id2label: dict | None = None, text_encoder=None, tokenizer=None,
                 first_view_mode: str = "replace", sampling_defaults: dict | None = None):
        controlnet = self.as_controlnet(controlnet, transformer)
        super().__init__(transformer, scheduler, vae=vae, id2label=id2label, text_encoder=text_encoder,
                         tokenizer=tokenizer, first_view_mode=first_view_mode, sampling_defaults=sampling_defaults)
        self.register_modules(controlnet=controlnet)
