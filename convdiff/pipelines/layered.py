"""Text-to-image (and class-conditional) sampling with the layered multi-resolution U-Net.

`LayeredTextToImagePipeline(unet, scheduler, text_encoder=None, tokenizer=None)` starts every scale from one
consistent noise draw, denoises all scales jointly with `LayeredScheduler` (one model call per step predicts
every scale), and returns the top scale -- or every scale with `return_all_scales=True`. Conditioning:
- text: `prompt` (str or list) encoded by the CLIP text encoder into `encoder_hidden_states`; classifier-free
  guidance against `negative_prompt` (default "");
- class: `class_labels`, guided against the null class (the model needs class_dropout_prob > 0);
- both at once when the model has both.
Load with `LayeredTextToImagePipeline.from_pretrained(folder)` (docs/architecture.md, "Saved pipelines").
"""

from dataclasses import dataclass
from typing import Callable

import torch
# The diffusers base-class names must be bound in this module so model_index.json entries resolve.
from diffusers import ConfigMixin, DiffusionPipeline, ModelMixin, SchedulerMixin  # noqa: F401
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from ..diffusion.multiscale import consistent_noise
from ..nn.inputs import class_info, label_ids
from .arguments import check_sampling_arguments, prompt_list
from .denoising import DenoisingPipeline, SamplingState
from .guidance import apply_guidance
from .layered_scheduler import LayeredScheduler
from .text_encoders import encode_prompts

OUTPUT_TYPES = ("pil", "np", "pt")


@dataclass
class LayeredPipelineOutput(ImagePipelineOutput):
    """`images`: the top scale; `scales`: the images of every scale, top first (with return_all_scales=True)."""

    scales: list | None = None


class LayeredTextToImagePipeline(DenoisingPipeline):
    r"""Joint multi-scale sampling from a `LayeredUNetModel`.

    Args:
        unet: the `LayeredUNetModel`.
        scheduler: a `LayeredScheduler` whose sample_sizes are the unet's scales.
        text_encoder, tokenizer: a transformers `CLIPTextModel` and its tokenizer (only for a text model).

    Sampling runs the one loop of `DenoisingPipeline` (denoising.py) on lists of per-scale latents, top first:
    this class supplies `prepare_latents`, `run_denoiser`, `guide` and `step` for them.
    """

    denoiser_name = "unet"
    model_cpu_offload_seq = "text_encoder->unet"
    _optional_components = ["text_encoder", "tokenizer"]

    def __init__(self, unet: ModelMixin, scheduler: SchedulerMixin, text_encoder=None, tokenizer=None,
                 sampling_defaults: dict | None = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)
        self.register_sampling_defaults(sampling_defaults)
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_resize=False)

    # ---- checks -----------------------------------------------------------------------------------------
    def check_components(self):
        if not isinstance(self.scheduler, LayeredScheduler):
            raise ValueError(f"{type(self).__name__} needs a LayeredScheduler (one shifted schedule per scale), "
                             f"got {type(self.scheduler).__name__}.")
        sizes, expected = list(self.scheduler.config.sample_sizes), list(self.unet.scale_sizes)
        if sizes != expected:
            raise ValueError(f"the scheduler's sample_sizes {sizes} differ from the unet's scales {expected}; "
                             f"use LayeredScheduler(sample_sizes={expected}, ...).")
        model_kind, scheduler_kind = self.unet.config.prediction_type, self.scheduler.config.prediction_type
        if model_kind != scheduler_kind:
            raise ValueError(f"the unet predicts {model_kind!r} but the scheduler expects {scheduler_kind!r}; "
                             f"use LayeredScheduler.from_config(pipe.scheduler.config, prediction_type={model_kind!r}).")

    def check_inputs(self, prompt, negative_prompt, class_labels, batch_size, guidance_scale, output_type, generator):
        """Return (prompts or None, negative prompts or None, class ids or None, batch size)."""
        config = self.unet.config
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        sizes = []
        prompts = negatives = labels = None
        if config.cross_attention_dim is None:
            if prompt is not None or negative_prompt is not None:
                raise ValueError("this unet has no text conditioning (cross_attention_dim=None): drop prompt/"
                                 "negative_prompt and pass class_labels (or batch_size).")
        else:
            if prompt is None:
                raise ValueError("this unet is text-conditional: pass prompt (a string or one string per image).")
            if self.text_encoder is None or self.tokenizer is None:
                raise ValueError("this pipeline has no text_encoder/tokenizer to encode the prompt; build it with "
                                 "text_encoder=CLIPTextModel and tokenizer=CLIPTokenizer.")
            prompts = prompt_list(prompt)
            sizes.append(("prompt", len(prompts)))
            if negative_prompt is not None:
                negatives = prompt_list(negative_prompt, "negative_prompt")
                sizes.append(("negative_prompt", len(negatives)))
        if config.num_classes:
            if class_labels is None:
                raise ValueError(f"this unet is class-conditional ({config.num_classes} classes): pass class_labels.")
            num_classes, null = class_info(config)
            labels = label_ids(class_labels, num_classes, null)
            if guidance_scale > 1 and null is None:
                raise ValueError("classifier-free guidance needs a null class (a unet built with class_dropout_prob > 0); "
                                 "use guidance_scale=1.")
            sizes.append(("class_labels", labels.numel()))
        elif class_labels is not None:
            raise ValueError("this unet has no class conditioning (num_classes=0): pass class_labels=None.")
        if batch_size is not None:
            sizes.append(("batch_size", int(batch_size)))
        # Every per-image input must agree on the batch; a single prompt or label is repeated.
        batch = max([n for _, n in sizes], default=1)
        wrong = [f"{name} has {n}" for name, n in sizes if n not in (1, batch)]
        if wrong or (batch_size is not None and int(batch_size) != batch):
            listed = ", ".join(f"{name}: {n}" for name, n in sizes)
            raise ValueError(f"the prompt list / class labels / batch_size do not describe the same batch ({listed}); "
                             "give one prompt and one label per image, or a single one to repeat.")
        if batch < 1:
            raise ValueError(f"need at least one image, got batch size {batch}.")
        if prompts is not None:
            prompts = prompts * batch if len(prompts) == 1 else prompts
            negatives = [""] * batch if negatives is None else (negatives * batch if len(negatives) == 1 else negatives)
        if labels is not None and labels.numel() == 1:
            labels = labels.expand(batch)
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch}; pass one per image or a single one.")
        return prompts, negatives, labels, batch

    # ---- sampling ---------------------------------------------------------------------------------------
    def encode_prompt(self, prompts, device) -> torch.Tensor:
        return encode_prompts(self.tokenizer, self.text_encoder, prompts, device)

    # ---- the steps of the denoising loop (denoising.py), on per-scale lists ----------------------------------
    def prepare_latents(self, state: SamplingState, latents=None):
        """One top-scale noise draw made consistent across scales (as in training)."""
        noise = self.initial_noise(state)
        return [n * self.scheduler.init_noise_sigma for n in consistent_noise(noise, self.unet.scale_sizes)]

    def run_denoiser(self, latents, t, state: SamplingState, guided: bool):
        """One model call predicting every scale; the text states and labels already hold both CFG halves."""
        inputs = [torch.cat([x, x]) if guided else x for x in latents]
        timesteps = t.reshape(-1).to(inputs[0].device).expand(inputs[0].shape[0])
        return self.call_denoiser(inputs, timesteps, state, **state.model_kwargs)[1]

    def guide(self, model_output, scale: float, state: SamplingState):
        return [apply_guidance(*out.chunk(2), scale) for out in model_output]

    def step(self, model_output, t, latents, state: SamplingState):
        latents = self.scheduler.step(model_output, t, latents, **state.step_kwargs).prev_sample
        return [x.to(state.dtype) for x in latents]

    def to_images(self, x, output_type):
        """[-1, 1] pixels -> [0, 1] images of the requested type (diffusers' image post-processing)."""
        return self.image_processor.postprocess(x.float(), output_type=output_type)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        class_labels: int | list[int] | torch.Tensor | None = None,
        negative_prompt: str | list[str] | None = None,
        batch_size: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_all_scales: bool = False,
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006  (diffusers' signature)
    ):
        r"""Generate images.

        Args:
            prompt: a prompt, or one per image (text models).
            class_labels: class ids, one per image or one to repeat (class-conditional models).
            negative_prompt: the unconditional text for guidance (default "").
            batch_size: number of images when neither prompts nor labels say (or to repeat a single one).
            num_inference_steps: joint denoising steps.
            guidance_scale: classifier-free guidance scale, active when > 1 (text and class together).
            eta: 0 = deterministic DDIM, 1 = ancestral (DDPM-like) steps.
            generator: `torch.Generator` (or one per image) for reproducible noise.
            output_type: "pil", "np" (N, H, W, C in [0, 1]) or "pt" (N, C, H, W in [0, 1]).
            return_all_scales: also return every scale's images (top first) as `.scales`.
            return_dict: return `LayeredPipelineOutput` (else `(images,)` or `(images, scales)`).
            callback_on_step_end: `fn(pipe, step, t, {"latents": [per-scale tensors]}) -> dict` after every step.
        """
        self.check_components()
        sampling = self.sampling_arguments(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
        num_inference_steps, guidance_scale = sampling["num_inference_steps"], sampling["guidance_scale"]
        check_sampling_arguments(num_inference_steps, guidance_scale, class_labels)
        prompts, negatives, labels, batch = self.check_inputs(prompt, negative_prompt, class_labels, batch_size,
                                                              guidance_scale, output_type, generator)
        self.check_callback_inputs(callback_on_step_end_tensor_inputs)
        self._guidance_scale = guidance_scale
        device, dtype = self._execution_device, self.unet.dtype

        context = None
        if prompts is not None:
            context = self.encode_prompt(prompts + negatives if self.do_classifier_free_guidance else prompts, device)
        if labels is not None:
            labels = labels.to(device)
            if self.do_classifier_free_guidance:
                labels = torch.cat([labels, torch.full_like(labels, self.unet.config.num_classes)])
        size = self.unet.scale_sizes[0]
        state = SamplingState(shape=(batch, self.unet.config.in_channels, size, size), dtype=dtype, device=device,
                              generator=generator,
                              model_kwargs={"encoder_hidden_states": context, "class_labels": labels},
                              step_kwargs={"eta": eta, "generator": generator})
        latents = self.denoise(state, None, num_inference_steps, guidance_scale, callback_on_step_end,
                               callback_on_step_end_tensor_inputs)

        scales = [self.to_images(x, output_type) for x in latents]
        self.maybe_free_model_hooks()
        if not return_dict:
            return (scales[0], scales) if return_all_scales else (scales[0],)
        return LayeredPipelineOutput(images=scales[0], scales=scales if return_all_scales else None)
