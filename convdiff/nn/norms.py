"""Normalisations on NCHW feature maps."""

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels at every pixel of an NCHW map (DiC/DiCo use it without affine, eps 1e-6)."""

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = False):
        super().__init__(num_channels, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def group_norm(num_channels: int, max_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5) -> nn.GroupNorm:
    """Affine GroupNorm with min(max_groups, C // min_channels_per_group) groups (DiC's rule: 24 groups at C=96)."""
    groups = min(max_groups, num_channels // min_channels_per_group)
    if groups < 1 or num_channels % groups:
        raise ValueError(
            f"GroupNorm needs the channel count ({num_channels}) to be divisible by its group count ({groups}); "
            f"choose a hidden_size that is a multiple of {min_channels_per_group * 8}."
        )
    return nn.GroupNorm(groups, num_channels, eps=eps, affine=True)
