"""Noise and noise schedules that stay consistent across the resolution scales of a layered diffusion model.

Layered Diffusion (Khwaja et al., arXiv 2407.06079) denoises an image at
several resolutions at once. Two rules tie the scales together:

- **one noise draw**: the noise of a lower scale is the full-resolution noise average-pooled by the scale
  factor f and multiplied by f (the mean of f*f independent N(0, 1) values has variance 1/f^2), so it is
  unit-variance again and exactly the pooled top noise up to that factor;
- **resolution-shifted cosine schedules** (simple diffusion, Hoogeboom et al. 2023): the cosine log-SNR,
  clipped to [logsnr_min, logsnr_max], is shifted by 2 * log(base_resolution / resolution), so a scale
  with fewer pixels gets a higher SNR at the same time t.

The two fit each other: pooling x_t = a * x0 + s * eps by f keeps a * pool(x0) but divides the noise by f,
i.e. raises the log-SNR by exactly 2 * log f, the schedule's shift between the two scales. So every lower-scale
noisy image is the pooled top noisy image up to one scalar per scale (tests/test_layered.py checks it).
Time t runs over [0, 1] (0 clean, 1 noise); models see it as t * 1000.
"""

import math

import torch
import torch.nn.functional as F

from .prediction import check_prediction_type


def scale_sizes(sample_size: int, num_scales: int) -> list[int]:
    """Resolutions top first, halving each time: scale_sizes(32, 3) == [32, 16, 8]."""
    if num_scales < 1:
        raise ValueError(f"num_scales must be at least 1, got {num_scales}.")
    if sample_size % 2 ** (num_scales - 1):
        raise ValueError(f"sample_size={sample_size} cannot be halved {num_scales - 1} times into whole pixels; "
                         f"use a multiple of {2 ** (num_scales - 1)}.")
    return [sample_size // 2**i for i in range(num_scales)]


def pooling_factor(height: int, width: int, size: int) -> int:
    """The whole factor that takes an (height, width) map to size rows, with a clear error otherwise."""
    if height % size or width % size or height // size != width // size:
        raise ValueError(f"cannot average-pool a {height}x{width} map to {size} rows by a whole factor in both "
                         f"directions; scale sizes must divide the top resolution.")
    return height // size


def downsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Average-pool an (N, C, H, W) map to `size` rows (an image pyramid level)."""
    factor = pooling_factor(x.shape[-2], x.shape[-1], size)
    return x if factor == 1 else F.avg_pool2d(x, factor)


def image_pyramid(images: torch.Tensor, sizes) -> list[torch.Tensor]:
    """The clean image at every scale (top first): average pooling keeps pixel values in range."""
    return [downsample(images, size) for size in sizes]


def consistent_noise(noise: torch.Tensor, sizes) -> list[torch.Tensor]:
    """Unit-variance noise at every scale, derived from the top-scale noise (pooled by f, times f)."""
    return [downsample(noise, size) * pooling_factor(noise.shape[-2], noise.shape[-1], size) for size in sizes]


def cosine_log_snr(t: torch.Tensor, logsnr_min: float = -15.0, logsnr_max: float = 15.0) -> torch.Tensor:
    """The cosine schedule's log-SNR, -2 log tan(pi t / 2), with t rescaled so it spans [logsnr_max, logsnr_min]."""
    t_min = math.atan(math.exp(-0.5 * logsnr_max))
    t_max = math.atan(math.exp(-0.5 * logsnr_min))
    return -2.0 * torch.log(torch.tan(t_min + t.double() * (t_max - t_min)))


def shifted_cosine_log_snr(t: torch.Tensor, resolution: int, base_resolution: int, logsnr_min: float = -15.0,
                           logsnr_max: float = 15.0) -> torch.Tensor:
    """log-SNR of the cosine schedule shifted for `resolution`: + 2 log(base_resolution / resolution)."""
    return cosine_log_snr(t, logsnr_min, logsnr_max) + 2.0 * math.log(base_resolution / resolution)


def alpha_sigma(log_snr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Variance-preserving signal and noise scales: alpha^2 = sigmoid(logsnr), sigma^2 = sigmoid(-logsnr)."""
    return torch.sigmoid(log_snr).sqrt(), torch.sigmoid(-log_snr).sqrt()


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # what the per-scale targets and inversions below handle


class MultiScaleSchedule:
    """The shifted cosine schedule of every scale, and the forward process / targets / inversions built on it.

    Args:
        sizes: resolutions top first (e.g. [32, 16, 8]).
        base_resolution: the resolution whose schedule is the unshifted cosine (simple diffusion uses 64);
            None = the top resolution. Only the shifts *between* scales decide the consistency above.
        logsnr_min, logsnr_max: clipping of the unshifted cosine log-SNR at t = 1 and t = 0.
    """

    def __init__(self, sizes, base_resolution: int | None = None, logsnr_min: float = -15.0, logsnr_max: float = 15.0):
        self.sizes = [int(s) for s in sizes]
        self.base_resolution = int(base_resolution or self.sizes[0])
        self.logsnr_min, self.logsnr_max = float(logsnr_min), float(logsnr_max)

    def log_snr(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Per-scale log-SNR (float64) at times t in [0, 1]."""
        return [shifted_cosine_log_snr(t, size, self.base_resolution, self.logsnr_min, self.logsnr_max)
                for size in self.sizes]

    def alphas_sigmas(self, t: torch.Tensor, like: torch.Tensor | None = None):
        """Per-scale (alpha, sigma), shaped (N, 1, 1, 1) in like's dtype/device when `like` is given."""
        pairs = [alpha_sigma(log_snr) for log_snr in self.log_snr(t)]
        if like is None:
            return pairs
        view = (-1,) + (1,) * (like.ndim - 1)
        return [(a.to(like.device, like.dtype).view(view), s.to(like.device, like.dtype).view(view)) for a, s in pairs]

    def add_noise(self, clean: list, noise: list, t: torch.Tensor) -> list[torch.Tensor]:
        """x_t = alpha * x0 + sigma * eps at every scale."""
        coefficients = self.alphas_sigmas(t, clean[0])
        return [a * x0 + s * eps for (a, s), x0, eps in zip(coefficients, clean, noise)]

    def target(self, prediction_type: str, clean: list, noise: list, t: torch.Tensor) -> list[torch.Tensor]:
        """What the model should output at every scale: eps, v = alpha * eps - sigma * x0, or x0."""
        check_prediction_type(prediction_type, supported=PREDICTION_TYPES)
        if prediction_type == "epsilon":
            return list(noise)
        if prediction_type == "sample":
            return list(clean)
        coefficients = self.alphas_sigmas(t, clean[0])
        return [a * eps - s * x0 for (a, s), x0, eps in zip(coefficients, clean, noise)]

    def predict_clean_and_noise(self, prediction_type: str, output: torch.Tensor, x_t: torch.Tensor,
                                alpha: torch.Tensor, sigma: torch.Tensor):
        """(x0, eps) implied by one scale's model output."""
        check_prediction_type(prediction_type, supported=PREDICTION_TYPES)
        if prediction_type == "v_prediction":
            return alpha * x_t - sigma * output, sigma * x_t + alpha * output
        if prediction_type == "epsilon":
            return (x_t - sigma * output) / alpha, output
        return output, (x_t - alpha * output) / sigma

