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


def window_block_mask(height: int, width: int, window_size: int, device="cpu"):
    """A FlexAttention BlockMask that lets each token of a row-major H x W grid attend only inside its window:
    windowed attention over the unpartitioned sequence (same result as window_partition + attention)."""
    from torch.nn.attention.flex_attention import create_block_mask

    check_window(height, width, window_size)

    def same_window(b, h, q_idx, kv_idx):
        same_row_band = (q_idx // width) // window_size == (kv_idx // width) // window_size
        same_col_band = (q_idx % width) // window_size == (kv_idx % width) // window_size
        return same_row_band & same_col_band

    length = height * width
    return create_block_mask(same_window, None, None, length, length, device=device)
