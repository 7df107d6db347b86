"""ControlNet for convdiff backbones: a trainable copy of the encoder half that steers a frozen model
(Zhang et al., ICCV 2023, arXiv 2302.05543; diffusers' ControlNetModel; docs/controlnet.md).

- `ControlNet.from_backbone(model)` copies the backbone's stem, conditioning embedders, encoder and middle
  (its weights too); the decoder half is dropped (`model.control_unused_modules`).
- A small conv stack embeds the conditioning image (kept in [0, 1]) onto the stem's grid; its last conv is
  zero-initialised and its output is added right after the stem.
- One zero-initialised 1x1 conv per control point (every skip tensor, then the middle output) turns the copy's
  features into residuals for the backbone's `down_block_additional_residuals` / `mid_block_additional_residual`.
  Zero convs make a fresh ControlNet exactly the identity: the controlled model equals its base at step 0.
- `conditioning_scale` multiplies every residual; guess mode scales them by logspace(-1, 0) from shallow to
  deep (the middle gets 1), so the shallow, detailed ones count least when no prompt or class helps.
- `MultiControlNet` sums several ControlNets' residuals, each with its own image and scale, and saves like
  diffusers' MultiControlNetModel (folders `controlnet`, `controlnet_1`, ...).

The config stores the backbone's class and config, so a ControlNet refuses (`check_backbone`) to drive a
model it was not built from.
"""

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin  # noqa: F401  (names must be bound here for pipeline reloads)
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import nn

from .class_paths import class_path, import_class
from .config_bounds import check_folder_config, check_model_config
from .memory_format import restore_layout
from .regional_compile import RegionalCompileMixin
from .video_control import condition_frames

CONTROL_INTERFACE = ("control_points", "control_encode", "control_unused_modules")


@dataclass
class ControlNetOutput(BaseOutput):
    """Residuals for the backbone, named as diffusers' ControlNetOutput."""

    down_block_res_samples: tuple
    mid_block_res_sample: torch.Tensor


def zero_conv(in_channels: int, out_channels: int, kernel_size: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ConditioningEmbedding(nn.Module):
    """Conv3x3 -> [Conv3x3, Conv3x3 (stride 2 while downscaling)] per width step -> zero Conv3x3, SiLU between.

    `downscale` maps the conditioning image onto the model's grid: 1 for pixel-space models, 8 for SD-VAE
    latents (three stride-2 convs, as diffusers' ControlNetConditioningEmbedding).
    """

    def __init__(self, conditioning_channels: int, out_channels: int, block_channels=(16, 32), downscale: int = 1):
        super().__init__()
        block_channels = list(block_channels)
        steps = downscale.bit_length() - 1
        if downscale < 1 or 2**steps != downscale:
            raise ValueError(f"conditioning_downscale must be a power of two (1 for pixels, 8 for SD-VAE latents); got {downscale}.")
        if steps > len(block_channels) - 1:
            raise ValueError(f"conditioning_downscale={downscale} needs {steps} stride-2 convs, so at least {steps + 1} "
                             f"conditioning_embedding_channels; got {block_channels}.")
        self.conv_in = nn.Conv2d(conditioning_channels, block_channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for i, (cin, cout) in enumerate(zip(block_channels[:-1], block_channels[1:])):
            self.blocks.append(nn.Conv2d(cin, cin, 3, padding=1))
            self.blocks.append(nn.Conv2d(cin, cout, 3, padding=1, stride=2 if i < steps else 1))
        self.conv_out = zero_conv(block_channels[-1], out_channels, 3)

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(condition))
        for conv in self.blocks:
            x = F.silu(conv(x))
        return self.conv_out(x)


def backbone_path(model) -> str:
    return class_path(type(model))


def plain_config(config) -> dict:
    """A backbone config as JSON would give it back: private keys dropped, tuples as lists (also inside the
    nested configs of an inflated model)."""
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value
    return {k: plain(v) for k, v in dict(config).items() if not k.startswith("_")}


def import_backbone_class(path: str):
    return check_control_interface(import_class(path, "ControlNet's backbone"), path)


def check_control_interface(cls: type, path: str) -> type:
    missing = [attr for attr in CONTROL_INTERFACE if not hasattr(cls, attr)]
    if missing:
        raise ValueError(f"{path} has no ControlNet interface (missing {', '.join(missing)}); controllable backbones "
                         "are DiCModel, DiCoModel and the others that define control_points() and control_encode().")
    return cls


def top_scale(sample):
    """The full-resolution input: multi-scale backbones (the layered U-Net) take a list, top first."""
    return sample[0] if isinstance(sample, (list, tuple)) else sample


class ControlNet(RegionalCompileMixin, ModelMixin, ConfigMixin):
    r"""A trainable copy of a convdiff backbone's encoder half, returning residuals for the frozen backbone.

    Build it with `ControlNet.from_backbone(model)`; call it as
    `controlnet(x_t, t, controlnet_cond=image, class_labels=y)` and pass the output's
    `down_block_res_samples` / `mid_block_res_sample` to `model(..., down_block_additional_residuals=...,
    mid_block_additional_residual=...)`.

    Args:
        backbone_class: import path of the backbone class, e.g. "convdiff.models.dic.DiCModel".
        backbone_config: the backbone's config (the copy is built from it).
        conditioning_channels: channels of the conditioning image (1 for edge maps, 3 for RGB).
        conditioning_embedding_channels: widths of the conditioning encoder.
        conditioning_downscale: conditioning-image pixels per model pixel (1 in pixel space, 8 for SD-VAE latents).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, backbone_class: str, backbone_config: dict, conditioning_channels: int = 3,
                 conditioning_embedding_channels: tuple = (16, 32), conditioning_downscale: int = 1):
        super().__init__()
        cls = import_backbone_class(backbone_class)
        check_model_config(cls, backbone_config, f"this ControlNet's backbone_config ({backbone_class})")
        self.backbone = cls.from_config(backbone_config)
        # the copy's blocks are the units that repeat (regional compilation, regional_compile.py)
        self._repeated_blocks = list(getattr(self.backbone, "_repeated_blocks", None) or ())
        points = self.backbone.control_points()
        if hasattr(self.backbone, "control_prune"):
            self.backbone.control_prune()
        else:
            for name in cls.control_unused_modules:
                delattr(self.backbone, name)
        self.controlnet_cond_embedding = ConditioningEmbedding(conditioning_channels, points.stem_channels,
                                                               conditioning_embedding_channels,
                                                               conditioning_downscale * points.stem_factor)
        self.controlnet_down_blocks = nn.ModuleList([zero_conv(c, c) for c, _ in points.down])
        self.controlnet_mid_block = zero_conv(points.mid[0], points.mid[0])

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        check_folder_config(cls, pretrained_model_name_or_path, kwargs.get("subfolder"))  # config_bounds.py
        return restore_layout(super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs))

    def _set_gradient_checkpointing(self, enable: bool = True,
                                    gradient_checkpointing_func=torch.utils.checkpoint.checkpoint) -> None:
        """diffusers' switch, then the copy's own: an inflated copy recomputes its blocks inside its grid context."""
        super()._set_gradient_checkpointing(enable, gradient_checkpointing_func)
        if hasattr(self.backbone, "_set_gradient_checkpointing"):
            self.backbone._set_gradient_checkpointing(enable, gradient_checkpointing_func)

    @classmethod
    def from_backbone(cls, model, conditioning_channels: int = 3, conditioning_embedding_channels=None,
                      conditioning_downscale: int = 1, load_weights_from_backbone: bool = True) -> "ControlNet":
        """A ControlNet for `model` (DiC, DiCo, ...) whose encoder copy starts from the model's weights, in fp32.

        conditioning_embedding_channels=None picks diffusers' widths (16, 32, 96, 256), as many as the
        downscaling from the conditioning image to the stem's grid needs (at least two)."""
        path = backbone_path(model)
        check_control_interface(type(model), path)  # clear error for a backbone without the interface
        if conditioning_embedding_channels is None:
            steps = (conditioning_downscale * model.control_points().stem_factor).bit_length() - 1
            conditioning_embedding_channels = ([16, 32, 96] + [256] * max(steps - 2, 1))[: max(steps + 1, 2)]
        controlnet = cls(path, plain_config(model.config), conditioning_channels, list(conditioning_embedding_channels),
                         conditioning_downscale)
        if load_weights_from_backbone:
            state = {k: v.float() for k, v in model.state_dict().items()}
            missing, _ = controlnet.backbone.load_state_dict(state, strict=False)
            if missing:
                raise ValueError(f"The backbone lacks weights the ControlNet copy needs: {missing[:5]}")
        return controlnet

    def check_backbone(self, model) -> None:
        """Raise a clear ValueError unless `model` has the class and config this ControlNet was built from."""
        if backbone_path(model) != self.config.backbone_class:
            raise ValueError(f"This ControlNet was built from a {self.config.backbone_class} but is used with a "
                             f"{backbone_path(model)}; build one with ControlNet.from_backbone(model).")
        ours, theirs = plain_config(self.config.backbone_config), plain_config(model.config)
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        if differ:
            detail = ", ".join(f"{k}: {ours.get(k)!r} vs {theirs.get(k)!r}" for k in differ[:6])
            raise ValueError(f"This ControlNet was built from a backbone with a different config ({detail}; ControlNet "
                             "vs model); build one with ControlNet.from_backbone(model) for this model.")

    def check_condition(self, sample: torch.Tensor, condition: torch.Tensor) -> None:
        """One conditioning image per sample (B, C, H, W); for a video / 4D sample also one per frame
        (B, C, F, H, W) / per view-time cell (B, C, V, T, H, W) (video_control.py)."""
        sample = top_scale(sample)
        channels = self.config.conditioning_channels
        down = self.config.conditioning_downscale
        grid = tuple(sample.shape[2:-2])
        height, width = sample.shape[-2] * down, sample.shape[-1] * down
        shared = (sample.shape[0], channels, height, width)
        allowed = [shared] + ([(sample.shape[0], channels, *grid, height, width)] if grid else [])
        if not torch.is_tensor(condition) or tuple(condition.shape) not in allowed:
            shape = tuple(condition.shape) if torch.is_tensor(condition) else type(condition).__name__
            per_frame = f" (one for all frames) or a {allowed[1]} tensor (one per frame)" if grid else ""
            raise ValueError(f"controlnet_cond must be a (batch, {channels}, {height}, {width}) tensor in [0, 1]{per_frame} "
                             f"for this sample (conditioning_channels={channels}, conditioning_downscale={down}); "
                             f"got {shape}.")

    def residual_scales(self, conditioning_scale: float, guess_mode: bool) -> list[float]:
        """One scale per down residual, then the middle's: constant, or logspace(-1, 0) in guess mode."""
        count = len(self.controlnet_down_blocks) + 1
        if not guess_mode:
            return [float(conditioning_scale)] * count
        return [float(s) * float(conditioning_scale) for s in torch.logspace(-1, 0, count)]

    def forward(self, sample, timestep, controlnet_cond, conditioning_scale: float = 1.0, class_labels=None,
                force_drop_ids=None, guess_mode: bool = False, return_dict: bool = True, **conditioning):
        """Residuals for the backbone at (sample, timestep) under the conditioning image `controlnet_cond`.

        Extra keywords (e.g. `encoder_hidden_states` for text-conditional backbones) go to the backbone copy.
        """
        self.check_condition(sample, controlnet_cond)
        condition = condition_frames(top_scale(sample), controlnet_cond)  # one row per frame of a video sample
        # the sample's dtype, not the weights' (stored in a low precision under layerwise casting)
        stem_residual = self.controlnet_cond_embedding(condition.to(top_scale(sample).dtype))
        skips, middle = self.backbone.control_encode(sample, timestep, class_labels=class_labels,
                                                     force_drop_ids=force_drop_ids, stem_residual=stem_residual,
                                                     **conditioning)
        *down_scales, mid_scale = self.residual_scales(conditioning_scale, guess_mode)
        down = tuple(conv(skip) * scale for conv, skip, scale in zip(self.controlnet_down_blocks, skips, down_scales))
        mid = self.controlnet_mid_block(middle) * mid_scale
        if not return_dict:
            return down, mid
        return ControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid)


class MultiControlNet(ModelMixin):
    """Several ControlNets on one backbone: each sees its own image and scale, their residuals are summed."""

    def __init__(self, controlnets):
        super().__init__()
        if len(controlnets) == 0:
            raise ValueError("MultiControlNet needs at least one ControlNet.")
        self.nets = nn.ModuleList(controlnets)

    def __len__(self):
        return len(self.nets)

    def check_backbone(self, model) -> None:
        for i, net in enumerate(self.nets):
            try:
                net.check_backbone(model)
            except ValueError as error:
                raise ValueError(f"ControlNet {i}: {error}") from error

    def forward(self, sample, timestep, controlnet_cond, conditioning_scale, class_labels=None, force_drop_ids=None,
                guess_mode: bool = False, return_dict: bool = True, **conditioning):
        if len(controlnet_cond) != len(self.nets) or len(conditioning_scale) != len(self.nets):
            raise ValueError(f"MultiControlNet with {len(self.nets)} ControlNets needs one conditioning image and one scale "
                             f"each; got {len(controlnet_cond)} images and {len(conditioning_scale)} scales.")
        down, mid = None, None
        for net, image, scale in zip(self.nets, controlnet_cond, conditioning_scale):
            d, m = net(sample, timestep, image, scale, class_labels, force_drop_ids, guess_mode, return_dict=False,
                       **conditioning)
            down = d if down is None else tuple(a + b for a, b in zip(down, d))
            mid = m if mid is None else mid + m
        if not return_dict:
            return down, mid
        return ControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid)

    def save_pretrained(self, save_directory, is_main_process: bool = True, **kwargs):
        """ControlNet i goes to `save_directory` (i = 0) or `save_directory_i`, as diffusers' MultiControlNetModel."""
        save_directory = str(save_directory).rstrip("/")
        for i, net in enumerate(self.nets):
            net.save_pretrained(save_directory if i == 0 else f"{save_directory}_{i}", is_main_process=is_main_process,
                                **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_path, **kwargs):
        """Load `path`, `path_1`, `path_2`, ... while they exist."""
        path = str(pretrained_model_path).rstrip("/")
        nets, candidate = [], path
        while os.path.isdir(candidate):
            nets.append(ControlNet.from_pretrained(candidate, **kwargs))
            candidate = f"{path}_{len(nets)}"
        if not nets:
            raise ValueError(f"No ControlNet folder at {path}: expected {path} (and {path}_1, ... for more).")
        return cls(nets)
