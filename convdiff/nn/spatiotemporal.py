"""Factorized spatio-temporal layers that turn a 2D backbone into a video / 4D one (P3D: Qiu et al., ICCV 2017,
arXiv 1711.10305; 4Real-Video: CVPR 2025, arXiv 2412.04462; identity at init as in AnimateDiff).

The 2D backbone keeps running on frames (B*V*T, C, H, W); the layers below are inserted after its blocks
(or around its 3x3 convs) and mix information across frames or views. Each one starts as the identity, so
an inflated model equals its image model applied frame by frame until training moves the new weights:
- `TemporalConv` (P3D's 3x1x1 T) and `P3DConv`, which wraps a 2D 3x3 conv S in the A / B / C placement;
- `TemporalAttention`: self-attention over the frames of every pixel (zero-initialised output);
- `ViewAttention`: self-attention over the views of every pixel, or over all views' pixels at one timestep;
- `SyncLayer`: 4Real-Video's hard / soft synchronisation of the view stream and the time stream.
The fused view-time attention of 4Real-Video-V2 is in view_time_attention.py, camera / time conditioning in
camera.py. Layers that mix frames read the grid sizes from a shared `GridContext` that the inflated model
sets for the duration of every forward pass.
"""

import math
from contextlib import contextmanager

import torch
from torch import nn

from .attention import MultiHeadAttention
from .layouts import (
    Grid,
    frames_to_volume,
    swap_views_and_frames,
    time_seq_to_tokens,
    tokens_to_time_seq,
    tokens_to_view_frames,
    tokens_to_view_seq,
    view_frames_to_tokens,
    view_seq_to_tokens,
    volume_to_frames,
)
from .position import sincos_1d

P3D_VARIANTS = ("A", "B", "C")


class GridContext:
    """What the inserted layers need to know about the current forward pass, set by the inflated model.

    grid: sizes of the (batch, views, frames) grid folded into the frame axis; two_stream: the frame axis
    holds two copies of the grid (view stream first, time stream second); sync_condition: (frames of one
    stream, D) noise-level features for the sync layers; frame_cameras / frame_timestamps / frame_text:
    per-frame camera parameters, times and text embeddings for the timestep-embedding conditioning. With no grid set, every frame is its own
    one-frame video, so the backbone can still be run on plain images.

    The inflated model sets it for one forward pass only (`scope`), and a checkpointed block recomputed in
    the backward pass sees the context of its forward (`checkpointed`). A scope rather than an argument because
    the readers sit inside code that takes no video arguments (a 2D block calling its P3D conv, a backbone calling
    its timestep embedder, diffusers' own models): the pattern of diffusers' `CacheMixin.cache_context`
    (docs/inflation.md, "How one forward pass runs").
    """

    FIELDS = ("grid", "two_stream", "sync_condition", "frame_cameras", "frame_timestamps", "frame_text")

    def __init__(self):
        self.grid: Grid | None = None
        self.two_stream = False
        self.sync_condition = None
        self.frame_cameras = None
        self.frame_timestamps = None
        self.frame_text = None

    def state(self) -> tuple:
        return tuple(getattr(self, name) for name in self.FIELDS)

    @contextmanager
    def scope(self, grid: Grid | None = None, two_stream: bool = False, sync_condition=None, frame_cameras=None,
              frame_timestamps=None, frame_text=None):
        """The context of one forward pass; the previous one (normally empty) is back afterwards, even on error."""
        saved = self.state()
        self.grid, self.two_stream, self.sync_condition = grid, two_stream, sync_condition
        self.frame_cameras, self.frame_timestamps, self.frame_text = frame_cameras, frame_timestamps, frame_text
        try:
            yield self
        finally:
            for name, value in zip(self.FIELDS, saved):
                setattr(self, name, value)

    def checkpointed(self, checkpoint_func):
        """Wrap a gradient-checkpointing function `(block, *args)` so that the block's recomputation in the
        backward pass, after the forward's scope has closed, runs in the context of its forward."""
        def run(block, *args, **kwargs):
            forward_state = self.state()

            def in_forward_context(*inputs, **named):
                with self.scope(*forward_state):
                    return block(*inputs, **named)
            return checkpoint_func(in_forward_context, *args, **kwargs)
        return run

    def compile_key(self) -> tuple:
        """What a compiled layer reading this context is specialised on: the grid and the shapes of its tensors."""
        return tuple((tuple(v.shape), v.dtype) if torch.is_tensor(v) else v for v in self.state())

    def frames_in_batch(self) -> int | None:
        """How many frames the backbone's batch axis holds (both streams), None outside a video forward."""
        return None if self.grid is None else self.grid.num_frames_total * (2 if self.two_stream else 1)

    def grid_for(self, num_frames: int) -> Grid:
        """The grid of one stream, checked against the number of frames a layer actually received."""
        if self.grid is None:
            return Grid(num_frames, 1, 1)
        expected = self.frames_in_batch()
        if num_frames != expected:
            raise ValueError(
                f"an inserted video layer got {num_frames} frames but the model is running a grid of "
                f"{self.grid} ({expected} frames): call the inflated model, not its 2D backbone, on video input."
            )
        return self.grid


def along_time(x: torch.Tensor, context: GridContext, layer) -> torch.Tensor:
    """Run `layer(x, grid)` over the time axis of the grid in x's leading dimension; a layer that `takes_text`
    also gets the context's per-frame text embeddings, laid out like x.

    In a two-stream model the first half of the frames is the view stream: there the same layer runs over
    the views instead (views and frames swapped), as 4Real-Video runs one pretrained video block on both
    freeze-time videos X[:, t] and fixed-view videos X[v, :].
    """
    grid = context.grid_for(x.shape[0])
    text = context.frame_text if getattr(layer, "takes_text", False) else None

    def run(tokens, grid, text):
        return layer(tokens, grid) if text is None else layer(tokens, grid, text)

    if not context.two_stream:
        return run(x, grid, text)
    view_stream, time_stream = x.chunk(2)
    view_text, time_text = (None, None) if text is None else text.chunk(2)
    swapped = grid.swapped()
    if view_text is not None:
        view_text = swap_views_and_frames(view_text[:, None], grid)[:, 0]
    view_stream = swap_views_and_frames(run(swap_views_and_frames(view_stream, grid), swapped, view_text), swapped)
    return torch.cat([view_stream, run(time_stream, grid, time_text)])


def attention_heads(dim: int, head_dim: int) -> int:
    """As many heads of `head_dim` channels as fit, at least one, and a divisor of dim."""
    return math.gcd(dim, max(1, dim // head_dim))


class TemporalConv(nn.Module):
    """P3D's temporal conv T: a 3x1x1 conv over the frames of every pixel of (N, C, *spatial) frame maps.

    init="zero" makes it add nothing (B and C placements, residual use); init="identity" makes it pass its
    input through (Dirac kernel: centre tap 1), which the serial A placement needs to keep S at init.
    Frames are zero-padded at both ends, so a one-frame input only sees the centre tap.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 1, init: str = "zero"):
        super().__init__()
        if init not in ("zero", "identity"):
            raise ValueError(f"TemporalConv init must be 'zero' or 'identity', got {init!r}.")
        if init == "identity" and in_channels != out_channels:
            raise ValueError("an identity-initialised temporal conv needs in_channels == out_channels.")
        self.init = init
        self.conv = nn.Conv3d(in_channels, out_channels, (3, 1, 1), padding=(1, 0, 0), groups=groups)
        self.init_weights()

    def init_weights(self):
        if self.init == "zero":
            nn.init.zeros_(self.conv.weight)
        else:
            nn.init.dirac_(self.conv.weight, groups=self.conv.groups)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        squeeze = x.dim() == 3  # (N, C, S) token maps: give Conv3d a unit width axis
        if squeeze:
            x = x.unsqueeze(-1)
        out = volume_to_frames(self.conv(frames_to_volume(x, grid)), grid)
        return out.squeeze(-1) if squeeze else out


class P3DConv(nn.Module):
    """A pretrained 2D 3x3 conv S (run per frame, i.e. 1x3x3) with a P3D temporal conv T (3x1x1) beside it.

    A (serial):             T(S(x)),    T starts as the identity;
    B (parallel):           S(x) + T(x), T starts at zero;
    C (serial + shortcut):  S(x) + T(S(x)), T starts at zero.
    The enclosing block's own shortcut supplies P3D's `x +`; at init every variant returns S(x) exactly.
    A depthwise S gets a depthwise T.
    """

    def __init__(self, spatial: nn.Conv2d, variant: str, context: GridContext):
        super().__init__()
        if variant not in P3D_VARIANTS:
            raise ValueError(f"P3D variant must be one of {', '.join(P3D_VARIANTS)}, got {variant!r}.")
        self.spatial = spatial
        self.variant = variant
        self.context = context
        depthwise = spatial.groups > 1 and spatial.groups == spatial.in_channels == spatial.out_channels
        groups = spatial.groups if depthwise else 1
        t_in = spatial.in_channels if variant == "B" else spatial.out_channels
        self.temporal = TemporalConv(t_in, spatial.out_channels, groups, init="identity" if variant == "A" else "zero")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spatial(x)
        if self.variant == "A":
            return along_time(s, self.context, self.temporal)
        if self.variant == "B":
            return s + along_time(x, self.context, self.temporal)
        return s + along_time(s, self.context, self.temporal)


class TokenTemporalConv(nn.Module):
    """x + T(x) on (N, S, C) tokens: P3D for blocks without a 3x3 conv to pair with (transformer blocks)."""

    def __init__(self, dim: int):
        super().__init__()
        self.temporal = TemporalConv(dim, dim, init="zero")

    def forward(self, tokens: torch.Tensor, grid: Grid) -> torch.Tensor:
        return tokens + self.temporal(tokens.transpose(1, 2), grid).transpose(1, 2)


def check_length(count: int, maximum: int, what: str, option: str) -> None:
    if count > maximum:
        raise ValueError(f"got {count} {what} but this layer was built for at most {maximum}: inflate the model "
                         f"with a larger {option} (e.g. {option}={count}) or split the input into shorter clips.")


class _AxisAttention(nn.Module):
    """Pre-norm self-attention with a sin-cos index embedding and a zero-initialised output projection."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads, zero_init_out=True)

    def attend(self, seq: torch.Tensor, positions: torch.Tensor, modulation: torch.Tensor | None = None,
               **mask) -> torch.Tensor:
        """seq (N, L, C), positions (L,) integer indices -> the attention update (N, L, C); modulation (N, L, 2C)
        (shift, scale) applied after the index embedding, so a condition can act differently on each index."""
        embedding = sincos_1d(seq.shape[-1], positions).to(device=seq.device, dtype=seq.dtype)
        hidden = self.norm(seq) + embedding
        if modulation is not None:
            shift, scale = modulation.chunk(2, dim=-1)
            hidden = hidden * (1 + scale) + shift
        return self.attn(hidden, **mask)


class TemporalAttention(_AxisAttention):
    """Self-attention over the frames at every pixel (AnimateDiff's motion module, with a zero output).

    Tokens (B*V*T, S, C) -> (B*V*S, T, C) sequences with a frame-index embedding. A one-frame grid is left
    unchanged (nothing to attend to), so image data passes through a video model as through its image model.
    With `text_dim`, a clip's pooled text embedding modulates the normalised, index-embedded frames (shift and
    scale per channel, adaLN as in DiT, zero at init), so the prompt decides how the frames relate: the layer
    that makes the motion reads the words that name it.
    """

    def __init__(self, dim: int, num_heads: int, max_frames: int, text_dim: int | None = None):
        super().__init__(dim, num_heads)
        self.max_frames = max_frames
        self.takes_text = bool(text_dim)
        self.text_modulation = None
        if text_dim:
            self.text_modulation = nn.Linear(text_dim, 2 * dim)
            nn.init.zeros_(self.text_modulation.weight)
            nn.init.zeros_(self.text_modulation.bias)

    def forward(self, tokens: torch.Tensor, grid: Grid, text: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B*V*T, S, C); text (B*V*T, text_dim) per frame when built with text_dim."""
        check_length(grid.frames, self.max_frames, "frames", "max_frames")
        if self.takes_text and (text is None or tuple(text.shape) != (tokens.shape[0], self.text_modulation.in_features)):
            got = None if text is None else tuple(text.shape)
            raise ValueError(f"this temporal attention is text-conditioned: pass per-frame text embeddings of shape "
                             f"({tokens.shape[0]}, {self.text_modulation.in_features}), got {got}.")
        if grid.frames == 1:
            return tokens
        seq = tokens_to_time_seq(tokens, grid)
        modulation = None
        if self.takes_text:  # (frames, 2C) -> the (B*V*S, T, 2C) layout of the sequences
            per_frame = self.text_modulation(text.to(seq.dtype))[:, None, :].expand(-1, tokens.shape[1], -1)
            modulation = tokens_to_time_seq(per_frame, grid)
        update = self.attend(seq, torch.arange(grid.frames), modulation)
        return tokens + time_seq_to_tokens(update, grid)


class ViewAttention(_AxisAttention):
    """Self-attention across viewpoints at one timestep, with a view-index embedding and a zero output.

    scope="frame": all views' pixels attend to each other (B*T, V*S, C) (MVDream / Human4DiT);
    scope="pixel": the views of each pixel attend to each other (B*T*S, V, C), V times cheaper per token.
    A one-view grid is left unchanged, so plain video passes through a 4D model as through its video model.
    """

    def __init__(self, dim: int, num_heads: int, max_views: int, scope: str = "frame"):
        super().__init__(dim, num_heads)
        if scope not in ("frame", "pixel"):
            raise ValueError(f"view attention scope must be 'frame' or 'pixel', got {scope!r}.")
        self.max_views = max_views
        self.scope = scope

    def forward(self, tokens: torch.Tensor, grid: Grid) -> torch.Tensor:
        check_length(grid.views, self.max_views, "views", "max_views")
        if grid.views == 1:
            return tokens
        views = torch.arange(grid.views)
        if self.scope == "pixel":
            update = self.attend(tokens_to_view_seq(tokens, grid), views)
            return tokens + view_seq_to_tokens(update, grid)
        update = self.attend(tokens_to_view_frames(tokens, grid), views.repeat_interleave(tokens.shape[1]))
        return tokens + view_frames_to_tokens(update, grid)


class SyncLayer(nn.Module):
    """4Real-Video's synchronisation of the view stream y_v and the time stream y_t after a block (§2).

    hard: both streams continue from w_v * y_v + w_t * y_t, per-channel weights = 1/2 + an MLP of the noise
          level whose last layer starts at zero (a projection onto y_v = y_t);
    soft: (dy_v, dy_t) = Linear(modulate(LN([y_v, y_t]), noise level)), each stream adds its own increment;
          the Linear starts at zero, so the streams start untouched.
    Inputs are (N, S, C) tokens of each stream and an (N, D) noise-level condition per frame.
    """

    def __init__(self, dim: int, cond_dim: int, mode: str = "soft"):
        super().__init__()
        if mode not in ("hard", "soft"):
            raise ValueError(f"sync mode must be 'hard' or 'soft', got {mode!r}.")
        self.mode = mode
        if mode == "hard":
            self.weights = nn.Linear(cond_dim, 2 * dim)
        else:
            self.norm = nn.LayerNorm(2 * dim, elementwise_affine=False, eps=1e-6)
            self.modulation = nn.Linear(cond_dim, 4 * dim)
            self.proj = nn.Linear(2 * dim, 2 * dim)
        self.init_weights()

    def init_weights(self):
        last = self.weights if self.mode == "hard" else self.proj
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        if self.mode == "soft":
            nn.init.zeros_(self.modulation.weight)
            nn.init.zeros_(self.modulation.bias)

    def forward(self, view_stream: torch.Tensor, time_stream: torch.Tensor, cond: torch.Tensor):
        cond = nn.functional.silu(cond)[:, None, :].to(view_stream.dtype)
        if self.mode == "hard":
            w_view, w_time = (0.5 + self.weights(cond)).chunk(2, dim=-1)
            merged = w_view * view_stream + w_time * time_stream
            return merged, merged
        shift, scale = self.modulation(cond).chunk(2, dim=-1)
        both = torch.cat([view_stream, time_stream], dim=-1)
        delta_view, delta_time = self.proj(self.norm(both) * (1 + scale) + shift).chunk(2, dim=-1)
        return view_stream + delta_view, time_stream + delta_time
