"""4Real-Video-V2's fused view-time attention (Snap / KAUST, arXiv 2506.18839).

One masked self-attention over every token of a V x T grid, laid out (v, t, s): a query at (v, t) may
attend a key at (v', t') iff v' == v (same viewpoint) or t' == t (same timestep); the same frame is the
intersection. Each query sees (V + T - 1) * S of the V * T * S keys, the fraction (V + T - 1) / (V * T)
of full spatio-temporal attention (18% at 8 x 16).

The mask exists in three equivalent forms: `view_time_mask_mod` (the rule, for FlexAttention),
`view_time_block_mask` (a FlexAttention BlockMask built from frame-level counts, so it never materialises
the (L, L) token mask and stays cheap at 131k tokens) and `view_time_dense_mask` (a bool (L, L) mask for
dense SDPA). With the "flex" attention backend the layer passes the block mask (under torch.compile the
kernel then skips the unlisted tiles); every other backend gets the dense mask; the result is the same.
"""

import functools

import torch

from .attention import get_attention_backend
from .layouts import Grid, grid_seq_to_tokens, tokens_to_grid_seq
from .spatiotemporal import _AxisAttention, check_length

FLEX_BLOCK_SIZE = 128


def view_time_frame_mask(views: int, frames: int, device=None) -> torch.Tensor:
    """(V*T, V*T) bool over frames in (v, t) order: True where the two frames share a view or a timestep."""
    v = torch.arange(views, device=device).repeat_interleave(frames)
    t = torch.arange(frames, device=device).repeat(views)
    return (v[:, None] == v[None, :]) | (t[:, None] == t[None, :])


@functools.lru_cache(maxsize=8)  # one entry per (grid, resolution); a 32k-token grid's mask is 1 GB
def view_time_dense_mask(views: int, frames: int, tokens_per_frame: int, device: str = "cpu") -> torch.Tensor:
    """(L, L) bool token mask, L = V*T*S, True = may attend."""
    frame_mask = view_time_frame_mask(views, frames, device)
    return frame_mask.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


def view_time_mask_mod(views: int, frames: int, tokens_per_frame: int):
    """The FlexAttention mask_mod of the rule: token index -> frame -> (view, timestep)."""

    def mask_mod(b, h, q_idx, kv_idx):
        q_frame, kv_frame = q_idx // tokens_per_frame, kv_idx // tokens_per_frame
        same_view = (q_frame // frames) == (kv_frame // frames)
        same_time = (q_frame % frames) == (kv_frame % frames)
        return same_view | same_time

    return mask_mod


def _listed(blocks: torch.Tensor):
    """(nq, nk) bool -> (count (1, 1, nq), indices (1, 1, nq, nk)) with the listed kv blocks first, in order."""
    count = blocks.sum(-1, dtype=torch.int32)
    order = torch.argsort((~blocks).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return count[None, None], order[None, None]


@functools.lru_cache(maxsize=16)
def view_time_block_mask(views: int, frames: int, tokens_per_frame: int, device: str = "cpu",
                         block_size: int = FLEX_BLOCK_SIZE):
    """The FlexAttention BlockMask of the rule, from frame-level counts over each (q block, kv block) tile.

    A tile is full when every frame pair it touches is allowed, partial (mask_mod decides per token) when
    some are, and skipped when none is. The last tile of a length that is not a multiple of the block size
    is always treated as partial, so the padding never counts as allowed.
    """
    from torch.nn.attention.flex_attention import BlockMask

    length = views * frames * tokens_per_frame
    num_blocks = -(-length // block_size)
    starts = torch.arange(num_blocks) * block_size
    first = starts // tokens_per_frame  # first and last frame each block touches
    last = (torch.clamp(starts + block_size, max=length) - 1) // tokens_per_frame
    allowed = view_time_frame_mask(views, frames).to(torch.int64)
    prefix = torch.nn.functional.pad(allowed.cumsum(0).cumsum(1), (1, 0, 1, 0))  # 2D prefix sums

    def rect(q0, q1, k0, k1):  # allowed frame pairs in rows q0..q1, columns k0..k1 (inclusive)
        return prefix[q1 + 1][:, k1 + 1] - prefix[q0][:, k1 + 1] - prefix[q1 + 1][:, k0] + prefix[q0][:, k0]

    allowed_pairs = rect(first, last, first, last)
    pairs = (last - first + 1)[:, None] * (last - first + 1)[None, :]
    full = allowed_pairs == pairs
    if length % block_size:
        full[-1, :] = False
        full[:, -1] = False
    partial = (allowed_pairs > 0) & ~full
    kv_num, kv_idx = _listed(partial)
    full_num, full_idx = _listed(full)
    to = dict(device=device)
    return BlockMask.from_kv_blocks(kv_num.to(**to), kv_idx.to(**to), full_num.to(**to), full_idx.to(**to),
                                    BLOCK_SIZE=block_size, mask_mod=view_time_mask_mod(views, frames, tokens_per_frame),
                                    seq_lengths=(length, length))


def kept_fraction(block_mask) -> float:
    """Share of (q, kv) tiles a block-sparse kernel computes (partial + full) out of all tiles."""
    listed = block_mask.kv_num_blocks.sum() + block_mask.full_kv_num_blocks.sum()
    q_blocks, kv_blocks = block_mask.kv_indices.shape[-2:]
    return float(listed) / (q_blocks * kv_blocks)


class FusedViewTimeAttention(_AxisAttention):
    """Masked self-attention over all V*T*S tokens of the grid; a token sees its view and its timestep.

    Positions follow 4Real-Video-V2's (v, t) -> v * max_frames + t (the grid read as one long video of
    concatenated views). Its parameters are laid out like `TemporalAttention`'s, so a trained video
    model's temporal attention loads into it unchanged (their recipe: fine-tune the video model's attention
    with the mask). mask="auto" passes the BlockMask when the attention backend is "flex" and the cached
    dense mask otherwise; "block" / "dense" force one form (the results agree). Only FlexAttention compiled
    by torch.compile skips the masked tiles (set_attention_backend("flex") + torch.compile(model)); eager flex
    and dense masked SDPA compute every tile.
    """

    def __init__(self, dim: int, num_heads: int, max_views: int, max_frames: int, mask: str = "auto"):
        super().__init__(dim, num_heads)
        if mask not in ("auto", "block", "dense"):
            raise ValueError(f"mask must be 'auto', 'block' or 'dense', got {mask!r}.")
        self.max_views = max_views
        self.max_frames = max_frames
        self.mask = mask

    @torch.compiler.disable  # build masks eagerly (cached); a compiled model gets them as inputs
    def mask_arguments(self, grid: Grid, tokens_per_frame: int, device) -> dict:
        use_block = self.mask == "block" or (self.mask == "auto" and get_attention_backend() == "flex")
        if use_block:
            return {"block_mask": view_time_block_mask(grid.views, grid.frames, tokens_per_frame, str(device))}
        return {"attn_mask": view_time_dense_mask(grid.views, grid.frames, tokens_per_frame, str(device))}

    def forward(self, tokens: torch.Tensor, grid: Grid) -> torch.Tensor:
        check_length(grid.frames, self.max_frames, "frames", "max_frames")
        check_length(grid.views, self.max_views, "views", "max_views")
        tokens_per_frame = tokens.shape[1]
        seq = tokens_to_grid_seq(tokens, grid)
        frame_positions = (torch.arange(grid.views)[:, None] * self.max_frames + torch.arange(grid.frames)).flatten()
        update = self.attend(seq, frame_positions.repeat_interleave(tokens_per_frame),
                             **self.mask_arguments(grid, tokens_per_frame, tokens.device))
        return tokens + grid_seq_to_tokens(update, grid)
