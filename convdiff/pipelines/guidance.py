"""Classifier-free guidance: per-step scale schedules and the channel-restricted guidance rule.

Two details matter for reproducing published FIDs (the official DiT sampling code; the DiffiT sampling recipe,
Hatamizadeh et al., ECCV 2024, arXiv 2312.02139):
- official DiT, DiC, DiCo and DiffiT guide only the first 3 of the 4 latent ε channels (an "exact
  reproducibility" quirk of DiT); diffusers' DiTPipeline guides all of them. `guidance_channels` picks either.
- DiffiT at 256px ramps the scale with MDT's power-cosine schedule instead of keeping it constant:
  s(t) = 1 + (s_max - 1) * 0.5 * (1 - cos(pi * (1 - t / T) ** 4)), t the model timestep on the training scale
  (T = num_train_timesteps), so s ~ 1 at the noisy start and s -> s_max as t -> 0.
"""

import math
from typing import Callable, Union

import torch

GuidanceSchedule = Union[str, Callable[[float, float, int], float]]
SCHEDULES = ("constant", "power-cosine")


def power_cosine_scale(t: float, guidance_scale: float, num_train_timesteps: int = 1000,
                       power: float = 4.0) -> float:
    """MDT / DiffiT power-cosine guidance scale at timestep value `t` (on the 0..num_train_timesteps scale)."""
    progress = min(max(1.0 - float(t) / num_train_timesteps, 0.0), 1.0)
    return 1.0 + (guidance_scale - 1.0) * 0.5 * (1.0 - math.cos(math.pi * progress**power))


def guidance_scale_at(t, guidance_scale: float, schedule: GuidanceSchedule = "constant",
                      num_train_timesteps: int = 1000) -> float:
    """The guidance scale to use at timestep `t` for a peak/constant scale `guidance_scale`.

    `schedule` is "constant", "power-cosine", or a callable `(t, guidance_scale, num_train_timesteps) -> scale`.
    """
    check_schedule(schedule)
    t = float(t.item() if torch.is_tensor(t) else t)
    if callable(schedule):
        return float(schedule(t, guidance_scale, num_train_timesteps))
    if schedule == "constant":
        return float(guidance_scale)
    return power_cosine_scale(t, guidance_scale, num_train_timesteps)


def check_schedule(schedule: GuidanceSchedule) -> None:
    if not callable(schedule) and schedule not in SCHEDULES:
        raise ValueError(f"guidance_schedule must be one of {SCHEDULES} or a callable "
                         f"(t, scale, num_train_timesteps) -> scale; got {schedule!r}.")


def apply_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float, channels: int | None = None) -> torch.Tensor:
    """uncond + scale * (cond - uncond) on the first `channels` channels (all when None); the rest stay `cond`.

    With channels=3 on a 4-channel ε (plus σ channels) this is the official DiT rule: channel 3 and the
    learned-variance half come from the conditional prediction unguided.
    """
    if channels is None or channels >= cond.shape[1]:
        return uncond + scale * (cond - uncond)
    guided = uncond[:, :channels] + scale * (cond[:, :channels] - uncond[:, :channels])
    return torch.cat([guided, cond[:, channels:]], dim=1)
