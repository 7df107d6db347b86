"""conv_gelu: oneDNN's fused conv + GELU on CPU inference, the plain ops wherever autograd, autocast, hooks or
tracing need them; DiCo's inference forward equals its training forward."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import profile

from convdiff.nn.fused_conv import _CONV_POINTWISE, conv_gelu
from convdiff.registry import create_model

needs_onednn = pytest.mark.skipif(_CONV_POINTWISE is None or not torch.backends.mkldnn.is_available(),
                                  reason="this torch build has no oneDNN")


def ops_run(fn):
    with profile() as prof:
        out = fn()
    return out, {event.key for event in prof.key_averages()}


def conv_and_input(kind: str, channels_last: bool):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1, groups=16) if kind == "depthwise" else nn.Conv2d(16, 32, 1)
    x = torch.randn(2, 16, 8, 8)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return conv, x


@needs_onednn
@pytest.mark.parametrize("kind", ["depthwise", "pointwise"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_fused_equals_conv_then_gelu_in_the_same_layout(kind, channels_last):
    conv, x = conv_and_input(kind, channels_last)
    with torch.no_grad():
        expected = F.gelu(conv(x))
        out, ops = ops_run(lambda: conv_gelu(conv, x))
    assert "mkldnn::_convolution_pointwise" in ops
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert out.shape == expected.shape and out.stride() == expected.stride()


@needs_onednn
def test_gradients_take_the_plain_ops_and_flow():
    conv, x = conv_and_input("depthwise", True)
    x.requires_grad_(True)
    out, ops = ops_run(lambda: conv_gelu(conv, x))
    assert "mkldnn::_convolution_pointwise" not in ops
    assert torch.equal(out, F.gelu(conv(x)))
    out.sum().backward()
    assert conv.weight.grad is not None and x.grad.abs().sum() > 0


@needs_onednn
def test_hooks_autocast_and_subclasses_take_the_plain_ops():
    conv, x = conv_and_input("pointwise", True)
    handle = conv.register_forward_hook(lambda module, args, output: output * 0)
    with torch.no_grad():
        assert conv_gelu(conv, x).abs().max() == 0  # the hook ran
    handle.remove()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv_gelu(conv, x).dtype == torch.bfloat16

    class Doubled(nn.Conv2d):
        def forward(self, x):
            return 2 * super().forward(x)

    doubled = Doubled(16, 32, 1)
    doubled.load_state_dict(conv.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(conv_gelu(doubled, x), F.gelu(2 * conv(x)))


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
