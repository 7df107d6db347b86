"""Stems, resolution changes and the modulated output head shared by the conv hourglass models."""

import torch
from torch import nn

from .fast_conv import run_conv
from .modulation import AdaLNModulation, modulate
from .norms import LayerNorm2d


def xavier_like_linear(conv: nn.Conv2d) -> None:
    """Xavier-uniform on the conv weight viewed as a (out, in*k*k) matrix, as DiT inits its patch embed."""
    nn.init.xavier_uniform_(conv.weight.data.view(conv.weight.shape[0], -1))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def init_like_official(model: nn.Module) -> None:
    """The official DiT-family init: xavier-uniform / zero bias on every Linear and Conv2d, then each module
    with its own rule (embedders N(0, 0.02), zeroed adaLN and heads, linear-like stem) re-applies it."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in model.modules():
        if m is not model and hasattr(m, "init_weights"):
            m.init_weights()


class ConvStem(nn.Module):
    """3x3 conv from image/latent channels to the first width (no patchify: any size divisible by 4 works)."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, width, 3, padding=1)
        self.init_weights()

    def init_weights(self):
        xavier_like_linear(self.proj)

    def forward(self, x):
        return run_conv(self.proj, x)


class PixelUnshuffleDown(nn.Module):
    """Conv3x3(in -> out/4, no bias) then PixelUnshuffle(2): half the resolution, `out` channels."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels // 4, 3, padding=1, bias=False)
        self.shuffle = nn.PixelUnshuffle(2)

    def forward(self, x):
        return self.shuffle(run_conv(self.conv, x))


class PixelShuffleUp(nn.Module):
    """Conv3x3(in -> 4*out, no bias) then PixelShuffle(2): double the resolution, `out` channels."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels * 4, 3, padding=1, bias=False)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x):
        return self.shuffle(run_conv(self.conv, x))


class ModulatedConvHead(nn.Module):
    """LayerNorm2d -> modulate(shift, scale from the condition) -> Conv3x3 to the output channels.

    Modulation and conv start at zero, so a fresh model predicts 0 (DiC and DiCo final layer).
    """

    def __init__(self, width: int, out_channels: int, cond_dim: int):
        super().__init__()
        self.norm = LayerNorm2d(width)
        self.modulation = AdaLNModulation(cond_dim, width, chunks=2, zero_init=True)
        self.proj = nn.Conv2d(width, out_channels, 3, padding=1)
        self.init_weights()

    def init_weights(self):
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(cond)
        return run_conv(self.proj, modulate(self.norm(x), shift, scale))
