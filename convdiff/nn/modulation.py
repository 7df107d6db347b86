"""adaLN modulation and gates on NCHW maps: a condition vector projected into per-channel scale/shift/gate."""

import torch
from torch import nn


# Both are one addcmul pass over the map instead of a multiply pass and an add pass (the maps are large, the
# (N, C, 1, 1) factors small); the sums are the same up to the fused multiply-add's rounding.


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift with (N, C, 1, 1) shift and scale."""
    return torch.addcmul(shift, x, 1 + scale)


def add_gated(residual: torch.Tensor, gate_values: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """residual + gate_values * branch: a per-channel gated residual branch (adaLN-Zero: the gate starts at 0,
    so the branch starts off)."""
    return torch.addcmul(residual, gate_values, branch)


class AdaLNModulation(nn.Module):
    """SiLU -> Linear(cond -> chunks * C), split into `chunks` tensors of shape (N, C, 1, 1).

    The chunk order is the caller's: DiT/DiCo blocks (shift1, scale1, gate1, shift2, scale2, gate2), DiC blocks
    (gate, scale, shift), final layers (shift, scale). `zero_init` gives adaLN-Zero.
    """

    def __init__(self, cond_dim: int, channels: int, chunks: int, zero_init: bool = True):
        super().__init__()
        self.chunks = chunks
        self.zero_init = zero_init
        self.proj = nn.Linear(cond_dim, chunks * channels)
        self.init_weights()

    def init_weights(self):
        if self.zero_init:
            nn.init.zeros_(self.proj.weight)
        else:
            nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, cond: torch.Tensor):
        params = self.proj(nn.functional.silu(cond))
        return params[:, :, None, None].chunk(self.chunks, dim=1)
