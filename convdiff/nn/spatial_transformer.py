"""Self- and cross-attention over the pixels of a feature map: the Stable Diffusion U-Net's transformer block.

GroupNorm -> 1x1 conv in -> tokens -> [LN -> self-attention, LN -> cross-attention to the text tokens,
LN -> GELU MLP], each residual -> 1x1 conv out (zero-initialised, so the block starts as the identity) plus
the input. Every attention goes through convdiff.nn.attention, so the attention backend switch applies here.
"""

import torch
from einops import rearrange
from torch import nn

from .attention import MultiHeadAttention


class TransformerLayer(nn.Module):
    """Pre-norm self-attention, optional cross-attention (context_dim) and MLP on (B, L, C) tokens."""

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attention = MultiHeadAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim) if context_dim else None
        self.cross_attention = MultiHeadAttention(dim, num_heads, context_dim=context_dim) if context_dim else None
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask=None) -> torch.Tensor:
        x = x + self.self_attention(self.norm1(x))
        if self.cross_attention is not None:
            x = x + self.cross_attention(self.norm2(x), context=context, attn_mask=context_mask)
        return x + self.mlp(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Attention block on an (N, C, H, W) map; with context_dim it also attends to context tokens (N, L, context_dim).

    `context_mask` (N, L) marks the context tokens that may be attended (True/1), e.g. a tokenizer's
    attention mask; None attends to all of them (as Stable Diffusion does).
    """

    def __init__(self, channels: int, num_heads: int, context_dim: int | None = None, num_groups: int = 32,
                 mlp_ratio: int = 4):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.layer = TransformerLayer(channels, num_heads, context_dim, mlp_ratio)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask=None) -> torch.Tensor:
        height, width = x.shape[-2:]
        tokens = rearrange(self.proj_in(self.norm(x)), "n c h w -> n (h w) c")
        mask = None if context_mask is None else context_mask.bool()[:, None, None, :]  # (N, heads, Lq, Lk)
        tokens = self.layer(tokens, context, mask)
        return x + self.proj_out(rearrange(tokens, "n (h w) c -> n c h w", h=height, w=width))
