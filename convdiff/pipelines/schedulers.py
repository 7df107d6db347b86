"""Scheduler names for the command line and recipes, swapped in with `from_config` like diffusers users do.

Flow-matching models stay in the flow family; the DDPM family swaps among its members.
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
