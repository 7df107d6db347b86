"""Compact channel attention (DiCo): global average pool -> full C x C 1x1 conv -> sigmoid -> rescale.

Unlike an SE block there is no reduction ratio; DiCo uses it to wake up channels a plain conv leaves idle.
"""

import torch
from torch import nn


class CompactChannelAttention(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.proj(x.mean(dim=(2, 3), keepdim=True)))
        return x * weights
