"""Inflation surgery: where a 2D backbone gets video layers, and the rewrite that inserts them in place.

`plan_inflation(base)` finds, by one small forward pass, every repeated block of the backbone (the class
names in its `_repeated_blocks`; for diffusers' UNet2DModel and DiTTransformer2DModel baselines, their
ResnetBlock2D / BasicTransformerBlock) and every timestep embedder, with their widths. `inflate_modules(base,
plan, options, context)` then rewrites the backbone, without touching its code:
- every planned block becomes a `SpatioTemporalBlock`: the block, then temporal layers over the frames of each
  pixel, then (4D) view layers, or the sync layer of a two-stream model;
- with temporal="p3d", every 3x3 conv inside those blocks becomes a `P3DConv` (1x3x3 spatial + 3x1x1
  temporal, placements A / B / C, cycled A -> B -> C with "mixed" as in P3D ResNet); a block with no 3x3
  conv gets a residual temporal conv after it instead;
- every timestep embedder gets a zero-initialised camera / timestamp / text embedding added to its output.
Each new layer starts as the identity. `InflationOptions` is the design of the new layers; the inflated
models that own the rewritten backbone are in video.py, and the grid sizes reach the inserted layers through
their shared `GridContext`.
"""

from dataclasses import dataclass

import torch
from diffusers import ModelMixin
from diffusers.models.embeddings import TimestepEmbedding as DiffusersTimestepEmbedding
from einops import rearrange
from torch import nn

from ..nn.camera import FrameConditionEmbedding
from ..nn.embeddings import TimestepEmbedding
from ..nn.layouts import maps_to_tokens, tokens_to_maps
from ..nn.pyramid_conv import DeltaConvBlock
from ..nn.spatiotemporal import (
    P3D_VARIANTS,
    GridContext,
    P3DConv,
    SyncLayer,
    TemporalAttention,
    TokenTemporalConv,
    ViewAttention,
    along_time,
    attention_heads,
)
from ..nn.view_time_attention import FusedViewTimeAttention
from .class_paths import import_class

TEMPORAL_KINDS = ("p3d", "attention")
VIEW_KINDS = ("attention", "two-stream", "fused")
SYNC_EMBED_DIM = 128
# diffusers' baselines do not list their repeated blocks (_repeated_blocks is empty): where to inflate them
DIFFUSERS_BLOCKS = {"UNet2DModel": ("ResnetBlock2D",), "DiTTransformer2DModel": ("BasicTransformerBlock",)}


def declared_blocks(model: nn.Module, *attributes: str) -> tuple:
    """The block class names of the first of `attributes` the model sets (e.g. "_repeated_blocks"), else the
    repeated block of diffusers' own models, which name none."""
    for attribute in attributes:
        names = getattr(model, attribute, None)
        if names:
            return tuple(names)
    return DIFFUSERS_BLOCKS.get(type(model).__name__, ())


@dataclass(frozen=True)
class InflationOptions:
    """The design of the inserted layers; the inflated model's config keeps the same names.

    temporal: "p3d", "attention" or both; view: None for a video model, else the 4D design "attention"
    (sequential temporal -> view attention, view_scope "frame" or "pixel"), "two-stream" (sync "soft" or
    "hard") or "fused"; p3d_variant: "A", "B", "C" or "mixed"; camera_dim: size of a camera vector (None: no
    cameras); time_conditioning: embed frame times; text_dim: size of a clip's pooled text embedding (None: no
    text), added to the timestep embedding and, with temporal_text, modulating the temporal attention; max_frames / max_views: position-embedding lengths.
    """

    temporal: tuple = ("attention",)
    view: str | None = None
    view_scope: str = "frame"
    sync: str = "soft"
    p3d_variant: str = "mixed"
    camera_dim: int | None = None
    time_conditioning: bool = True
    text_dim: int | None = None
    temporal_text: bool = False
    max_frames: int = 16
    max_views: int | None = None
    attention_head_dim: int = 64

    def __post_init__(self):
        if self.view is not None and self.view not in VIEW_KINDS:
            raise ValueError(f"view must be one of {', '.join(VIEW_KINDS)}, got {self.view!r}.")
        object.__setattr__(self, "temporal", tuple(normalize_temporal(self.temporal)))
        if not self.temporal and self.view is None:
            raise ValueError("a video model needs temporal layers: temporal='p3d', 'attention' or both.")
        if not self.temporal and self.view == "two-stream":
            raise ValueError("a two-stream model runs its temporal layers over views and over time: "
                             "give temporal='attention' and/or 'p3d'.")
        if self.temporal_text and not (self.text_dim and "attention" in self.temporal and self.view != "fused"):
            raise ValueError("temporal_text conditions temporal attention on the text: it needs text_dim and "
                             "temporal='attention' (not the fused view-time attention).")
        if self.p3d_variant not in (*P3D_VARIANTS, "mixed"):
            raise ValueError(f"p3d_variant must be 'A', 'B', 'C' or 'mixed', got {self.p3d_variant!r}.")

    @property
    def two_stream(self) -> bool:
        return self.view == "two-stream"


# --- the modules inflation inserts --------------------------------------------------------------------------------

class SpatioTemporalBlock(nn.Module):
    """A 2D block followed by residual layers that mix its output across frames and views."""

    def __init__(self, block: nn.Module, context: GridContext, temporal=(), view=(), sync: SyncLayer | None = None):
        super().__init__()
        self.block = block
        self.temporal = nn.ModuleList(temporal)
        self.view = nn.ModuleList(view)
        self.sync = sync
        self.context = context
        self.runs_on_windows = getattr(type(block), "runs_on_windows", False)  # declared by the block class

    @property
    def norm1(self) -> nn.Module:
        """The one attribute a backbone reads from its blocks: diffusers' DiTTransformer2DModel takes its
        AdaLN-Zero conditioning from transformer_blocks[0].norm1, which is the wrapped block's."""
        return self.block.norm1

    def forward(self, x, *args, **kwargs):
        out = self.block(x, *args, **kwargs)
        if isinstance(out, tuple):
            return (self.mix(out[0]),) + out[1:]
        return self.mix(out)

    def compile_key(self) -> tuple:
        """The grid this block mixes over (regional_compile.py): it is read from the context, not an input."""
        return self.context.compile_key()

    def mix(self, hidden: torch.Tensor) -> torch.Tensor:
        is_map = hidden.dim() == 4  # (N, C, H, W) maps or (N, S, C) tokens
        tokens = maps_to_tokens(hidden) if is_map else hidden
        frames, windows = self.context.frames_in_batch(), 1
        if frames and self.runs_on_windows:
            # a windowed block (DiffiT) ran on (frames * windows, window tokens, C): gather each frame's windows
            if tokens.shape[0] % frames:
                raise ValueError(f"a windowed block returned {tokens.shape[0]} rows for {frames} frames; expected "
                                 "a whole number of windows per frame.")
            windows = tokens.shape[0] // frames
            tokens = rearrange(tokens, "(n k) s c -> n (k s) c", k=windows)
        for layer in self.temporal:
            tokens = along_time(tokens, self.context, layer)
        if len(self.view):
            grid = self.context.grid_for(tokens.shape[0])
            for layer in self.view:
                tokens = layer(tokens, grid)
        if self.sync is not None and self.context.two_stream:
            view_stream, time_stream = tokens.chunk(2)
            tokens = torch.cat(self.sync(view_stream, time_stream, self.context.sync_condition))
        if windows > 1:
            tokens = rearrange(tokens, "n (k s) c -> (n k) s c", k=windows)
        return tokens_to_maps(tokens, hidden.shape[2]) if is_map else tokens


class FrameConditionedTimestepEmbedding(nn.Module):
    """A backbone's timestep embedder plus the per-frame camera / timestamp / text embedding (zero at init)."""

    def __init__(self, embedder: nn.Module, frame_embedding: FrameConditionEmbedding, context: GridContext):
        super().__init__()
        self.embedder = embedder
        self.frame_embedding = frame_embedding
        self.context = context

    def forward(self, *args, **kwargs):
        out = self.embedder(*args, **kwargs)
        if self.context.grid is None:  # the backbone run on its own, on images
            return out
        extra = self.frame_embedding(self.context.frame_cameras, self.context.frame_timestamps, self.context.frame_text,
                                     out.dtype)
        if extra.shape[0] != out.shape[0]:
            raise ValueError(f"the timestep embedder produced {out.shape[0]} rows for {extra.shape[0]} frames; "
                             f"call the inflated model, not its 2D backbone, on video input.")
        return out + extra.to(out.dtype)


# --- the 2D backbone: where its blocks are, how to call it -------------------------------------------------------

def resolve_base_class(path: str) -> type:
    cls = import_class(path, "2D backbone")
    if not issubclass(cls, ModelMixin):
        raise ValueError(f"{path!r} is not a diffusers ModelMixin class, so it cannot be the 2D backbone.")
    return cls


def call_backbone(base: nn.Module, frames, timesteps, class_labels=None, force_drop_ids=None, **kwargs) -> list:
    """base(frames, t, class_labels, ...) -> [(N, C_out, H, W) prediction] for any convdiff 2D backbone; one per
    scale, top first, for a multi-scale one (frames is then a list too). Labels and label-dropout ids go to the
    backbone when given (diffusers' own models take no force_drop_ids: they refuse it by name)."""
    if class_labels is not None:
        kwargs["class_labels"] = class_labels
    if force_drop_ids is not None:
        kwargs["force_drop_ids"] = force_drop_ids
    out = base(frames, timesteps, return_dict=False, **kwargs)
    if isinstance(out, (tuple, list)) and len(out) > 1 and isinstance(out[1], (tuple, list)):
        return list(out[1])  # (top, [every scale])
    return [out[0] if isinstance(out, (tuple, list)) else out]


def backbone_scales(base: nn.Module) -> list | None:
    """The input resolutions of a multi-scale backbone (top first), None for a single-input one."""
    sizes = getattr(base, "scale_sizes", None)
    return list(sizes) if sizes is not None and len(sizes) > 1 else None


def _dummy_call(base: nn.Module) -> None:
    """One batch-1 forward at the smallest size the backbone accepts (its stride, else its sample size)."""
    config = base.config
    param = next(base.parameters())
    like = dict(device=param.device, dtype=param.dtype)
    classes = config.get("num_classes") or config.get("num_class_embeds") or config.get("num_embeds_ada_norm")
    labels = torch.zeros(1, dtype=torch.long, device=param.device) if classes else None
    extra = {}
    if config.get("cross_attention_dim"):
        extra["encoder_hidden_states"] = torch.zeros(1, 1, config["cross_attention_dim"], **like)
    sizes = [s for s in (getattr(base, "stride", None), config.get("sample_size")) if isinstance(s, int)]
    scales = backbone_scales(base)
    for i, size in enumerate(sizes or [32]):
        x = torch.zeros(1, config["in_channels"], size, size, **like)
        if scales:
            x = [torch.zeros(1, config["in_channels"], s, s, **like) for s in scales]
        try:
            call_backbone(base, x, torch.zeros(1, dtype=torch.long, device=param.device), labels, **extra)
            return
        except (ValueError, RuntimeError):
            if i == len(sizes) - 1:
                raise


def plan_inflation(base: nn.Module) -> dict:
    """Which modules of a 2D backbone get video layers and their widths, found by one small forward pass.

    Returns {"blocks": [[name, width], ...], "timestep_embedders": [[name, width], ...]} in module order.
    The plan is stored in the inflated model's config, so loading never needs the dry run.
    """
    block_classes = set(declared_blocks(base, "_repeated_blocks", "_no_split_modules"))
    if not block_classes:
        raise ValueError(f"{type(base).__name__} lists no repeated block class (_repeated_blocks), so inflation "
                         f"cannot tell where to insert temporal layers.")
    blocks = []
    for name, module in base.named_modules():
        if type(module).__name__ in block_classes and not any(name.startswith(b + ".") for b in blocks):
            blocks.append(name)
    embedders = [name for name, m in base.named_modules() if isinstance(m, (TimestepEmbedding, DiffusersTimestepEmbedding))]
    widths = {}

    def record(name):
        def hook(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            if torch.is_tensor(out) and out.dim() in (2, 3, 4):
                widths.setdefault(name, out.shape[1] if out.dim() in (2, 4) else out.shape[2])
        return hook

    hooks = [base.get_submodule(name).register_forward_hook(record(name)) for name in blocks + embedders]
    try:
        with torch.no_grad():
            _dummy_call(base)
    finally:
        for hook in hooks:
            hook.remove()
    return {"blocks": [[n, widths[n]] for n in blocks if n in widths],
            "timestep_embedders": [[n, widths[n]] for n in embedders if n in widths]}


def is_spatial_3x3(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3) and module.stride == (1, 1)
            and module.dilation == (1, 1))


def spatial_convs(block: nn.Module) -> list:
    """Names of the block's 3x3 convs that P3D factorizes: not those inside a ΔConv student that replaced its
    attention (they run on attention windows or token grids, not on whole frames)."""
    students = tuple(f"{n}." for n, m in block.named_modules() if isinstance(m, DeltaConvBlock))
    return [n for n, m in block.named_modules() if is_spatial_3x3(m) and not n.startswith(students)]


def normalize_temporal(temporal) -> list:
    kinds = [temporal] if isinstance(temporal, str) else list(temporal or [])
    unknown = [k for k in kinds if k not in TEMPORAL_KINDS]
    if unknown or len(set(kinds)) != len(kinds):
        raise ValueError(f"temporal must be 'p3d', 'attention' or both, e.g. ('p3d', 'attention'); got {temporal!r}.")
    return kinds


# --- the surgery --------------------------------------------------------------------------------------------------

def inflate_modules(base: nn.Module, plan: dict, options: InflationOptions, context: GridContext) -> None:
    """Rewrite `base` in place after `plan`: frame conditioning on its timestep embedders, then temporal /
    view / sync layers (and P3D convs) on its blocks, all reading the grid from `context`."""
    if options.camera_dim or options.time_conditioning or options.text_dim:
        for name, width in plan["timestep_embedders"]:
            frame_embedding = FrameConditionEmbedding(width, options.camera_dim, timestamps=options.time_conditioning,
                                                      text_dim=options.text_dim)
            base.set_submodule(name, FrameConditionedTimestepEmbedding(base.get_submodule(name), frame_embedding,
                                                                       context))
    p3d_count = 0
    for name, width in plan["blocks"]:
        block = base.get_submodule(name)
        temporal_layers = []
        if "p3d" in options.temporal:
            convs = spatial_convs(block)
            for conv_name in convs:
                variant = "ABC"[p3d_count % 3] if options.p3d_variant == "mixed" else options.p3d_variant
                block.set_submodule(conv_name, P3DConv(block.get_submodule(conv_name), variant, context))
                p3d_count += 1
            if not convs:
                temporal_layers.append(TokenTemporalConv(width))
        heads = attention_heads(width, options.attention_head_dim)
        if options.view == "fused":
            temporal_layers.append(FusedViewTimeAttention(width, heads, options.max_views, options.max_frames))
        elif "attention" in options.temporal:
            temporal_layers.append(TemporalAttention(width, heads, options.max_frames,
                                                     options.text_dim if options.temporal_text else None))
        view_layers = []
        if options.view == "attention":
            view_layers.append(ViewAttention(width, heads, options.max_views, options.view_scope))
        sync_layer = SyncLayer(width, SYNC_EMBED_DIM, options.sync) if options.two_stream else None
        base.set_submodule(name, SpatioTemporalBlock(block, context, temporal_layers, view_layers, sync_layer))
