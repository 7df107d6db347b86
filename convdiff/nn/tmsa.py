"""Time-dependent multi-head self-attention (TMSA, DiffiT paper Eq. 3-6).

q, k and v are projections of the spatial tokens plus projections of the time token: the paper's
q = x_s W_qs + x_t W_qt (and likewise k, v). As in the official code, the time token c = t_emb + y_emb
(it also carries the class) goes through its own Linear (`qkv_temb`, C_t -> 3C, with bias) and is added to
the fused token projection `qkv` before the head split. An optional learned relative position bias over a
window of tokens is added to the attention logits.
"""

from torch import Tensor, nn

from .attention import MultiHeadAttention
from .position import RelativePositionBias


class TimeDependentSelfAttention(MultiHeadAttention):
    """TMSA over token sequences (B, L, C) with a time token (B, temb_dim).

    `window_size` (int or (h, w)) adds a RelativePositionBias for sequences of exactly h*w tokens (a window,
    or the whole grid for global attention); None leaves the bias out. Submodules: `qkv`, `qkv_temb`,
    `proj`, `position_bias`.
    """

    def __init__(self, dim: int, num_heads: int, temb_dim: int | None = None, window_size=None, qkv_bias: bool = True):
        super().__init__(dim, num_heads, qkv_bias=qkv_bias)
        self.temb_dim = dim if temb_dim is None else temb_dim
        self.qkv_temb = nn.Linear(self.temb_dim, 3 * dim)
        self.position_bias = RelativePositionBias(window_size, num_heads) if window_size is not None else None

    def forward(self, x: Tensor, temb: Tensor, attn_mask=None, block_mask=None) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"expected tokens of shape (batch, length, {self.dim}), got {tuple(x.shape)}")
        if temb.shape != (x.shape[0], self.temb_dim):
            raise ValueError(f"expected a time token of shape ({x.shape[0]}, {self.temb_dim}), got {tuple(temb.shape)}")
        bias = None
        if self.position_bias is not None:
            if x.shape[1] != self.position_bias.num_tokens:
                raise ValueError(f"the relative position bias covers a {self.position_bias.window_size} window "
                                 f"({self.position_bias.num_tokens} tokens) but got {x.shape[1]} tokens")
            bias = self.position_bias()
        qkv = self.qkv(x) + self.qkv_temb(temb).unsqueeze(1).to(x.dtype)
        q, k, v = qkv.chunk(3, dim=-1)
        return self.attend(q, k, v, attn_mask=attn_mask, block_mask=block_mask, position_bias=bias)
