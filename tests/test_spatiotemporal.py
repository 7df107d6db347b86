"""Factorized spatio-temporal layers: layouts, identity at init, references, and the fused view-time masks."""

import pytest
import torch
from conftest import randomize_
from einops import rearrange
from torch.nn.attention.flex_attention import create_block_mask

from convdiff.nn import layouts as L
from convdiff.nn.attention import attention_backend, block_mask_to_dense
from convdiff.nn.camera import FrameConditionEmbedding
from convdiff.nn.layouts import Grid
from convdiff.nn.position import sincos_1d
from convdiff.nn.spatiotemporal import (
    GridContext,
    P3DConv,
    SyncLayer,
    TemporalAttention,
    TemporalConv,
    TokenTemporalConv,
    ViewAttention,
    along_time,
)
from convdiff.nn.view_time_attention import (
    FusedViewTimeAttention,
    kept_fraction,
    view_time_block_mask,
    view_time_dense_mask,
    view_time_mask_mod,
)

GRID = Grid(2, 3, 4)  # batch, views, frames
S, C = 6, 8  # tokens per frame (2 x 3 map), channels


def grid_tokens(grid=GRID, tokens=S, channels=C):
    return torch.randn(grid.num_frames_total, tokens, channels)


# --- layouts ------------------------------------------------------------------------------------------------------

def test_layout_round_trips():
    video = torch.randn(2, C, 5, 2, 3)
    assert torch.equal(L.frames_to_video(L.video_to_frames(video), 2), video)
    grid6 = torch.randn(2, C, 3, 4, 2, 3)
    assert torch.equal(L.frames_to_grid(L.grid_to_frames(grid6), GRID), grid6)
    assert torch.equal(L.grid_to_video(L.video_to_grid(video)), video)
    maps = L.grid_to_frames(grid6)
    assert torch.equal(L.tokens_to_maps(L.maps_to_tokens(maps), 2), maps)
    tokens = grid_tokens()
    for forward, inverse in [(L.tokens_to_time_seq, L.time_seq_to_tokens), (L.tokens_to_view_seq, L.view_seq_to_tokens),
                             (L.tokens_to_view_frames, L.view_frames_to_tokens),
                             (L.tokens_to_view_videos, L.view_videos_to_tokens),
                             (L.tokens_to_grid_seq, L.grid_seq_to_tokens)]:
        assert torch.equal(inverse(forward(tokens, GRID), GRID), tokens), forward.__name__
    volume = L.frames_to_volume(maps, GRID)
    assert volume.shape == (2 * 3, C, 4, 2, 3)
    assert torch.equal(L.volume_to_frames(volume, GRID), maps)
    swapped = L.swap_views_and_frames(tokens, GRID)
    assert torch.equal(L.swap_views_and_frames(swapped, GRID.swapped()), tokens)


def test_layouts_put_the_right_elements_together():
    grid6 = torch.randn(2, C, 3, 4, 2, 3)  # (b, c, v, t, h, w)
    tokens = L.maps_to_tokens(L.grid_to_frames(grid6))
    b, v, t, s = 1, 2, 3, 4
    h, w = divmod(s, 3)
    assert torch.equal(L.tokens_to_time_seq(tokens, GRID)[(b * 3 + v) * S + s, t], grid6[b, :, v, t, h, w])
    assert torch.equal(L.tokens_to_view_seq(tokens, GRID)[(b * 4 + t) * S + s, v], grid6[b, :, v, t, h, w])
    assert torch.equal(L.tokens_to_view_frames(tokens, GRID)[b * 4 + t, v * S + s], grid6[b, :, v, t, h, w])
    assert torch.equal(L.tokens_to_view_videos(tokens, GRID)[b * 3 + v, t * S + s], grid6[b, :, v, t, h, w])
    assert torch.equal(L.tokens_to_grid_seq(tokens, GRID)[b, (v * 4 + t) * S + s], grid6[b, :, v, t, h, w])
    swapped = L.swap_views_and_frames(tokens, GRID)  # (b, t, v) order
    assert torch.equal(swapped[(b * 4 + t) * 3 + v], tokens[(b * 3 + v) * 4 + t])


# --- P3D ----------------------------------------------------------------------------------------------------------

def context_for(grid):
    context = GridContext()
    context.grid = grid
    return context


@pytest.mark.parametrize("variant", ["A", "B", "C"])
@pytest.mark.parametrize("depthwise", [False, True])
def test_p3d_conv_is_the_spatial_conv_at_init_and_follows_its_formula(variant, depthwise):
    grid = Grid(2, 1, 5)
    spatial = torch.nn.Conv2d(C, C, 3, padding=1, groups=C if depthwise else 1)
    p3d = P3DConv(spatial, variant, context_for(grid))
    x = torch.randn(grid.num_frames_total, C, 4, 4)
    assert torch.allclose(p3d(x), spatial(x), atol=1e-6)
    randomize_(p3d.temporal)
    s = spatial(x)
    # the temporal conv as a plain Conv3d over (b, c, t, h, w)
    t_of = lambda z: rearrange(p3d.temporal.conv(rearrange(z, "(b t) c h w -> b c t h w", t=5)), "b c t h w -> (b t) c h w")
    expected = {"A": t_of(s), "B": s + t_of(x), "C": s + t_of(s)}[variant]
    assert torch.allclose(p3d(x), expected, atol=1e-6)


def test_temporal_conv_mixes_only_adjacent_frames():
    grid = Grid(1, 1, 6)
    conv = randomize_(TemporalConv(C, C))
    x = torch.zeros(6, C, 2, 2)
    x[0] = 1.0
    out = conv(x, grid) - conv(torch.zeros_like(x), grid)  # remove the bias
    assert out[:2].abs().sum() > 0 and out[2:].abs().sum() == 0
    tokens = grid_tokens(Grid(1, 1, 6))
    assert torch.equal(TokenTemporalConv(C)(tokens, Grid(1, 1, 6)), tokens)  # zero at init


# --- temporal and view attention ----------------------------------------------------------------------------------

def naive_attention(layer, seq, positions, allowed=None):
    """Loop reference: pre-norm + sin-cos positions, then per-query softmax over the allowed keys."""
    h = layer.norm(seq) + sincos_1d(seq.shape[-1], positions).float()
    q, k, v = layer.attn.qkv(h).chunk(3, dim=-1)
    heads, d = layer.attn.num_heads, layer.attn.head_dim
    out = torch.zeros_like(q)
    for n in range(seq.shape[0]):
        for i in range(seq.shape[1]):
            keys = [j for j in range(seq.shape[1]) if allowed is None or allowed[i, j]]
            for hd in range(heads):
                sl = slice(hd * d, (hd + 1) * d)
                logits = torch.stack([q[n, i, sl] @ k[n, j, sl] for j in keys]) / d ** 0.5
                weights = logits.softmax(0)
                out[n, i, sl] = sum(wt * v[n, j, sl] for wt, j in zip(weights, keys))
    return layer.attn.proj(out)


def test_temporal_attention_identity_at_init_and_matches_loop_reference():
    layer = TemporalAttention(C, 2, max_frames=8)
    tokens = grid_tokens()
    assert torch.equal(layer(tokens, GRID), tokens)
    randomize_(layer, std=0.3)
    seq = L.tokens_to_time_seq(tokens, GRID)
    expected = tokens + L.time_seq_to_tokens(naive_attention(layer, seq, torch.arange(GRID.frames)), GRID)
    assert torch.allclose(layer(tokens, GRID), expected, atol=1e-5)
    one_frame = grid_tokens(Grid(2, 3, 1))
    assert torch.equal(layer(one_frame, Grid(2, 3, 1)), one_frame)  # images pass through
    with pytest.raises(ValueError, match="at most 8.*max_frames"):
        layer(grid_tokens(Grid(1, 1, 9)), Grid(1, 1, 9))


@pytest.mark.parametrize("scope", ["pixel", "frame"])
def test_view_attention_identity_at_init_and_matches_loop_reference(scope):
    layer = ViewAttention(C, 2, max_views=4, scope=scope)
    tokens = grid_tokens()
    assert torch.equal(layer(tokens, GRID), tokens)
    randomize_(layer, std=0.3)
    if scope == "pixel":
        seq = L.tokens_to_view_seq(tokens, GRID)
        expected = L.view_seq_to_tokens(naive_attention(layer, seq, torch.arange(3)), GRID)
    else:
        seq = L.tokens_to_view_frames(tokens, GRID)
        expected = L.view_frames_to_tokens(naive_attention(layer, seq, torch.arange(3).repeat_interleave(S)), GRID)
    assert torch.allclose(layer(tokens, GRID), tokens + expected, atol=1e-5)
    single = grid_tokens(Grid(2, 1, 4))
    assert torch.equal(layer(single, Grid(2, 1, 4)), single)  # plain video passes through
    with pytest.raises(ValueError, match="5 views.*max_views"):
        layer(grid_tokens(Grid(1, 5, 1)), Grid(1, 5, 1))


def test_along_time_runs_the_view_stream_over_views():
    grid = Grid(1, 2, 3)
    context = context_for(grid)
    context.two_stream = True
    layer = randomize_(TemporalAttention(C, 1, max_frames=4), std=0.3)
    view_stream, time_stream = grid_tokens(grid), grid_tokens(grid)
    out = along_time(torch.cat([view_stream, time_stream]), context, layer)
    assert torch.allclose(out[6:], layer(time_stream, grid))
    swapped = layer(L.swap_views_and_frames(view_stream, grid), grid.swapped())
    assert torch.allclose(out[:6], L.swap_views_and_frames(swapped, grid.swapped()))


# --- fused view-time attention ------------------------------------------------------------------------------------

@pytest.mark.parametrize("views,frames,tokens", [(2, 3, 16), (3, 4, 5), (2, 16, 128), (1, 4, 7), (4, 1, 9), (2, 2, 200)])
def test_view_time_masks_agree(views, frames, tokens):
    length = views * frames * tokens
    dense = view_time_dense_mask(views, frames, tokens)
    # the rule itself, token by token
    frame = torch.arange(length) // tokens
    rule = ((frame[:, None] // frames) == (frame[None] // frames)) | ((frame[:, None] % frames) == (frame[None] % frames))
    assert torch.equal(dense, rule)
    block = view_time_block_mask(views, frames, tokens)
    assert torch.equal(block_mask_to_dense(block, length, length, torch.device("cpu"))[0, 0], dense)
    reference = create_block_mask(view_time_mask_mod(views, frames, tokens), None, None, length, length, device="cpu")
    assert torch.equal(block.to_dense(), reference.to_dense())  # the same tiles are listed as create_block_mask's
    assert dense.float().mean().item() == pytest.approx((views + frames - 1) / (views * frames))


def test_block_mask_skips_tiles_when_frames_fill_blocks():
    block = view_time_block_mask(8, 16, 128)  # 32x32 latents at patch 2.8: one frame per 128-token tile
    assert kept_fraction(block) == pytest.approx((8 + 16 - 1) / (8 * 16))
    assert block.full_kv_num_blocks.sum() == (8 + 16 - 1) * 8 * 16 and block.kv_num_blocks.sum() == 0


def test_fused_attention_block_and_dense_masks_give_the_loop_reference():
    grid = Grid(1, 2, 3)
    layer = randomize_(FusedViewTimeAttention(C, 2, max_views=4, max_frames=8), std=0.3)
    tokens = grid_tokens(grid, tokens=4)
    seq = L.tokens_to_grid_seq(tokens, grid)
    positions = (torch.arange(2)[:, None] * 8 + torch.arange(3)).flatten().repeat_interleave(4)
    expected = tokens + L.grid_seq_to_tokens(naive_attention(layer, seq, positions, view_time_dense_mask(2, 3, 4)), grid)
    layer.mask = "dense"
    assert torch.allclose(layer(tokens, grid), expected, atol=1e-5)
    layer.mask = "block"  # the default sdpa backend expands the block mask
    assert torch.allclose(layer(tokens, grid), expected, atol=1e-5)
    layer.mask = "auto"
    with attention_backend("flex"), torch.no_grad():  # FlexAttention with the BlockMask (no CPU backward)
        assert torch.allclose(layer(tokens, grid), expected, atol=1e-5)
    with pytest.raises(ValueError, match="max_views"):
        layer(grid_tokens(Grid(1, 5, 1), tokens=4), Grid(1, 5, 1))


def test_fused_attention_starts_as_identity_and_loads_temporal_attention_weights():
    temporal = randomize_(TemporalAttention(C, 2, max_frames=8))
    fused = FusedViewTimeAttention(C, 2, max_views=4, max_frames=8)
    tokens = grid_tokens()
    assert torch.equal(fused(tokens, GRID), tokens)
    fused.load_state_dict(temporal.state_dict())  # same parameter names and shapes


# --- sync layers and camera / time conditioning --------------------------------------------------------------------

def test_sync_layers_at_init_and_noise_modulation():
    y_view, y_time, cond = torch.randn(4, S, C), torch.randn(4, S, C), torch.randn(4, 16)
    hard, soft = SyncLayer(C, 16, "hard"), SyncLayer(C, 16, "soft")
    merged, again = hard(y_view, y_time, cond)
    assert torch.allclose(merged, (y_view + y_time) / 2) and merged is again
    out_view, out_time = soft(y_view, y_time, cond)
    assert torch.equal(out_view, y_view) and torch.equal(out_time, y_time)
    randomize_(hard, std=0.2), randomize_(soft, std=0.2)
    other = torch.randn(4, 16)
    assert not torch.allclose(hard(y_view, y_time, cond)[0], hard(y_view, y_time, other)[0])
    assert not torch.allclose(soft(y_view, y_time, cond)[0], soft(y_view, y_time, other)[0])
    with pytest.raises(ValueError, match="'hard' or 'soft'"):
        SyncLayer(C, 16, "medium")


def test_frame_condition_embedding_starts_at_zero_and_checks_shapes():
    embedding = FrameConditionEmbedding(32, camera_dim=12, timestamps=True)
    cameras, times = torch.randn(5, 12), torch.rand(5)
    assert torch.equal(embedding(cameras, times), torch.zeros(5, 32))
    randomize_(embedding)
    a, b = embedding(cameras, times), embedding(cameras, times + 0.1)
    assert a.shape == (5, 32) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match=r"cameras of shape \(N, 12\)"):
        embedding(torch.randn(5, 9), times)
    with pytest.raises(ValueError, match="timestamps"):
        embedding(cameras, None)
