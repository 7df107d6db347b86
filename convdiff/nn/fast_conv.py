"""How a conv backbone's convolutions run fastest on the CPU, with the plain module call everywhere else.

`run_conv(conv, x, gelu=False)` is `conv(x)` (then the exact erf GELU) computed one of three ways:

- As one GEMM on the channels-last view, where oneDNN's own call is slow: few output rows (N*H*W <= 1024) and a
  1x1 kernel, or a k x k weight of >= 16M elements. oneDNN reorders the weight into its blocked layout at every
  eager call; with few rows that reorder is a large share of the work. A channels-last 1x1 kernel already is the
  (out, in) matrix, and a channels-last k x k kernel the (out, kh*kw*in) matrix of the (kh, kw, c) columns built
  below, so no weight is copied. F.linear keeps autograd, so training takes this path too. The choice depends on
  the batch size, so a sample's last bits can differ between batch sizes (as oneDNN's own choices can).
- With the GELU fused into the oneDNN convolution (or GEMM), applied to each output tile while it is still in
  cache instead of in a second pass over the map. These fused ops have no autograd and are not traceable, so
  they run only on CPU fp32 inference: gradients off (or nothing requiring them), no autocast. oneDNN's erf GELU
  rounds differently from ATen's by about 1e-6 relative.
- Otherwise the module call itself.

Under torch.compile tracing, and for anything but a plain `nn.Conv2d` whose forward nobody has wrapped or
hooked (LoRA, layerwise casting, offloading hooks), the module call runs. Measured side by side with
`convdiff bench-paths --paths default onednn` (docs/benchmarks.md, the bench-paths sections).
"""

import torch
import torch.nn.functional as F
from torch import nn

MAX_MATMUL_ROWS = 1024
MIN_MATMUL_KERNEL_WEIGHT = 1 << 24


def _onednn_op(name: str):
    try:
        return getattr(torch.ops.mkldnn, name)
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return None


_CONV_POINTWISE = _onednn_op("_convolution_pointwise")
_LINEAR_POINTWISE = _onednn_op("_linear_pointwise")


def _plain_module(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and not conv._forward_hooks and not conv._forward_pre_hooks
            and "forward" not in conv.__dict__)


def _fusable(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether the oneDNN fused ops may run: CPU fp32 inference with nothing needing autograd or autocast."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or conv.weight.dtype != torch.float32:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad):
        return False
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    return not torch.is_autocast_enabled("cpu")


def _as_matmul(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    kh, kw = conv.kernel_size
    if x.shape[0] * x.shape[2] * x.shape[3] > MAX_MATMUL_ROWS or x.device.type != "cpu":  # most calls stop here
        return False
    if (kh, kw) != (1, 1) and conv.weight.numel() < MIN_MATMUL_KERNEL_WEIGHT:
        return False
    if conv.groups != 1 or conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        return False
    if kh % 2 == 0 or kw % 2 == 0 or conv.padding != (kh // 2, kw // 2):
        return False
    return (x.is_contiguous(memory_format=torch.channels_last)
            and conv.weight.is_contiguous(memory_format=torch.channels_last))


def _matmul_conv(conv: nn.Conv2d, x: torch.Tensor, gelu: bool) -> torch.Tensor:
    n, _, h, w = x.shape
    kh, kw = conv.kernel_size
    rows = x.permute(0, 2, 3, 1)  # (N, H, W, C), contiguous for a channels-last x
    if (kh, kw) != (1, 1):
        padded = F.pad(rows, (0, 0, kw // 2, kw // 2, kh // 2, kh // 2))
        rows = torch.cat([padded[:, i:i + h, j:j + w] for i in range(kh) for j in range(kw)], dim=-1)
    weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1)  # a view of a channels-last kernel
    if gelu and _LINEAR_POINTWISE is not None and _fusable(conv, x):
        out = _LINEAR_POINTWISE(rows, weight, conv.bias, "gelu", [], "none")
    else:
        out = F.linear(rows, weight, conv.bias)
        out = F.gelu(out) if gelu else out
    return out.permute(0, 3, 1, 2)  # channels-last NCHW, as the conv would return it


def run_conv(conv: nn.Module, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """`conv(x)`, or `F.gelu(conv(x))` with `gelu=True`, on the fastest path the rules above allow."""
    # is_compiling first, so that dynamo traces none of the checks
    plain = torch.compiler.is_compiling() or x.ndim != 4 or not _plain_module(conv)
    if not plain and _as_matmul(conv, x):
        return _matmul_conv(conv, x, gelu)
    if (not plain and gelu and _CONV_POINTWISE is not None and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and _fusable(conv, x)):
        return _CONV_POINTWISE(x, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation),
                               conv.groups, "gelu", [], "none")
    return F.gelu(conv(x)) if gelu else conv(x)
