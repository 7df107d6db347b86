"""Scheduler names for the command line and recipes, swapped in with `from_config` like diffusers users do.

Flow-matching models stay in the flow family; the DDPM family swaps among its members. `adm_scheduler` is
the sampler of the official DiT / DiC / DiCo / DiffiT sample scripts as a diffusers scheduler (docs/parity.md).
"""

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

DDPM_FAMILY = {
    "ddpm": (DDPMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler-ancestral": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
}
FLOW_FAMILY = {"euler": (FlowMatchEulerDiscreteScheduler, {}), "heun": (FlowMatchHeunDiscreteScheduler, {}),
               "flow": (FlowMatchEulerDiscreteScheduler, {})}


def make_scheduler(name: str, base):
    """A scheduler of kind `name` configured like `base` (same training schedule and prediction type)."""
    flow = isinstance(base, (FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler))
    family = FLOW_FAMILY if flow else DDPM_FAMILY
    key = name.lower()
    if key not in family:
        kind = "flow-matching" if flow else "DDPM-family"
        raise ValueError(f"Scheduler {name!r} does not fit this {kind} model; choose one of {', '.join(family)}.")
    cls, extra = family[key]
    if isinstance(base, cls) and not extra:
        return base
    config = dict(base.config)
    if cls is not DDPMScheduler and config.get("variance_type") in ("learned", "learned_range"):
        config["variance_type"] = "fixed_small"  # only DDPM uses the learned variance; the pipeline splits it off
    return cls.from_config(config, **extra)


def adm_scheduler(learned_sigma: bool = True) -> DDPMScheduler:
    """ADM's ancestral sampler (Nichol & Dhariwal 2021, arXiv 2102.09672), as the official sample scripts run it.

    1000-step linear betas 1e-4..0.02; respaced to N steps by `timestep_spacing="linspace"`, which picks the
    same timesteps as ADM's `space_timesteps(1000, "N")` (999, 995, ... for N = 250; diffusers' default
    "leading" gives 996, 992, ...); diffusers then uses the respaced betas 1 - abar_t / abar_prev, as ADM does.
    No clipping of the predicted x0 (`clip_denoised=False` for latents), and the learned-range variance when
    the model predicts one (else the posterior variance, ADM's "fixed_small").
    """
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                         beta_end=0.02, prediction_type="epsilon", timestep_spacing="linspace", clip_sample=False,
                         variance_type="learned_range" if learned_sigma else "fixed_small")
