"""Checks of the sampling arguments every convdiff pipeline takes, done before any noise is drawn.

Without them `num_inference_steps=-5` returns the starting noise silently, `0` divides by zero inside the
scheduler, `guidance_scale=nan` turns every image into NaNs and `class_labels=[]` fails with a dtype error.
"""

import math
import numbers

import torch


def check_sampling_arguments(num_inference_steps, guidance_scale, class_labels=None) -> None:
    """Raise a ValueError that names the argument unless steps >= 1, the guidance scale is finite and any
    labels given are not empty."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, numbers.Integral) \
            or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}.")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real) \
            or not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be a finite number (1 = no guidance), got {guidance_scale!r}.")
    if class_labels is not None and not isinstance(class_labels, (int, str)):
        count = class_labels.numel() if torch.is_tensor(class_labels) else len(class_labels)
        if count == 0:
            raise ValueError("class_labels is empty: pass one class id per sample (or one id to repeat).")


def check_finite(name: str, value) -> None:
    """Refuse a tensor input (latents, a conditioning frame, cameras, timestamps) holding NaN or infinite values:
    the loop would carry them into every pixel of the output."""
    if torch.is_tensor(value) and (value.is_floating_point() or value.is_complex()):
        bad = (~torch.isfinite(value)).sum().item()
        if bad:
            raise ValueError(f"{name} holds {bad} NaN or infinite value(s) of {value.numel()}: pass finite values.")


def check_count(name: str, value, most: int | None = None, most_name: str = "") -> int:
    """An integer argument in 1..`most` (a number of frames, views, ...), or a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1 \
            or (most is not None and value > most):
        upper = f" and <= {most_name}={most}" if most is not None else ""
        raise ValueError(f"{name} must be an integer >= 1{upper}, got {value!r}.")
    return int(value)


def prompt_list(value, name: str = "prompt") -> list:
    """A prompt argument as a non-empty list of strings (a string is one prompt), or a ValueError naming it."""
    prompts = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{name} must be a string or a non-empty list of strings, got {value!r}.")
    return prompts
