"""The sampler of the layered model: DDIM (eta = 0) or ancestral (eta = 1) steps on per-scale shifted cosine schedules.

diffusers' schedulers hold one noise schedule; a layered model needs one per resolution (diffusion/multiscale.py),
all indexed by the same time t in [0, 1]. `LayeredScheduler` keeps the diffusers scheduler shape
(`set_timesteps`, `timesteps`, `scale_model_input`, `step(...).prev_sample`, `add_noise`, saved as
`scheduler_config.json`) but works on lists of per-scale tensors, top first. Timesteps are t * 1000, the
values the model's embedders see. Fresh noise in ancestral steps is drawn at the top scale and made
consistent across scales like the training noise.
"""

from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, SchedulerMixin  # noqa: F401  (names must be bound here for pipeline reloads)
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..diffusion.multiscale import PREDICTION_TYPES, MultiScaleSchedule, consistent_noise
from ..diffusion.prediction import check_prediction_type


@dataclass
class LayeredSchedulerOutput(BaseOutput):
    """Per-scale lists, top first: the sample at the next (less noisy) time, and the predicted clean image."""

    prev_sample: list
    pred_original_sample: list


class LayeredScheduler(SchedulerMixin, ConfigMixin):
    r"""Joint DDIM/ancestral sampler over every scale of a layered diffusion model.

    Args:
        sample_sizes: resolutions top first (the model's `scale_sizes`).
        base_resolution: resolution with the unshifted cosine schedule (None = the top one).
        logsnr_min, logsnr_max: log-SNR clipping of the unshifted cosine schedule.
        prediction_type: what the model outputs: "v_prediction", "epsilon" or "sample".
        num_train_timesteps: model time = t * num_train_timesteps.
        clip_sample: clip the predicted clean image to [-clip_sample_range, clip_sample_range] (pixel space).
    """

    order = 1
    init_noise_sigma = 1.0

    @register_to_config
    def __init__(self, sample_sizes: tuple = (64, 32, 16), base_resolution: int | None = None,
                 logsnr_min: float = -15.0, logsnr_max: float = 15.0, prediction_type: str = "v_prediction",
                 num_train_timesteps: int = 1000, clip_sample: bool = True, clip_sample_range: float = 1.0):
        check_prediction_type(prediction_type, supported=PREDICTION_TYPES)
        self.schedule = MultiScaleSchedule(sample_sizes, base_resolution, logsnr_min, logsnr_max)
        self.num_inference_steps = None
        self.timesteps = torch.tensor([float(num_train_timesteps)])

    def set_timesteps(self, num_inference_steps: int, device=None):
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}.")
        self.num_inference_steps = num_inference_steps
        steps = torch.arange(num_inference_steps, 0, -1, dtype=torch.float32) / num_inference_steps
        self.timesteps = (steps * self.config.num_train_timesteps).to(device)

    def scale_model_input(self, sample, timestep=None):
        return sample

    def _time(self, timestep) -> torch.Tensor:
        t = torch.as_tensor(timestep, dtype=torch.float64).reshape(-1)[:1].cpu()
        return t / self.config.num_train_timesteps

    def add_noise(self, original_samples: list, noise: list, timesteps) -> list:
        """The forward process at model time `timesteps` (scalar or (N,)) for every scale."""
        t = torch.as_tensor(timesteps, dtype=torch.float64).reshape(-1).cpu() / self.config.num_train_timesteps
        return self.schedule.add_noise(list(original_samples), list(noise), t)

    def step(self, model_output: list, timestep, sample: list, eta: float = 0.0, generator=None,
             return_dict: bool = True):
        """Move every scale from time t to t - 1 / num_inference_steps (the last step returns the clean prediction)."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step().")
        if len(model_output) != len(self.schedule.sizes) or len(sample) != len(self.schedule.sizes):
            raise ValueError(f"step() takes one model output and one sample per scale ({self.schedule.sizes}), "
                             f"got {len(model_output)} and {len(sample)}.")
        t = self._time(timestep)
        s = t - 1.0 / self.num_inference_steps
        final = float(s) < 0.5 / self.num_inference_steps  # t - 1/n is ~1e-9, not 0, after float32 timesteps
        now = self.schedule.alphas_sigmas(t, sample[0])
        prediction_type, limit = self.config.prediction_type, self.config.clip_sample_range
        clean, noise = [], []
        for (alpha, sigma), out, x_t in zip(now, model_output, sample):
            x0, eps = self.schedule.predict_clean_and_noise(prediction_type, out, x_t, alpha, sigma)
            if self.config.clip_sample:
                x0 = x0.clamp(-limit, limit)
                eps = (x_t - alpha * x0) / sigma
            clean.append(x0)
            noise.append(eps)
        if final:
            prev = clean
        else:
            fresh = None
            if eta > 0:
                top = randn_tensor(sample[0].shape, generator=generator, device=sample[0].device, dtype=sample[0].dtype)
                fresh = consistent_noise(top, self.schedule.sizes)
            prev = []
            for i, ((alpha_t, sigma_t), (alpha_s, sigma_s)) in enumerate(zip(now, self.schedule.alphas_sigmas(s, sample[0]))):
                # DDIM: the ancestral noise std, then the deterministic direction with the remaining variance.
                std = eta * (sigma_s / sigma_t) * (1 - (alpha_t / alpha_s) ** 2).clamp(min=0).sqrt()
                x_s = alpha_s * clean[i] + (sigma_s**2 - std**2).clamp(min=0).sqrt() * noise[i]
                prev.append(x_s if fresh is None else x_s + std * fresh[i])
        if not return_dict:
            return (prev, clean)
        return LayeredSchedulerOutput(prev_sample=prev, pred_original_sample=clean)

    def __len__(self):
        return self.config.num_train_timesteps
