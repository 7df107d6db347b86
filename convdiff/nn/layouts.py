"""einops helpers for every reshape between video / 4D tensors, per-frame maps and token sequences.

Canonical layouts (docs/architecture.md, "Tensor layouts"):
- video  (B, C, F, H, W)       -- what a video model takes and returns;
- grid   (B, C, V, T, H, W)    -- a 4D grid of V viewpoints x T timesteps;
- frames (B*V*T, C, H, W)      -- what the 2D backbone runs on, ordered (b, v, t);
- tokens (B*V*T, S, C)         -- the same frames as token sequences, S = H*W (or a ViT's patch count).
From `tokens`, each factorized layer picks its own sequence layout: time sequences per pixel, view
sequences per pixel, all views of one timestep, or the whole grid. Every helper has an inverse; tests
check the round trips. A video is the grid with V = 1.
"""

from typing import NamedTuple

import torch
from einops import rearrange


class Grid(NamedTuple):
    """Sizes of the (batch, views, frames) grid folded into the leading dimension of `frames`/`tokens`."""

    batch: int
    views: int
    frames: int

    @property
    def num_frames_total(self) -> int:
        return self.batch * self.views * self.frames

    def swapped(self) -> "Grid":
        """The grid seen with views and frames exchanged (the view stream of a two-stream model)."""
        return Grid(self.batch, self.frames, self.views)


# --- 5-D / 6-D tensors <-> frames -------------------------------------------------------------------------------

def video_to_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B*F, C, H, W)."""
    return rearrange(x, "b c f h w -> (b f) c h w")


def frames_to_video(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*F, C, H, W) -> (B, C, F, H, W)."""
    return rearrange(x, "(b f) c h w -> b c f h w", b=batch)


def grid_to_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, V, T, H, W) -> (B*V*T, C, H, W)."""
    return rearrange(x, "b c v t h w -> (b v t) c h w")


def frames_to_grid(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(B*V*T, C, H, W) -> (B, C, V, T, H, W)."""
    return rearrange(x, "(b v t) c h w -> b c v t h w", b=grid.batch, v=grid.views)


def video_to_grid(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B, C, 1, F, H, W): a video is a grid with one viewpoint."""
    return rearrange(x, "b c f h w -> b c 1 f h w")


def grid_to_video(x: torch.Tensor) -> torch.Tensor:
    """(B, C, 1, F, H, W) -> (B, C, F, H, W)."""
    return rearrange(x, "b c 1 f h w -> b c f h w")


# --- frames <-> tokens ------------------------------------------------------------------------------------------

def maps_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W, C)."""
    return rearrange(x, "n c h w -> n (h w) c")


def tokens_to_maps(x: torch.Tensor, height: int) -> torch.Tensor:
    """(N, H*W, C) -> (N, C, H, W)."""
    return rearrange(x, "n (h w) c -> n c h w", h=height)


# --- tokens <-> the sequences each factorized layer attends over -----------------------------------------------

def tokens_to_time_seq(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(B*V*T, S, C) -> (B*V*S, T, C): the frames of one pixel of one view (temporal attention)."""
    return rearrange(x, "(b v t) s c -> (b v s) t c", b=grid.batch, v=grid.views)


def time_seq_to_tokens(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    return rearrange(x, "(b v s) t c -> (b v t) s c", b=grid.batch, v=grid.views)


def tokens_to_view_seq(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(B*V*T, S, C) -> (B*T*S, V, C): the views of one pixel at one timestep (per-pixel view attention)."""
    return rearrange(x, "(b v t) s c -> (b t s) v c", b=grid.batch, v=grid.views)


def view_seq_to_tokens(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    return rearrange(x, "(b t s) v c -> (b v t) s c", b=grid.batch, t=grid.frames)


def tokens_to_view_frames(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(B*V*T, S, C) -> (B*T, V*S, C): every view's pixels at one timestep (MVDream-style view attention)."""
    return rearrange(x, "(b v t) s c -> (b t) (v s) c", b=grid.batch, v=grid.views)


def view_frames_to_tokens(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    return rearrange(x, "(b t) (v s) c -> (b v t) s c", b=grid.batch, v=grid.views)


def tokens_to_view_videos(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(B*V*T, S, C) -> (B*V, T*S, C): every frame of one view, a fixed-view video (video-DiT 3D attention)."""
    return rearrange(x, "(b v t) s c -> (b v) (t s) c", b=grid.batch, v=grid.views)


def view_videos_to_tokens(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    return rearrange(x, "(b v) (t s) c -> (b v t) s c", b=grid.batch, t=grid.frames)


def tokens_to_grid_seq(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(B*V*T, S, C) -> (B, V*T*S, C) in (v, t, s) order: the whole grid (fused view-time attention)."""
    return rearrange(x, "(b v t) s c -> b (v t s) c", b=grid.batch, v=grid.views)


def grid_seq_to_tokens(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    return rearrange(x, "b (v t s) c -> (b v t) s c", v=grid.views, t=grid.frames)


# --- frames <-> volumes for 3x1x1 temporal convs, and the view/time swap ----------------------------------------

def frames_to_volume(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(B*V*T, C, *spatial) -> (B*V, C, T, *spatial): a Conv3d input with time as depth."""
    return rearrange(x, "(b v t) c ... -> (b v) c t ...", b=grid.batch, v=grid.views)


def volume_to_frames(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    return rearrange(x, "(b v) c t ... -> (b v t) c ...", b=grid.batch)


def swap_views_and_frames(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(B*V*T, ...) in (b, v, t) order -> (B*T*V, ...) in (b, t, v) order; undo with `grid.swapped()`."""
    return rearrange(x, "(b v t) ... -> (b t v) ...", b=grid.batch, v=grid.views)
