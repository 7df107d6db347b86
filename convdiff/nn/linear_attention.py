"""LinFusion-style normalized, non-causal linear attention (Liu et al., arXiv 2409.02097).

    phi(z) = elu(z) + 1
    out    = phi(Q) (phi(K)^T V / N) / (phi(Q) mean_n phi(K) + eps)        per head

Q and K first pass a residual MLP (Linear -> LayerNorm -> LeakyReLU -> Linear) before `to_q` / `to_k`. The
MLPs' last layers start at zero, so the student begins as the teacher's projections under a linear kernel;
`from_attention` copies `to_q/k/v/out` from a diffusers `Attention` ("initialized from SD"). Cost is linear
in the number of tokens; it is the comparison student to the ΔConvBlock.
"""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class ResidualMLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.LeakyReLU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x):
        return x + self.net(x)


class NormalizedLinearAttention(nn.Module):
    """Self-attention replacement on (B, N, C) tokens with `heads` heads of `head_dim` channels."""

    def __init__(self, dim: int, heads: int, head_dim: int, qkv_bias: bool = False, out_bias: bool = True,
                 eps: float = 1e-6):
        super().__init__()
        inner = heads * head_dim
        self.heads, self.eps = heads, eps
        self.mlp_q, self.mlp_k = ResidualMLP(dim), ResidualMLP(dim)
        self.to_q = nn.Linear(dim, inner, bias=qkv_bias)
        self.to_k = nn.Linear(dim, inner, bias=qkv_bias)
        self.to_v = nn.Linear(dim, inner, bias=qkv_bias)
        self.to_out = nn.Linear(inner, dim, bias=out_bias)

    @classmethod
    def from_attention(cls, attention) -> "NormalizedLinearAttention":
        """Same shapes as a self-attention, with its q/k/v/out weights copied: a diffusers `Attention`
        (to_q, to_k, to_v, to_out[0]) or a fused-qkv one (`qkv`, `proj`, `num_heads`, e.g. DiffiT's TMSA)."""
        if hasattr(attention, "to_q"):
            heads, out = attention.heads, attention.to_out[0]
            sources = {"to_q": attention.to_q.state_dict(), "to_k": attention.to_k.state_dict(),
                       "to_v": attention.to_v.state_dict()}
        else:
            heads, out = attention.num_heads, attention.proj
            chunks = {key: value.chunk(3, dim=0) for key, value in attention.qkv.state_dict().items()}
            sources = {name: {key: c[i] for key, c in chunks.items()} for i, name in enumerate(("to_q", "to_k", "to_v"))}
        q_weight = sources["to_q"]["weight"]
        module = cls(q_weight.shape[1], heads, q_weight.shape[0] // heads, qkv_bias="bias" in sources["to_q"],
                     out_bias=out.bias is not None)
        sources["to_out"] = out.state_dict()
        for name, state in sources.items():
            getattr(module, name).load_state_dict(state, assign=q_weight.is_meta)
        return module.to(q_weight.device, q_weight.dtype)

    def forward(self, x):
        n = x.shape[1]
        q = F.elu(self.to_q(self.mlp_q(x))) + 1
        k = F.elu(self.to_k(self.mlp_k(x))) + 1
        v = self.to_v(x)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        # 1/N split as N^-1/2 on K and on V, so half-precision sums stay in range (as LinFusion does).
        k, v = k * n**-0.5, v * n**-0.5
        kv = torch.einsum("bhnd,bhne->bhde", k, v)
        normalizer = torch.einsum("bhnd,bhd->bhn", q, k.sum(dim=2) * n**-0.5) + self.eps
        out = torch.einsum("bhnd,bhde->bhne", q, kv) / normalizer[..., None]
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))
