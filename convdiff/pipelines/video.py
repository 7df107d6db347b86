"""Video and 4D (multi-view video) generation with an inflated convdiff backbone (`convdiff.models.video.inflate`).

`VideoPipeline` samples (B, C, F, H, W) clips, `FourDPipeline` (B, C, V, T, H, W) grids of V viewpoints x T
timestamps. Both are `ClassConditionalPipeline`s over more axes, so they share its label checks, scheduler
checks (flow vs ε, learned σ), classifier-free guidance rule and VAE handling (a VAE decodes frame by frame);
on top they add:

- first-frame conditioning (video) and first-view / first-timestamp conditioning (4D): the known cells are
  replaced, before every model call, by the clean frames noised to the current level with one fixed noise
  draw (the "replacement" method of video diffusion), and set to the clean frames at the end; or, for a 4D
  model trained with its first view given clean (`first_view_mode="clean"`, saved with the pipeline), given
  clean at every step and flagged as known (`known_cells`: the model embeds them at timestep 0);
- `shared_noise` in [0, 1]: the fraction of the starting noise's variance shared by every frame
  (PYoCo's mixed noise; 0 = independent frames, 1 = identical starting noise);
- long videos by overlapping windows: with `window_frames` < the number of frames, every step runs the model
  on windows of `window_frames` frames overlapping by `window_overlap`, and blends their predictions with
  weights that ramp linearly across each overlap, so the clip stays one coherent sample;
- text prompts (`prompt=`, `negative_prompt=`) for a model inflated with `text_dim`: a local CLIP text
  encoder (`text_encoder`, `tokenizer` components) gives each clip's pooled prompt embedding, and
  classifier-free guidance runs against the negative prompt's (default "");
- outputs: "np" (B, F, H, W, C) / (B, V, T, H, W, C) floats in [0, 1], "pt" (B, F, C, H, W) /
  (B, V, T, C, H, W), "pil" (per sample a list of frames / a list per view of frames), "latent".

Write files with `convdiff.pipelines.video_export.export_to_video` (mp4 / GIF) and `grid_4d`.
"""

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from diffusers import ConfigMixin, DiffusionPipeline, ModelMixin, SchedulerMixin  # noqa: F401  (see class_conditional.py)
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..nn.inputs import class_info
from .arguments import check_count, check_finite, check_sampling_arguments, prompt_list
from .class_conditional import ClassConditionalPipeline
from .denoising import SamplingState
from .guidance import GuidanceSchedule, check_schedule
from .text_encoders import encode_pooled

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class VideoPipelineOutput(BaseOutput):
    """`frames`: np (B, F, H, W, C) in [0, 1], torch (B, F, C, H, W), a list (per sample) of PIL frame lists,
    or the latents (B, C, F, H, W)."""

    frames: object


@dataclass
class FourDPipelineOutput(BaseOutput):
    """`frames`: np (B, V, T, H, W, C) in [0, 1], torch (B, V, T, C, H, W), per sample a list (views) of PIL
    frame lists, or the latents (B, C, V, T, H, W)."""

    frames: object


FIRST_VIEW_MODES = ("replace", "clean")


def check_first_view_mode(mode: str) -> str:
    if mode not in FIRST_VIEW_MODES:
        raise ValueError(f"first_view_mode must be one of {FIRST_VIEW_MODES} ('clean' for a model trained with the "
                         f"known view given clean), got {mode!r}.")
    return mode


def mix_noise(noise: torch.Tensor, common: torch.Tensor, shared: float) -> torch.Tensor:
    """Unit-variance noise with a `shared` fraction of its variance from `common`, broadcast over the frames
    (mixed noise, PYoCo: Ge et al., ICCV 2023); the video task trains with the same mix."""
    return math.sqrt(shared) * common + math.sqrt(1.0 - shared) * noise


def reschedule_noise(noise: torch.Tensor, window: int, overlap: int, generator=None) -> torch.Tensor:
    """FreeNoise's noise rescheduling (Qiu et al., ICLR 2024, arXiv 2310.15169) along the frame axis (-3): past
    the first window, each stride of `window - overlap` frames takes the noise of the frames one window earlier,
    shuffled, so every window starts from a rearrangement of the same noise and long clips keep their content."""
    frames, stride = noise.shape[-3], window - overlap
    if isinstance(generator, list):
        generator = generator[0]
    out = noise.clone()
    for start in range(window, frames, stride):
        count = min(stride, frames - start)
        order = start - window + torch.randperm(count, generator=generator, device="cpu")
        out[..., start : start + count, :, :] = out[..., order.to(noise.device), :, :]
    return out


def window_starts(num_frames: int, window: int, overlap: int) -> list[int]:
    """Start frames of windows of `window` frames overlapping by at least `overlap`, covering every frame."""
    if window >= num_frames:
        return [0]
    step = window - overlap
    starts = list(range(0, num_frames - window + 1, step))
    if starts[-1] != num_frames - window:
        starts.append(num_frames - window)
    return starts


def window_weights(window: int, overlap: int) -> torch.Tensor:
    """(window,) blend weights: a linear ramp over `overlap` frames at both ends, 1 in between."""
    ramp = (torch.arange(window, dtype=torch.float32) + 1) / (overlap + 1)
    return torch.minimum(torch.ones(window), torch.minimum(ramp, ramp.flip(0)))


@dataclass
class FramesState(SamplingState):
    """`SamplingState` of a video / 4D call: shared noise, the known frames (clean latents, where they are, and
    the one noise draw that noises them) and the windows along time (None: one pass over all frames);
    `time_kwargs` names the model kwargs with a frame axis last, cut to each window."""

    shared_noise: float = 0.0
    noise_rescheduling: bool = False  # FreeNoise: windows past the first reuse its noise, shuffled
    known: torch.Tensor | None = None
    known_mask: torch.Tensor | None = None
    known_noise: torch.Tensor | None = None
    window: int | None = None
    overlap: int = 0
    window_start: int | None = None  # the first frame of the window being denoised (set by `predict`)
    time_kwargs: tuple = ("timestamps",)
    clean_known: bool = False  # first_view_mode="clean": known cells go in clean, not noised


class _FramesPipeline(ClassConditionalPipeline):
    """`ClassConditionalPipeline`'s loop over latents (B, C, *grid, H, W), time at dim -3: it overrides the
    starting noise, the known-frame replacement around the loop and the model output (overlapping windows)."""

    grid_name = "frames"
    state_class = FramesState
    # a model trained with noise shared across frames (task video's `shared_noise`) samples with the same share
    builtin_sampling = {**ClassConditionalPipeline.builtin_sampling, "shared_noise": 0.0}
    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components = ["vae", "text_encoder", "tokenizer"]

    def __init__(self, transformer: ModelMixin, scheduler: SchedulerMixin, vae: ModelMixin | None = None,
                 id2label: dict | None = None, text_encoder=None, tokenizer=None, sampling_defaults: dict | None = None):
        super().__init__(transformer, scheduler, vae=vae, id2label=id2label, sampling_defaults=sampling_defaults)
        self.register_modules(text_encoder=text_encoder, tokenizer=tokenizer)

    # ---- text ---------------------------------------------------------------------------------------------
    def prompt_batch(self, prompt, negative_prompt, class_labels, batch_size):
        """(prompts, negative prompts, class labels, batch size) for a text-conditioned model: one prompt per clip
        (a single one is repeated), negatives default to "", and a class-conditional backbone gets its null class
        unless class_labels are given."""
        text_dim = self.transformer.config.get("text_dim")
        if not text_dim:
            if prompt is not None or negative_prompt is not None:
                raise ValueError("this video model has no text conditioning (text_dim=None): drop prompt / "
                                 "negative_prompt, or train a model inflated with text_dim (task_options.conditioning=text).")
            return None, None, class_labels, batch_size
        if prompt is None:
            raise ValueError("this video model is text-conditioned: pass prompt (a string or one string per video).")
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("this pipeline has no text_encoder / tokenizer to encode the prompt; build it with "
                             "text_encoder=CLIPTextModel and tokenizer=CLIPTokenizer (a local folder: "
                             "convdiff.pipelines.text_encoders.load_text_encoder).")
        prompts = prompt_list(prompt)
        negatives = prompt_list("" if negative_prompt is None else negative_prompt, "negative_prompt")
        batch = int(batch_size) if batch_size is not None else len(prompts)
        for name, items in (("prompt", prompts), ("negative_prompt", negatives)):
            if len(items) not in (1, batch):
                raise ValueError(f"{name} has {len(items)} entries for a batch of {batch}: give one per video or one.")
        prompts, negatives = prompts * (batch // len(prompts)), negatives * (batch // len(negatives))
        num_classes, null_id = class_info(self.transformer.config)
        if num_classes and class_labels is None:
            if null_id is None:
                raise ValueError("the backbone is class-conditional without a null class: pass class_labels too.")
            class_labels = [null_id] * batch
        return prompts, negatives, class_labels, batch

    def text_kwargs(self, prompts, negatives, guidance_scale):
        """({"text_embeds": (B, D)}, the unconditional half's) from the prompts' pooled embeddings."""
        if prompts is None:
            return {}, {}
        device = self._execution_device
        embeds = encode_pooled(self.tokenizer, self.text_encoder, prompts, device)
        if guidance_scale <= 1:
            return {"text_embeds": embeds}, {}
        return {"text_embeds": embeds}, {"text_embeds": encode_pooled(self.tokenizer, self.text_encoder, negatives, device)}

    # ---- shapes -------------------------------------------------------------------------------------------
    def max_frames(self) -> int | None:
        value = self.transformer.config.get("max_frames")
        return int(value) if value else None

    def check_frames(self, num_frames: int, window_frames: int | None, window_overlap: int):
        """Return the window length (None: one pass over all frames), with clear errors for impossible sizes."""
        check_count("num_frames", num_frames)
        if window_frames is not None:
            check_count("window_frames", window_frames)
        limit = self.max_frames()
        if window_frames is None and limit is not None and num_frames > limit:
            window_frames = limit
        if window_frames is not None and limit is not None and min(window_frames, num_frames) > limit:
            raise ValueError(f"window_frames={window_frames} exceeds the model's max_frames={limit}.")
        if window_frames is None or window_frames >= num_frames:
            return None
        if not 0 <= window_overlap < window_frames:
            raise ValueError(f"window_overlap must be in [0, window_frames={window_frames}), got {window_overlap}.")
        return window_frames

    # ---- the steps of the denoising loop (denoising.py) -------------------------------------------------
    def initial_noise(self, state: FramesState):
        """Starting noise with a `shared_noise` fraction of its variance common to all frames (axis -3)."""
        shape, shared_noise = state.shape, state.shared_noise
        if not 0.0 <= float(shared_noise) <= 1.0:
            raise ValueError(f"shared_noise must be in [0, 1] (fraction of noise variance shared by the frames), "
                             f"got {shared_noise}.")
        noise = super().initial_noise(state)
        if state.noise_rescheduling and state.window is not None and shape[-3] > state.window:
            noise = reschedule_noise(noise, state.window, state.overlap, state.generator)
        if shared_noise > 0:
            common = super().initial_noise(replace(state, shape=(*shape[:-3], 1, *shape[-2:])))
            noise = mix_noise(noise, common, shared_noise)
        return noise

    def prepare_latents(self, state: FramesState, latents=None):
        """The starting latents, then the noise draw for the known frames."""
        if latents is not None and (not torch.is_tensor(latents) or tuple(latents.shape) != tuple(state.shape)):
            got = tuple(latents.shape) if torch.is_tensor(latents) else type(latents).__name__
            raise ValueError(f"latents must have shape {tuple(state.shape)}, got {got}.")
        latents = super().prepare_latents(state, latents)
        if state.known is not None:
            state.known = state.known.to(device=state.device, dtype=state.dtype)
            state.known_mask = state.known_mask.to(state.device)
            state.known_noise = randn_tensor(state.known.shape, generator=state.generator, device=state.device,
                                             dtype=state.dtype)
        return latents

    def noised_known(self, known, known_noise, t):
        """The clean known frames at the noise level of timestep `t`, in the sampler's latent scaling."""
        timestep = (t if torch.is_tensor(t) else torch.tensor(t)).reshape(1).to(known.device)
        if hasattr(self.scheduler, "add_noise"):
            return self.scheduler.add_noise(known, known_noise, timestep)
        if hasattr(self.scheduler, "scale_noise"):  # flow matching
            return self.scheduler.scale_noise(known, timestep, known_noise)
        raise ValueError(f"{type(self.scheduler).__name__} has neither add_noise nor scale_noise, so frames cannot "
                         "be conditioned on; use a DDPM/DDIM/Euler/DPM-Solver or flow-matching scheduler.")

    def before_step(self, latents, t, state: FramesState):
        """Known frames replaced by their clean latents noised to this step's level (the "replacement" method),
        or by the clean latents themselves for a model trained with them clean (`state.clean_known`)."""
        if state.known is None:
            return latents
        if state.clean_known:
            return torch.where(state.known_mask, self.unscaled_known(state.known, t), latents)
        return torch.where(state.known_mask, self.noised_known(state.known, state.known_noise, t), latents)

    def unscaled_known(self, known, t):
        """Clean known latents divided by the sampler's input scaling, so that the model sees them clean after
        `scale_model_input` (1 for DDPM / DDIM / flow; 1/sqrt(sigma^2 + 1) for Euler-type samplers)."""
        if not hasattr(self.scheduler, "scale_model_input"):
            return known
        ones = torch.ones(1, device=known.device, dtype=known.dtype)
        return known / self.scheduler.scale_model_input(ones, t)

    def finish(self, latents, state: FramesState):
        return latents if state.known is None else torch.where(state.known_mask, state.known, latents)

    def predict(self, latents, t, state: FramesState):
        """The model output for every frame: one pass, or blended overlapping windows along time (dim -3);
        the `time_kwargs` ((B, F) per-frame values) are cut to each window along their last dim."""
        window, overlap = state.window, state.overlap
        if window is None:
            return super().predict(latents, t, state)
        num_frames = latents.shape[-3]
        weights = window_weights(window, overlap).to(latents.device, latents.dtype)
        total, weight_sum = None, torch.zeros(num_frames, device=latents.device, dtype=latents.dtype)
        for start in window_starts(num_frames, window, overlap):
            part = latents.narrow(-3, start, window)
            part_kwargs = {k: (v.narrow(-1, start, window) if k in state.time_kwargs and v is not None else v)
                           for k, v in state.model_kwargs.items()}
            out = super().predict(part, t, replace(state, model_kwargs=part_kwargs, window_start=start))
            if total is None:
                total = torch.zeros(*out.shape[:-3], num_frames, *out.shape[-2:], device=out.device, dtype=out.dtype)
            total.narrow(-3, start, window).add_(out * weights.view(-1, 1, 1))
            weight_sum[start : start + window] += weights
        return total / weight_sum.view(-1, 1, 1)

    def sample_frames(self, state: FramesState, latents, num_inference_steps, guidance_scale, callback_on_step_end,
                      callback_on_step_end_tensor_inputs):
        """Checks of the sampler and callback, then the one denoising loop."""
        check_schedule(state.guidance_schedule)
        self.check_callback_inputs(callback_on_step_end_tensor_inputs)
        self.check_scheduler()
        return self.denoise(state, latents, num_inference_steps, guidance_scale, callback_on_step_end,
                            callback_on_step_end_tensor_inputs)

    def check_call(self, class_labels, batch_size, guidance_scale, output_type, generator, num_inference_steps=50):
        """Checks shared by both pipelines; returns (class ids or None, batch size)."""
        check_sampling_arguments(num_inference_steps, guidance_scale, class_labels)
        if isinstance(class_labels, int):
            class_labels = [class_labels]
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        _, null_id = class_info(self.transformer.config)
        if guidance_scale > 1 and null_id is None:
            raise ValueError("Classifier-free guidance needs a model with a null class; use guidance_scale=1.")
        labels, batch = self.check_class_labels(class_labels, batch_size, guidance_scale)
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"Got {len(generator)} generators for a batch of {batch}; pass one per sample or one.")
        return labels, batch

    @staticmethod
    def batch_timestamps(timestamps, batch: int, num_frames: int):
        """(F,) or (B, F) frame times -> float (B, F), or None."""
        if timestamps is None:
            return None
        timestamps = torch.as_tensor(timestamps, dtype=torch.float32)
        check_finite("timestamps", timestamps)
        if timestamps.shape == (num_frames,):
            timestamps = timestamps.expand(batch, num_frames)
        if tuple(timestamps.shape) != (batch, num_frames):
            raise ValueError(f"timestamps must have shape ({num_frames},) or ({batch}, {num_frames}), "
                             f"got {tuple(timestamps.shape)}.")
        return timestamps

    def decode_frames(self, latents):
        """(B, C, *grid, H, W) latents -> (B, *grid, C', H', W') images in [0, 1]."""
        batch, grid = latents.shape[0], latents.shape[2:-2]
        frames = latents.movedim(1, -3).reshape(-1, *latents.shape[1:2], *latents.shape[-2:])
        images = self.decode(frames, "pt")  # ClassConditionalPipeline.decode: VAE (if any), then [-1, 1] -> [0, 1]
        return images.reshape(batch, *grid, *images.shape[1:])

    def to_output(self, latents, output_type):
        if output_type == "latent":
            return latents
        frames = self.decode_frames(latents)
        if output_type == "pt":
            return frames
        array = frames.cpu().float().movedim(-3, -1).numpy()
        if output_type == "np":
            return array
        return self.nested_pil(array)

    def nested_pil(self, array: np.ndarray):
        if array.ndim == 4:  # (F, H, W, C)
            return self.numpy_to_pil(array)
        return [self.nested_pil(a) for a in array]

    def image_size(self, height, width):
        size = self.transformer.config.sample_size
        default_h, default_w = (size, size) if isinstance(size, int) else tuple(size)
        return height or default_h, width or default_w

    def clean_frames(self, frames, name: str, expected: tuple) -> torch.Tensor:
        """Conditioning frames in [-1, 1] -> latents (VAE-encoded when the pipeline has a VAE)."""
        if not torch.is_tensor(frames):
            raise ValueError(f"{name} must be a tensor in [-1, 1] of shape {expected}.")
        check_finite(name, frames)
        if frames.ndim == len(expected) - 1:
            frames = frames.unsqueeze(0).expand(expected[0], *frames.shape)
        if self.vae is not None:
            flat = frames.movedim(1, -3).reshape(-1, *frames.shape[1:2], *frames.shape[-2:])
            encoded = self.vae.encode(flat.to(self.vae.device, self.vae.dtype)).latent_dist.mode()
            shift = getattr(self.vae.config, "shift_factor", None) or 0.0
            encoded = (encoded - shift) * self.vae.config.scaling_factor
            frames = encoded.reshape(frames.shape[0], *frames.shape[2:-2], *encoded.shape[1:]).movedim(-3, 1)
        if tuple(frames.shape) != tuple(expected):
            raise ValueError(f"{name} must have shape {expected} (batch, channels, ...) in [-1, 1], "
                             f"got {tuple(frames.shape)}.")
        return frames


class VideoPipeline(_FramesPipeline):
    r"""Sample videos (B, C, F, H, W) from an inflated video model (`inflate(model, to="video")`).

    Args:
        transformer: the video denoiser, called as `transformer(x, t, class_labels=..., timestamps=..., return_dict=False)`.
        scheduler: any diffusers scheduler the 2D pipeline accepts.
        vae: optional `AutoencoderKL`, applied frame by frame.
    """

    builtin_sampling = {**_FramesPipeline.builtin_sampling, "noise_rescheduling": False}

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | list[int] | torch.Tensor | None = None,
        num_frames: int | None = None,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_channels: int | None = None,
        guidance_schedule: GuidanceSchedule | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        first_frame: torch.Tensor | None = None,
        shared_noise: float | None = None,
        timestamps: torch.Tensor | None = None,
        window_frames: int | None = None,
        noise_rescheduling: bool | None = None,
        window_overlap: int = 4,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006  (diffusers' signature)
        batch_size: int | None = None,
    ) -> VideoPipelineOutput | tuple:
        r"""Generate videos.

        Args:
            class_labels / batch_size / guidance_*: as in `ClassConditionalPipeline`.
            prompt, negative_prompt: for a text-conditioned model (inflated with text_dim), one prompt per video
                or one for all; guidance runs against negative_prompt (default ""). A class-conditional backbone
                then gets its null class unless class_labels are given.
            num_frames: frames per video (default: from `latents`, else the model's max_frames, else 16). More than the model's
                max_frames (or than `window_frames`) samples by overlapping windows.
            first_frame: optional (B, C, H, W) or (C, H, W) frame in [-1, 1] that the video starts from.
            shared_noise: fraction of the starting noise's variance shared by all frames, in [0, 1] (None: the
                pipeline's saved default, the share its model was trained with).
            timestamps: optional (B, F) or (F,) frame times for models with time conditioning.
            window_frames, window_overlap: window length and overlap for long videos.
            noise_rescheduling: for long videos, FreeNoise's rescheduling of the starting noise (each window
                past the first starts from the first window's noise, shuffled); None: the pipeline's saved default.
            output_type: "pil", "np", "pt" or "latent" (see `VideoPipelineOutput`).
        """
        sampling = self.sampling_arguments(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                           guidance_channels=guidance_channels, guidance_schedule=guidance_schedule,
                                           shared_noise=shared_noise, noise_rescheduling=noise_rescheduling)
        num_inference_steps, guidance_scale = sampling["num_inference_steps"], sampling["guidance_scale"]
        guidance_channels, guidance_schedule = sampling["guidance_channels"], sampling["guidance_schedule"]
        shared_noise = sampling["shared_noise"]
        prompts, negatives, class_labels, batch_size = self.prompt_batch(prompt, negative_prompt, class_labels, batch_size)
        labels, batch = self.check_call(class_labels, batch_size, guidance_scale, output_type, generator,
                                        num_inference_steps)
        text, unconditional_text = self.text_kwargs(prompts, negatives, guidance_scale)
        if num_frames is None and torch.is_tensor(latents) and latents.ndim == 5:
            num_frames = latents.shape[2]
        num_frames = self.max_frames() or 16 if num_frames is None else num_frames
        window = self.check_frames(num_frames, window_frames, window_overlap)
        height, width = self.image_size(height, width)
        channels = self.transformer.config.in_channels
        shape = (batch, channels, num_frames, height, width)

        known = known_mask = None
        if first_frame is not None:
            frame = self.clean_frames(first_frame, "first_frame", (batch, channels, height, width))
            known = frame.unsqueeze(2).expand(shape).contiguous()
            known_mask = torch.zeros(1, 1, num_frames, 1, 1, dtype=torch.bool)
            known_mask[:, :, 0] = True
        timestamps = self.batch_timestamps(timestamps, batch, num_frames)
        extra = {} if timestamps is None else {"timestamps": timestamps}

        state = self.sampling_state(shape, labels, generator, guidance_channels, guidance_schedule, {**extra, **text},
                                    shared_noise=shared_noise, known=known, known_mask=known_mask, window=window,
                                    overlap=window_overlap, unconditional_kwargs=unconditional_text,
                                    noise_rescheduling=bool(sampling["noise_rescheduling"]))
        latents = self.sample_frames(state, latents, num_inference_steps, guidance_scale, callback_on_step_end,
                                     callback_on_step_end_tensor_inputs)
        frames = self.to_output(latents, output_type)
        self.maybe_free_model_hooks()
        return VideoPipelineOutput(frames=frames) if return_dict else (frames,)


class FourDPipeline(_FramesPipeline):
    r"""Sample 4D grids (B, C, V, T, H, W) from an inflated 4D model (`inflate(model, to="4d")`).

    Cameras (B, V, camera_dim) (or (V, camera_dim) for the whole batch) are required when the model was
    built with `camera_dim`; timestamps (B, T) or (T,) are optional.

    first_view_mode (saved in model_index.json): how the known cells (`first_view`, `first_frame`) enter the
    model. "replace": noised to every step's level (the replacement method, for any model); "clean": given
    clean at every step and flagged as known (`known_cells`, embedded at timestep 0), for a model trained
    that way (`task_options.first_view_prob` of the video task).
    """

    grid_name = "grid"

    def __init__(self, transformer: ModelMixin, scheduler: SchedulerMixin, vae: ModelMixin | None = None,
                 id2label: dict | None = None, text_encoder=None, tokenizer=None, first_view_mode: str = "replace",
                 sampling_defaults: dict | None = None):
        super().__init__(transformer, scheduler, vae=vae, id2label=id2label, text_encoder=text_encoder,
                         tokenizer=tokenizer, sampling_defaults=sampling_defaults)
        self.register_to_config(first_view_mode=check_first_view_mode(first_view_mode))

    # The video pipeline's argument list again, plus views and cameras: each __call__ signature is public API.
    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | list[int] | torch.Tensor | None = None,
        num_views: int | None = None,
        num_frames: int | None = None,
        cameras: torch.Tensor | None = None,
        timestamps: torch.Tensor | None = None,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_channels: int | None = None,
        guidance_schedule: GuidanceSchedule | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        first_view: torch.Tensor | None = None,
        first_frame: torch.Tensor | None = None,
        shared_noise: float | None = None,
        window_frames: int | None = None,
        window_overlap: int = 4,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
        batch_size: int | None = None,
        first_view_mode: str | None = None,
    ) -> FourDPipelineOutput | tuple:
        r"""Generate 4D grids.

        Args:
            num_views, num_frames: the grid (default: the number of cameras, else 4; the model's max_frames, else 8).
            cameras: (B, V, camera_dim) or (V, camera_dim) camera parameters (e.g. flattened 3x4 extrinsics).
            timestamps: (B, T) or (T,) frame times.
            first_view: optional clean video of view 0, (B, C, T, H, W) or (C, T, H, W) in [-1, 1]
                (the "fixed-view video" of 4Real-Video): the other views are generated around it.
            first_frame: optional clean images of every view at time 0, (B, C, V, H, W) or (C, V, H, W)
                (the "freeze-time video"): the later timestamps are generated from it.
            shared_noise: fraction of the noise variance shared across the timestamps of each view.
            first_view_mode: "replace" or "clean" (see the class); None: the pipeline's saved mode.
            Other arguments (prompt and negative_prompt included) as in `VideoPipeline`.
        """
        sampling = self.sampling_arguments(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                           guidance_channels=guidance_channels, guidance_schedule=guidance_schedule,
                                           shared_noise=shared_noise)
        num_inference_steps, guidance_scale = sampling["num_inference_steps"], sampling["guidance_scale"]
        guidance_channels, guidance_schedule = sampling["guidance_channels"], sampling["guidance_schedule"]
        shared_noise = sampling["shared_noise"]
        prompts, negatives, class_labels, batch_size = self.prompt_batch(prompt, negative_prompt, class_labels, batch_size)
        labels, batch = self.check_call(class_labels, batch_size, guidance_scale, output_type, generator,
                                        num_inference_steps)
        text, unconditional_text = self.text_kwargs(prompts, negatives, guidance_scale)
        camera_dim = self.transformer.config.get("camera_dim")
        if cameras is not None:
            cameras = torch.as_tensor(cameras, dtype=torch.float32)
            check_finite("cameras", cameras)
            if cameras.ndim == 2:
                cameras = cameras.expand(batch, *cameras.shape)
        if torch.is_tensor(latents) and latents.ndim == 6:
            num_views = latents.shape[2] if num_views is None else num_views
            num_frames = latents.shape[3] if num_frames is None else num_frames
        num_views = (cameras.shape[1] if cameras is not None else 4) if num_views is None else num_views
        num_frames = self.max_frames() or 8 if num_frames is None else num_frames
        if camera_dim and cameras is None:
            raise ValueError(f"This model is camera-conditioned (camera_dim={camera_dim}): pass cameras of shape "
                             f"({batch}, {num_views}, {camera_dim}) or ({num_views}, {camera_dim}).")
        check_count("num_views", num_views, self.transformer.config.get("max_views"), "the model's max_views")
        if cameras is not None:
            expected = (batch, num_views, camera_dim or cameras.shape[-1])
            if tuple(cameras.shape) != expected:
                raise ValueError(f"cameras must have shape {expected} (batch, views, camera_dim), got {tuple(cameras.shape)}.")
        window = self.check_frames(num_frames, window_frames, window_overlap)
        height, width = self.image_size(height, width)
        channels = self.transformer.config.in_channels
        shape = (batch, channels, num_views, num_frames, height, width)

        known = known_mask = None
        if first_view is not None or first_frame is not None:
            known = torch.zeros(shape)
            known_mask = torch.zeros(1, 1, num_views, num_frames, 1, 1, dtype=torch.bool)
            if first_view is not None:
                video = self.clean_frames(first_view, "first_view", (batch, channels, num_frames, height, width))
                known[:, :, 0] = video
                known_mask[:, :, 0] = True
            if first_frame is not None:
                views = self.clean_frames(first_frame, "first_frame", (batch, channels, num_views, height, width))
                known[:, :, :, 0] = views
                known_mask[:, :, :, 0] = True
        extra = {"cameras": cameras, "timestamps": self.batch_timestamps(timestamps, batch, num_frames), **text}
        clean = known is not None and check_first_view_mode(first_view_mode or self.config.first_view_mode) == "clean"
        if clean:  # flag the given cells, which the model then embeds at timestep 0 (as in training)
            extra["known_cells"] = known_mask[0, 0, :, :, 0, 0].expand(batch, num_views, num_frames)

        state = self.sampling_state(shape, labels, generator, guidance_channels, guidance_schedule, extra,
                                    shared_noise=shared_noise, known=known, known_mask=known_mask, window=window,
                                    overlap=window_overlap, unconditional_kwargs=unconditional_text,
                                    clean_known=clean, time_kwargs=("timestamps", "known_cells"))
        latents = self.sample_frames(state, latents, num_inference_steps, guidance_scale, callback_on_step_end,
                                     callback_on_step_end_tensor_inputs)
        frames = self.to_output(latents, output_type)
        self.maybe_free_model_hooks()
        return FourDPipelineOutput(frames=frames) if return_dict else (frames,)
