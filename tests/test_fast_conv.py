"""run_conv: small-row convolutions as GEMMs on the channels-last view (autograd included), oneDNN's fused
conv + GELU on CPU inference, the module call wherever autograd, autocast, hooks or tracing need it; DiCo's
inference forward equals its training forward."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import profile

from convdiff.nn import fast_conv
from convdiff.nn.fast_conv import _CONV_POINTWISE, run_conv
from convdiff.registry import create_model

needs_onednn = pytest.mark.skipif(_CONV_POINTWISE is None or not torch.backends.mkldnn.is_available(),
                                  reason="this torch build has no oneDNN")


def ops_run(fn):
    with profile() as prof:
        out = fn()
    return out, {event.key for event in prof.key_averages()}


def conv_and_input(kind: str, channels_last: bool, size: int = 8):
    torch.manual_seed(0)
    conv = {"depthwise": nn.Conv2d(16, 16, 3, padding=1, groups=16), "pointwise": nn.Conv2d(16, 32, 1),
            "3x3": nn.Conv2d(16, 24, 3, padding=1)}[kind]
    x = torch.randn(2, 16, size, size)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return conv, x


@needs_onednn
@pytest.mark.parametrize("kind", ["depthwise", "pointwise"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_fused_equals_conv_then_gelu_in_the_same_layout(kind, channels_last):
    conv, x = conv_and_input(kind, channels_last, size=32)  # 2 x 32 x 32 rows: above the GEMM path's limit
    with torch.no_grad():
        expected = F.gelu(conv(x))
        out, ops = ops_run(lambda: run_conv(conv, x, gelu=True))
    assert "mkldnn::_convolution_pointwise" in ops
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert out.shape == expected.shape and out.stride() == expected.stride()


@pytest.mark.parametrize("kind", ["pointwise", "3x3"])
@pytest.mark.parametrize("gelu", [False, True])
def test_small_row_convs_run_as_one_gemm_with_the_convs_values_and_gradients(kind, gelu, monkeypatch):
    monkeypatch.setattr(fast_conv, "MIN_MATMUL_KERNEL_WEIGHT", 1)  # the real floor (16M weights) is for XL sizes
    conv, x = conv_and_input(kind, channels_last=True)
    x.requires_grad_(True)
    expected = F.gelu(conv(x)) if gelu else conv(x)
    out, ops = ops_run(lambda: run_conv(conv, x, gelu=gelu))
    assert "aten::linear" in ops and "aten::mkldnn_convolution" not in ops
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)
    grads = torch.autograd.grad(out.square().sum(), (x, conv.weight, conv.bias))
    expected_grads = torch.autograd.grad(expected.square().sum(), (x, conv.weight, conv.bias))
    for grad, reference in zip(grads, expected_grads):
        torch.testing.assert_close(grad, reference, rtol=1e-4, atol=1e-4)
    if gelu and _CONV_POINTWISE is not None:
        with torch.no_grad():
            fused, ops = ops_run(lambda: run_conv(conv, x, gelu=True))
        assert "mkldnn::_linear_pointwise" in ops
        torch.testing.assert_close(fused, expected.detach(), rtol=1e-5, atol=1e-5)


def test_the_gemm_path_keeps_to_few_rows_plain_strides_and_big_kxk_weights():
    def path(conv, x):
        _, ops = ops_run(lambda: run_conv(conv, x))
        return "gemm" if "aten::linear" in ops else "conv"

    conv, x = conv_and_input("pointwise", channels_last=True, size=23)  # 2 x 23 x 23 = 1058 rows > 1024
    assert path(conv, x) == "conv" and path(conv, x[:, :, :22, :22].contiguous(memory_format=torch.channels_last)) == "gemm"
    assert path(conv, x.contiguous()) == "conv"  # an NCHW input is no (rows, channels) matrix
    conv3, x3 = conv_and_input("3x3", channels_last=True)
    assert path(conv3, x3) == "conv"  # a small k x k weight: oneDNN's reorder is cheap
    strided = nn.Conv2d(16, 32, 1, stride=2).to(memory_format=torch.channels_last)
    assert path(strided, x3) == "conv"


@needs_onednn
def test_gradients_take_the_plain_ops_and_flow():
    conv, x = conv_and_input("depthwise", True)
    x.requires_grad_(True)
    out, ops = ops_run(lambda: run_conv(conv, x, gelu=True))
    assert "mkldnn::_convolution_pointwise" not in ops
    assert torch.equal(out, F.gelu(conv(x)))
    out.sum().backward()
    assert conv.weight.grad is not None and x.grad.abs().sum() > 0


@needs_onednn
def test_hooks_autocast_and_subclasses_take_the_plain_ops():
    conv, x = conv_and_input("pointwise", True, size=32)
    handle = conv.register_forward_hook(lambda module, args, output: output * 0)
    with torch.no_grad():
        assert run_conv(conv, x, gelu=True).abs().max() == 0  # the hook ran
    handle.remove()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert run_conv(conv, x, gelu=True).dtype == torch.bfloat16

    class Doubled(nn.Conv2d):
        def forward(self, x):
            return 2 * super().forward(x)

    doubled = Doubled(16, 32, 1)
    doubled.load_state_dict(conv.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(run_conv(doubled, x, gelu=True), F.gelu(2 * conv(x)))


@needs_onednn
def test_dico_inference_forward_equals_its_training_forward():
    model = create_model("dico-tiny", sample_size=8)
    with torch.no_grad():  # wake the zero-initialised gates and head so every branch reaches the output
        for parameter in model.parameters():
            if parameter.ndim >= 2 and parameter.abs().max() == 0:
                parameter.normal_(0, 0.05)
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.tensor([1, 2])
    training = model(x, t, y).sample
    with torch.no_grad():
        inference, ops = ops_run(lambda: model(x, t, y).sample)
    assert "mkldnn::_convolution_pointwise" in ops
    assert training.abs().max() > 0.1
    torch.testing.assert_close(inference, training.detach(), rtol=1e-4, atol=1e-5)


def test_a_padding_mode_other_than_zeros_keeps_the_module_call():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1, groups=16, padding_mode="reflect")
    x = torch.randn(2, 16, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(run_conv(conv, x, gelu=True), F.gelu(conv(x)))
