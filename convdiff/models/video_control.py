"""The ControlNet interface of inflated video / 4D models (control_points.py, docs/controlnet.md).

An inflated model controls like its 2D backbone, frame by frame: its control points are the backbone's, its
`control_encode` runs the backbone's encoder half on every frame inside the grid context (so a ControlNet
copy keeps the temporal, view and camera / time layers of its encoder: the copy sees the whole clip, as video
ControlNets with temporal layers do, e.g. SparseCtrl, arXiv 2311.16933), and its forward hands the residuals to
the backbone unchanged. Residuals are per frame, in the rows the backbone runs on: (B*V*T, C, h, w) ordered
(b, v, t), twice over (view stream first) for a two-stream model.

The conditioning image is one per sample, shared by every frame (B, C, H, W), or one per frame
(B, C, F, H, W) / per view-time cell (B, C, V, T, H, W); `condition_frames` lays it out as those rows.
"""

import math

import torch

from ..nn.layouts import grid_to_frames, video_to_grid


def condition_frames(sample, condition: torch.Tensor) -> torch.Tensor:
    """A checked conditioning image as one row per frame of `sample` (a 2D sample: as it is)."""
    grid = tuple(sample.shape[2:-2])
    if condition.ndim == 4:  # shared by every frame
        return condition.repeat_interleave(math.prod(grid), dim=0) if grid else condition
    return grid_to_frames(video_to_grid(condition) if condition.ndim == 5 else condition)


class InflatedControlMixin:
    """`control_points` / `control_encode` / `control_prune` for `_InflatedModel` (video.py), delegating to the
    wrapped 2D backbone, which must itself be controllable (DiC, DiCo, DiffiT, DiffiT U-Net, layered U-Net)."""

    control_unused_modules = ()  # the copy is trimmed by control_prune, inside the 2D backbone

    def _controllable_base(self):
        base = self.base
        missing = [name for name in ("control_points", "control_encode", "control_unused_modules")
                   if not hasattr(base, name)]
        if missing:
            raise ValueError(f"{type(self).__name__} wraps a {type(base).__name__}, which has no ControlNet interface "
                             f"(missing {', '.join(missing)}); inflate a controllable backbone (DiC, DiCo, DiffiT, "
                             "DiffiT U-Net, layered U-Net) to control the video model.")
        return base

    def control_points(self):
        return self._controllable_base().control_points()

    def control_prune(self) -> None:
        """Drop the backbone's decoder half; the copy trains as a whole (no frozen spatial layers)."""
        base = self._controllable_base()
        if hasattr(base, "control_prune"):
            base.control_prune()
        else:
            for name in base.control_unused_modules:
                delattr(base, name)
        self.freeze_spatial_layers(False)

    def control_encode(self, hidden_states, timestep, class_labels=None, force_drop_ids=None, stem_residual=None,
                       timestamps=None, cameras=None, **conditioning):
        """(skips, middle) of the backbone's encoder on every frame of a video (B, C, F, H, W) or grid
        (B, C, V, T, H, W) (a list of them for a multi-scale backbone); `stem_residual` has one row per frame."""
        top = hidden_states[0] if isinstance(hidden_states, (list, tuple)) and hidden_states else hidden_states
        dims = top.dim() if torch.is_tensor(top) and top.dim() in (5, 6) else 5
        inputs = self._inputs(hidden_states, dims, "a video (batch, channels, frames, height, width) or a grid (batch, "
                              "channels, views, frames, height, width)", "pass what the model's forward takes")
        grids = [video_to_grid(x) if x.dim() == 5 else x for x in inputs]
        base = self._controllable_base()
        frames = self.frames_for_backbone(grids, timestep, class_labels, cameras, timestamps, force_drop_ids,
                                          **conditioning)
        if stem_residual is not None:  # a two-stream model runs every frame twice (view stream, time stream)
            rows = frames.timesteps.shape[0] // stem_residual.shape[0]
            stem_residual = stem_residual.repeat(rows, *([1] * (stem_residual.dim() - 1)))
        with self.context.scope(**frames.context):
            return base.control_encode(frames.frames, frames.timesteps, class_labels=frames.class_labels,
                                       force_drop_ids=frames.force_drop_ids, stem_residual=stem_residual,
                                       **frames.kwargs)
