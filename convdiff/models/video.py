"""Inflated models: a 2D convdiff backbone as a video model (B,C,F,H,W) or a 4D model (B,C,V,T,H,W).

`inflate(model, to="video" | "4d", ...)` builds an `InflatedVideoModel` / `InflatedFourDModel` that holds the
2D backbone, rewritten by the surgery of inflation.py (temporal layers and P3D convs in its blocks, view or
sync layers for 4D, camera / timestamp embeddings on its timestep embedders), and runs it on frames
(B*V*T, C, H, W). Each new layer starts as the identity, so at initialisation the inflated model equals the 2D
model applied to every frame. The grid sizes reach the inserted layers through one shared `GridContext`,
set for the duration of each forward pass.

4D designs (view=): "attention" runs temporal then view attention in sequence (factorized); "two-stream"
is 4Real-Video: the batch holds a view stream and a time stream, every block runs on both (its temporal
layers over views in the first, over time in the second), and a hard or soft sync layer couples them; the
two outputs are averaged at the end; "fused" is 4Real-Video-V2: one masked attention over the whole grid
in place of the temporal attention (same parameter names, so a trained video model's weights load).

A degenerate grid is fine: V=1 is plain video (view layers skip), T=1 is a set of multi-view images
(temporal attention skips), so image, video and multi-view data can share one model.
"""

from dataclasses import dataclass
from itertools import chain

import torch
from diffusers import ConfigMixin, ModelMixin  # noqa: F401  (names must be bound here for pipeline reloads)
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import nn

from ..nn.embeddings import TimestepEmbedding
from ..nn.inputs import broadcast_timesteps
from ..nn.layouts import Grid, frames_to_grid, grid_to_frames, grid_to_video, video_to_grid
from ..nn.spatiotemporal import GridContext
from .class_paths import class_path
from .config_bounds import check_folder_config, check_model_config
# The surgery's names stay importable from here (convdiff.models.video.plan_inflation, ...).
from .inflation import (  # noqa: F401
    DIFFUSERS_BLOCKS,
    SYNC_EMBED_DIM,
    TEMPORAL_KINDS,
    VIEW_KINDS,
    FrameConditionedTimestepEmbedding,
    InflationOptions,
    SpatioTemporalBlock,
    backbone_scales,
    call_backbone,
    inflate_modules,
    is_spatial_3x3,
    normalize_temporal,
    plan_inflation,
    resolve_base_class,
)
from .memory_format import restore_layout
from .regional_compile import RegionalCompileMixin
from .video_control import InflatedControlMixin

# Config entries of the 2D model that the inflated model repeats, so training / pipeline helpers read them as usual.
MIRRORED_CONFIG = ("sample_size", "in_channels", "out_channels", "learn_sigma", "num_classes", "class_dropout_prob",
                   "prediction_type")


@dataclass
class InflatedModelOutput(BaseOutput):
    """`sample`: the prediction, laid out like the input; `scales`: every scale's prediction (top first) for a
    multi-scale backbone (the layered U-Net), else None."""

    sample: torch.Tensor
    scales: list | None = None


# --- the inflated models ------------------------------------------------------------------------------------------

class _InflatedModel(InflatedControlMixin, RegionalCompileMixin, ModelMixin, ConfigMixin):
    _supports_gradient_checkpointing = True
    _repeated_blocks = ["SpatioTemporalBlock"]  # a 2D block with its temporal / view layers (inflation.py)

    def _build(self, base_class: str, base_config: dict | None, options: InflationOptions, plan: dict | None,
               freeze_spatial: bool) -> None:
        """Build the 2D backbone from its class path and config, and inflate it after `plan` (found by a dry
        run and stored in the config when None) with the layers `options` describes."""
        cls = resolve_base_class(base_class)
        check_model_config(cls, base_config or {}, f"this video model's base_config ({base_class})")
        base = cls.from_config(base_config or {})
        if plan is None:
            plan = plan_inflation(base)
            self.register_to_config(plan=plan)
        self.register_to_config(**{k: base.config[k] for k in MIRRORED_CONFIG if k in base.config})
        self.context = GridContext()
        self.two_stream = options.two_stream
        names_2d = {id(t): n for n, t in base.state_dict(keep_vars=True).items()}  # persistent tensors only
        fixed_in_2d = {id(p) for p in base.parameters() if not p.requires_grad}  # e.g. DiffiT's pos_embed
        inflate_modules(base, plan, options, self.context)
        if self.two_stream:
            self.sync_embedding = TimestepEmbedding(SYNC_EMBED_DIM)
        self.base = base
        # inflated parameter name -> its name in the 2D model (wrapping moved them, the tensors are the same)
        self.spatial_names = {f"base.{n}": names_2d[id(t)]
                              for n, t in base.state_dict(keep_vars=True).items() if id(t) in names_2d}
        self.fixed_names = {f"base.{n}" for n, p in base.named_parameters() if id(p) in fixed_in_2d}
        self.freeze_spatial_layers(freeze_spatial)

    def _set_gradient_checkpointing(self, enable: bool = True,
                                    gradient_checkpointing_func=torch.utils.checkpoint.checkpoint) -> None:
        """diffusers' switch, with blocks recomputed in the backward pass inside their forward's grid context."""
        super()._set_gradient_checkpointing(enable, self.context.checkpointed(gradient_checkpointing_func))

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
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        check_folder_config(cls, pretrained_model_name_or_path, kwargs.get("subfolder"))  # config_bounds.py
        model = restore_layout(super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs))
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

    def _conditioning_vectors(self, values, size_key: str, what: str, name: str, dims: str, expected: tuple,
                              hint: str, device):
        """A per-video conditioning input checked against the model's `size_key` (None: the model has none)."""
        size = self.config.get(size_key)
        if not size:
            if values is not None:
                raise ValueError(f"this model has no {what} conditioning ({size_key}=None): pass {name}=None, or "
                                 f"inflate with {size_key}=<{hint}>.")
            return None
        if values is None:
            raise ValueError(f"this model was inflated with {size_key}={size} and needs {name} of shape "
                             f"{dims.replace(size_key, str(size))} = {expected}.")
        values = torch.as_tensor(values, device=device)
        if tuple(values.shape) != expected:
            raise ValueError(f"{name} must have shape {dims} = {expected}, got {tuple(values.shape)}.")
        return values

    def _frame_cameras(self, cameras, grid: Grid, device):
        """(B, V, camera_dim) cameras -> (B*V*T, camera_dim) per frame."""
        dim = self.config.get("camera_dim")
        cameras = self._conditioning_vectors(cameras, "camera_dim", "camera", "cameras", "(batch, views, camera_dim)",
                                             (grid.batch, grid.views, dim), "size of one camera vector", device)
        return None if cameras is None else cameras[:, :, None, :].expand(-1, -1, grid.frames, -1).reshape(-1, dim)

    def _frame_text(self, text_embeds, grid: Grid, device):
        """(B, text_dim) pooled prompt embeddings (the empty prompt's for unconditional samples) -> (B*V*T, text_dim)."""
        text = self._conditioning_vectors(text_embeds, "text_dim", "text", "text_embeds", "(batch, text_dim)",
                                          (grid.batch, self.config.get("text_dim")), "the text encoder's pooled size",
                                          device)
        return None if text is None else text.repeat_interleave(grid.views * grid.frames, dim=0)

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

    def _known_frames(self, known_cells, grid: Grid, device):
        """(B, V, T) bool cells (or (B, F) for a video) -> (B*V*T,) per frame, in the (b, v, t) frame order."""
        known = torch.as_tensor(known_cells, device=device).bool()
        if known.dim() == 2 and grid.views == 1:
            known = known[:, None]
        if tuple(known.shape) != (grid.batch, grid.views, grid.frames):
            raise ValueError(f"known_cells must be a bool tensor of shape (batch, views, frames) = ({grid.batch}, "
                             f"{grid.views}, {grid.frames}) (or (batch, frames) for a video), got {tuple(known.shape)}.")
        return known.reshape(-1)

    def frames_for_backbone(self, grid_inputs: list, timestep, class_labels=None, cameras=None, timestamps=None,
                            force_drop_ids=None, text_embeds=None, known_cells=None, **base_kwargs) -> "FrameBatch":
        """(B, C, V, T, H, W) grids (one per scale) and per-video conditioning -> what the 2D backbone runs on:
        one row per frame (both streams of a two-stream model), and the grid context of the inserted layers.
        `known_cells` marks frames given clean (conditioning frames): they are embedded at timestep 0."""
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
        frame_text = self._frame_text(text_embeds, grid, device)

        streams = 2 if self.two_stream else 1

        def per_frame(t):  # (B, ...) -> (streams * B*V*T, ...)
            return None if t is None else t.repeat_interleave(per_video, dim=0).repeat(streams, *([1] * (t.dim() - 1)))

        def both_streams(t):  # (B*V*T, ...) -> (streams * B*V*T, ...)
            return None if t is None else t.repeat(streams, *([1] * (t.dim() - 1)))

        frame_timesteps = timesteps.repeat_interleave(per_video)
        if known_cells is not None:  # a per-frame noise level tells the model which frames are the given ones
            known = self._known_frames(known_cells, grid, device)
            frame_timesteps = torch.where(known, torch.zeros_like(frame_timesteps), frame_timesteps)
        sync = self.sync_embedding(frame_timesteps, grid_inputs[0].dtype) if self.two_stream else None
        frames_in = [both_streams(grid_to_frames(x)) for x in grid_inputs]
        return FrameBatch(
            frames=frames_in if len(frames_in) > 1 else frames_in[0], timesteps=both_streams(frame_timesteps),
            class_labels=per_frame(labels), force_drop_ids=per_frame(force_drop_ids),
            kwargs={k: per_frame(v) if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == batch else v
                    for k, v in base_kwargs.items()},
            context=dict(grid=grid, two_stream=self.two_stream, sync_condition=sync,
                         frame_cameras=both_streams(frame_cameras), frame_timestamps=both_streams(frame_timestamps),
                         frame_text=both_streams(frame_text)))

    def run_backbone(self, frames: "FrameBatch") -> list:
        """The 2D backbone on every frame, inside the grid context -> per-frame predictions, one per scale."""
        with self.context.scope(**frames.context):
            return call_backbone(self.base, frames.frames, frames.timesteps, frames.class_labels,
                                 frames.force_drop_ids, **frames.kwargs)


@dataclass
class FrameBatch:
    """One forward's backbone input: `frames` (rows = frames, (b, v, t) order, both streams of a two-stream
    model; a list per scale for a multi-scale backbone), per-frame `timesteps`, `class_labels`,
    `force_drop_ids`, other backbone `kwargs`, and the `context` (GridContext.scope arguments) the inserted
    layers read."""

    frames: torch.Tensor | list
    timesteps: torch.Tensor
    class_labels: torch.Tensor | None
    force_drop_ids: torch.Tensor | None
    kwargs: dict
    context: dict


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
        text_dim: int | None = None,
        temporal_text: bool = False,
        # mirrored from the 2D model's config at build time (inputs are ignored)
        sample_size=None, in_channels=None, out_channels=None, learn_sigma=None, num_classes=None,
        class_dropout_prob=None, prediction_type=None,
    ):
        super().__init__()
        options = InflationOptions(temporal=temporal, p3d_variant=p3d_variant, time_conditioning=time_conditioning,
                                   max_frames=max_frames, attention_head_dim=attention_head_dim, text_dim=text_dim,
                                   temporal_text=temporal_text)
        self._build(base_class, base_config, options, plan=plan, freeze_spatial=freeze_spatial)

    def forward(self, hidden_states, timestep, class_labels=None, timestamps=None, force_drop_ids=None,
                return_dict: bool = True, text_embeds=None, known_cells=None, **base_kwargs):
        """hidden_states (B, C, F, H, W) (a list of them, top first, for a multi-scale backbone); timestep scalar
        or (B,); class_labels (B,); timestamps (B, F) or None (frame indices); text_embeds (B, text_dim) pooled
        prompt embeddings when the model has text_dim; known_cells (B, F) bool: frames given clean, embedded at
        timestep 0. Extra keyword tensors with a leading
        batch axis (e.g. encoder_hidden_states) are repeated per frame and passed to the 2D backbone."""
        videos = self._inputs(hidden_states, 5, "a video (batch, channels, frames, height, width)",
                              "add a frame axis to images with x[:, :, None]")
        frames = self.frames_for_backbone([video_to_grid(x) for x in videos], timestep, class_labels,
                                          timestamps=timestamps, force_drop_ids=force_drop_ids, text_embeds=text_embeds,
                                          known_cells=known_cells, **base_kwargs)
        grid = frames.context["grid"]
        outputs = [grid_to_video(frames_to_grid(out, grid)) for out in self.run_backbone(frames)]
        return self._output(outputs, return_dict)


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
        text_dim: int | None = None,
        temporal_text: bool = False,
        sample_size=None, in_channels=None, out_channels=None, learn_sigma=None, num_classes=None,
        class_dropout_prob=None, prediction_type=None,
    ):
        super().__init__()
        options = InflationOptions(temporal=temporal, view=view, view_scope=view_scope, sync=sync,
                                   p3d_variant=p3d_variant, camera_dim=camera_dim, time_conditioning=time_conditioning,
                                   max_frames=max_frames, max_views=max_views, attention_head_dim=attention_head_dim,
                                   text_dim=text_dim, temporal_text=temporal_text)
        self._build(base_class, base_config, options, plan=plan, freeze_spatial=freeze_spatial)

    def forward(self, hidden_states, timestep, class_labels=None, cameras=None, timestamps=None, force_drop_ids=None,
                return_dict: bool = True, text_embeds=None, known_cells=None, **base_kwargs):
        """hidden_states (B, C, V, T, H, W); cameras (B, V, camera_dim) when the model has camera_dim;
        timestamps (B, T) or None (frame indices); text_embeds (B, text_dim) when the model has text_dim;
        known_cells (B, V, T) bool: cells given clean (e.g. view 0's video), embedded at timestep 0."""
        grids = self._inputs(hidden_states, 6, "a grid (batch, channels, views, frames, height, width)",
                             "for a single-view video add a view axis with x[:, :, None]")
        frames = self.frames_for_backbone(grids, timestep, class_labels, cameras, timestamps, force_drop_ids,
                                          text_embeds, known_cells, **base_kwargs)
        outputs = self.run_backbone(frames)
        if self.two_stream:  # average the view stream's and the time stream's predictions
            outputs = [out.unflatten(0, (2, -1)).mean(0) for out in outputs]
        return self._output([frames_to_grid(out, frames.context["grid"]) for out in outputs], return_dict)


def inflate(model: nn.Module, to: str = "video", temporal=None, view: str = "attention",
            view_scope: str = "frame", sync: str = "soft", p3d_variant: str = "mixed", camera_dim: int | None = None,
            time_conditioning: bool = True, max_frames: int = 16, max_views: int = 8, attention_head_dim: int = 64,
            freeze_spatial: bool = False, text_dim: int | None = None, temporal_text: bool = False) -> _InflatedModel:
    """Inflate a 2D convdiff model into a video (to="video") or 4D (to="4d") model that reuses its weights.

    temporal: "p3d", "attention" or both (default "attention"); view (4D): "attention" (sequential temporal -> view attention,
    view_scope "frame" or "pixel"), "two-stream" (4Real-Video, sync "soft" or "hard") or "fused"
    (4Real-Video-V2 masked attention); camera_dim: size of the per-view camera vector (None: no cameras);
    text_dim: size of a clip's pooled text embedding (e.g. CLIP's `pooler_output`) for text-conditioned video
    (None: no text); temporal_text: the text also modulates the temporal attention (the layers that make the
    motion); freeze_spatial: train only the new layers. Passing an inflated video model with to="4d" keeps its
    backbone and trained temporal layers (temporal, p3d_variant, time_conditioning, attention_head_dim and
    max_frames are taken from it); the new view / sync / camera layers start as the identity.
    """
    if to not in ("video", "4d"):
        raise ValueError(f"to must be 'video' or '4d', got {to!r}.")
    if isinstance(model, InflatedVideoModel):  # its trained temporal layers must be rebuilt the same way
        video = model.config
        temporal, p3d_variant, time_conditioning = video.temporal, video.p3d_variant, video.time_conditioning
        attention_head_dim, max_frames = video.attention_head_dim, video.max_frames
        text_dim, temporal_text = video.get("text_dim"), video.get("temporal_text", False)
    options = dict(temporal=normalize_temporal(("attention",) if temporal is None else temporal), p3d_variant=p3d_variant,
                   time_conditioning=time_conditioning, max_frames=max_frames,
                   attention_head_dim=attention_head_dim, freeze_spatial=freeze_spatial, text_dim=text_dim,
                   temporal_text=temporal_text)
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
