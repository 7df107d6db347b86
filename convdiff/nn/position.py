"""Position information for token grids: the fixed 2D sin-cos embedding and the learned relative position bias.

Both follow the DiT / Swin conventions the official DiffiT code uses (Hatamizadeh et al., ECCV 2024,
arXiv 2312.02139), so official weights convert with identical outputs.
"""

import torch
from torch import nn


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim) [sin | cos] features with frequencies 1 / 10000^(i / (dim/2))."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.reshape(-1).double()[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d_position_embedding(dim: int, height: int, width: int | None = None) -> torch.Tensor:
    """(height*width, dim) float32 embedding of a row-major token grid: first half encodes the column, second
    half the row (the DiT/MAE layout)."""
    width = height if width is None else width
    if dim % 4:
        raise ValueError(f"2D sin-cos embedding width must be divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1).float()


def relative_position_index(height: int, width: int) -> torch.Tensor:
    """(N, N) index into a ((2h-1)*(2w-1)) table for every (query, key) pair of an h x w grid (Swin layout)."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])  # (2, N)
    delta = coords[:, :, None] - coords[:, None, :]  # (2, N, N): query minus key
    return (delta[0] + height - 1) * (2 * width - 1) + (delta[1] + width - 1)


class RelativePositionBias(nn.Module):
    """A learned bias per head for every relative offset inside an h x w window; forward() -> (heads, N, N).

    The table is trunc-normal (std 0.02) initialised. The index is a saved buffer, as in the official DiffiT
    checkpoints (so official state dicts load strictly).
    """

    def __init__(self, window_size, num_heads: int):
        super().__init__()
        height, width = (window_size, window_size) if isinstance(window_size, int) else tuple(window_size)
        self.window_size = (height, width)
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * height - 1) * (2 * width - 1), num_heads))
        self.register_buffer("relative_position_index", relative_position_index(height, width))
        self.init_weights()

    @property
    def num_tokens(self) -> int:
        return self.window_size[0] * self.window_size[1]

    def init_weights(self):
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02, a=-2.0, b=2.0)

    def forward(self) -> torch.Tensor:
        n = self.num_tokens
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1)
