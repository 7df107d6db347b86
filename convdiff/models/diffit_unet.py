"""Image-space DiffiT (Hatamizadeh et al., ECCV 2024, §3.2 / App. H.1): a U-shaped denoiser of DiffiT ResBlocks.

Not released by the authors; built from the paper (arXiv 2312.02139, §3.2 and App. H):
- a 3x3 conv tokenizer (128 channels), then `block_out_channels` per resolution (256 kept constant);
- the residual cell is the DiffiT ResBlock: h = Conv3x3(Swish(GN(x))); x = DiffiTBlock(h, t) + x, where the
  DiffiTBlock is TMSA in local non-overlapping windows (no shift; window 4 for CIFAR-10, 8 for FFHQ-64, with a
  learned relative position bias per window) followed by an MLP;
- conv downsampling (3x3, stride 2) and upsampling (nearest x2 + 3x3 conv), a skip at every resolution
  (the encoder output at that resolution, concatenated into the decoder's first block there).
The stages are explicit (`_encode` -> skips + middle, `_decode`), so adapters can add residuals between them.
The paper gives two block counts (App. H: L = 4 per stage; §5: 2,2,2 / 1,2,2,2); the registry uses App. H.
"""

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin  # noqa: F401  (names must be bound here for pipeline reloads)
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from einops import rearrange
from torch import nn

from ..diffusion.prediction import check_prediction_type
from ..nn.embeddings import LabelEmbedding, TimestepEmbedding
from ..nn.inputs import resolve_out_channels
from ..nn.norms import group_norm
from .checkpointing import run_block
from .control_points import ControlPoints, add_control_residuals
from .convfusion import ConversionRecordMixin
from .diffit import DiffiTBlock, run_in_windows, time_token
from .memory_format import ExactReloadMixin
from .regional_compile import RegionalCompileMixin


class DiffiTResBlock(nn.Module):
    """x -> Conv3x3(SiLU(GN(x))) -> windowed DiffiTBlock(., temb) -> + shortcut(x)."""

    def __init__(self, in_channels: int, out_channels: int, num_heads: int, window_size: int, temb_dim: int,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.window_size = window_size
        self.norm = group_norm(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.transformer = DiffiTBlock(out_channels, num_heads, mlp_ratio, window_size=window_size, temb_dim=temb_dim)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv(F.silu(self.norm(x)))
        height, width = h.shape[-2:]
        tokens = rearrange(h, "b c h w -> b (h w) c")
        tokens = run_in_windows(self.transformer, tokens, temb, height, width, self.window_size)
        return rearrange(tokens, "b (h w) c -> b c h w", h=height) + self.shortcut(x)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DiffiTUNetModel(ConversionRecordMixin, ExactReloadMixin, RegionalCompileMixin, ModelMixin, ConfigMixin):
    _supports_gradient_checkpointing = True
    _no_split_modules = ["DiffiTResBlock"]
    _repeated_blocks = ["DiffiTResBlock"]
    _skip_layerwise_casting_patterns = ["norm"]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 3,
        out_channels: int | None = None,
        learn_sigma: bool = False,
        base_channels: int = 128,
        block_out_channels: tuple = (256, 256, 256),
        layers_per_block: tuple = (4, 4, 4),
        mid_layers: int = 2,
        num_heads: int = 4,
        window_size: int = 4,
        mlp_ratio: float = 4.0,
        time_embed_dim: int | None = None,
        num_classes: int = 0,
        class_dropout_prob: float = 0.1,
        prediction_type: str = "epsilon",
    ):
        super().__init__()
        check_prediction_type(prediction_type, learn_sigma)
        widths, depths = list(block_out_channels), list(layers_per_block)
        if len(widths) != len(depths) or not widths:
            raise ValueError(f"block_out_channels and layers_per_block need one entry per resolution; got {widths} "
                             f"and {depths}.")
        expected_out = resolve_out_channels(in_channels, out_channels, learn_sigma)
        self.register_to_config(out_channels=expected_out)
        self.levels = len(widths)
        # every level's grid must split into whole windows: the input side must be a multiple of this
        self.stride = 2 ** (self.levels - 1) * window_size
        if sample_size % self.stride:
            raise ValueError(f"sample_size {sample_size} must be divisible by {self.stride} (window {window_size} at "
                             f"the {2 ** (self.levels - 1)}x downsampled level); the window size does not divide the "
                             "grid of some level: choose a smaller window or fewer levels.")
        temb_dim = time_embed_dim or widths[0]
        block = dict(num_heads=num_heads, window_size=window_size, temb_dim=temb_dim, mlp_ratio=mlp_ratio)

        self.t_embedder = TimestepEmbedding(temb_dim)
        self.y_embedder = LabelEmbedding(num_classes, temb_dim, class_dropout_prob) if num_classes > 0 else None
        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)  # the 3x3 conv tokenizer
        self.encoder, self.downsamplers = nn.ModuleList(), nn.ModuleList()
        channels = base_channels
        for level, (width, depth) in enumerate(zip(widths, depths)):
            stage = nn.ModuleList()
            for _ in range(depth):
                stage.append(DiffiTResBlock(channels, width, **block))
                channels = width
            self.encoder.append(stage)
            if level < self.levels - 1:
                self.downsamplers.append(Downsample(channels))
        self.middle = nn.ModuleList([DiffiTResBlock(channels, channels, **block) for _ in range(mid_layers)])
        self.decoder, self.upsamplers = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(self.levels)):
            width, skip = widths[level], widths[level]
            stage = nn.ModuleList()
            for j in range(depths[level]):
                stage.append(DiffiTResBlock(channels + (skip if j == 0 else 0), width, **block))
                channels = width
            self.decoder.append(stage)
            if level > 0:
                self.upsamplers.append(Upsample(channels))
        self.out_norm = group_norm(channels)
        self.out_conv = nn.Conv2d(channels, expected_out, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)  # a fresh model predicts 0
        nn.init.zeros_(self.out_conv.bias)
        self.gradient_checkpointing = False

    # ---- forward, in three stages: condition -> encoder + middle (skips) -> decoder -----------------------
    def forward(self, hidden_states, timestep, class_labels=None, force_drop_ids=None, return_dict: bool = True,
                down_block_additional_residuals=None, mid_block_additional_residual=None):
        temb = self._condition(hidden_states, timestep, class_labels, force_drop_ids)
        skips, x = self._encode(hidden_states, temb)
        skips, x = add_control_residuals(skips, x, down_block_additional_residuals, mid_block_additional_residual,
                                         type(self).__name__)  # ControlNet residuals (None: the plain model)
        out = self._decode(x, skips, temb)
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)

    def _condition(self, hidden_states, timestep, class_labels, force_drop_ids):
        """Checked inputs -> the time token c = t_emb (+ y_emb) fed to every TMSA."""
        return time_token(self, hidden_states, timestep, class_labels, force_drop_ids, self.stride)

    def _encode(self, hidden_states, temb, stem_residual=None):
        """Tokenizer, encoder and middle; returns (one skip per resolution, finest first; middle output)."""
        x = self.stem(hidden_states)
        if stem_residual is not None:  # a ControlNet's conditioning embedding
            x = x + stem_residual
        skips = []
        for level, stage in enumerate(self.encoder):
            for block in stage:
                x = run_block(self, block, x, temb)
            skips.append(x)
            if level < self.levels - 1:
                x = self.downsamplers[level](x)
        for block in self.middle:
            x = run_block(self, block, x, temb)
        return skips, x

    def _decode(self, x, skips, temb):
        """Coarsest to finest: concatenate that resolution's skip, blocks, upsample; then the output head."""
        skips = list(skips)
        for index, stage in enumerate(self.decoder):
            x = torch.cat([x, skips.pop()], dim=1)
            for block in stage:
                x = run_block(self, block, x, temb)
            if index < len(self.upsamplers):
                x = self.upsamplers[index](x)
        return self.out_conv(F.silu(self.out_norm(x)))

    # ---- ControlNet interface (control_points.py) -------------------------------------------------------
    control_unused_modules = ("decoder", "upsamplers", "out_norm", "out_conv")

    def control_points(self) -> ControlPoints:
        widths = list(self.config.block_out_channels)
        down = tuple((w, 2**level) for level, w in enumerate(widths))
        return ControlPoints(self.config.base_channels, down, (widths[-1], 2 ** (self.levels - 1)))

    def control_encode(self, hidden_states, timestep, class_labels=None, force_drop_ids=None, stem_residual=None):
        temb = self._condition(hidden_states, timestep, class_labels, force_drop_ids)
        return self._encode(hidden_states, temb, stem_residual)
