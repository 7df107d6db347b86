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
