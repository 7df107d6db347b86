"""Class-conditional (or unconditional) image generation with any convdiff or diffusers denoiser.

`ClassConditionalPipeline` is diffusers' `DiTPipeline` made general and correct for every scheduler:

- components `transformer` (DiC, DiCo, DiffiT, diffusers' `DiTTransformer2DModel`, ...: anything with
  `forward(x, t, class_labels=None, return_dict=...)`), `scheduler` (any Karras-family diffusers scheduler;
  flow-matching ones only for models that declare a flow parameterisation) and an optional `vae`
  (`None` = the model works in pixel space). The names match DiTPipeline's, so a DiT folder loads as is;
- honours the scheduler loop contract that DiTPipeline skips: noise times `init_noise_sigma` and
  `scale_model_input` every step (Euler-type samplers need both), second-order schedulers (Heun, KDPM2),
  and `generator` handed to stochastic `step`s;
- learned σ (out_channels = 2 * in_channels) is split off before `scheduler.step`, except for
  `DDPMScheduler(variance_type="learned"|"learned_range")`, the one sampler that uses it; the official
  250-step evaluation sampler of ADM/DiT is that DDPM configured as `schedulers.adm_scheduler()`
  (`timestep_spacing="linspace"`, no clipping), not diffusers' DDPM defaults;
- classifier-free guidance with the null class (`num_classes`, or `num_embeds_ada_norm` for diffusers' DiT),
  on all ε channels (diffusers) or only the first 3 (`guidance_channels=3`, the official DiT/DiC/DiCo/DiffiT
  rule), with a constant or DiffiT's power-cosine scale schedule (see `guidance.py`);
- `sampling_defaults`: the steps, guidance scale, channels and schedule a call uses when not given, saved in
  model_index.json (converted official checkpoints carry their sample script's, convert/sampling.py);
- `callback_on_step_end`, interruption, model offload hooks, and clear `ValueError`s for bad labels,
  latents, output types and scheduler/model mismatches.

Load a saved pipeline with `ClassConditionalPipeline.from_pretrained(folder)` (not `DiffusionPipeline`: the
class lives in convdiff, docs/architecture.md, "Saved pipelines").
"""

from typing import Callable

import torch
# The diffusers base-class names must be bound in this module so model_index.json entries pointing here
# resolve their loading methods (diffusers' pipeline_loading_utils; docs/architecture.md, "Saved pipelines").
from diffusers import ConfigMixin, DDPMScheduler, DiffusionPipeline, ModelMixin, SchedulerMixin  # noqa: F401
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from ..nn.inputs import class_info, label_ids
from .arguments import check_sampling_arguments
from .denoising import DenoisingPipeline, SamplingState
from .guidance import GuidanceSchedule, apply_guidance, check_schedule

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
FLOW_PARAMETERISATIONS = ("flow", "flow_prediction", "rectified_flow")
LEARNED_VARIANCE = ("learned", "learned_range")


def model_parameterisation(config) -> str | None:
    """What the denoiser predicts, if its config records it (`prediction_type` or `objective`)."""
    for key in ("prediction_type", "objective"):
        value = config.get(key)
        if value:
            return "flow" if value in FLOW_PARAMETERISATIONS else str(value)
    return None


def scheduler_is_flow(scheduler) -> bool:
    config = scheduler.config
    return (type(scheduler).__name__.startswith("FlowMatch") or bool(config.get("use_flow_sigmas", False))
            or config.get("prediction_type") == "flow_prediction")


class ClassConditionalPipeline(DenoisingPipeline):
    r"""Sample images from a class-conditional (or unconditional) denoiser, in latent or pixel space.

    Args:
        transformer: the denoiser (`ModelMixin`), called as `transformer(x, t, class_labels=..., return_dict=False)`.
        scheduler: a diffusers scheduler, e.g. `DDIMScheduler(clip_sample=False)`, or `schedulers.adm_scheduler()`
            (ADM/DiT's 250-step evaluation sampler: DDPM, learned-range variance, "linspace" steps, no clipping).
        vae: optional `AutoencoderKL`; `None` means the denoiser works on pixels in [-1, 1].
        id2label: optional `{class id: "name, synonym, ..."}` for `get_label_ids`, saved in model_index.json.
        sampling_defaults: optional `{argument: value}` for `num_inference_steps`, `guidance_scale`,
            `guidance_channels`, `guidance_schedule`: what a call uses when it does not pass them, saved in
            model_index.json (without it: 50 steps, no guidance, all channels, constant).

    Sampling runs the one loop of `DenoisingPipeline` (denoising.py); this class supplies its steps for one
    image batch: `run_denoiser` (CFG batch with the null class), `guide` and `step` (learned σ).
    """

    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["vae"]
    builtin_sampling = {**DenoisingPipeline.builtin_sampling, "guidance_channels": None,
                        "guidance_schedule": "constant"}

    def __init__(self, transformer: ModelMixin, scheduler: SchedulerMixin, vae: ModelMixin | None = None,
                 id2label: dict | None = None, sampling_defaults: dict | None = None):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae)
        # JSON turns int keys into strings; store strings so an in-memory and a reloaded pipeline agree.
        id2label = {str(k): v for k, v in id2label.items()} if id2label else None
        self.register_to_config(id2label=id2label)
        self.register_sampling_defaults(sampling_defaults)
        self.labels = {}
        for key, names in (id2label or {}).items():
            for name in names.split(","):
                self.labels[name.strip()] = int(key)
        self.labels = dict(sorted(self.labels.items()))

    def get_label_ids(self, label: str | list[str]) -> list[int]:
        """Map class names (any comma-separated synonym in id2label) to class ids."""
        if isinstance(label, str):
            label = [label]
        if not self.labels:
            raise ValueError("This pipeline has no id2label mapping: pass integer class_labels, "
                             "or build it with id2label={id: 'name'}.")
        unknown = [name for name in label if name not in self.labels]
        if unknown:
            shown = ", ".join(list(self.labels)[:20]) + (", ..." if len(self.labels) > 20 else "")
            raise ValueError(f"Unknown label(s) {unknown}; known labels are: {shown}.")
        return [self.labels[name] for name in label]

    # ---- checks -----------------------------------------------------------------------------------------
    def _sample_shape(self) -> tuple[int, int, int]:
        config = self.transformer.config
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return config.in_channels, height, width

    def check_scheduler(self) -> None:
        """Refuse scheduler/model pairs that would silently sample garbage or crash deep inside diffusers."""
        model_kind = model_parameterisation(self.transformer.config)
        flow = scheduler_is_flow(self.scheduler)
        name = type(self.scheduler).__name__
        if flow and model_kind not in (None, "flow"):  # None: the model does not say (diffusers' DiT)
            raise ValueError(
                f"{name} is a flow-matching sampler, but the transformer's config does not declare a flow "
                f"parameterisation (prediction_type={model_kind!r}). DiT/DiC/DiCo checkpoints predict ε: use a "
                "DDPM/DDIM/DPMSolverMultistep/Euler/UniPC/Heun scheduler, or set prediction_type='flow' in the "
                "model config if it really was trained with flow matching."
            )
        if model_kind == "flow" and not flow:
            raise ValueError(f"The transformer predicts flow velocity but {name} is not a flow-matching sampler; "
                             "use FlowMatchEulerDiscreteScheduler.")
        scheduler_kind = self.scheduler.config.get("prediction_type")
        if model_kind not in (None, "flow") and scheduler_kind and scheduler_kind != model_kind:
            raise ValueError(f"The transformer predicts {model_kind!r} but the scheduler expects {scheduler_kind!r}; "
                             f"rebuild it with {name}.from_config(pipe.scheduler.config, prediction_type={model_kind!r}).")
        in_channels = self.transformer.config.in_channels
        out_channels = self.transformer.config.get("out_channels") or in_channels  # diffusers' DiT may store None
        variance_type = self.scheduler.config.get("variance_type")
        is_ddpm = isinstance(self.scheduler, DDPMScheduler)
        if is_ddpm and variance_type in LEARNED_VARIANCE and out_channels != 2 * in_channels:
            raise ValueError(
                f"DDPMScheduler(variance_type={variance_type!r}) needs a model that predicts its variance (out_channels = "
                f"2 * in_channels = {2 * in_channels}), but this one has out_channels={out_channels}: use "
                "DDPMScheduler.from_config(pipe.scheduler.config, variance_type='fixed_small')."
            )
        if not is_ddpm and variance_type in LEARNED_VARIANCE and in_channels > 3:
            # DPM-Solver/SA-Solver slice model_output[:, :3] (hard-coded RGB) when variance_type is learned,
            # which breaks 4-channel latents; the pipeline already drops the variance, so it is not needed.
            raise ValueError(
                f"{name} with variance_type={variance_type!r} keeps only 3 of the {in_channels} latent channels (a "
                "diffusers quirk). The pipeline removes the learned variance itself: use "
                f"{name}.from_config(pipe.scheduler.config, variance_type=None)."
            )

    def check_class_labels(self, class_labels, batch_size, guidance_scale):
        """Return (class ids as a long tensor, or None for an unconditional model; batch size)."""
        num_classes, null_id = class_info(self.transformer.config)
        if num_classes == 0:
            if class_labels is not None:
                raise ValueError("The transformer is unconditional (num_classes=0), so class_labels must be None; "
                                 "use batch_size=N for N samples.")
            if guidance_scale > 1:
                raise ValueError("Classifier-free guidance needs a class-conditional model; this one is unconditional: "
                                 "use guidance_scale=1.")
            return None, 1 if batch_size is None else int(batch_size)
        if class_labels is None:
            raise ValueError(f"The transformer is class-conditional ({num_classes} classes): pass class_labels, "
                             "e.g. [0, 1] or pipe.get_label_ids(['name', ...]).")
        labels = label_ids(class_labels, num_classes, null_id)
        if batch_size is not None and int(batch_size) != labels.numel():
            if labels.numel() != 1:
                raise ValueError(f"batch_size={batch_size} but {labels.numel()} class labels were given; "
                                 "pass one label per sample.")
            labels = labels.expand(int(batch_size))
        if guidance_scale > 1 and null_id is None:
            raise ValueError(
                f"guidance_scale={guidance_scale} needs a null class for the unconditional branch, but this model has "
                "none (it was built with class_dropout_prob=0). Use guidance_scale=1, or a model trained with label dropout."
            )
        return labels, labels.numel()

    def check_inputs(self, class_labels, batch_size, guidance_scale, guidance_channels, guidance_schedule,
                     latents, output_type, generator, callback_on_step_end_tensor_inputs):
        """Validate everything up front; return (class ids as a long tensor or None, batch size)."""
        labels, batch = self.check_class_labels(class_labels, batch_size, guidance_scale)
        if batch < 1:
            raise ValueError(f"Need at least one sample, got batch size {batch}.")
        in_channels = self.transformer.config.in_channels
        if guidance_channels is not None and not (isinstance(guidance_channels, int)
                                                  and 1 <= guidance_channels <= in_channels):
            raise ValueError(f"guidance_channels must be None (all channels) or an int in [1, {in_channels}], "
                             f"got {guidance_channels!r}.")
        check_schedule(guidance_schedule)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        if latents is not None and not (torch.is_tensor(latents) and latents.ndim == 4
                                        and tuple(latents.shape[:2]) == (batch, in_channels)):
            shape = tuple(latents.shape) if torch.is_tensor(latents) else type(latents).__name__
            raise ValueError(f"latents must be a (batch={batch}, channels={in_channels}, height, width) tensor, got {shape}.")
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"Got a list of {len(generator)} generators for a batch of {batch}; "
                             "pass one per sample or a single generator.")
        self.check_callback_inputs(callback_on_step_end_tensor_inputs)
        return labels, batch

    # ---- the steps of the denoising loop (denoising.py) -------------------------------------------------
    state_class = SamplingState  # the video pipelines' state adds known frames and windows

    def sampling_state(self, shape, labels, generator, guidance_channels, guidance_schedule, model_kwargs=None,
                       **fields) -> SamplingState:
        """The state of one call, its labels and model kwargs on the execution device."""
        device, dtype = self._execution_device, self.transformer.dtype
        model_kwargs = {k: (v.to(device=device, dtype=dtype) if torch.is_tensor(v) else v)
                        for k, v in (model_kwargs or {}).items()}
        return self.state_class(
            shape=shape, dtype=dtype, device=device, generator=generator,
            labels=None if labels is None else labels.to(device), null_id=class_info(self.transformer.config)[1],
            guidance_channels=guidance_channels or self.transformer.config.in_channels,
            guidance_schedule=guidance_schedule, model_kwargs=model_kwargs, **fields)

    def run_denoiser(self, latents, t, state: SamplingState, guided: bool):
        """One forward pass, over [latents, latents] with [labels, null class] when guided."""
        model_input = torch.cat([latents, latents]) if guided else latents
        if hasattr(self.scheduler, "scale_model_input"):  # flow-matching schedulers have none
            model_input = self.scheduler.scale_model_input(model_input, t)
        labels = state.labels
        if guided:
            if state.null_id is None:  # a callback raised the guidance scale of a model without a null class
                raise ValueError("Classifier-free guidance needs a model with a null class; use guidance_scale=1.")
            labels = torch.cat([labels, torch.full_like(labels, state.null_id)])
        kwargs = {k: (torch.cat([v, state.unconditional_kwargs.get(k, v)]) if guided and v is not None else v)
                  for k, v in state.model_kwargs.items()}
        timesteps = (t if torch.is_tensor(t) else torch.tensor(t)).to(model_input.device)
        timesteps = timesteps.reshape(-1).expand(model_input.shape[0])
        return self.call_denoiser(model_input, timesteps, state, class_labels=labels, **kwargs)[0]

    def guide(self, model_output, scale: float, state: SamplingState):
        cond, uncond = model_output.chunk(2)
        return apply_guidance(cond, uncond, scale, state.guidance_channels)

    def step(self, model_output, t, latents, state: SamplingState):
        return super().step(self.split_learned_sigma(model_output), t, latents, state)

    def split_learned_sigma(self, model_output):
        """Drop the learned-variance half unless the scheduler is the DDPM sampler that uses it."""
        in_channels = self.transformer.config.in_channels
        if model_output.shape[1] != 2 * in_channels:
            return model_output
        keeps = isinstance(self.scheduler, DDPMScheduler) and self.scheduler.config.variance_type in LEARNED_VARIANCE
        return model_output if keeps else model_output[:, :in_channels]

    def decode(self, latents, output_type):
        if output_type == "latent":
            return latents
        if self.vae is not None:
            latents = latents / self.vae.config.scaling_factor
            shift = getattr(self.vae.config, "shift_factor", None)
            if shift is not None:
                latents = latents + shift
            images = self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0]
        else:
            images = latents
        images = (images / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return images
        # float32 for bf16/fp16 runs; (N, H, W, C) so 1-channel images become 'L' PIL images.
        images = images.cpu().permute(0, 2, 3, 1).float().numpy()
        return images if output_type == "np" else self.numpy_to_pil(images)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | list[int] | torch.Tensor | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_channels: int | None = None,
        guidance_schedule: GuidanceSchedule | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006  (diffusers' signature)
        batch_size: int | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""Generate images.

        Args:
            class_labels: class ids, one per sample (`pipe.get_label_ids(names)` maps names); the null id gives
                unconditional samples. Must be None for an unconditional model.
            num_inference_steps: sampler steps (`scheduler.set_timesteps`).
            guidance_scale: classifier-free guidance scale (its peak for "power-cosine"); active when > 1.
            guidance_channels: how many latent channels guidance mixes: 3 reproduces official DiT/DiC/DiCo/DiffiT,
                `in_channels` guides all of them (diffusers).
            guidance_schedule: "constant", "power-cosine" (DiffiT) or a callable `(t, scale, num_train_timesteps)`.
                Each of these four, when None, comes from the pipeline's `sampling_defaults` (a converted
                official checkpoint: its sample script's), else 50 steps, scale 1, all channels, "constant".
            generator: `torch.Generator` or one per sample, for reproducible noise and stochastic steps.
            latents: optional starting noise (batch, C, H, W), scaled by `init_noise_sigma` like fresh noise.
            output_type: "pil", "np" (N,H,W,C in [0,1]), "pt" (N,C,H,W in [0,1]) or "latent" (denoised latents).
            return_dict: return `ImagePipelineOutput` (else a 1-tuple).
            callback_on_step_end: `fn(pipe, step, t, tensors) -> dict` after every scheduler step; returned
                tensors (e.g. "latents") replace the pipeline's. Set `pipe._interrupt = True` to stop early.
            callback_on_step_end_tensor_inputs: tensor names passed to the callback (from `_callback_tensor_inputs`).
            batch_size: number of samples for an unconditional model (or to repeat a single class label).
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        sampling = self.sampling_arguments(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                           guidance_channels=guidance_channels, guidance_schedule=guidance_schedule)
        num_inference_steps, guidance_scale = sampling["num_inference_steps"], sampling["guidance_scale"]
        guidance_channels, guidance_schedule = sampling["guidance_channels"], sampling["guidance_schedule"]
        check_sampling_arguments(num_inference_steps, guidance_scale, class_labels)
        if isinstance(class_labels, int):
            class_labels = [class_labels]
        labels, batch = self.check_inputs(class_labels, batch_size, guidance_scale, guidance_channels,
                                          guidance_schedule, latents, output_type, generator,
                                          callback_on_step_end_tensor_inputs)
        self.check_scheduler()
        state = self.sampling_state((batch, *self._sample_shape()), labels, generator, guidance_channels,
                                    guidance_schedule)
        latents = self.denoise(state, latents, num_inference_steps, guidance_scale, callback_on_step_end,
                               callback_on_step_end_tensor_inputs)

        images = self.decode(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
