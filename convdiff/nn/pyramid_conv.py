"""ΔConvBlock: the pyramid depthwise-convolution block of ΔConvFusion (Dong et al., ICCV 2025).

It replaces a self-attention layer (the authors' released code for arXiv 2504.21292):

    x (C) -> Linear C -> C/2
          -> for every pyramid scale s (1 and 1/2 by default):
                 average-pool to (H*s, W*s) -> depthwise k x k conv -> gate (halves the channels) -> upsample
          -> concat (C/4 per stage) -> Linear -> C
       + global branch: mean over H, W -> Linear C -> C, broadcast        (the low-frequency attention bias)

The local pyramid models the distance-decaying part of the attention map; the global branch its spatially
constant part. Cost is linear in the number of pixels. Initialisation is PyTorch's default (the paper has no
zero-init: the block replaces attention, it does not join as an identity).
"""

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

GATES = ("scaled_simple", "sigmoid")


class ScaledSimpleGate(nn.Module):
    """x1 * x2 * sqrt(C_in / 2) over the two channel halves (SD1.5 / SDXL models). The scale keeps the product
    of two roughly unit-variance halves from shrinking with width (the code multiplies by sqrt(C_half / 2))."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = math.sqrt(channels / 2)

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        return x1 * x2 * self.scale


class SigmoidGate(nn.Module):
    """x1 * sigmoid(x2) over the two channel halves (PixArt's setting)."""

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        return x1 * torch.sigmoid(x2)


class PyramidStage(nn.Module):
    """One pyramid level on NCHW input: pool to scale -> depthwise k x k conv -> gate -> upsample back."""

    def __init__(self, channels: int, kernel_size: int, scale: float, gate: str):
        super().__init__()
        self.scale = scale
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.gate = ScaledSimpleGate(channels) if gate == "scaled_simple" else SigmoidGate()

    def forward(self, x):
        height, width = x.shape[-2:]
        if self.scale != 1:
            x = F.adaptive_avg_pool2d(x, (max(1, round(height * self.scale)), max(1, round(width * self.scale))))
        x = self.gate(self.conv(x))
        if x.shape[-2:] != (height, width):
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        return x


class DeltaConvBlock(nn.Module):
    """ΔConvBlock on `channels` features. `forward(x)` takes NCHW; `forward_tokens(x, height, width)` takes the
    (B, H*W, C) token sequence a transformer block feeds its self-attention."""

    def __init__(self, channels: int, kernel_size: int = 7, scales=(1.0, 0.5), inter_ratio: float = 0.5,
                 gate: str = "scaled_simple", global_branch: bool = True):
        super().__init__()
        inner = int(channels * inter_ratio)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number (same-size depthwise conv), got {kernel_size}.")
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}.")
        if inner < 2 or inner % 2:
            raise ValueError(f"channels * inter_ratio must be an even number >= 2 so the gate can halve it; got "
                             f"{channels} * {inter_ratio} = {channels * inter_ratio}.")
        scales = tuple(float(s) for s in scales)
        if not scales or any(not 0 < s <= 1 for s in scales):
            raise ValueError(f"scales must be a non-empty list of factors in (0, 1], got {scales}.")
        self.channels, self.kernel_size, self.scales = channels, kernel_size, scales
        self.proj_in = nn.Linear(channels, inner)
        self.stages = nn.ModuleList(PyramidStage(inner, kernel_size, s, gate) for s in scales)
        self.proj_out = nn.Linear(inner // 2 * len(scales), channels)
        self.global_proj = nn.Linear(channels, channels) if global_branch else None

    def forward(self, x):
        """NCHW in, NCHW out."""
        self._check_channels(x.shape[1], "NCHW input (B, C, H, W)")
        return rearrange(self._forward_channels_last(rearrange(x, "b c h w -> b h w c")), "b h w c -> b c h w")

    def forward_tokens(self, x, height: int, width: int):
        """(B, H*W, C) tokens in row-major order, as diffusers flattens feature maps; same shape out."""
        self._check_channels(x.shape[-1], "token input (B, H*W, C)")
        if x.shape[1] != height * width:
            raise ValueError(f"ΔConvBlock got {x.shape[1]} tokens, which is not height x width = {height} x {width}.")
        out = self._forward_channels_last(rearrange(x, "b (h w) c -> b h w c", h=height, w=width))
        return rearrange(out, "b h w c -> b (h w) c")

    def _forward_channels_last(self, x):
        inner = rearrange(self.proj_in(x), "b h w c -> b c h w")
        local = torch.cat([stage(inner) for stage in self.stages], dim=1)
        out = self.proj_out(rearrange(local, "b c h w -> b h w c"))
        if self.global_proj is not None:
            out = out + self.global_proj(x.mean(dim=(1, 2), keepdim=True))
        return out

    def _check_channels(self, channels: int, layout: str):
        if channels != self.channels:
            raise ValueError(f"ΔConvBlock was built for {self.channels} channels but got {layout} with {channels}.")

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, scales={self.scales}"
