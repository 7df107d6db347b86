"""Swap every self-attention (`attn1`) of a diffusers model for a ΔConvBlock or a linear-attention student.

Module replacement (as LinFusion, arXiv 2409.02097, does it), not an attention processor: `set_attn_processor` or
`enable_xformers_memory_efficient_attention()` later cannot drop the trained student. Works on any model
whose transformer blocks hold a diffusers self-attention `Attention` as `attn1` (UNet2DConditionModel for
SD1.5 / SDXL, DiTTransformer2DModel, PixArtTransformer2DModel, and wrappers around them), and on convdiff's
DiffiT models, whose DiffiTBlocks hold a time-dependent self-attention (TMSA) as `attn`. The students
ignore DiffiT's time token (time still enters through everything else) and, in windowed DiffiT, run on
each window as the attention did.

The ΔConvBlock needs the feature map's height and width, which token-space blocks do not get. A forward
pre-hook on the nearest enclosing model that sees the NCHW input (a UNet's Transformer2DModel, a DiT's
top level) writes (H / patch, W / patch) onto the students below it.

The conversion is a function applied to a built model; it records itself in the model config (`convfusion`),
so `load_converted` rebuilds it from a `save_pretrained` folder, convdiff's own models rebuild it whenever they
are built from such a config (`ConversionRecordMixin`), and `save_adapter` / `load_adapter` carry just the
student weights.
"""

import re

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from ..nn.linear_attention import NormalizedLinearAttention
from ..nn.pyramid_conv import DeltaConvBlock
from ..nn.tmsa import TimeDependentSelfAttention

STUDENTS = ("deltaconv", "linear")
# Per-stage kernel sizes of the released ΔConvFusion code (arXiv 2504.21292): lists run over the down / up
# blocks that have attention.
KERNEL_PRESETS = {
    "sd15": ({"down": [7, 9, 5], "mid": 3, "up": [5, 9, 11]}, "scaled_simple"),
    "sdxl": ({"down": [9, 7], "mid": 9, "up": [9, 13]}, "scaled_simple"),
    "pixart": (13, "sigmoid"),
    "dit": (13, "sigmoid"),
    "diffit-unet": (3, "scaled_simple"),  # ours: DiffiT's U-Net attends in 4x4 / 8x8 windows
}
_STAGE = re.compile(r"(?:^|\.)(down_blocks|up_blocks)\.(\d+)\.|(?:^|\.)(mid_block)\.")


class DeltaConvSelfAttention(DeltaConvBlock):
    """A ΔConvBlock that sits where `attn1` was: token input, attention's call signature."""

    spatial_size = None  # (H, W) of the token grid, set by the pre-hook of the enclosing model

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        height, width = _grid(self.spatial_size, hidden_states.shape[1])
        return self.forward_tokens(hidden_states, height, width)


class LinearSelfAttention(NormalizedLinearAttention):
    """LinFusion-style normalized linear attention with attention's call signature."""

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        return super().forward(hidden_states)


STUDENT_TYPES = (DeltaConvSelfAttention, LinearSelfAttention)


def _grid(size, tokens: int):
    """The recorded (H, W) when it covers the tokens, else a square (DiffiT windows, or a lone block)."""
    if size is not None and size[0] * size[1] == tokens:
        return size
    return _square_grid(tokens)


def _square_grid(tokens: int):
    side = int(round(tokens**0.5))
    if side * side != tokens:
        raise ValueError(f"The ΔConvBlock got {tokens} tokens without the grid size, and they are not a square: "
                         "call the converted model itself (its pre-hooks record H and W), not a lone block.")
    return side, side


def is_self_attention(module) -> bool:
    return (isinstance(module, Attention) and not module.is_cross_attention) or isinstance(module, TimeDependentSelfAttention)


def attention_attribute(block) -> str | None:
    """The name under which a transformer block holds its self-attention: `attn1` (diffusers), `attn` (DiffiT's
    TMSA). Direct children only: a wrapper that forwards attribute reads to its block (an inflated video block)
    is not a second site."""
    attn1, attn = block._modules.get("attn1"), block._modules.get("attn")
    if is_self_attention(attn1) or isinstance(attn1, STUDENT_TYPES):
        return "attn1"
    if isinstance(attn, (TimeDependentSelfAttention, *STUDENT_TYPES)):
        return "attn"
    return None


def self_attention_sites(model: nn.Module):
    """[(block name, block)] of every block holding a self-attention or an already converted student."""
    return [(name, block) for name, block in model.named_modules() if attention_attribute(block)]


def attention_shape(attention) -> tuple[int, int]:
    """(channels, heads) of a diffusers Attention or a TMSA."""
    if hasattr(attention, "to_q"):
        return attention.to_q.in_features, attention.heads
    return attention.dim, attention.num_heads


def _stage_of(name: str):
    match = _STAGE.search(name + ".")
    if match is None:
        return None
    return ("mid", 0) if match.group(3) else ("down" if match.group(1) == "down_blocks" else "up", int(match.group(2)))


def resolve_kernel_sizes(names, kernel_sizes) -> list[int]:
    """One kernel size per site name, from an int, a per-site list, or {"down": [...], "mid": k, "up": [...]}
    whose lists run over the down / up blocks that have attention, in index order."""
    if isinstance(kernel_sizes, int):
        return [kernel_sizes] * len(names)
    if isinstance(kernel_sizes, (list, tuple)):
        if len(kernel_sizes) != len(names):
            raise ValueError(f"kernel_sizes has {len(kernel_sizes)} entries but the model has {len(names)} "
                             "self-attention layers: give one per layer, one int, or a per-stage dict.")
        return [int(k) for k in kernel_sizes]
    if not isinstance(kernel_sizes, dict):
        raise ValueError(f"kernel_sizes must be an int, a list, a dict or a preset name, got {kernel_sizes!r}.")
    stages = [_stage_of(n) for n in names]
    if any(s is None for s in stages):
        raise ValueError("Per-stage kernel sizes ({'down', 'mid', 'up'}) need a UNet (down_blocks / mid_block / "
                         "up_blocks); this model's self-attention is not in such stages: give one int or a list.")
    found = {part: sorted({i for p, i in stages if p == part}) for part in ("down", "mid", "up")}
    unknown = set(kernel_sizes) - set(found)
    if unknown:
        raise ValueError(f"Unknown kernel_sizes keys {sorted(unknown)}: use 'down', 'mid' and 'up'.")
    table = {}
    for part, blocks in found.items():
        given = kernel_sizes.get(part)
        given = [] if given is None else [given] if isinstance(given, int) else list(given)
        if len(given) != len(blocks):
            where = f"{part}_blocks {blocks}" if part != "mid" else "mid_block"
            raise ValueError(f"kernel_sizes[{part!r}] has {len(given)} entries but the model has self-attention in "
                             f"{len(blocks)} {part} stage(s) ({where if blocks else 'none'}): the kernel sizes do not "
                             "fit the stages; give one size per stage that has attention.")
        table.update({(part, b): int(k) for b, k in zip(blocks, given)})
    return [table[s] for s in stages]


def _default_preset(model) -> str:
    name = type(model).__name__
    if "PixArt" in name:
        return "pixart"
    if "DiffiTUNet" in name:
        return "diffit-unet"
    if "DiT" in name or "DiffiT" in name:
        return "dit"
    stages = {_stage_of(n) for n, _ in self_attention_sites(model)}
    downs = len({i for p, i in stages if p == "down"})
    return {3: "sd15", 2: "sdxl"}.get(downs, "dit")


def convert_self_attention(model: nn.Module, kernel_sizes=None, student: str = "deltaconv", scales=(1.0, 0.5),
                           gate: str | None = None, freeze: bool = True):
    """Replace every `attn1` self-attention of `model` in place and return the model.

    kernel_sizes: a preset ("sd15", "sdxl", "pixart", "dit", "diffit-unet"), an int, a list (one per layer) or
    {"down": [...], "mid": k, "up": [...]}; None picks the preset from the architecture.
    student: "deltaconv" (ΔConvBlock) or "linear" (LinFusion-style, initialised from the attention weights).
    freeze: everything except the new students stops requiring grad.
    """
    if student not in STUDENTS:
        raise ValueError(f"student must be one of {STUDENTS}, got {student!r}.")
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get") and config.get("base_class") and config.get("base_config") is not None:
        # an inflated video / 4D model rebuilds its 2D backbone from base_config, which would not know the swap
        raise ValueError(f"{type(model).__name__} is an inflated model: convert its 2D model first, then inflate it "
                         "(convert_self_attention(image_model); inflate(image_model, ...)), so that the inflated model "
                         "records the conversion in its base config and reloads with the students.")
    sites = [(n, b) for n, b in self_attention_sites(model) if is_self_attention(getattr(b, attention_attribute(b)))]
    if not sites:
        converted = any(isinstance(m, STUDENT_TYPES) for m in model.modules())
        raise ValueError(f"{type(model).__name__} has no self-attention (attn1, or DiffiT's attn) to convert"
                         + (": it is already converted." if converted else
                            "; ΔConvFusion needs transformer blocks with a diffusers self-attention `attn1`."))
    preset = kernel_sizes if isinstance(kernel_sizes, str) or kernel_sizes is None else None
    if preset is not None or kernel_sizes is None:
        preset = preset or _default_preset(model)
        if preset not in KERNEL_PRESETS:
            raise ValueError(f"Unknown kernel-size preset {preset!r}; presets: {sorted(KERNEL_PRESETS)}.")
        kernel_sizes, preset_gate = KERNEL_PRESETS[preset]
        gate = gate or preset_gate
    gate = gate or "scaled_simple"
    sizes = resolve_kernel_sizes([n for n, _ in sites], kernel_sizes)
    if freeze:
        model.requires_grad_(False)
    for (_, block), size in zip(sites, sizes):
        name = attention_attribute(block)
        attention = getattr(block, name)
        weight = next(attention.parameters())
        with torch.device(weight.device):  # built in place: no real init work for meta-device models
            if student == "deltaconv":
                new = DeltaConvSelfAttention(attention_shape(attention)[0], size, scales=scales, gate=gate)
            else:
                new = LinearSelfAttention.from_attention(attention)
        setattr(block, name, new.to(dtype=weight.dtype).requires_grad_(True))
    _install_size_hooks(model)
    if hasattr(model, "register_to_config"):
        model.register_to_config(convfusion={"student": student, "kernel_sizes": kernel_sizes,
                                             "scales": [float(s) for s in scales], "gate": gate})
    return model


class ConversionRecordMixin:
    """Mix into a ModelMixin before it, for models whose attention `convert_self_attention` may swap (DiffiT,
    the DiffiT U-Net, the label-conditioned UNet): built from a config that records a conversion (`convfusion`,
    written by the conversion itself), the model is converted again right after construction, so everything
    that rebuilds a model from its config (from_pretrained, inflation, a ControlNet copy) gets the students and
    their weights load. The constructor knows nothing of it. Nothing is frozen: what trains is the training
    task's choice."""

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        config = dict(config or {})
        record = config.pop("convfusion", None)
        built = super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)
        if record:
            convert_self_attention(built[0] if isinstance(built, tuple) else built, **{**record, "freeze": False})
        return built


def conversion_of(model: nn.Module) -> dict | None:
    """The recorded conversion ({"student", "kernel_sizes", "scales", "gate"}), or None."""
    config = getattr(model, "config", None)
    return dict(config["convfusion"]) if config is not None and config.get("convfusion") else None


def student_modules(model: nn.Module) -> dict:
    return {name: m for name, m in model.named_modules() if isinstance(m, STUDENT_TYPES)}


def student_state_dict(model: nn.Module) -> dict:
    """The students' weights only, named as in the full model."""
    prefixes = tuple(f"{name}." for name in student_modules(model))
    return {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}


# --------------------------------------------------------------------------------------------- grid size

def _record_spatial_size(module, args, kwargs):
    """Forward pre-hook: (H, W) of the incoming NCHW map, divided by the patch size, onto the students below."""
    x = args[0] if args else kwargs.get("hidden_states")
    if x is None or x.ndim != 4:
        return
    patch = (module.config.get("patch_size") or 1) if hasattr(module, "config") else 1
    size = (x.shape[-2] // patch, x.shape[-1] // patch)
    for child in module.modules():
        if isinstance(child, DeltaConvSelfAttention):
            child.spatial_size = size


def _grid_owner(model: nn.Module, name: str) -> nn.Module:
    """Nearest enclosing module that takes the NCHW map: one whose config has a patch_size entry
    (Transformer2DModel with None, DiT / PixArt with their patch), else the model itself."""
    parts = name.split(".")
    for depth in range(len(parts), -1, -1):
        owner = model.get_submodule(".".join(parts[:depth])) if depth else model
        config = getattr(owner, "config", None)
        if config is not None and hasattr(config, "get") and "patch_size" in config:
            return owner
    return model


def _install_size_hooks(model: nn.Module) -> None:
    for name in student_modules(model):
        owner = _grid_owner(model, name)
        if not any(hook is _record_spatial_size for hook in owner._forward_pre_hooks.values()):
            owner.register_forward_pre_hook(_record_spatial_size, with_kwargs=True)


@torch.no_grad()
def copy_shared_weights(source: nn.Module, target: nn.Module) -> None:
    """Copy every weight the two models share by name (the teacher's weights into a converted student)."""
    target_state = target.state_dict()
    shared = {k: v for k, v in source.state_dict().items() if k in target_state and target_state[k].shape == v.shape}
    target.load_state_dict(shared, strict=False)
