"""DiC: a diffusion U-Net of plain Conv3x3 blocks (Tian et al., CVPR 2025), exact to the official code.

Hourglass over `levels` resolutions (3 for the paper's 5-entry depth list), widths hidden_size * mult_channels.
Ideas from the paper, each visible below:
- sparse skips: every `skip_stride`-th encoder block (counted from the end) is concatenated into the input of
  every `skip_stride`-th decoder block at the same resolution (mirror pairs);
- stage-specific embeddings: one timestep embedder and label table per level;
- mid-block injection: the condition scales/shifts after the block's second norm, not at its input;
- conditional gating: the block output is gated per channel (gate, scale, shift chunk order; the gate
  projection keeps xavier init, unlike adaLN-Zero -- the official zeroing loop misses it).
"""

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin  # noqa: F401  (names must be bound here for pipeline reloads)
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from ..diffusion.prediction import check_prediction_type
from ..nn.embeddings import StageConditioning
from ..nn.fast_conv import run_conv
from ..nn.inputs import check_inputs, resolve_out_channels
from ..nn.modulation import AdaLNModulation, add_gated, modulate
from ..nn.norms import group_norm
from ..nn.resample import ConvStem, ModulatedConvHead, PixelShuffleUp, PixelUnshuffleDown, init_like_official
from .checkpointing import run_block
from .control_points import ControlPoints, add_control_residuals
from .memory_format import ChannelsLastMixin, like_caller, to_channels_last
from .regional_compile import RegionalCompileMixin


class DiCBlock(nn.Module):
    """GN -> GELU -> Conv3x3 -> GN -> modulate -> GELU -> Conv3x3 -> gate, plus a (1x1) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, max_groups: int = 32, min_channels_per_group: int = 4):
        super().__init__()
        self.norm0 = group_norm(in_channels, max_groups, min_channels_per_group)
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.modulation = AdaLNModulation(out_channels, out_channels, chunks=3, zero_init=False)
        self.norm1 = group_norm(out_channels, max_groups, min_channels_per_group)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = run_conv(self.conv0, F.gelu(self.norm0(x)))
        gate_values, scale, shift = self.modulation(cond)
        h = F.gelu(modulate(self.norm1(h), shift, scale))
        h = run_conv(self.conv1, h)
        return add_gated(run_conv(self.shortcut, x), gate_values, h)


def skip_sources(depth: int, skip_stride: int):
    """Encoder block indices whose outputs are kept for the decoder: the last one and every stride-th before it."""
    return [b for b in range(depth) if (depth - 1 - b) % skip_stride == 0]


def skip_targets(depth: int, skip_stride: int):
    """Decoder block indices that take a concatenated skip."""
    return [j for j in range(depth) if j % skip_stride == 0]


class DiCModel(ChannelsLastMixin, RegionalCompileMixin, ModelMixin, ConfigMixin):
    _supports_gradient_checkpointing = True
    _no_split_modules = ["DiCBlock"]
    _repeated_blocks = ["DiCBlock"]
    _skip_layerwise_casting_patterns = ["norm"]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 4,
        out_channels: int | None = None,
        learn_sigma: bool = True,
        hidden_size: int = 384,
        depth: tuple = (7, 7, 8, 7, 7),
        mult_channels: tuple = (1, 2, 4, 2, 1),
        skip_stride: int = 3,
        num_groups: int = 32,
        min_channels_per_group: int = 4,
        num_classes: int = 1000,
        class_dropout_prob: float = 0.1,
        prediction_type: str = "epsilon",
    ):
        super().__init__()
        check_prediction_type(prediction_type, learn_sigma)
        depth, mult = list(depth), list(mult_channels)
        if len(depth) % 2 == 0 or len(depth) != len(mult):
            raise ValueError(f"depth and mult_channels need the same odd length (encoder, middle, decoder); got {depth} and {mult}.")
        levels = (len(depth) + 1) // 2
        if depth[: levels - 1] != depth[levels:][::-1]:
            raise ValueError(f"DiC pairs skips mirror-wise, so depth must be symmetric (e.g. [6, 6, 5, 6, 6]); got {depth}.")
        expected_out = resolve_out_channels(in_channels, out_channels, learn_sigma)
        self.register_to_config(out_channels=expected_out)
        self.levels = levels
        self.stride = 2 ** (levels - 1)
        widths = [hidden_size * m for m in mult]
        groups = dict(max_groups=num_groups, min_channels_per_group=min_channels_per_group)

        self.stem = ConvStem(in_channels, widths[0])
        self.conditioning = StageConditioning(widths[:levels], num_classes, class_dropout_prob)
        self.encoder = nn.ModuleList(
            [nn.ModuleList([DiCBlock(widths[i], widths[i], **groups) for _ in range(depth[i])]) for i in range(levels - 1)]
        )
        self.downsamplers = nn.ModuleList([PixelUnshuffleDown(widths[i], widths[i + 1]) for i in range(levels - 1)])
        self.middle = nn.ModuleList([DiCBlock(widths[levels - 1], widths[levels - 1], **groups) for _ in range(depth[levels - 1])])
        self.upsamplers = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for k in range(levels - 1):
            stage, mirror = levels + k, levels - 2 - k
            self.upsamplers.append(PixelShuffleUp(widths[stage - 1], widths[stage]))
            takes_skip = skip_targets(depth[stage], skip_stride)
            self.decoder.append(nn.ModuleList([
                DiCBlock(widths[stage] + (widths[mirror] if j in takes_skip else 0), widths[stage], **groups)
                for j in range(depth[stage])
            ]))
        self.output_conv = nn.Conv2d(widths[-1], widths[-1], 3, padding=1)
        self.head = ModulatedConvHead(widths[-1], expected_out, widths[-1])
        # Decoder stages reuse the encoder conditions mirror-wise; the last one uses the level of matching width.
        self.decoder_condition_index = list(range(levels - 2, 0, -1)) + [mult[:levels].index(mult[-1])]
        self.gradient_checkpointing = False
        init_like_official(self)
        self.use_channels_last()

    def forward(self, hidden_states, timestep, class_labels=None, force_drop_ids=None, return_dict: bool = True,
                down_block_additional_residuals=None, mid_block_additional_residual=None):
        """Conditions -> stem, encoder, middle -> (+ ControlNet residuals, as diffusers' UNet adds them) -> decoder
        with the sparse skips -> head. NHWC inside (memory_format.py); the output comes back in the caller's layout."""
        conditions = self.embed_conditions(hidden_states, timestep, class_labels, force_drop_ids)
        skips, x = self.encode(to_channels_last(hidden_states), conditions)
        if down_block_additional_residuals is not None or mid_block_additional_residual is not None:
            skips, x = add_control_residuals(skips, x, down_block_additional_residuals, mid_block_additional_residual,
                                             "DiCModel")
        skip_stride = self.config.skip_stride
        for up, stage, level in zip(self.upsamplers, self.decoder, self.decoder_condition_index):
            x = up(x)
            takes_skip = skip_targets(len(stage), skip_stride)
            for j, block in enumerate(stage):
                if j in takes_skip:  # the sparse skips, last kept first (mirror-wise)
                    x = torch.cat([x, skips.pop()], dim=1)
                x = run_block(self, block, x, conditions[level])
        out = self.head(self.output_conv(x), conditions[self.decoder_condition_index[-1]])
        out = like_caller(out, hidden_states)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    def embed_conditions(self, hidden_states, timestep, class_labels, force_drop_ids=None) -> list:
        """Checked inputs -> one condition (timestep + label embedding) per encoder level's width."""
        timesteps, labels = check_inputs(hidden_states, timestep, class_labels, self.config, self.stride, "DiCModel")
        conditions = self.conditioning(timesteps, labels, force_drop_ids, hidden_states.dtype)
        return [c.to(hidden_states.dtype) for c in conditions]

    def encode(self, x, conditions, stem_residual=None):
        """Stem (plus a ControlNet's conditioning image), encoder and middle: (the skip tensors kept every
        `skip_stride` blocks, in encoder order; the middle output)."""
        skip_stride = self.config.skip_stride
        x = self.stem(x)
        if stem_residual is not None:
            x = x + stem_residual
        skips = []
        for level, (stage, down) in enumerate(zip(self.encoder, self.downsamplers)):
            keep = skip_sources(len(stage), skip_stride)
            for b, block in enumerate(stage):
                x = run_block(self, block, x, conditions[level])
                if b in keep:
                    skips.append(x)
            x = down(x)
        for block in self.middle:
            x = run_block(self, block, x, conditions[-1])
        return skips, x

    # ---- ControlNet interface (control_points.py): the copy runs the encoder half ------------------------
    def control_encode(self, hidden_states, timestep, class_labels=None, force_drop_ids=None, stem_residual=None):
        conditions = self.embed_conditions(hidden_states, timestep, class_labels, force_drop_ids)
        return self.encode(to_channels_last(hidden_states), conditions, stem_residual)

    control_unused_modules = ("upsamplers", "decoder", "output_conv", "head")

    def control_points(self) -> ControlPoints:
        widths = [self.config.hidden_size * m for m in self.config.mult_channels]
        down = [(widths[level], 2**level) for level, stage in enumerate(self.encoder)
                for _ in skip_sources(len(stage), self.config.skip_stride)]
        return ControlPoints(widths[0], tuple(down), (widths[self.levels - 1], self.stride))
