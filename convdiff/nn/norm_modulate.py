"""LayerNorm over channels and adaLN modulation in one pass: `norm_modulate(norm, x, shift, scale)` is
`modulate(norm(x), shift, scale)` (DiCo's block runs it twice per block).

On the CPU in fp32, with x channels-last, it runs a small native kernel (csrc/norm_modulate.cpp) that reads the
map once and writes it once, forward and backward; ATen runs the LayerNorm and the modulation as separate
passes, and these memory-bound passes are where the conv models lose time to a transformer per MAC
(docs/benchmarks.md, the efficiency-gap plots). The kernel is compiled once at install (`scripts/setup.sh`
runs `convdiff.nn.norm_modulate.build()`, about 10 s) into torch's extensions cache, keyed by the
source, the compiler flags and the torch version; nothing compiles at run time. Without the built kernel (no compiler at
install, another torch), under torch.compile tracing, autocast, another dtype or device, an affine LayerNorm,
with `CONVDIFF_NATIVE=0`, or inside `aten_ops()`, the two ATen ops run instead. The kernel's rounding differs from ATen's
LayerNorm by about 1e-6 relative (its own reduction order); tests/test_norm_modulate.py holds it to ATen.
"""

import hashlib
import logging
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from .modulation import modulate

SOURCE = Path(__file__).with_name("csrc") / "norm_modulate.cpp"
logger = logging.getLogger(__name__)
_state = {"loaded": None}  # None: not looked for yet


def _compile_flags() -> list:
    flags = ["-O3"]
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):  # ATen's 8-wide AVX2 vectors
        flags += ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return flags


def _library() -> tuple[str, Path]:
    """The built library's name and path: a new source, flags or torch version builds (and looks for) a new one,
    so a cache shared by two machines never loads a library built for the other's instructions."""
    from torch.utils import cpp_extension

    key = SOURCE.read_bytes() + " ".join(_compile_flags()).encode() + torch.__version__.encode()
    name = f"convdiff_norm_modulate_{hashlib.sha256(key).hexdigest()[:12]}"
    return name, Path(cpp_extension._get_build_directory(name, False)) / f"{name}.so"


def build(verbose: bool = False) -> Path:
    """Compile the kernel into torch's extensions cache and load it; returns the library's path."""
    from torch.utils import cpp_extension

    name, path = _library()
    cpp_extension.load(name, [str(SOURCE)], extra_cflags=_compile_flags(), build_directory=str(path.parent),
                       is_python_module=False, verbose=verbose)
    _state["loaded"] = True
    return path


def native_available() -> bool:
    """Whether the built kernel is loaded (looked for once, in torch's extensions cache; never compiled here)."""
    if _state["loaded"] is None:
        _state["loaded"] = False
        if os.environ.get("CONVDIFF_NATIVE", "1") != "0":
            path = _library()[1]
            if path.exists():
                try:
                    torch.ops.load_library(str(path))
                    _state["loaded"] = True
                except OSError as error:  # a library built for another machine or torch
                    logger.warning("convdiff's native norm_modulate kernel did not load (%s); using ATen ops. "
                                   "Rebuild it: python -c 'from convdiff.nn.norm_modulate import build; build()'.", error)
    return _state["loaded"]


@contextmanager
def aten_ops():
    """Run ATen's LayerNorm and modulation instead of the kernel while this lasts (to compare the two)."""
    saved = native_available()
    _state["loaded"] = False
    try:
        yield
    finally:
        _state["loaded"] = saved


def _use_native(norm: torch.nn.LayerNorm, x: torch.Tensor, shift: torch.Tensor) -> bool:
    if x.device.type != "cpu" or x.dtype != torch.float32 or shift.dtype != torch.float32 or x.dim() != 4:
        return False
    if norm.weight is not None or norm.bias is not None or torch.compiler.is_compiling():
        return False
    if torch.is_autocast_enabled("cpu") or not x.is_contiguous(memory_format=torch.channels_last):
        return False
    return native_available()


class _NormModulate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, shift, scale, eps):
        out, mean, rstd = torch.ops.convdiff.norm_modulate(rows, shift, scale, eps)
        ctx.save_for_backward(rows, mean, rstd, scale)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        rows, mean, rstd, scale = ctx.saved_tensors
        grad_rows, grad_shift, grad_scale = torch.ops.convdiff.norm_modulate_backward(
            grad_out.contiguous(), rows, mean, rstd, scale)
        return grad_rows, grad_shift, grad_scale, None


def norm_modulate(norm: torch.nn.LayerNorm, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """modulate(norm(x), shift, scale) for an (N, C, H, W) map x, a LayerNorm over its channels (LayerNorm2d)
    and (N, C, 1, 1) shift and scale; one pass on the CPU where the native kernel applies (module docstring)."""
    if not _use_native(norm, x, shift):
        return modulate(norm(x), shift, scale)
    n, c = x.shape[:2]
    rows = x.permute(0, 2, 3, 1)  # (N, H, W, C): a channels-last map's own memory, no copy
    out = _NormModulate.apply(rows, shift.reshape(n, c).contiguous(), scale.reshape(n, c).contiguous(), norm.eps)
    return out.permute(0, 3, 1, 2)
