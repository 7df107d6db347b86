import warnings

import pytest
import torch

from convdiff.nn.attention import (
    MultiHeadAttention,
    attention,
    attention_backend,
    block_mask_to_dense,
    get_attention_backend,
    set_attention_backend,
)

flex_attention_module = pytest.importorskip("torch.nn.attention.flex_attention")


def reference_attention(q, k, v, mask=None, scale=None):
    """Plain softmax(q kᵀ s + mask) v, the definition every backend must reproduce."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = q @ k.transpose(-1, -2) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return scores.softmax(-1) @ v


def inputs(b=2, h=3, lq=16, lk=16, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, lq, d, generator=g), torch.randn(b, h, lk, d, generator=g),
            torch.randn(b, h, lk, d, generator=g))


def runnable_cpu_backends():
    """Backends that run on this machine's CPU (SDPA kernels vary between torch builds)."""
    q, k, v = inputs()
    names = []
    for name in ("sdpa", "math", "efficient", "flash", "cudnn", "flex"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                attention(q, k, v, backend=name)
            names.append(name)
        except RuntimeError:
            pass
    return names


CPU_BACKENDS = runnable_cpu_backends()


def test_sdpa_math_and_flex_run_on_cpu():
    assert {"sdpa", "math", "flex"} <= set(CPU_BACKENDS)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_every_backend_matches_the_definition(backend):
    q, k, v = inputs(lq=12, lk=20)
    expected = reference_attention(q, k, v)
    torch.testing.assert_close(attention(q, k, v, backend=backend), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention(q, k, v, backend=backend, scale=0.3),
                               reference_attention(q, k, v, scale=0.3), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_bool_and_additive_masks_agree_on_every_backend(backend):
    q, k, v = inputs()
    g = torch.Generator().manual_seed(1)
    keep = torch.rand(2, 1, 16, 16, generator=g) > 0.3
    keep[..., 0] = True  # every query keeps at least one key (an all-masked row is NaN by definition)
    additive = torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    expected = reference_attention(q, k, v, keep)
    try:
        out_bool = attention(q, k, v, attn_mask=keep, backend=backend)
        out_add = attention(q, k, v, attn_mask=additive, backend=backend)
    except RuntimeError:
        pytest.skip(f"{backend} has no masked kernel on this CPU")
    torch.testing.assert_close(out_bool, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_add, expected, atol=1e-5, rtol=1e-5)
    # a finite additive bias (like a relative position bias) too
    bias = torch.randn(3, 16, 16, generator=g)
    torch.testing.assert_close(attention(q, k, v, attn_mask=bias, backend=backend),
                               reference_attention(q, k, v, bias), atol=1e-5, rtol=1e-5)


def window_block_mask(length, window):
    def same_window(b, h, q_idx, kv_idx):
        return (q_idx // window) == (kv_idx // window)

    mask = flex_attention_module.create_block_mask(same_window, None, None, length, length, device="cpu",
                                                   BLOCK_SIZE=window)
    dense = (torch.arange(length)[:, None] // window) == (torch.arange(length)[None, :] // window)
    return mask, dense


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_block_mask_gives_the_dense_mask_result_on_every_backend():
    q, k, v = inputs(lq=32, lk=32)
    block_mask, dense = window_block_mask(32, 8)
    assert torch.equal(block_mask_to_dense(block_mask, 32, 32, q.device)[0, 0], dense)
    expected = reference_attention(q, k, v, dense)
    for backend in CPU_BACKENDS:
        try:
            out = attention(q, k, v, block_mask=block_mask, backend=backend)
        except RuntimeError:
            continue  # a kernel without mask support
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5, msg=backend)


def test_block_mask_with_partial_blocks_uses_mask_mod():
    # causal mask in blocks of 8: diagonal blocks are partial, so the token-level mask_mod matters
    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    block_mask = flex_attention_module.create_block_mask(causal, None, None, 16, 16, device="cpu", BLOCK_SIZE=8)
    dense = block_mask_to_dense(block_mask, 16, 16, torch.device("cpu"))[0, 0]
    assert torch.equal(dense, torch.tril(torch.ones(16, 16, dtype=torch.bool)))
    q, k, v = inputs()
    torch.testing.assert_close(attention(q, k, v, block_mask=block_mask, backend="sdpa"),
                               reference_attention(q, k, v, dense), atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_combines_block_mask_and_attn_mask():
    q, k, v = inputs(lq=32, lk=32)
    block_mask, dense = window_block_mask(32, 8)
    bias = torch.randn(3, 32, 32)
    expected = reference_attention(q, k, v, torch.zeros(32, 32).masked_fill(~dense, float("-inf")) + bias)
    torch.testing.assert_close(attention(q, k, v, attn_mask=bias, block_mask=block_mask, backend="flex"),
                               expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention(q, k, v, attn_mask=bias, block_mask=block_mask, backend="sdpa"),
                               expected, atol=1e-5, rtol=1e-5)


def test_block_mask_for_other_lengths_is_rejected():
    block_mask, _ = window_block_mask(32, 8)
    q, k, v = inputs()
    with pytest.raises(ValueError, match="block_mask was built for"):
        attention(q, k, v, block_mask=block_mask, backend="sdpa")


def test_backend_switch_and_context_manager():
    assert get_attention_backend() == "sdpa"
    with attention_backend("math"):
        assert get_attention_backend() == "math"
        with attention_backend("flex"):
            assert get_attention_backend() == "flex"
        assert get_attention_backend() == "math"
    assert get_attention_backend() == "sdpa"
    set_attention_backend("math")
    try:
        assert get_attention_backend() == "math"
    finally:
        set_attention_backend("sdpa")
    with pytest.raises(ValueError, match="unknown attention backend 'fast'"):
        set_attention_backend("fast")
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(*inputs(), backend="triton")


def test_default_backend_reaches_attention_layers(monkeypatch):
    import convdiff.nn.attention as module

    seen = []
    monkeypatch.setattr(module, "_flex", lambda *args: seen.append("flex") or args[0])
    layer = MultiHeadAttention(16, 2)
    with attention_backend("flex"):
        layer(torch.randn(1, 4, 16))
    assert seen == ["flex"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_xformers_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="xformers"):
        attention(*inputs(), backend="xformers")


def test_bad_shapes_are_clear_errors():
    q, k, v = inputs()
    with pytest.raises(ValueError, match=r"q of shape \(batch, heads, length, head_dim\)"):
        attention(q[0], k, v)
    with pytest.raises(ValueError, match="k and v must share"):
        attention(q, k, v[:, :, :5])
    with pytest.raises(ValueError, match="q and k must share \\(batch, heads\\)"):
        attention(q, k[:1], v[:1])
    with pytest.raises(ValueError, match="head_dim"):
        attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="does not broadcast"):
        attention(q, k, v, attn_mask=torch.ones(5, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool .* or an additive float"):
        attention(q, k, v, attn_mask=torch.ones(16, 16, dtype=torch.long))


def test_multi_head_self_attention_matches_the_definition():
    layer = MultiHeadAttention(24, 3)
    x = torch.randn(2, 10, 24)
    q, k, v = layer.qkv(x).chunk(3, dim=-1)
    split = lambda t: t.view(2, 10, 3, 8).transpose(1, 2)  # noqa: E731
    heads = reference_attention(split(q), split(k), split(v))
    expected = layer.proj(heads.transpose(1, 2).reshape(2, 10, 24))
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    bias = torch.randn(3, 10, 10)
    heads = reference_attention(split(q), split(k), split(v), bias)
    torch.testing.assert_close(layer(x, position_bias=bias), layer.proj(heads.transpose(1, 2).reshape(2, 10, 24)),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"position_bias must have shape \(heads, Lq, Lk\) = \(3, 10, 10\)"):
        layer(x, position_bias=torch.randn(10, 10))


def test_multi_head_cross_attention_and_errors():
    layer = MultiHeadAttention(16, 2, context_dim=12, zero_init_out=True)
    x, context = torch.randn(2, 5, 16), torch.randn(2, 7, 12)
    assert torch.equal(layer(x, context), torch.zeros(2, 5, 16))  # zero-initialised output: starts as no-op
    torch.nn.init.normal_(layer.proj.weight)
    # masking a key out is the same as removing it from the context
    keep = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    keep[..., 5:] = False
    torch.testing.assert_close(layer(x, context, attn_mask=keep), layer(x, context[:, :5]), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="cross-attention layer .* pass context"):
        layer(x)
    with pytest.raises(ValueError, match="expected context of shape"):
        layer(x, torch.randn(2, 7, 16))
    with pytest.raises(ValueError, match="self-attention layer"):
        MultiHeadAttention(16, 2)(x, context)
    with pytest.raises(ValueError, match="expected x of shape"):
        MultiHeadAttention(16, 2)(torch.randn(2, 16))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        MultiHeadAttention(16, 3)


def test_attention_runs_in_bfloat16_with_a_mask():
    q, k, v = (t.bfloat16() for t in inputs())
    out = attention(q, k, v, attn_mask=torch.randn(16, 16))
    assert out.dtype == torch.bfloat16 and out.shape == q.shape


# ---- relative position bias, sin-cos embedding, TMSA, windows ------------------------------------------------

from convdiff.nn.position import RelativePositionBias, relative_position_index, sincos_2d_position_embedding  # noqa: E402
from convdiff.nn.tmsa import TimeDependentSelfAttention  # noqa: E402
from convdiff.nn.window import repeat_per_window, window_merge, window_partition  # noqa: E402


def test_relative_position_index_by_brute_force():
    h, w = 2, 3
    index = relative_position_index(h, w)
    coords = [(r, c) for r in range(h) for c in range(w)]
    for i, (ri, ci) in enumerate(coords):
        for j, (rj, cj) in enumerate(coords):
            assert index[i, j] == (ri - rj + h - 1) * (2 * w - 1) + (ci - cj + w - 1)
    assert index.max() == (2 * h - 1) * (2 * w - 1) - 1
    bias = RelativePositionBias((h, w), num_heads=4)
    table = bias.relative_position_bias_table
    assert table.shape == (15, 4) and 0.005 < table.std() < 0.05
    out = bias()
    assert out.shape == (4, 6, 6)
    # same offset -> same bias: tokens (0,0)->(0,1) and (1,1)->(1,2)
    torch.testing.assert_close(out[:, 0, 1], out[:, 4, 5])
    assert torch.equal(bias.state_dict()["relative_position_index"], index)


def test_sincos_2d_embedding_layout():
    emb = sincos_2d_position_embedding(8, 2, 3)
    assert emb.shape == (6, 8)
    # token (row 1, col 2): first half encodes the column, second the row; [sin | cos] per axis
    omega = 1.0 / 10000 ** (torch.arange(2, dtype=torch.float64) / 2)
    expected = torch.cat([torch.sin(2 * omega), torch.cos(2 * omega), torch.sin(1 * omega), torch.cos(1 * omega)])
    torch.testing.assert_close(emb[5], expected.float())
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_position_embedding(6, 2)


def test_tmsa_is_the_paper_formula():
    """q = x_s W_qs + x_t W_qt (same for k, v), softmax(q kᵀ/√d + B) v, heads merged, projected."""
    dim, heads, temb_dim = 12, 3, 5
    layer = TimeDependentSelfAttention(dim, heads, temb_dim=temb_dim, window_size=(2, 2))
    x, t = torch.randn(2, 4, dim), torch.randn(2, temb_dim)
    out = layer(x, t)
    w_s, w_t = layer.qkv.weight, layer.qkv_temb.weight
    projected = x @ w_s.T + layer.qkv.bias + (t @ w_t.T + layer.qkv_temb.bias)[:, None]
    q, k, v = (p.view(2, 4, heads, 4).transpose(1, 2) for p in projected.chunk(3, dim=-1))
    table = layer.position_bias.relative_position_bias_table
    bias = torch.stack([torch.stack([table[relative_position_index(2, 2)[i, j]] for j in range(4)]) for i in range(4)])
    heads_out = reference_attention(q, k, v, bias.permute(2, 0, 1))
    expected = layer.proj(heads_out.transpose(1, 2).reshape(2, 4, dim))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # the time token changes the output (it enters q, k and v)
    assert not torch.allclose(layer(x, t + 1), out)
    with pytest.raises(ValueError, match=r"covers a \(2, 2\) window \(4 tokens\) but got 6"):
        layer(torch.randn(2, 6, dim), t)
    with pytest.raises(ValueError, match=r"time token of shape \(2, 5\)"):
        layer(x, torch.randn(2, dim))


def test_tmsa_equals_self_attention_over_tokens_plus_time_token_projection():
    """With the bias off, TMSA is ordinary attention whose qkv projection sees [x_s ; x_t] concatenated."""
    layer = TimeDependentSelfAttention(8, 2, temb_dim=8)
    x, t = torch.randn(1, 5, 8), torch.randn(1, 8)
    joint = torch.nn.Linear(16, 24)
    with torch.no_grad():
        joint.weight.copy_(torch.cat([layer.qkv.weight, layer.qkv_temb.weight], dim=1))
        joint.bias.copy_(layer.qkv.bias + layer.qkv_temb.bias)
    q, k, v = joint(torch.cat([x, t[:, None].expand(1, 5, 8)], dim=-1)).chunk(3, dim=-1)
    torch.testing.assert_close(layer(x, t), layer.attend(q, k, v), atol=1e-5, rtol=1e-5)


def test_window_partition_round_trip_and_errors():
    x = torch.randn(2, 8, 12, 3)
    windows = window_partition(x, 4)
    assert windows.shape == (2 * 2 * 3, 16, 3)
    torch.testing.assert_close(windows[1], x[0, 0:4, 4:8].reshape(16, 3))  # second window of the first image
    assert torch.equal(window_merge(windows, 8, 12, 4), x)
    t = torch.arange(2)
    assert repeat_per_window(t, 8, 12, 4).tolist() == [0] * 6 + [1] * 6
    with pytest.raises(ValueError, match=r"window size 5 does not divide the 8x12 token grid.*\(e\.g\. 1, 2, 4\)"):
        window_partition(x, 5)


def test_windowed_attention_equals_global_attention_with_a_window_mask():
    layer = MultiHeadAttention(8, 2)
    x = torch.randn(2, 4, 6, 8)
    local = window_merge(layer(window_partition(x, 2)), 4, 6, 2)
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(6), indexing="ij")
    window_id = (rows // 2 * 3 + cols // 2).flatten()
    same_window = window_id[:, None] == window_id[None, :]
    global_masked = layer(x.reshape(2, 24, 8), attn_mask=same_window).reshape(2, 4, 6, 8)
    torch.testing.assert_close(local, global_masked, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_window_block_mask_equals_window_partition():
    from convdiff.nn.window import window_block_mask

    layer = MultiHeadAttention(8, 2)
    x = torch.randn(2, 8, 8, 8)
    local = window_merge(layer(window_partition(x, 4)), 8, 8, 4).reshape(2, 64, 8)
    mask = window_block_mask(8, 8, 4)
    for backend in ("flex", "sdpa"):
        with attention_backend(backend), torch.no_grad():
            torch.testing.assert_close(layer(x.reshape(2, 64, 8), block_mask=mask), local, atol=1e-5, rtol=1e-5)
    # training through the block mask on CPU: sdpa takes it densely; flex says what to do instead
    layer(x.reshape(2, 64, 8), block_mask=mask).sum().backward()
    if not torch.cuda.is_available():
        with attention_backend("flex"), pytest.raises(ValueError, match="use backend='sdpa'"):
            layer(x.reshape(2, 64, 8), block_mask=mask)
    with pytest.raises(ValueError, match="window size 3 does not divide"):
        window_block_mask(8, 8, 3)
