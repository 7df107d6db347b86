"""The AdamW every convdiff training run and training benchmark steps with.

torch's AdamW defaults to a loop over the parameters on the CPU, a dozen elementwise passes per tensor; its fused
kernel updates each tensor in one pass (CPU since torch 2.4, and CUDA). For DiCo-S's 33M parameters one step took
150-240 ms on the loop and 26-40 ms fused (2-core AMD EPYC, one thread, docs/benchmarks.md): at batch 1 on a CPU
the loop is a third of a training step. The choice is made on the parameters the optimizer is built with: fused
where every one is a plain floating-point tensor on the CPU or a CUDA device, else (tensor subclasses, other
devices) the default implementation. The training loop builds it before `accelerator.prepare`, so under FSDP the
fused kernel then updates the sharded parameters (tests/test_engines.py trains and resumes that way on CPU). Its
rounding differs from the loop's in the last bits, as torch documents.
"""

import torch

FUSED_DEVICES = ("cpu", "cuda")
FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def fused_applies(parameters) -> bool:
    """Whether torch's fused AdamW kernel can update all of `parameters`."""
    return all(type(p) is torch.nn.Parameter and type(p.data) is torch.Tensor and p.device.type in FUSED_DEVICES
               and p.dtype in FUSED_DTYPES for p in parameters)


def adamw(parameters, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.01, eps: float = 1e-8):
    """torch.optim.AdamW over `parameters`, fused where the kernel applies (module docstring)."""
    parameters = list(parameters)
    return torch.optim.AdamW(parameters, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps,
                             fused=fused_applies(parameters) or None)
