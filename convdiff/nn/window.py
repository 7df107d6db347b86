"""Non-overlapping window partition of (B, H, W, C) token maps, for windowed (local) attention.

Per-token layers (norms, MLPs) commute with the partition, so a whole transformer block can run on
windows: partition once, run the block on (B * windows, w*w, C), merge back.
"""

from einops import rearrange
from torch import Tensor


def check_window(height: int, width: int, window_size: int) -> None:
    if window_size < 1 or height % window_size or width % window_size:
        raise ValueError(
            f"window size {window_size} does not divide the {height}x{width} token grid: choose a window that "
            f"divides both sides (e.g. {_divisors(height, width)}) or resize the input"
        )


def _divisors(height: int, width: int) -> str:
    return ", ".join(str(d) for d in range(1, min(height, width) + 1) if height % d == 0 and width % d == 0)


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """(B, H, W, C) -> (B * H/w * W/w, w*w, C), windows in row-major order, tokens row-major inside."""
    _, height, width, _ = x.shape
    check_window(height, width, window_size)
    return rearrange(x, "b (nh wh) (nw ww) c -> (b nh nw) (wh ww) c", wh=window_size, ww=window_size)


def window_merge(windows: Tensor, height: int, width: int, window_size: int) -> Tensor:
    """Inverse of window_partition: (B * windows, w*w, C) -> (B, H, W, C)."""
    return rearrange(windows, "(b nh nw) (wh ww) c -> b (nh wh) (nw ww) c",
                     nh=height // window_size, nw=width // window_size, wh=window_size)


def repeat_per_window(per_image: Tensor, height: int, width: int, window_size: int) -> Tensor:
    """(B, ...) -> (B * windows, ...): each image's vector (e.g. its time token) for each of its windows."""
    return per_image.repeat_interleave((height // window_size) * (width // window_size), dim=0)
