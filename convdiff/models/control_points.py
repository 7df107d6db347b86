"""Where a ControlNet adds its residuals to a convdiff backbone (as diffusers' UNet2DConditionModel takes
ControlNetModel's down / mid residuals; docs/controlnet.md).

A controllable backbone offers three things, used by nothing but `convdiff.models.controlnet`:
- `control_points()` -> `ControlPoints`: the channels (and downsampling factor) of the stem output, of every
  skip tensor kept for the decoder (encoder order) and of the middle output;
- `control_encode(hidden_states, timestep, stem_residual=None, **conditioning)` -> (skips, middle): the
  encoder half and middle, with an optional residual added right after the stem (the ControlNet's
  conditioning image enters there);
- forward keywords `down_block_additional_residuals` (one per skip) and `mid_block_additional_residual`,
  added to the skips and to the middle output before the decoder sees them (None = the plain model);
plus the class attribute `control_unused_modules`: the decoder-half modules a ControlNet copy drops (or a
`control_prune()` method that trims the copy, for models whose halves are slices of one block list).

A plain transformer (DiffiT's latent ViT) has no skips: its control points are the outputs of the first half
of its blocks, as token maps (B, C, h, w), and its forward adds residual i right after block i.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ControlPoints:
    stem_channels: int
    down: tuple  # ((channels, downsampling factor), ...) per skip tensor, encoder order
    mid: tuple  # (channels, downsampling factor) of the middle output
    stem_factor: int = 1  # downsampling of the stem output (a ViT's patch size)


def add_control_residuals(skips, middle, down_residuals, mid_residual, model_name: str):
    """skips[i] + down_residuals[i] and middle + mid_residual, after checking counts and shapes."""
    if down_residuals is None and mid_residual is None:
        return skips, middle
    if down_residuals is None or mid_residual is None:
        raise ValueError(f"{model_name}: pass both down_block_additional_residuals and mid_block_additional_residual "
                         "(a ControlNet returns both), or neither.")
    if len(down_residuals) != len(skips):
        raise ValueError(f"{model_name} has {len(skips)} control points on its skips but got {len(down_residuals)} "
                         "down residuals: was the ControlNet built from a different backbone config?")
    for i, (skip, residual) in enumerate(zip(skips, down_residuals)):
        _check_shape(skip, residual, f"down residual {i}", model_name)
    _check_shape(middle, mid_residual, "mid residual", model_name)
    skips = [skip + residual.to(skip.dtype) for skip, residual in zip(skips, down_residuals)]
    return skips, middle + mid_residual.to(middle.dtype)


def _check_shape(target: torch.Tensor, residual: torch.Tensor, what: str, model_name: str):
    if tuple(residual.shape) != tuple(target.shape):
        raise ValueError(f"{model_name}: {what} has shape {tuple(residual.shape)} but the tensor it is added to has "
                         f"{tuple(target.shape)}; the ControlNet must come from this backbone's config and see the "
                         "same batch.")


def check_in_flight_residuals(down_residuals, mid_residual, shape, count: int, model_name: str):
    """The residuals of a transformer's first `count` blocks (down..., mid) as a list, after checking them."""
    if down_residuals is None and mid_residual is None:
        return None
    if down_residuals is None or mid_residual is None:
        raise ValueError(f"{model_name}: pass both down_block_additional_residuals and mid_block_additional_residual "
                         "(a ControlNet returns both), or neither.")
    residuals = [*down_residuals, mid_residual]
    if len(residuals) != count:
        raise ValueError(f"{model_name} has {count} control points (its first {count} blocks) but got {len(residuals)} "
                         "residuals: was the ControlNet built from a different backbone config?")
    for i, residual in enumerate(residuals):
        if tuple(residual.shape) != tuple(shape):
            raise ValueError(f"{model_name}: residual {i} has shape {tuple(residual.shape)}, expected {tuple(shape)}; "
                             "the ControlNet must come from this backbone's config and see the same batch.")
    return residuals
