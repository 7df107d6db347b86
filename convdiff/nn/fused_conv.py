"""Conv2d followed by GELU as one oneDNN call on CPU inference, the two ops everywhere else.

The GELU is applied to each output tile while it is still in cache instead of in a second pass over the whole
map. With the single-pass modulations of nn/modulation.py it took DiCo-S's forward from 1.21x to 1.36x
DiT-S/2's on the CPU (docs/benchmarks.md, "Reading the 14:33 run"). oneDNN's erf GELU rounds differently from
ATen's by about 1e-6 relative.

The fused op has no autograd and is not traceable, so it runs only where nothing needs it to be: a CPU fp32
input with gradients off (or nothing requiring them), no autocast, no torch.compile tracing, and a plain
`nn.Conv2d` whose forward nobody has wrapped or hooked (LoRA, layerwise casting and offloading hooks take the
plain path and keep working).
"""

import torch
import torch.nn.functional as F
from torch import nn


def _fused_op():
    try:
        return torch.ops.mkldnn._convolution_pointwise
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return None


_CONV_POINTWISE = _fused_op()


def _fusable(conv: nn.Module, x: torch.Tensor) -> bool:
    if torch.compiler.is_compiling():  # first, so that dynamo traces none of the checks below
        return False
    if _CONV_POINTWISE is None or type(conv) is not nn.Conv2d or not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    if conv._forward_hooks or conv._forward_pre_hooks or "forward" in conv.__dict__:
        return False
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.ndim != 4 or conv.weight.dtype != torch.float32:
        return False
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad):
        return False
    return not torch.is_autocast_enabled("cpu")


def conv_gelu(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """F.gelu(conv(x)) (exact erf GELU), fused into the convolution where `_fusable` allows."""
    if not _fusable(conv, x):
        return F.gelu(conv(x))
    return _CONV_POINTWISE(x, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation),
                           conv.groups, "gelu", [], "none")
