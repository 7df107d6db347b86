"""Scaled dot-product attention behind one backend switch, and a multi-head attention layer.

Every attention layer in convdiff calls :func:`attention`, so :func:`set_attention_backend` (or the
:func:`attention_backend` context manager) changes the kernel everywhere at once. Backends:

- ``"sdpa"`` (default): ``torch.nn.functional.scaled_dot_product_attention``, torch picks the kernel;
- ``"math"``, ``"efficient"``, ``"flash"``, ``"cudnn"``: SDPA restricted to that kernel
  (``torch.nn.attention.sdpa_kernel``); torch raises if the kernel cannot run these inputs on this device;
- ``"xformers"``: ``xformers.ops.memory_efficient_attention`` (needs xformers installed and CUDA tensors);
- ``"flex"``: ``torch.nn.attention.flex_attention`` (uses a ``block_mask``; eager on CPU, compiled on GPU).

A FlexAttention ``BlockMask`` given to any non-flex backend is expanded to the equivalent dense bool mask,
so the result is the same whichever backend runs.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BACKENDS = ("sdpa", "math", "efficient", "flash", "cudnn", "xformers", "flex")

_SDPA_KERNELS = {
    "math": "MATH",
    "efficient": "EFFICIENT_ATTENTION",
    "flash": "FLASH_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
}

_default_backend = "sdpa"


def _check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


def set_attention_backend(name: str) -> None:
    """Make ``name`` the backend used by every :func:`attention` call that does not pass its own."""
    global _default_backend
    _default_backend = _check_backend(name)


def get_attention_backend() -> str:
    return _default_backend


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Use ``name`` as the default backend inside a ``with`` block, then restore the previous one."""
    previous = get_attention_backend()
    set_attention_backend(name)
    try:
        yield
    finally:
        set_attention_backend(previous)


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(
                f"attention expects {name} of shape (batch, heads, length, head_dim), got {tuple(t.shape)}"
            )
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k and v must share (batch, heads, length); got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2]:
        raise ValueError(f"q and k must share (batch, heads); got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share head_dim; got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if attn_mask is not None:
        full = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        try:
            torch.broadcast_shapes(attn_mask.shape, full)
        except RuntimeError:
            raise ValueError(
                f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to (batch, heads, Lq, Lk) = {full}"
            ) from None
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            raise ValueError(f"attn_mask must be bool (True = may attend) or an additive float, got {attn_mask.dtype}")


def block_mask_to_dense(block_mask, q_len: int, kv_len: int, device: torch.device) -> Tensor:
    """The dense bool mask (B or 1, H or 1, q_len, kv_len) a FlexAttention ``BlockMask`` stands for.

    A token pair may attend when its block is listed (partially or fully) and ``mask_mod`` allows it.
    """
    from torch.nn.attention.flex_attention import create_mask

    if tuple(block_mask.seq_lengths) != (q_len, kv_len):
        raise ValueError(
            f"block_mask was built for (Lq, Lk) = {tuple(block_mask.seq_lengths)}, inputs have ({q_len}, {kv_len})"
        )
    b, h = block_mask.shape[0], block_mask.shape[1]
    q_block, kv_block = block_mask.BLOCK_SIZE
    blocks = block_mask.to_dense().to(device=device, dtype=torch.bool)  # (b, h, nq_blocks, nkv_blocks)
    listed = blocks.repeat_interleave(q_block, dim=2).repeat_interleave(kv_block, dim=3)[:, :, :q_len, :kv_len]
    token_mask = create_mask(block_mask.mask_mod, b, h, q_len, kv_len, device=device)
    return listed & token_mask


def _as_additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    return mask.to(dtype)


def _combine_masks(first: Tensor | None, second: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    if first is None or second is None:
        return second if first is None else first
    if first.dtype == torch.bool and second.dtype == torch.bool:
        return first & second
    return _as_additive(first, dtype) + _as_additive(second, dtype)


def _sdpa(q, k, v, mask, scale, kernel: str | None) -> Tensor:
    if mask is not None:
        if mask.dtype != torch.bool:
            mask = mask.to(q.dtype)
        # some kernels (CPU flash) take only 2D or 4D masks: view lower-rank masks as 4D
        mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    if kernel is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([getattr(SDPBackend, _SDPA_KERNELS[kernel])]):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _xformers(q, k, v, mask, scale) -> Tensor:
    if importlib.util.find_spec("xformers") is None:
        raise ValueError(
            "attention backend 'xformers' needs the xformers package (pip install 'convdiff[xformers]'); "
            "use backend='sdpa' otherwise"
        )
    if not q.is_cuda:
        raise ValueError(
            f"attention backend 'xformers' needs CUDA tensors, got tensors on {q.device}; use backend='sdpa' on CPU"
        )
    import xformers.ops as xops

    bias = None
    if mask is not None:
        full = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        bias = _as_additive(mask, q.dtype).expand(full)
    # xformers takes (batch, length, heads, head_dim)
    out = xops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias, scale=scale
    )
    return out.transpose(1, 2)


def _flex(q, k, v, mask, block_mask, scale) -> Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    score_mod = None
    if mask is not None:
        full = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        bias = _as_additive(mask, torch.float32).expand(full)

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + bias[b, h, q_idx, kv_idx]

    if block_mask is not None and block_mask.shape[0] not in (1, q.shape[0]):
        raise ValueError(f"block_mask batch size {block_mask.shape[0]} does not match inputs ({q.shape[0]})")
    try:
        return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)
    except NotImplementedError as error:  # e.g. no FlexAttention backward on CPU (torch 2.13)
        raise ValueError(f"attention backend 'flex' cannot run this call ({error}); use backend='sdpa', which applies "
                         "the block mask as the equivalent dense mask") from error


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    attn_mask: Tensor | None = None,
    block_mask=None,
    scale: float | None = None,
    backend: str | None = None,
) -> Tensor:
    """softmax(q kᵀ · scale + mask) v for q (B, heads, Lq, D), k and v (B, heads, Lk, D) -> (B, heads, Lq, D).

    ``attn_mask`` is bool (True = may attend) or an additive float bias, broadcastable to (B, heads, Lq, Lk).
    ``block_mask`` is a FlexAttention ``BlockMask``; non-flex backends apply it as the same dense mask.
    ``scale`` defaults to head_dim ** -0.5. ``backend`` overrides the current default for this call.
    """
    name = _check_backend(backend) if backend is not None else _default_backend
    _check_inputs(q, k, v, attn_mask)
    if name == "flex":
        return _flex(q, k, v, attn_mask, block_mask, scale)
    if block_mask is not None:
        dense = block_mask_to_dense(block_mask, q.shape[2], k.shape[2], q.device)
        attn_mask = _combine_masks(attn_mask, dense, q.dtype)
    if name == "xformers":
        return _xformers(q, k, v, attn_mask, scale)
    return _sdpa(q, k, v, attn_mask, scale, None if name == "sdpa" else name)


class MultiHeadAttention(nn.Module):
    """Multi-head attention over token sequences (B, L, C).

    Self-attention projects q, k and v with one fused ``qkv`` Linear (C -> 3C, chunk order q, k, v); with
    ``context_dim`` it is cross-attention: ``to_q`` on x and a fused ``to_kv`` (context_dim -> 2C) on the
    context. ``proj`` maps the heads back to C. ``position_bias`` is an additive (heads, Lq, Lk) bias.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        context_dim: int | None = None,
        qkv_bias: bool = True,
        out_bias: bool = True,
        zero_init_out: bool = False,
    ):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.is_cross_attention = context_dim is not None
        if self.is_cross_attention:
            self.to_q = nn.Linear(dim, dim, bias=qkv_bias)
            self.to_kv = nn.Linear(context_dim, 2 * dim, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=out_bias)
        if zero_init_out:
            nn.init.zeros_(self.proj.weight)
            if self.proj.bias is not None:
                nn.init.zeros_(self.proj.bias)

    def split_heads(self, x: Tensor) -> Tensor:
        """(B, L, C) -> (B, heads, L, head_dim)."""
        b, length, _ = x.shape
        return x.view(b, length, self.num_heads, self.head_dim).transpose(1, 2)

    def merge_heads(self, x: Tensor) -> Tensor:
        """(B, heads, L, head_dim) -> (B, L, C)."""
        b, _, length, _ = x.shape
        return x.transpose(1, 2).reshape(b, length, self.dim)

    def project_qkv(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The q, k, v sequences (B, L, C) before the head split."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"expected x of shape (batch, length, {self.dim}), got {tuple(x.shape)}")
        if self.is_cross_attention:
            if context is None:
                raise ValueError("this is a cross-attention layer (context_dim was set): pass context=(B, Lk, C_ctx)")
            if context.dim() != 3 or context.shape[-1] != self.to_kv.in_features or context.shape[0] != x.shape[0]:
                raise ValueError(
                    f"expected context of shape ({x.shape[0]}, length, {self.to_kv.in_features}), "
                    f"got {tuple(context.shape)}"
                )
            k, v = self.to_kv(context).chunk(2, dim=-1)
            return self.to_q(x), k, v
        if context is not None:
            raise ValueError("this is a self-attention layer: build it with context_dim to attend to a context")
        return self.qkv(x).chunk(3, dim=-1)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask=None, block_mask=None, position_bias=None) -> Tensor:
        """Attention of (B, L, C) q/k/v sequences, heads merged and projected back: (B, Lq, C)."""
        if position_bias is not None:
            expected = (self.num_heads, q.shape[1], k.shape[1])
            if tuple(position_bias.shape) != expected:
                raise ValueError(f"position_bias must have shape (heads, Lq, Lk) = {expected}, "
                                 f"got {tuple(position_bias.shape)}")
            attn_mask = _combine_masks(attn_mask, position_bias.unsqueeze(0), q.dtype)
        out = attention(
            self.split_heads(q), self.split_heads(k), self.split_heads(v), attn_mask=attn_mask, block_mask=block_mask
        )
        return self.proj(self.merge_heads(out))

    def forward(self, x: Tensor, context: Tensor | None = None, attn_mask=None, block_mask=None, position_bias=None):
        q, k, v = self.project_qkv(x, context)
        return self.attend(q, k, v, attn_mask=attn_mask, block_mask=block_mask, position_bias=position_bias)
