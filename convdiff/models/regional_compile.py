"""Regional compilation (diffusers' `compile_repeated_blocks`) for backbones whose repeated block changes shape.

diffusers compiles each module named in `_repeated_blocks` with `module.compile(...)` (PyTorch's regional
compilation recipe, docs.pytorch.org/tutorials/recipes/regional_compilation.html). That pays off when the blocks
are identical, as in a DiT. In a U-shaped model (DiC, DiCo, the DiffiT U-Net, the layered U-Net) the block
changes width and resolution from level to level, and all of them share one code object, the block class's
forward, on which Dynamo counts recompilations (`torch._dynamo.config.recompile_limit`): each new width is a
recompilation, and past the limit the block falls back to eager, or raises under `fullgraph=True`.

Here every distinct block shape gets a compiled region of its own (`torch.compile(..., dynamic=False,
isolate_recompiles=True)`, torch >= 2.13). A block's region is chosen at call time by what Dynamo specialises a
graph on: the block's structure (its modules, their hyper-parameters, its parameters' shapes, dtypes and whether
they train) and the call's (input shapes and dtypes, grad mode, autocast, train / eval). Blocks of the same shape
share one graph, each shape compiles once, and new timesteps, labels or steps reuse it. A new image size or batch
size is a new shape, compiled once more. torch before 2.13 cannot isolate a region's cache: there the regions share
the cache of one code object, so each shape after the first counts against Dynamo's recompile limit, as with
diffusers' own `compile_repeated_blocks`.
"""

import functools
import inspect

import torch
from torch.utils._pytree import tree_leaves

ISOLATED_REGIONS = "isolate_recompiles" in inspect.signature(torch.compile).parameters


def _run_block(block: torch.nn.Module, *args, **kwargs):
    # _call_impl, not __call__: __call__ would dispatch back to the region (the block's _compiled_call_impl)
    return block._call_impl(*args, **kwargs)


def _leaf_key(value):
    if torch.is_tensor(value):
        return ("tensor", tuple(value.shape), value.dtype, value.device, value.requires_grad)
    if value is None or isinstance(value, (bool, int, str)):
        return value  # Dynamo specialises on these values
    return type(value)


def _call_key(block: torch.nn.Module, structure: str, args, kwargs) -> tuple:
    """What a graph of `block` called with (args, kwargs) now is specialised on. A block whose forward reads state
    that is not among its inputs (an inflated block's grid, inflation.py) names it in `compile_key()`."""
    parameters = tuple((p.dtype, p.requires_grad) for p in block.parameters())
    autocast = tuple((device, torch.get_autocast_dtype(device)) for device in ("cpu", "cuda")
                     if torch.is_autocast_enabled(device))
    state = block.compile_key() if hasattr(block, "compile_key") else ()
    return (structure, parameters, block.training, torch.is_grad_enabled(), autocast, state,
            tuple(_leaf_key(leaf) for leaf in tree_leaves((args, sorted(kwargs.items())))))


def _structure(block: torch.nn.Module) -> str:
    """The block's modules with their plain attributes (hyper-parameters, which Dynamo guards on as constants)
    and its parameter and buffer shapes."""
    plain = (bool, int, float, str, tuple, type(None))
    modules = [(name, type(m).__qualname__,
                sorted((k, v) for k, v in vars(m).items() if not k.startswith("_") and k != "training"
                       and isinstance(v, plain)))
               for name, m in block.named_modules()]
    shapes = [(name, tuple(t.shape)) for name, t in (*block.named_parameters(), *block.named_buffers())]
    return repr((modules, shapes))


class _Regions:
    """The compiled regions of one model, one per block shape, created on first use."""

    def __init__(self, compile_args, compile_kwargs):
        self.compile_args = compile_args
        self.compile_kwargs = dict(compile_kwargs)
        # A region serves one shape. Without dynamic=False, Dynamo's automatic dynamic shapes, which it tracks per
        # code object across regions, would compile every region after the first for symbolic sizes: slower
        # graphs, and inductor fails on some (the layered U-Net's training graphs, torch 2.13).
        self.compile_kwargs.setdefault("dynamic", False)
        if ISOLATED_REGIONS:
            self.compile_kwargs["isolate_recompiles"] = True
        self.regions = {}

    def __call__(self, block, structure, *args, **kwargs):
        key = _call_key(block, structure, args, kwargs)
        region = self.regions.get(key)
        if region is None:
            region = self.regions[key] = torch.compile(_run_block, *self.compile_args, **self.compile_kwargs)
        return region(block, *args, **kwargs)


class RegionalCompileMixin:
    """`compile_repeated_blocks(*args, **kwargs)`: the blocks named in `_repeated_blocks` compiled with
    `torch.compile(*args, **kwargs)`, one region per distinct block shape. Mix in before ModelMixin."""

    def compile_repeated_blocks(self, *args, **kwargs):
        names = set(getattr(self, "_repeated_blocks", None) or ())
        if not names:
            raise ValueError(f"{type(self).__name__} names no repeated block (_repeated_blocks is empty), so there is "
                             "nothing to compile regionally; compile the whole model with model.compile().")
        blocks = [m for m in self.modules() if type(m).__name__ in names]
        if not blocks:
            raise ValueError(f"{type(self).__name__} contains none of its _repeated_blocks {sorted(names)}.")
        regions = _Regions(args, kwargs)
        inner = {id(m) for block in blocks for m in block.modules() if m is not block}
        for block in blocks:
            if id(block) not in inner:  # a repeated block inside another one is compiled as part of it
                block._compiled_call_impl = functools.partial(regions, block, _structure(block))
        self._compiled_regions = regions
        return regions

    def compiled_region_count(self) -> int:
        """How many regions `compile_repeated_blocks` has compiled so far (one per block shape met)."""
        regions = getattr(self, "_compiled_regions", None)
        return 0 if regions is None else len(regions.regions)
