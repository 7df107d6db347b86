"""Training objectives: what the model predicts, its loss, and the matching diffusers sampler.

- "epsilon": noise prediction on DDPM's 1000-step linear schedule. When the model outputs 2*C channels
  (learned sigma) the loss is the official DiT/DiC/DiCo hybrid: simple MSE on epsilon plus the VLB term on
  the variance, with the mean frozen (ADM's LEARNED_RANGE), sampled with DDPM `learned_range`.
- "v_prediction": v = sqrt(abar) * noise - sqrt(1 - abar) * x0, plain MSE.
- "flow": rectified flow, x_t = (1 - s) x0 + s noise, target noise - x0, model timestep s * 1000 -- the
  convention of diffusers' FlowMatchEulerDiscreteScheduler, which samples it. s is drawn uniformly, or
  logit-normal (sigmoid of a standard normal: more weight on the middle noise levels, Esser et al. 2024, SD3).
All random draws take an explicit generator so training is a pure function of (seed, step).
"""

import math

import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

OBJECTIVES = ("epsilon", "v_prediction", "flow")
TIMESTEP_SAMPLING = ("uniform", "logit_normal")


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_standard_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """Log-likelihood of data in [-1, 1] quantised to 256 bins under a Gaussian (the VLB's t = 0 term)."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def mean_flat(x):
    return x.flatten(1).mean(dim=1)


class DiffusionObjective:
    """Epsilon / v-prediction on DDPM's linear schedule, with the hybrid loss for learned sigma."""

    def __init__(self, prediction_type: str = "epsilon", learned_sigma: bool = False, num_train_timesteps: int = 1000,
                 pixel_space: bool = False):
        if learned_sigma and prediction_type != "epsilon":
            raise ValueError("Learned sigma (2*C output channels) goes with prediction_type 'epsilon' only; "
                             "build the model with learn_sigma=False for v_prediction.")
        self.prediction_type, self.learned_sigma = prediction_type, learned_sigma
        self.num_train_timesteps, self.pixel_space = num_train_timesteps, pixel_space
        betas = torch.linspace(1e-4, 0.02, num_train_timesteps, dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        posterior_variance = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
        self.betas, self.alphas_cumprod = betas, alphas_cumprod
        # log(posterior variance), with the t = 0 entry (zero) replaced by the t = 1 one, as ADM clips it
        self.posterior_log_variance = torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]]))
        self.posterior_mean_coef1 = betas * prev.sqrt() / (1.0 - alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod)

    def _at(self, table, t, like):
        return table.to(like.device)[t].to(torch.float32).view(-1, *([1] * (like.ndim - 1)))

    def sample_timesteps(self, batch, generator):
        return torch.randint(0, self.num_train_timesteps, (batch,), generator=generator)

    def noisy_input(self, x0, noise, t):
        abar = self._at(self.alphas_cumprod, t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise, t

    def loss(self, model_output, x0, noise, x_t, t):
        """Per-sample loss (N,)."""
        channels = x0.shape[1]
        if self.learned_sigma:
            if model_output.shape[1] != 2 * channels:
                raise ValueError(f"learned sigma expects {2 * channels} output channels, got {model_output.shape[1]}.")
            eps, variance = model_output[:, :channels], model_output[:, channels:]
            mse = mean_flat((noise - eps.float()) ** 2)
            return mse + self._vlb_term(eps.detach().float(), variance.float(), x0, x_t, t)
        if model_output.shape[1] != channels:
            raise ValueError(f"the model outputs {model_output.shape[1]} channels for {channels}-channel data; "
                             f"set learn_sigma={model_output.shape[1] == 2 * channels} to match the objective.")
        if self.prediction_type == "epsilon":
            target = noise
        else:
            abar = self._at(self.alphas_cumprod, t, x0)
            target = abar.sqrt() * noise - (1 - abar).sqrt() * x0
        return mean_flat((target - model_output.float()) ** 2)

    def _vlb_term(self, eps, variance, x0, x_t, t):
        """ADM's variational bound in bits/dim with a frozen mean; trains only the variance output."""
        abar = self._at(self.alphas_cumprod, t, x0)
        pred_x0 = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
        coef1, coef2 = self._at(self.posterior_mean_coef1, t, x0), self._at(self.posterior_mean_coef2, t, x0)
        model_mean = coef1 * pred_x0 + coef2 * x_t
        true_mean = coef1 * x0 + coef2 * x_t
        min_log = self._at(self.posterior_log_variance, t, x0)
        max_log = self._at(torch.log(self.betas), t, x0)
        frac = (variance + 1) / 2
        model_log_variance = frac * max_log + (1 - frac) * min_log
        kl = mean_flat(normal_kl(true_mean, min_log.expand_as(x0), model_mean, model_log_variance)) / math.log(2.0)
        nll = -mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_variance)) / math.log(2.0)
        return torch.where(t.to(x0.device) == 0, nll, kl)

    def make_scheduler(self):
        variance = "learned_range" if self.learned_sigma else "fixed_small"
        return DDPMScheduler(num_train_timesteps=self.num_train_timesteps, beta_schedule="linear", beta_start=1e-4,
                             beta_end=0.02, prediction_type=self.prediction_type, variance_type=variance,
                             clip_sample=self.pixel_space)


class FlowObjective:
    """Rectified flow with diffusers' convention (velocity noise - x0, model time sigma * 1000)."""

    prediction_type = "flow"
    learned_sigma = False

    def __init__(self, num_train_timesteps: int = 1000, pixel_space: bool = False, timestep_sampling: str = "uniform"):
        if timestep_sampling not in TIMESTEP_SAMPLING:
            raise ValueError(f"timestep_sampling must be one of {', '.join(TIMESTEP_SAMPLING)}; got {timestep_sampling!r}.")
        self.num_train_timesteps, self.timestep_sampling = num_train_timesteps, timestep_sampling

    def sample_timesteps(self, batch, generator):
        if self.timestep_sampling == "logit_normal":
            return torch.sigmoid(torch.randn(batch, generator=generator))
        return torch.rand(batch, generator=generator)

    def noisy_input(self, x0, noise, sigma):
        s = sigma.to(x0.device).view(-1, *([1] * (x0.ndim - 1)))
        return (1 - s) * x0 + s * noise, sigma * self.num_train_timesteps

    def loss(self, model_output, x0, noise, x_t, t):
        if model_output.shape[1] != x0.shape[1]:
            raise ValueError(f"flow matching needs {x0.shape[1]} output channels, got {model_output.shape[1]}: "
                             "build the model with learn_sigma=False.")
        return mean_flat(((noise - x0) - model_output.float()) ** 2)

    def make_scheduler(self):
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=self.num_train_timesteps, shift=1.0)


def make_objective(name: str, learned_sigma: bool, pixel_space: bool, timestep_sampling: str = "uniform"):
    if name == "flow":
        if learned_sigma:
            raise ValueError("objective 'flow' needs a model without learned sigma: set learn_sigma=False.")
        return FlowObjective(pixel_space=pixel_space, timestep_sampling=timestep_sampling)
    if timestep_sampling != "uniform":
        raise ValueError(f"timestep_sampling={timestep_sampling!r} is for objective 'flow'; DDPM objectives draw "
                         "their 1000 discrete timesteps uniformly.")
    if name in ("epsilon", "v_prediction"):
        return DiffusionObjective(name, learned_sigma, pixel_space=pixel_space)
    raise ValueError(f"Unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}.")
