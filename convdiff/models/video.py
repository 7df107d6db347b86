"""Inflation: turn a 2D convdiff backbone into a video model (B,C,F,H,W) or a 4D model (B,C,V,T,H,W).

The 2D model keeps running on frames (B*V*T, C, H, W). Inflation wraps its modules in place, without
touching the backbone's code:
- every repeated block (the class names in the backbone's `_repeated_blocks`; for diffusers' UNet2DModel
  and DiTTransformer2DModel baselines, their ResnetBlock2D / BasicTransformerBlock) becomes a
  `SpatioTemporalBlock`: the block, then temporal layers over the frames of each pixel, then (4D) view
  layers, or the sync layer of a two-stream model;
- with temporal="p3d", every 3x3 conv inside those blocks becomes a `P3DConv` (1x3x3 spatial + 3x1x1
  temporal, placements A / B / C, cycled A -> B -> C with "mixed" as in P3D ResNet); a block with no 3x3
  conv gets a residual temporal conv after it instead;
- every timestep embedder gets a zero-initialised camera / timestamp embedding added to its output.
Each new layer starts as the identity, so at initialisation the inflated model equals the 2D model applied
to every frame. The grid sizes reach the inserted layers through one shared `GridContext`.

4D designs (view=): "attention" runs temporal then view attention in sequence (factorized); "two-stream"
is 4Real-Video: the batch holds a view stream and a time stream, every block runs on both (its temporal
layers over views in the first, over time in the second), and a hard or soft sync layer couples them; the
two outputs are averaged at the end; "fused" is 4Real-Video-V2: one masked attention over the whole grid
in place of the temporal attention (same parameter names, so a trained video model's weights load).

A degenerate grid is fine: V=1 is plain video (view layers skip), T=1 is a set of multi-view images
(temporal attention skips), so image, video and multi-view data can share one model.
"""

import inspect
from dataclasses import dataclass
from itertools import chain

import torch
from diffusers import ConfigMixin, ModelMixin  # noqa: F401  (names must be bound here for pipeline reloads)
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding as DiffusersTimestepEmbedding
from diffusers.utils import BaseOutput
from einops import rearrange
from torch import nn

from ..nn.camera import FrameConditionEmbedding
from ..nn.embeddings import TimestepEmbedding
from ..nn.layouts import Grid, frames_to_grid, grid_to_frames, grid_to_video, maps_to_tokens, tokens_to_maps, video_to_grid
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
from .class_paths import class_path, import_class
from .inputs import broadcast_timesteps
from .memory_format import restore_channels_last

TEMPORAL_KINDS = ("p3d", "attention")
VIEW_KINDS = ("attention", "two-stream", "fused")
# Config entries of the 2D model that the inflated model repeats, so training / pipeline helpers read them as usual.
MIRRORED_CONFIG = ("sample_size", "in_channels", "out_channels", "learn_sigma", "num_classes", "class_dropout_prob",
                   "prediction_type")
SYNC_EMBED_DIM = 128
# diffusers' baselines do not list their repeated blocks (_repeated_blocks is empty): where to inflate them
DIFFUSERS_BLOCKS = {"UNet2DModel": ("ResnetBlock2D",), "DiTTransformer2DModel": ("BasicTransformerBlock",)}


@dataclass
class InflatedModelOutput(BaseOutput):
    """`sample`: the prediction, laid out like the input; `scales`: every scale's prediction (top first) for a
    multi-scale backbone (the layered U-Net), else None."""

    sample: torch.Tensor
    scales: list | None = None


class SpatioTemporalBlock(nn.Module):
    """A 2D block followed by residual layers that mix its output across frames and views."""

    def __init__(self, block: nn.Module, context: GridContext, temporal=(), view=(), sync: SyncLayer | None = None):
        super().__init__()
        self.block = block
        self.temporal = nn.ModuleList(temporal)
        self.view = nn.ModuleList(view)
        self.sync = sync
        self.context = context

    def __getattr__(self, name):
        """Attributes the backbone reads from its blocks (DiT reads blocks[0].norm1) come from the 2D block."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "block":
                raise
            return getattr(self.block, name)

    def forward(self, x, *args, **kwargs):
        out = self.block(x, *args, **kwargs)
        if isinstance(out, tuple):
            return (self.mix(out[0]),) + out[1:]
        return self.mix(out)

    def mix(self, hidden: torch.Tensor) -> torch.Tensor:
        is_map = hidden.dim() == 4  # (N, C, H, W) maps or (N, S, C) tokens
        tokens = maps_to_tokens(hidden) if is_map else hidden
        frames, windows = self.context.frames_in_batch(), 1
        if frames and tokens.shape[0] != frames and tokens.shape[0] % frames == 0:
            # a windowed block (DiffiT) ran on (frames * windows, window tokens, C): gather each frame's windows
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
    """A backbone's timestep embedder plus the per-frame camera / timestamp embedding (zero at init)."""

    def __init__(self, embedder: nn.Module, frame_embedding: FrameConditionEmbedding, context: GridContext):
        super().__init__()
        self.embedder = embedder
        self.frame_embedding = frame_embedding
        self.context = context

    def forward(self, *args, **kwargs):
        out = self.embedder(*args, **kwargs)
        if self.context.grid is None:  # the backbone run on its own, on images
            return out
        extra = self.frame_embedding(self.context.frame_cameras, self.context.frame_timestamps)
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
    scale, top first, for a multi-scale one (frames is then a list too)."""
    params = inspect.signature(base.forward).parameters
    if class_labels is not None or "class_labels" in params:
        kwargs["class_labels"] = class_labels
    if force_drop_ids is not None and "force_drop_ids" in params:
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
    block_classes = set(getattr(base, "_repeated_blocks", None) or getattr(base, "_no_split_modules", None)
                        or DIFFUSERS_BLOCKS.get(type(base).__name__, ()))
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


def normalize_temporal(temporal) -> list:
    kinds = [temporal] if isinstance(temporal, str) else list(temporal or [])
    unknown = [k for k in kinds if k not in TEMPORAL_KINDS]
    if unknown or len(set(kinds)) != len(kinds):
        raise ValueError(f"temporal must be 'p3d', 'attention' or both, e.g. ('p3d', 'attention'); got {temporal!r}.")
    return kinds


# --- the inflated models ------------------------------------------------------------------------------------------

class _InflatedModel(ModelMixin, ConfigMixin):
    _supports_gradient_checkpointing = True

    def _build(self, base_class, base_config, temporal, view, view_scope, sync, p3d_variant, camera_dim,
               time_conditioning, max_frames, max_views, attention_head_dim, freeze_spatial, plan):
        temporal = normalize_temporal(temporal)
        if p3d_variant not in (*P3D_VARIANTS, "mixed"):
            raise ValueError(f"p3d_variant must be 'A', 'B', 'C' or 'mixed', got {p3d_variant!r}.")
        base = resolve_base_class(base_class)(**(base_config or {}))
        if plan is None:
            plan = plan_inflation(base)
            self.register_to_config(plan=plan)
        self.register_to_config(**{k: base.config[k] for k in MIRRORED_CONFIG if k in base.config})
        self.context = GridContext()
        self.two_stream = view == "two-stream"
        names_2d = {id(t): n for n, t in base.state_dict(keep_vars=True).items()}  # persistent tensors only
        fixed_in_2d = {id(p) for p in base.parameters() if not p.requires_grad}  # e.g. DiffiT's pos_embed

        if camera_dim or time_conditioning:
            for name, width in plan["timestep_embedders"]:
                frame_embedding = FrameConditionEmbedding(width, camera_dim, timestamps=time_conditioning)
                base.set_submodule(name, FrameConditionedTimestepEmbedding(base.get_submodule(name), frame_embedding,
                                                                           self.context))
        p3d_count = 0
        for name, width in plan["blocks"]:
            block = base.get_submodule(name)
            temporal_layers = []
            if "p3d" in temporal:
                convs = [n for n, m in block.named_modules() if is_spatial_3x3(m)]
                for conv_name in convs:
                    variant = "ABC"[p3d_count % 3] if p3d_variant == "mixed" else p3d_variant
                    block.set_submodule(conv_name, P3DConv(block.get_submodule(conv_name), variant, self.context))
                    p3d_count += 1
                if not convs:
                    temporal_layers.append(TokenTemporalConv(width))
            heads = attention_heads(width, attention_head_dim)
            if view == "fused":
                temporal_layers.append(FusedViewTimeAttention(width, heads, max_views, max_frames))
            elif "attention" in temporal:
                temporal_layers.append(TemporalAttention(width, heads, max_frames))
            view_layers = [ViewAttention(width, heads, max_views, view_scope)] if view == "attention" else []
            sync_layer = SyncLayer(width, SYNC_EMBED_DIM, sync) if self.two_stream else None
            base.set_submodule(name, SpatioTemporalBlock(block, self.context, temporal_layers, view_layers, sync_layer))
        if self.two_stream:
            self.sync_embedding = TimestepEmbedding(SYNC_EMBED_DIM)
        self.base = base
        # inflated parameter name -> its name in the 2D model (wrapping moved them, the tensors are the same)
        self.spatial_names = {f"base.{n}": names_2d[id(t)]
                              for n, t in base.state_dict(keep_vars=True).items() if id(t) in names_2d}
        self.fixed_names = {f"base.{n}" for n, p in base.named_parameters() if id(p) in fixed_in_2d}
        self.freeze_spatial_layers(freeze_spatial)

    # --- weights -------------------------------------------------------------------------------------------------

    def freeze_spatial_layers(self, freeze: bool = True) -> None:
        """Freeze (or unfreeze) the 2D backbone's weights; the inserted video layers stay trainable. Parameters
        the 2D model itself never trains (DiffiT's fixed position embedding) stay frozen."""
        for name, p in self.named_parameters():
            p.requires_grad_(name not in self.fixed_names and not (freeze and name in self.spatial_names))

    def new_parameter_names(self) -> list:
        """Names of the parameters inflation added (temporal, view, sync, camera / time layers)."""
        return [n for n, _ in self.named_parameters() if n not in self.spatial_names]

    def load_spatial_state_dict(self, state_dict: dict) -> None:
        """Copy a 2D model's weights (its own state_dict keys) into the wrapped backbone."""
        own = dict(chain(self.named_parameters(), self.named_buffers()))
        missing = [old for old in self.spatial_names.values() if old not in state_dict]
        if missing:
            raise ValueError(f"the 2D state dict lacks {len(missing)} backbone entries, e.g. {missing[:3]}; "
                             f"was it saved from a {self.config.base_class.rpartition('.')[2]} with this config?")
        with torch.no_grad():
            for new, old in self.spatial_names.items():
                if own[new].shape != state_dict[old].shape:
                    raise ValueError(f"{old}: the 2D weight has shape {tuple(state_dict[old].shape)}, the inflated "
                                     f"backbone expects {tuple(own[new].shape)}.")
                own[new].copy_(state_dict[old])

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = restore_channels_last(super().from_pretrained(*args, **kwargs))
        model.freeze_spatial_layers(model.config.freeze_spatial)  # loading rebuilds the parameters
        return model

    # --- forward -------------------------------------------------------------------------------------------------

    def _check_grid(self, grid: Grid) -> None:
        name = type(self).__name__
        if grid.frames > self.config.max_frames:
            raise ValueError(f"{name} was inflated with max_frames={self.config.max_frames} but got {grid.frames} "
                             f"frames: use shorter clips (or overlapping windows) or inflate with a larger max_frames.")
        max_views = self.config.get("max_views")
        if max_views is not None and grid.views > max_views:
            raise ValueError(f"{name} was inflated with max_views={max_views} but got {grid.views} views: "
                             f"use fewer views or inflate with a larger max_views.")

    def _per_video(self, values, batch: int, what: str, device) -> torch.Tensor:
        values = torch.as_tensor(values, device=device).long().reshape(-1)
        if values.shape[0] == 1 and batch > 1:
            values = values.expand(batch)
        if values.shape[0] != batch:
            raise ValueError(f"got {values.shape[0]} {what} for a batch of {batch}: pass one per sample.")
        return values

    def _frame_timestamps(self, timestamps, grid: Grid, device):
        """(B, T) times -> (B*V*T,) per frame; the frame index when none are given."""
        if not self.config.time_conditioning:
            if timestamps is not None:
                raise ValueError("this model was inflated with time_conditioning=False: pass timestamps=None.")
            return None
        if timestamps is None:
            timestamps = torch.arange(grid.frames, device=device, dtype=torch.float32).expand(grid.batch, -1)
        timestamps = torch.as_tensor(timestamps, device=device, dtype=torch.float32)
        if tuple(timestamps.shape) != (grid.batch, grid.frames):
            raise ValueError(f"timestamps must have shape (batch, frames) = ({grid.batch}, {grid.frames}), "
                             f"got {tuple(timestamps.shape)}.")
        return timestamps[:, None, :].expand(-1, grid.views, -1).reshape(-1)

    def _frame_cameras(self, cameras, grid: Grid, device):
        """(B, V, camera_dim) cameras -> (B*V*T, camera_dim) per frame."""
        camera_dim = self.config.get("camera_dim")
        if not camera_dim:
            if cameras is not None:
                raise ValueError("this model has no camera conditioning (camera_dim=None): pass cameras=None, or "
                                 "inflate with camera_dim=<size of one camera vector>.")
            return None
        if cameras is None:
            raise ValueError(f"this model was inflated with camera_dim={camera_dim} and needs cameras of shape "
                             f"(batch, views, {camera_dim}) = ({grid.batch}, {grid.views}, {camera_dim}).")
        cameras = torch.as_tensor(cameras, device=device)
        if tuple(cameras.shape) != (grid.batch, grid.views, camera_dim):
            raise ValueError(f"cameras must have shape (batch, views, camera_dim) = ({grid.batch}, {grid.views}, "
                             f"{camera_dim}), got {tuple(cameras.shape)}.")
        return cameras[:, :, None, :].expand(-1, -1, grid.frames, -1).reshape(-1, camera_dim)

    def _inputs(self, hidden_states, dims: int, what: str, fix: str) -> list:
        """The input as a list of tensors (one per scale, top first, for a multi-scale backbone), checked."""
        inputs = list(hidden_states) if isinstance(hidden_states, (list, tuple)) else [hidden_states]
        scales = backbone_scales(self.base)
        for x in inputs:
            if not torch.is_tensor(x) or x.dim() != dims:
                shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
                raise ValueError(f"{type(self).__name__} expects {what}, got {shape}; {fix}.")
        if scales and len(inputs) != len(scales):
            raise ValueError(f"{type(self).__name__} wraps a backbone with {len(scales)} scales {scales}: pass a "
                             f"list of {len(scales)} inputs, top first.")
        return inputs

    def _output(self, outputs: list, return_dict: bool):
        scales = outputs if len(outputs) > 1 else None
        if not return_dict:
            return (outputs[0],) if scales is None else (outputs[0], scales)
        return InflatedModelOutput(sample=outputs[0], scales=scales)

    def _run(self, grid_inputs: list, timestep, class_labels, cameras, timestamps, force_drop_ids, base_kwargs):
        """(B, C, V, T, H, W) grids (one per scale) -> the backbone's per-frame predictions as grids."""
        batch, channels, views, frames = grid_inputs[0].shape[:4]
        grid = Grid(batch, views, frames)
        self._check_grid(grid)
        for x in grid_inputs:
            if x.shape[1] != self.config.in_channels:
                raise ValueError(f"{type(self).__name__} expects {self.config.in_channels} channels, got {x.shape[1]}.")
            if tuple(x.shape[:4]) != (batch, channels, views, frames):
                raise ValueError(f"every scale needs the same (batch, channels, views, frames); got "
                                 f"{tuple(x.shape[:4])} and {(batch, channels, views, frames)}.")
        device, per_video = grid_inputs[0].device, views * frames
        timesteps = broadcast_timesteps(timestep, batch, device)
        labels = None
        if class_labels is not None:
            labels = self._per_video(class_labels, batch, "class labels", device)
            dropout = self.config.get("class_dropout_prob") or 0
            if force_drop_ids is None and self.training and dropout > 0:  # drop a video's label in all its frames
                force_drop_ids = (torch.rand(batch, device=device) < dropout).long()
        if force_drop_ids is not None:
            force_drop_ids = self._per_video(force_drop_ids, batch, "force_drop_ids", device)
        frame_timestamps = self._frame_timestamps(timestamps, grid, device)
        frame_cameras = self._frame_cameras(cameras, grid, device)

        streams = 2 if self.two_stream else 1

        def per_frame(t):  # (B, ...) -> (streams * B*V*T, ...)
            return None if t is None else t.repeat_interleave(per_video, dim=0).repeat(streams, *([1] * (t.dim() - 1)))

        frame_timesteps = timesteps.repeat_interleave(per_video)
        self.context.grid, self.context.two_stream = grid, self.two_stream
        self.context.frame_timestamps = None if frame_timestamps is None else frame_timestamps.repeat(streams)
        self.context.frame_cameras = None if frame_cameras is None else frame_cameras.repeat(streams, 1)
        self.context.sync_condition = self.sync_embedding(frame_timesteps) if self.two_stream else None
        extra = {k: per_frame(v) if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == batch else v
                 for k, v in base_kwargs.items()}
        frames_in = [grid_to_frames(x).repeat(streams, 1, 1, 1) for x in grid_inputs]
        outputs = call_backbone(self.base, frames_in if len(frames_in) > 1 else frames_in[0],
                                frame_timesteps.repeat(streams), per_frame(labels), per_frame(force_drop_ids), **extra)
        if self.two_stream:  # average the view stream's and the time stream's predictions
            outputs = [out.unflatten(0, (2, -1)).mean(0) for out in outputs]
        return [frames_to_grid(out, grid) for out in outputs]


class InflatedVideoModel(_InflatedModel):
    """A 2D convdiff backbone inflated to video: (B, C, F, H, W) in, (B, C_out, F, H, W) out. Build with inflate()."""

    @register_to_config
    def __init__(
        self,
        base_class: str = "convdiff.models.dic.DiCModel",
        base_config: dict | None = None,
        temporal: tuple = ("attention",),
        p3d_variant: str = "mixed",
        time_conditioning: bool = True,
        max_frames: int = 16,
        attention_head_dim: int = 64,
        freeze_spatial: bool = False,
        plan: dict | None = None,
        # mirrored from the 2D model's config at build time (inputs are ignored)
        sample_size=None, in_channels=None, out_channels=None, learn_sigma=None, num_classes=None,
        class_dropout_prob=None, prediction_type=None,
    ):
        super().__init__()
        if not normalize_temporal(temporal):
            raise ValueError("a video model needs temporal layers: temporal='p3d', 'attention' or both.")
        self._build(base_class, base_config, temporal, None, None, None, p3d_variant, None, time_conditioning,
                    max_frames, None, attention_head_dim, freeze_spatial, plan)

    def forward(self, hidden_states, timestep, class_labels=None, timestamps=None, force_drop_ids=None,
                return_dict: bool = True, **base_kwargs):
        """hidden_states (B, C, F, H, W) (a list of them, top first, for a multi-scale backbone); timestep scalar
        or (B,); class_labels (B,); timestamps (B, F) or None (frame indices). Extra keyword tensors with a leading
        batch axis (e.g. encoder_hidden_states) are repeated per frame and passed to the 2D backbone."""
        videos = self._inputs(hidden_states, 5, "a video (batch, channels, frames, height, width)",
                              "add a frame axis to images with x[:, :, None]")
        outputs = self._run([video_to_grid(x) for x in videos], timestep, class_labels, None, timestamps,
                            force_drop_ids, base_kwargs)
        return self._output([grid_to_video(out) for out in outputs], return_dict)


# Its config signature shares InflatedVideoModel's first arguments: register_to_config needs each one spelled out.
class InflatedFourDModel(_InflatedModel):
    """A 2D convdiff backbone inflated to a V x T grid: (B, C, V, T, H, W) in and out. Build with inflate()."""

    @register_to_config
    def __init__(
        self,
        base_class: str = "convdiff.models.dic.DiCModel",
        base_config: dict | None = None,
        temporal: tuple = ("attention",),
        view: str = "attention",
        view_scope: str = "frame",
        sync: str = "soft",
        p3d_variant: str = "mixed",
        camera_dim: int | None = None,
        time_conditioning: bool = True,
        max_frames: int = 16,
        max_views: int = 8,
        attention_head_dim: int = 64,
        freeze_spatial: bool = False,
        plan: dict | None = None,
        sample_size=None, in_channels=None, out_channels=None, learn_sigma=None, num_classes=None,
        class_dropout_prob=None, prediction_type=None,
    ):
        super().__init__()
        if view not in VIEW_KINDS:
            raise ValueError(f"view must be one of {', '.join(VIEW_KINDS)}, got {view!r}.")
        if view == "two-stream" and not normalize_temporal(temporal):
            raise ValueError("a two-stream model runs its temporal layers over views and over time: "
                             "give temporal='attention' and/or 'p3d'.")
        self._build(base_class, base_config, temporal, view, view_scope, sync, p3d_variant, camera_dim,
                    time_conditioning, max_frames, max_views, attention_head_dim, freeze_spatial, plan)

    def forward(self, hidden_states, timestep, class_labels=None, cameras=None, timestamps=None, force_drop_ids=None,
                return_dict: bool = True, **base_kwargs):
        """hidden_states (B, C, V, T, H, W); cameras (B, V, camera_dim) when the model has camera_dim;
        timestamps (B, T) or None (frame indices)."""
        grids = self._inputs(hidden_states, 6, "a grid (batch, channels, views, frames, height, width)",
                             "for a single-view video add a view axis with x[:, :, None]")
        outputs = self._run(grids, timestep, class_labels, cameras, timestamps, force_drop_ids, base_kwargs)
        return self._output(outputs, return_dict)


def inflate(model: nn.Module, to: str = "video", temporal=None, view: str = "attention",
            view_scope: str = "frame", sync: str = "soft", p3d_variant: str = "mixed", camera_dim: int | None = None,
            time_conditioning: bool = True, max_frames: int = 16, max_views: int = 8, attention_head_dim: int = 64,
            freeze_spatial: bool = False) -> _InflatedModel:
    """Inflate a 2D convdiff model into a video (to="video") or 4D (to="4d") model that reuses its weights.

    temporal: "p3d", "attention" or both (default "attention"); view (4D): "attention" (sequential temporal -> view attention,
    view_scope "frame" or "pixel"), "two-stream" (4Real-Video, sync "soft" or "hard") or "fused"
    (4Real-Video-V2 masked attention); camera_dim: size of the per-view camera vector (None: no cameras);
    freeze_spatial: train only the new layers. Passing an inflated video model with to="4d" keeps its
    backbone and trained temporal layers (temporal, p3d_variant, time_conditioning, attention_head_dim and
    max_frames are taken from it); the new view / sync / camera layers start as the identity.
    """
    if to not in ("video", "4d"):
        raise ValueError(f"to must be 'video' or '4d', got {to!r}.")
    if isinstance(model, InflatedVideoModel):  # its trained temporal layers must be rebuilt the same way
        video = model.config
        temporal, p3d_variant, time_conditioning = video.temporal, video.p3d_variant, video.time_conditioning
        attention_head_dim, max_frames = video.attention_head_dim, video.max_frames
    options = dict(temporal=normalize_temporal(("attention",) if temporal is None else temporal), p3d_variant=p3d_variant,
                   time_conditioning=time_conditioning, max_frames=max_frames,
                   attention_head_dim=attention_head_dim, freeze_spatial=freeze_spatial)
    if to == "4d":
        options.update(view=view, view_scope=view_scope, sync=sync, camera_dim=camera_dim, max_views=max_views)
    if isinstance(model, _InflatedModel):
        if not (isinstance(model, InflatedVideoModel) and to == "4d"):
            raise ValueError("an inflated model can only be inflated further from video to 4D; pass the 2D model.")
        inflated = InflatedFourDModel(base_class=model.config.base_class, base_config=dict(model.config.base_config),
                                      plan=model.config.plan, **options)
        unexpected = inflated.load_state_dict(model.state_dict(), strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"the video model's layers do not fit this 4D design, e.g. {unexpected[:3]}: inflate "
                             f"to 4D with the same temporal={model.config.temporal!r} and time_conditioning.")
    else:
        if not isinstance(model, ModelMixin):
            raise ValueError(f"inflate needs a diffusers ModelMixin 2D model, got {type(model).__name__}.")
        base_config = {k: v for k, v in model.config.items() if not k.startswith("_")}
        cls = InflatedVideoModel if to == "video" else InflatedFourDModel
        inflated = cls(base_class=class_path(type(model)), base_config=base_config, **options)
        inflated.load_spatial_state_dict(model.state_dict())
    param = next(model.parameters())
    inflated.to(param.device)
    if param.dtype != inflated.dtype:
        inflated.to(param.dtype)
    return inflated.train(model.training)
