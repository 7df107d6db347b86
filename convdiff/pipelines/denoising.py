"""The one denoising loop of every convdiff pipeline, built from small steps that the pipelines override.

`DenoisingPipeline.denoise(state, latents, ...)` is diffusers' sampling loop, written once: it sets the
timesteps, asks the pipeline for its starting latents, runs the denoiser in eval mode (no training-time
label dropout drawing from the global RNG), honours `callback_on_step_end` and interruption, and counts
second-order scheduler steps once per order in the progress bar. One pass of the loop is

    latents = before_step(latents, t, state)          per-step hook (identity)
    output  = predict(latents, t, state)              guidance_at -> run_denoiser -> guide
    latents = step(output, t, latents, state)         scheduler.step(...).prev_sample in the sampling dtype
    latents = step_end(i, t, latents, callback, ...)  callback_on_step_end

and `finish(latents, state)` runs after the last step. Who overrides what:
- `ClassConditionalPipeline` (class_conditional.py): `run_denoiser` (one CFG-batched forward with the null
  class), `guide` (on the first `guidance_channels`), `step` (drops a learned variance the scheduler does not use);
- `VideoPipeline` / `FourDPipeline` (video.py): `initial_noise` (shared noise), `prepare_latents` (known-frame
  noise), `before_step` / `finish` (known-frame replacement), `predict` (overlapping windows, blended);
- `LayeredTextToImagePipeline` (layered.py): `prepare_latents` (one noise draw made consistent across scales),
  `run_denoiser`, `guide` and `step` on per-scale lists;
- the ControlNet pipelines (controlnet.py): `call_denoiser`, which adds the ControlNets' residuals to the
  denoiser's keywords, as diffusers' ControlNet pipelines pass them to the UNet.
"""

import inspect
from dataclasses import dataclass, field

import torch
from diffusers import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from ..models.class_paths import check_pipeline_folder
from .arguments import check_finite, check_sampling_arguments
from .guidance import GuidanceSchedule, guidance_scale_at
from .model_card import write_model_card
from .saved_folder import pipeline_class_name, write_diffusers_entry


@dataclass
class SamplingState:
    """What one pipeline call fixes before its loop; the steps read it.

    shape: the latents' shape; labels: class ids on `device` (or None), `null_id` the unconditional class;
    guidance_channels: how many channels classifier-free guidance mixes (None: all); model_kwargs: extra
    batch-first keyword tensors for the denoiser (doubled for the guidance batch by `run_denoiser`);
    unconditional_kwargs: the values some of them take in the unconditional half (a negative prompt's
    embedding), where they differ from the conditional ones;
    step_kwargs: keywords for `scheduler.step` (None: the generator, when the scheduler takes one);
    step_index: the loop's step, set by `denoise` before each one (for schedules over the steps, such as a
    ControlNet's control_guidance_start / end).
    """

    shape: tuple
    dtype: torch.dtype
    device: torch.device
    generator: torch.Generator | list | None = None
    labels: torch.Tensor | None = None
    null_id: int | None = None
    guidance_channels: int | None = None
    guidance_schedule: GuidanceSchedule = "constant"
    model_kwargs: dict = field(default_factory=dict)
    unconditional_kwargs: dict = field(default_factory=dict)
    step_kwargs: dict | None = None
    step_index: int = 0


class DenoisingPipeline(DiffusionPipeline):
    """A `DiffusionPipeline` with the one denoising loop; `denoiser_name` names its denoiser component.

    Every convdiff pipeline takes `sampling_defaults`, `{argument: value}` for the arguments in
    `builtin_sampling`: what a call uses when it does not pass them. It is a pipeline config attribute, the
    diffusers way (like DiTPipeline's id2label): `save_pretrained` writes it into model_index.json and
    `from_pretrained` hands it back to `__init__`, so a trained or converted folder samples with no arguments as
    its figures were measured (the training loop records the recipe's sampler, steps and guidance).
    """

    denoiser_name = "transformer"
    _callback_tensor_inputs = ["latents"]
    # What a call uses for an argument it does not pass, unless the pipeline's sampling_defaults say otherwise.
    builtin_sampling = {"num_inference_steps": 50, "guidance_scale": 1.0}

    @property
    def denoiser(self):
        return getattr(self, self.denoiser_name)

    # ---- the sampling a call uses by default -------------------------------------------------------------
    def register_sampling_defaults(self, sampling_defaults: dict | None) -> None:
        """Check `sampling_defaults` (it may come from someone else's model_index.json) and record it."""
        if sampling_defaults:
            unknown = sorted(set(sampling_defaults) - set(self.builtin_sampling))
            if unknown:
                raise ValueError(f"sampling_defaults of {type(self).__name__} takes {sorted(self.builtin_sampling)}, "
                                 f"got unknown key(s) {unknown}.")
            merged = {**self.builtin_sampling, **sampling_defaults}
            try:
                check_sampling_arguments(merged["num_inference_steps"], merged["guidance_scale"])
            except ValueError as error:
                raise ValueError(f"sampling_defaults: {error}") from None
        self.register_to_config(sampling_defaults=dict(sampling_defaults) if sampling_defaults else None)

    # ---- saved folders: diffusers' custom-pipeline convention and a model card (saved_folder.py) ----------
    def save_pretrained(self, save_directory, *args, training: dict | None = None, conversion: dict | None = None,
                        evaluation: list[str] | None = None, **kwargs):
        """diffusers' save, plus the code file and `[file, class]` entry that let `DiffusionPipeline.from_pretrained`
        find this class, and a model card (README.md) with the `training` / `conversion` records and `evaluation`
        lines given."""
        super().save_pretrained(save_directory, *args, **kwargs)
        write_diffusers_entry(save_directory, type(self))
        write_model_card(save_directory, self, training=training, conversion=conversion, evaluation=evaluation)

    @classmethod
    def load_config(cls, *args, **kwargs):
        """diffusers' config reading, with a `[file, class]` `_class_name` read as the class name: loading through
        a convdiff class never imports the folder's code file (diffusers would, for a `[file, class]` entry)."""
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        if "_class_name" in config:
            config["_class_name"] = pipeline_class_name(config["_class_name"])
        return loaded

    def sampling_arguments(self, **given) -> dict:
        """Each sampling argument as given, else the pipeline's `sampling_defaults`, else `builtin_sampling`."""
        saved = self.config.get("sampling_defaults") or {}
        return {name: given[name] if given.get(name) is not None else saved.get(name, builtin)
                for name, builtin in self.builtin_sampling.items()}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """diffusers' loader, after the folder's component classes and model sizes pass `check_pipeline_folder`
        (docs/security.md): a folder from someone else imports nothing outside convdiff, diffusers, transformers."""
        check_pipeline_folder(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    # ---- properties in the style of diffusers pipelines (a callback may change _guidance_scale) -------
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def check_callback_inputs(self, names) -> None:
        if names is None:
            return
        unknown = [k for k in names if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs must be among {self._callback_tensor_inputs}, "
                             f"got {unknown}.")

    # ---- the steps ----------------------------------------------------------------------------------------
    def initial_noise(self, state: SamplingState):
        return randn_tensor(state.shape, generator=state.generator, device=state.device, dtype=state.dtype)

    def prepare_latents(self, state: SamplingState, latents=None):
        """Fresh noise (or the given latents) times the scheduler's `init_noise_sigma`."""
        if latents is None:
            latents = self.initial_noise(state)
        else:
            check_finite("latents", latents)
            latents = latents.to(device=state.device, dtype=state.dtype)
        # DiTPipeline forgets this; Euler-type samplers start at sigma_max (~157 for the linear schedule).
        init_sigma = getattr(self.scheduler, "init_noise_sigma", None)
        return latents if init_sigma is None else latents * init_sigma

    def before_step(self, latents, t, state: SamplingState):
        """Per-step hook on the latents before the model sees them (identity)."""
        return latents

    def guidance_at(self, t, state: SamplingState) -> float | None:
        """The classifier-free guidance scale at timestep `t`, None without guidance."""
        if not self.do_classifier_free_guidance:
            return None
        num_train_timesteps = self.scheduler.config.get("num_train_timesteps", 1000)
        return guidance_scale_at(t, self._guidance_scale, state.guidance_schedule, num_train_timesteps)

    def run_denoiser(self, latents, t, state: SamplingState, guided: bool):
        """One forward pass; with `guided`, over the [conditional, unconditional] batch."""
        raise NotImplementedError

    def call_denoiser(self, sample, timesteps, state: SamplingState, **kwargs):
        """The denoiser's forward with `return_dict=False`, the one place the loop calls it (the ControlNet
        pipelines add their residuals to its keywords here)."""
        return self.denoiser(sample, timesteps, return_dict=False, **kwargs)

    def guide(self, model_output, scale: float, state: SamplingState):
        """Combine the conditional and unconditional halves of a guided forward (guidance.py's rule)."""
        raise NotImplementedError

    def predict(self, latents, t, state: SamplingState):
        """The (guided) model output for one step."""
        scale = self.guidance_at(t, state)
        model_output = self.run_denoiser(latents, t, state, guided=scale is not None)
        return model_output if scale is None else self.guide(model_output, scale, state)

    def step(self, model_output, t, latents, state: SamplingState):
        latents = self.scheduler.step(model_output, t, latents, **state.step_kwargs).prev_sample
        return latents if latents.dtype == state.dtype else latents.to(state.dtype)  # some schedulers upcast

    def step_end(self, i, t, latents, callback, names):
        """`callback_on_step_end(pipe, step, t, tensors)`; the tensors it returns replace the pipeline's."""
        if callback is None:
            return latents
        available = {"latents": latents}
        outputs = callback(self, i, t, {k: available[k] for k in names}) or {}
        return outputs.pop("latents", latents)

    def finish(self, latents, state: SamplingState):
        """After the last step (identity)."""
        return latents

    # ---- the loop -----------------------------------------------------------------------------------------
    def denoise(self, state: SamplingState, latents, num_inference_steps: int, guidance_scale: float,
                callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",)):
        """Sample: set the timesteps, prepare the latents, run every step; return the final latents."""
        self._guidance_scale, self._interrupt = guidance_scale, False
        self.scheduler.set_timesteps(num_inference_steps, device=state.device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        latents = self.prepare_latents(state, latents)
        if state.step_kwargs is None:
            takes_generator = "generator" in inspect.signature(self.scheduler.step).parameters
            state.step_kwargs = {"generator": state.generator} if takes_generator else {}
        order = getattr(self.scheduler, "order", 1)
        num_warmup_steps = max(len(timesteps) - num_inference_steps * order, 0)

        denoiser = self.denoiser
        was_training = denoiser.training
        denoiser.eval()
        try:
            with self.progress_bar(total=num_inference_steps) as progress_bar:
                for i, t in enumerate(timesteps):
                    if self.interrupt:  # a callback may set pipe._interrupt = True to stop early
                        continue
                    state.step_index = i
                    latents = self.before_step(latents, t, state)
                    model_output = self.predict(latents, t, state)
                    latents = self.step(model_output, t, latents, state)
                    latents = self.step_end(i, t, latents, callback_on_step_end, callback_on_step_end_tensor_inputs)
                    # Second-order schedulers take two model calls per step: count a step once per order.
                    if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % order == 0):
                        progress_bar.update()
        finally:
            if was_training:
                denoiser.train()
        return self.finish(latents, state)
