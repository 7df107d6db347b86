"""Spatially controlled sampling: a frozen convdiff backbone steered by one or more ControlNets.

Two pipelines, each an existing one plus a `controlnet` component (no sampling loop is copied):
- `ControlNetPipeline` = `ClassConditionalPipeline` (DiC, DiCo, DiffiT, DiffiT U-Net: checks, CFG, learned
  sigma, every scheduler, callbacks, VAE decoding);
- `LayeredControlNetPipeline` = `LayeredTextToImagePipeline` (the layered U-Net, text prompts through its CLIP
  text encoder and/or class labels; the ControlNet sees the same `encoder_hidden_states`).
At every denoiser call of the loop (`ControlMixin.call_denoiser`) the ControlNet(s) run on exactly the backbone's
input (already CFG-batched and scheduler-scaled, with its class labels or text states) and their residuals go
to the backbone as `down_block_additional_residuals` / `mid_block_additional_residual`, as diffusers' ControlNet
pipelines pass them to the UNet. Per call:
- `image`: the conditioning image(s) in [0, 1], as PIL images, numpy arrays (H, W[, C]) / (N, H, W, C)
  (uint8 or float) or tensors (C, H, W) / (N, C, H, W); one per sample or one for all; resized to the
  model's grid times the ControlNet's `conditioning_downscale`; a list of those with several ControlNets;
- `controlnet_conditioning_scale`, `control_guidance_start` / `control_guidance_end` (fractions of the
  schedule where control is on), each a number or one per ControlNet;
- `guess_mode`: residuals with logspace per-depth scales, given to the conditional half of the
  guidance batch only (the unconditional half gets none), as in diffusers.

Load a saved one with `ControlNetPipeline.from_pretrained(folder)`, or put a ControlNet on a base pipeline
with `ControlNetPipeline.from_base(ClassConditionalPipeline.from_pretrained("pipelines/dic-mnist"), controlnet)`
(`LayeredControlNetPipeline.from_base(layered_pipeline, controlnet)` likewise).
"""

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
# Bound here so model_index.json entries pointing at this module resolve their loading methods.
from diffusers import ConfigMixin, DiffusionPipeline, ModelMixin, SchedulerMixin  # noqa: F401

from ..models.controlnet import MultiControlNet, top_scale
from .arguments import check_sampling_arguments
from .class_conditional import ClassConditionalPipeline
from .layered import LayeredTextToImagePipeline


def _as_list(value, count: int, name: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * count
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} entries for {count} ControlNet(s); give one per ControlNet or a single value.")
    return values


def _image_to_tensor(image, channels: int) -> torch.Tensor:
    """One conditioning input (PIL / list of PIL / numpy / tensor) as a float (N, C, H, W) tensor, not yet resized."""
    if isinstance(image, PIL.Image.Image):
        image = [image]
    if isinstance(image, (list, tuple)) and image and isinstance(image[0], PIL.Image.Image):
        mode = {1: "L", 3: "RGB"}.get(channels)
        if mode is None:
            raise ValueError(f"PIL conditioning images give 1 or 3 channels, but the ControlNet takes {channels}: pass a tensor.")
        sizes = {im.size for im in image}
        if len(sizes) > 1:
            raise ValueError(f"All conditioning images in a list must have one size; got {sorted(sizes)}.")
        arrays = [np.asarray(im.convert(mode), dtype=np.float32) / 255.0 for im in image]
        return torch.from_numpy(np.stack(arrays)).reshape(len(arrays), *arrays[0].shape[:2], channels).permute(0, 3, 1, 2)
    if isinstance(image, (list, tuple)):
        return torch.cat([_image_to_tensor(im, channels) for im in image])
    if isinstance(image, np.ndarray):
        array = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
        if array.ndim == 2:  # (H, W)
            array = array[None, :, :, None]
        elif array.ndim == 3:  # (H, W, C), numpy images are channel-last
            array = array[None]
        if array.ndim != 4:
            raise ValueError(f"numpy conditioning images must be (H, W), (H, W, C) or (N, H, W, C); got shape {image.shape}.")
        return torch.from_numpy(array).permute(0, 3, 1, 2)
    if torch.is_tensor(image):
        tensor = image[None] if image.ndim == 3 else image
        if tensor.ndim != 4:
            raise ValueError(f"tensor conditioning images must be (C, H, W) or (N, C, H, W); got shape {tuple(image.shape)}.")
        if not tensor.is_floating_point():
            tensor = tensor.float() / 255.0
        return tensor.float()
    raise ValueError(f"Conditioning images must be PIL images, numpy arrays or tensors; got {type(image).__name__}.")


def prepare_condition_image(image, batch: int, channels: int, height: int, width: int) -> torch.Tensor:
    """A validated (batch, channels, height, width) float tensor in [0, 1] (resized when the aspect ratio fits)."""
    tensor = _image_to_tensor(image, channels)
    if tensor.shape[1] != channels:
        raise ValueError(f"The ControlNet takes {channels}-channel conditioning images but got {tensor.shape[1]} channels "
                         f"(shape {tuple(tensor.shape)}); convert them (e.g. to grey for an edge map).")
    low, high = float(tensor.min()), float(tensor.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(f"Conditioning images must lie in [0, 1] (uint8 is scaled by 1/255); got values in "
                         f"[{low:.3g}, {high:.3g}]. Map [-1, 1] images with (x + 1) / 2.")
    h, w = tensor.shape[-2:]
    if abs(h * width - w * height) > 0.01 * height * width:
        raise ValueError(f"Conditioning image of size {h}x{w} does not have the aspect ratio of the {height}x{width} "
                         "the ControlNet expects; crop or pad it first (it is only resized, never distorted).")
    if (h, w) != (height, width):
        tensor = F.interpolate(tensor, size=(height, width), mode="bilinear", antialias=(h > height), align_corners=False)
    if tensor.shape[0] == 1 and batch > 1:
        tensor = tensor.expand(batch, -1, -1, -1)
    if tensor.shape[0] != batch:
        raise ValueError(f"Got {tensor.shape[0]} conditioning images for {batch} samples; give one per sample or one for all.")
    return tensor.clamp(0, 1)


def _take(value, count: int):
    """The first `count` samples of a batched argument (tensors, per-scale lists); anything else as is."""
    if torch.is_tensor(value) and value.ndim:
        return value[:count]
    if isinstance(value, (list, tuple)) and value and torch.is_tensor(value[0]):
        return [v[:count] for v in value]
    return value


class ControlMixin:
    """ControlNet control for a `DenoisingPipeline` (denoising.py), on its `denoiser` component: the loop's
    `call_denoiser` gets the ControlNets' residuals for the step among the denoiser's keywords."""

    batched_kwargs = ("class_labels", "encoder_hidden_states", "encoder_attention_mask")

    @property
    def controlnets(self) -> list:
        return list(self.controlnet.nets) if isinstance(self.controlnet, MultiControlNet) else [self.controlnet]

    @staticmethod
    def as_controlnet(controlnet, denoiser):
        if isinstance(controlnet, (list, tuple)):
            controlnet = MultiControlNet(controlnet)
        controlnet.check_backbone(denoiser)
        return controlnet

    def sample_size(self) -> tuple[int, int]:
        raise NotImplementedError

    def resolve_control_sampling(self, guidance_scale, kwargs: dict) -> tuple:
        """The guidance scale and steps of this call, from the pipeline's sampling_defaults where not given: the
        control checks and the control schedule need them before the base pipeline's call resolves its own."""
        sampling = self.sampling_arguments(guidance_scale=guidance_scale,
                                           num_inference_steps=kwargs.get("num_inference_steps"))
        return sampling["guidance_scale"], sampling["num_inference_steps"]

    def prepare_condition(self, image, batch: int, channels: int, height: int, width: int) -> torch.Tensor:
        """One ControlNet's conditioning input as a checked tensor (the video pipelines also take one per frame)."""
        return prepare_condition_image(image, batch, channels, height, width)

    def control_conditioning(self, kwargs: dict) -> dict:
        """The denoiser's keyword inputs the ControlNet copy sees too."""
        return {k: kwargs[k] for k in self.batched_kwargs if kwargs.get(k) is not None}

    @staticmethod
    def pad_unconditional(residual: torch.Tensor) -> torch.Tensor:
        """Guess mode: the conditional half's residual, then zeros for the unconditional half."""
        return torch.cat([residual, torch.zeros_like(residual)])

    def condition_size(self, controlnet) -> tuple[int, int]:
        height, width = self.sample_size()
        down = controlnet.config.conditioning_downscale
        return height * down, width * down

    def prepare_control(self, image, batch, scale, start, end, guess_mode):
        nets = self.controlnets
        images = image if len(nets) > 1 else [image]
        if len(nets) > 1 and (not isinstance(image, (list, tuple)) or len(image) != len(nets)):
            raise ValueError(f"With {len(nets)} ControlNets pass a list of {len(nets)} conditioning images (one entry each).")
        scales = [float(s) for s in _as_list(scale, len(nets), "controlnet_conditioning_scale")]
        starts = _as_list(start, len(nets), "control_guidance_start")
        ends = _as_list(end, len(nets), "control_guidance_end")
        for s, e in zip(starts, ends):
            if not 0.0 <= s < e <= 1.0:
                raise ValueError(f"control_guidance_start/end must satisfy 0 <= start < end <= 1; got {s} and {e}.")
        device = self._execution_device
        prepared = []
        for net, im in zip(nets, images):
            if im is None:
                raise ValueError("Pass the conditioning image(s) as `image=`.")
            height, width = self.condition_size(net)
            prepared.append(self.prepare_condition(im, batch, net.config.conditioning_channels, height, width)
                            .to(device=device, dtype=net.dtype))
        return {"images": prepared, "scales": scales, "starts": starts, "ends": ends, "guess_mode": guess_mode,
                "batch": batch}

    def control_images(self, state) -> list:
        """The prepared conditioning images of this call, one per ControlNet."""
        return self._control["images"]

    def control_residuals(self, sample, timestep, state, kwargs: dict) -> dict:
        """The ControlNets' residuals for this denoiser call, as the backbone's keywords ({} when none is on)."""
        control = self._control
        total = max(self._num_timesteps, 1)
        step = state.step_index
        batch = control["batch"]
        guided = top_scale(sample).shape[0] == 2 * batch  # [conditional, unconditional] halves, as both pipelines batch
        only_cond = guided and control["guess_mode"]
        x, t = (_take(sample, batch), _take(timestep, batch)) if only_cond else (sample, timestep)
        conditioning = self.control_conditioning(kwargs)
        if only_cond:
            conditioning = {k: _take(v, batch) for k, v in conditioning.items()}
        down, mid = None, None
        for net, image, scale, start, end in zip(self.controlnets, self.control_images(state), control["scales"],
                                                 control["starts"], control["ends"]):
            if step / total < start or (step + 1) / total > end or scale == 0:
                continue  # outside this ControlNet's part of the schedule: the exact base prediction
            if guided and not only_cond:
                image = torch.cat([image, image])
            d, m = net(x, t, image, scale, guess_mode=control["guess_mode"], return_dict=False, **conditioning)
            down = d if down is None else tuple(a + b for a, b in zip(down, d))
            mid = m if mid is None else mid + m
        if down is None:
            return {}
        if only_cond:  # the unconditional half gets no control
            down = tuple(self.pad_unconditional(r) for r in down)
            mid = self.pad_unconditional(mid)
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    def call_denoiser(self, sample, timesteps, state, **kwargs):
        """The backbone's forward with the ControlNets' residuals for this step among its keywords."""
        residuals = self.control_residuals(sample, timesteps, state, kwargs)
        return super().call_denoiser(sample, timesteps, state, **kwargs, **residuals)

    def call_with_control(self, sample, batch, image, scale, start, end, guess_mode):
        """Run `sample()` (the base pipeline's __call__) with this call's control prepared for `call_denoiser`."""
        self._control = self.prepare_control(image, batch, scale, start, end, guess_mode)
        was_training = [net.training for net in self.controlnets]
        for net in self.controlnets:
            net.eval()
        try:
            return sample()
        finally:
            self._control = None
            for net, training in zip(self.controlnets, was_training):
                net.train(training)


class ControlNetPipeline(ControlMixin, ClassConditionalPipeline):
    r"""Class-conditional (or unconditional) sampling with ControlNet control.

    Args:
        transformer: the frozen backbone (DiC, DiCo, DiffiT, DiffiT U-Net), with the residual-injection keywords.
        controlnet: a `ControlNet`, a list of them, or a `MultiControlNet`; each must come from this backbone.
        scheduler, vae, id2label: as in `ClassConditionalPipeline`.
    """

    model_cpu_offload_seq = "controlnet->transformer->vae"

    def __init__(self, transformer: ModelMixin, controlnet: ModelMixin, scheduler: SchedulerMixin,
                 vae: ModelMixin | None = None, id2label: dict | None = None, sampling_defaults: dict | None = None):
        controlnet = self.as_controlnet(controlnet, transformer)
        super().__init__(transformer=transformer, scheduler=scheduler, vae=vae, id2label=id2label,
                         sampling_defaults=sampling_defaults)
        self.register_modules(controlnet=controlnet)

    @classmethod
    def from_base(cls, base: ClassConditionalPipeline, controlnet) -> "ControlNetPipeline":
        """Put ControlNet(s) on a loaded base pipeline (its transformer, scheduler, vae, labels and sampling defaults)."""
        return cls(transformer=base.transformer, controlnet=controlnet, scheduler=base.scheduler, vae=base.vae,
                   id2label=base.config.get("id2label"), sampling_defaults=base.config.get("sampling_defaults"))

    def sample_size(self) -> tuple[int, int]:
        return self._sample_shape()[1:]

    @torch.no_grad()
    def __call__(self, image=None, class_labels=None, controlnet_conditioning_scale: float | list = 1.0,
                 control_guidance_start: float | list = 0.0, control_guidance_end: float | list = 1.0,
                 guess_mode: bool = False, batch_size: int | None = None, guidance_scale: float | None = None,
                 **kwargs):
        r"""Generate images that follow the conditioning image(s).

        Args:
            image: conditioning image(s) in [0, 1] (see the module docstring); a list with one entry per
                ControlNet when there are several.
            controlnet_conditioning_scale: residual scale, one number or one per ControlNet (0 = the base model).
            control_guidance_start, control_guidance_end: fraction of the sampling steps where control starts
                and stops (one number or one per ControlNet).
            guess_mode: per-depth scales logspace(-1, 0) and control on the conditional half of CFG only.
            class_labels, batch_size, guidance_scale and the rest: as in `ClassConditionalPipeline.__call__`.
        """
        guidance_scale, kwargs["num_inference_steps"] = self.resolve_control_sampling(guidance_scale, kwargs)
        check_sampling_arguments(kwargs["num_inference_steps"], guidance_scale, class_labels)
        if isinstance(class_labels, int):
            class_labels = [class_labels]
        _, batch = self.check_class_labels(class_labels, batch_size, guidance_scale)
        base_call = super().__call__
        return self.call_with_control(
            lambda: base_call(class_labels=class_labels, batch_size=batch_size, guidance_scale=guidance_scale, **kwargs),
            batch, image, controlnet_conditioning_scale, control_guidance_start, control_guidance_end, guess_mode)


class LayeredControlNetPipeline(ControlMixin, LayeredTextToImagePipeline):
    r"""Layered U-Net sampling (text prompts and/or class labels) with ControlNet control on the top scale.

    Args:
        unet: the frozen `LayeredUNetModel`.
        controlnet: a `ControlNet` (or several) built from it; it sees the prompt's `encoder_hidden_states`.
        scheduler, text_encoder, tokenizer: as in `LayeredTextToImagePipeline`.
    """

    # __init__ / from_base mirror ControlNetPipeline's over the layered pipeline's components (unet, text encoder).
    model_cpu_offload_seq = "text_encoder->controlnet->unet"

    def __init__(self, unet: ModelMixin, controlnet: ModelMixin, scheduler: SchedulerMixin, text_encoder=None,
                 tokenizer=None, sampling_defaults: dict | None = None):
        controlnet = self.as_controlnet(controlnet, unet)
        super().__init__(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer,
                         sampling_defaults=sampling_defaults)
        self.register_modules(controlnet=controlnet)

    @classmethod
    def from_base(cls, base: LayeredTextToImagePipeline, controlnet) -> "LayeredControlNetPipeline":
        return cls(unet=base.unet, controlnet=controlnet, scheduler=base.scheduler, text_encoder=base.text_encoder,
                   tokenizer=base.tokenizer, sampling_defaults=base.config.get("sampling_defaults"))

    def sample_size(self) -> tuple[int, int]:
        size = self.unet.scale_sizes[0]
        return size, size

    @torch.no_grad()
    def __call__(self, image=None, prompt=None, class_labels=None, controlnet_conditioning_scale: float | list = 1.0,
                 control_guidance_start: float | list = 0.0, control_guidance_end: float | list = 1.0,
                 guess_mode: bool = False, negative_prompt=None, batch_size: int | None = None,
                 guidance_scale: float | None = None, **kwargs):
        r"""Generate images that follow the conditioning image(s); the control arguments are those of
        `ControlNetPipeline.__call__`, the rest those of `LayeredTextToImagePipeline.__call__`."""
        guidance_scale, kwargs["num_inference_steps"] = self.resolve_control_sampling(guidance_scale, kwargs)
        check_sampling_arguments(kwargs["num_inference_steps"], guidance_scale, class_labels)
        *_, batch = self.check_inputs(prompt, negative_prompt, class_labels, batch_size, guidance_scale,
                                      kwargs.get("output_type", "pil"), kwargs.get("generator"))
        base_call = super().__call__
        return self.call_with_control(
            lambda: base_call(prompt=prompt, class_labels=class_labels, negative_prompt=negative_prompt,
                              batch_size=batch_size, guidance_scale=guidance_scale, **kwargs),
            batch, image, controlnet_conditioning_scale, control_guidance_start, control_guidance_end, guess_mode)
