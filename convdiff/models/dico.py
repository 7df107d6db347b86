"""DiCo: diffusion ConvNets with compact channel attention (Ai et al., NeurIPS 2025), exact to the official code.

A 3-level U-shape at widths H, 2H, 4H with one concat skip per resolution (then a 1x1 reduce). The last
decoder stage and the head run at 2H and reuse the 2H condition. Each block is DiT's adaLN-Zero block with
the attention replaced by the conv module 1x1 -> depthwise 3x3 -> GELU -> compact channel attention -> 1x1,
and the MLP by a 1x1-conv FFN.
"""

import torch
from diffusers import ConfigMixin, ModelMixin  # noqa: F401  (names must be bound here for pipeline reloads)
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from ..diffusion.prediction import check_prediction_type
from ..nn.channel_attention import CompactChannelAttention
from ..nn.embeddings import StageConditioning
from ..nn.fast_conv import run_conv
from ..nn.inputs import check_inputs, resolve_out_channels
from ..nn.modulation import AdaLNModulation, add_gated
from ..nn.norm_modulate import norm_modulate
from ..nn.norms import LayerNorm2d
from ..nn.resample import ConvStem, ModulatedConvHead, PixelShuffleUp, PixelUnshuffleDown, init_like_official
from .checkpointing import run_block
from .control_points import ControlPoints, add_control_residuals
from .memory_format import ChannelsLastMixin, like_caller, to_channels_last
from .regional_compile import RegionalCompileMixin


class DiCoBlock(nn.Module):
    """x + gate1 * ConvModule(modulate(LN(x))); x + gate2 * FFN(modulate(LN(x)))."""

    def __init__(self, channels: int, mlp_ratio: float = 2.0):
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.norm1 = LayerNorm2d(channels)
        self.pointwise_in = nn.Conv2d(channels, channels, 1)
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.channel_attention = CompactChannelAttention(channels)
        self.pointwise_out = nn.Conv2d(channels, channels, 1)
        self.norm2 = LayerNorm2d(channels)
        self.ffn_in = nn.Conv2d(channels, hidden, 1)
        self.ffn_out = nn.Conv2d(hidden, channels, 1)
        self.modulation = AdaLNModulation(channels, channels, chunks=6, zero_init=True)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond)
        h = run_conv(self.pointwise_in, norm_modulate(self.norm1, x, shift1, scale1))
        h = run_conv(self.depthwise, h, gelu=True)
        x = add_gated(x, gate1, run_conv(self.pointwise_out, self.channel_attention(h)))
        h = run_conv(self.ffn_in, norm_modulate(self.norm2, x, shift2, scale2), gelu=True)
        return add_gated(x, gate2, run_conv(self.ffn_out, h))


class DiCoModel(ChannelsLastMixin, RegionalCompileMixin, ModelMixin, ConfigMixin):
    _supports_gradient_checkpointing = True
    _no_split_modules = ["DiCoBlock"]
    _repeated_blocks = ["DiCoBlock"]
    _skip_layerwise_casting_patterns = ["norm"]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 4,
        out_channels: int | None = None,
        learn_sigma: bool = True,
        hidden_size: int = 416,
        depth: tuple = (9, 9, 10, 9, 9),
        mlp_ratio: float = 2.0,
        num_classes: int = 1000,
        class_dropout_prob: float = 0.1,
        prediction_type: str = "epsilon",
    ):
        super().__init__()
        check_prediction_type(prediction_type, learn_sigma)
        if len(depth) != 5:
            raise ValueError(f"DiCo has 3 levels, so depth lists 5 stages [enc1, enc2, middle, dec2, dec1]; got {list(depth)}.")
        expected_out = resolve_out_channels(in_channels, out_channels, learn_sigma)
        self.register_to_config(out_channels=expected_out)
        self.stride = 4
        h = hidden_size

        def stage(width, n):
            return nn.ModuleList([DiCoBlock(width, mlp_ratio) for _ in range(n)])

        self.stem = ConvStem(in_channels, h)
        self.conditioning = StageConditioning([h, 2 * h, 4 * h], num_classes, class_dropout_prob)
        self.encoder_1 = stage(h, depth[0])
        self.down_1 = PixelUnshuffleDown(h, 2 * h)
        self.encoder_2 = stage(2 * h, depth[1])
        self.down_2 = PixelUnshuffleDown(2 * h, 4 * h)
        self.middle = stage(4 * h, depth[2])
        self.up_2 = PixelShuffleUp(4 * h, 2 * h)
        self.reduce_2 = nn.Conv2d(4 * h, 2 * h, 1)
        self.decoder_2 = stage(2 * h, depth[3])
        self.up_1 = PixelShuffleUp(2 * h, h)
        self.reduce_1 = nn.Conv2d(2 * h, 2 * h, 1)
        self.decoder_1 = stage(2 * h, depth[4])
        self.head = ModulatedConvHead(2 * h, expected_out, 2 * h)
        self.gradient_checkpointing = False
        init_like_official(self)
        self.use_channels_last()

    def forward(self, hidden_states, timestep, class_labels=None, force_drop_ids=None, return_dict: bool = True,
                down_block_additional_residuals=None, mid_block_additional_residual=None):
        """Conditions -> stem, encoder, middle -> (+ ControlNet residuals, as diffusers' UNet adds them) -> decoder
        at 2H -> head. NHWC inside (memory_format.py); the output comes back in the caller's layout."""
        c1, c2, c3 = self.embed_conditions(hidden_states, timestep, class_labels, force_drop_ids)
        (enc1, enc2), x = self.encode(to_channels_last(hidden_states), (c1, c2, c3))
        if down_block_additional_residuals is not None or mid_block_additional_residual is not None:
            (enc1, enc2), x = add_control_residuals([enc1, enc2], x, down_block_additional_residuals,
                                                    mid_block_additional_residual, "DiCoModel")
        x = run_conv(self.reduce_2, torch.cat([self.up_2(x), enc2], dim=1))
        x = self._stage(self.decoder_2, x, c2)
        x = run_conv(self.reduce_1, torch.cat([self.up_1(x), enc1], dim=1))
        x = self._stage(self.decoder_1, x, c2)  # the last stage and the head reuse the 2H condition (official code)
        out = like_caller(self.head(x, c2), hidden_states)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    def embed_conditions(self, hidden_states, timestep, class_labels, force_drop_ids=None) -> list:
        """Checked inputs -> one condition (timestep + label embedding) per width: H, 2H, 4H."""
        timesteps, labels = check_inputs(hidden_states, timestep, class_labels, self.config, self.stride, "DiCoModel")
        conditions = self.conditioning(timesteps, labels, force_drop_ids, hidden_states.dtype)
        return [c.to(hidden_states.dtype) for c in conditions]

    def encode(self, x, conditions, stem_residual=None):
        """Stem (plus a ControlNet's conditioning image), encoder and middle: ([enc1, enc2], middle output)."""
        c1, c2, c3 = conditions
        x = self.stem(x)
        if stem_residual is not None:
            x = x + stem_residual
        enc1 = self._stage(self.encoder_1, x, c1)
        enc2 = self._stage(self.encoder_2, self.down_1(enc1), c2)
        return [enc1, enc2], self._stage(self.middle, self.down_2(enc2), c3)

    def _stage(self, blocks, x, cond):
        for block in blocks:
            x = run_block(self, block, x, cond)
        return x

    # ---- ControlNet interface (control_points.py): the copy runs the encoder half ------------------------
    def control_encode(self, hidden_states, timestep, class_labels=None, force_drop_ids=None, stem_residual=None):
        conditions = self.embed_conditions(hidden_states, timestep, class_labels, force_drop_ids)
        return self.encode(to_channels_last(hidden_states), conditions, stem_residual)

    control_unused_modules = ("up_2", "reduce_2", "decoder_2", "up_1", "reduce_1", "decoder_1", "head")

    def control_points(self) -> ControlPoints:
        h = self.config.hidden_size
        return ControlPoints(h, ((h, 1), (2 * h, 2)), (4 * h, 4))
