"""Layered U-Net: one pixel-space U-Net that denoises several resolutions of an image at once.

Layered Diffusion (Khwaja et al., arXiv 2407.06079), read top to bottom:
- **an input head at every scale**: the noisy image at resolution sample_size / 2^i enters the U-Net at
  level i through its own 3x3 conv;
- **isolated downsampling** (default): a level with an input head starts from its own input, not from the
  level above, so the low resolutions learn a coherent image of their own; the high-resolution detail
  reaches the decoder through the concatenated skips. Levels below the lowest scale (and every level when
  isolated_downsampling=False) also take the downsampled features from above;
- ResBlocks with the timestep (+ class) embedding, attention blocks at the resolutions listed in
  `attention_resolutions` and in the middle: self-attention, plus cross-attention to text-encoder hidden
  states (`encoder_hidden_states`, like diffusers' UNet2DConditionModel) when cross_attention_dim is set;
- **an output head at every scale**, so the model predicts every scale's target and the loss is a sum
  over scales (training/layered_task.py). Noise and schedules across scales: diffusion/multiscale.py.

With num_scales=1 the same code is a plain single-resolution U-Net (the benchmark's baseline).
The stages are separate methods (`encode` -> skips, `middle`, `decode`) so adapters such as ControlNet can add
residuals to the skips and the middle output.
"""

from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, ModelMixin  # noqa: F401  (names must be bound here for pipeline reloads)
from diffusers.configuration_utils import register_to_config
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from diffusers.utils import BaseOutput
from torch import nn

from ..diffusion.multiscale import PREDICTION_TYPES, scale_sizes
from ..diffusion.prediction import check_prediction_type
from ..nn.embeddings import LabelEmbedding, TimestepEmbedding, drop_labels
from ..nn.inputs import broadcast_timesteps, check_class_labels, check_sample
from ..nn.spatial_transformer import SpatialTransformer
from .checkpointing import run_block
from .control_points import ControlPoints, add_control_residuals
from .memory_format import ExactReloadMixin
from .regional_compile import RegionalCompileMixin


@dataclass
class LayeredUNetOutput(BaseOutput):
    """`sample`: the top-scale prediction; `scales`: the prediction at every scale, top first."""

    sample: torch.Tensor
    scales: list


class UNetLayer(nn.Module):
    """A ResBlock with the embedding, then (at attention resolutions) a SpatialTransformer."""

    def __init__(self, in_channels, out_channels, emb_dim, groups, dropout, num_heads=None, context_dim=None):
        super().__init__()
        self.resnet = ResnetBlock2D(in_channels=in_channels, out_channels=out_channels, temb_channels=emb_dim,
                                    groups=groups, dropout=dropout)
        self.attention = (SpatialTransformer(out_channels, num_heads, context_dim, groups)
                          if num_heads else None)

    def forward(self, x, emb, context=None, context_mask=None):
        x = self.resnet(x, emb)
        return x if self.attention is None else self.attention(x, context, context_mask)


class LayeredUNetModel(ExactReloadMixin, RegionalCompileMixin, ModelMixin, ConfigMixin):
    r"""Multi-scale pixel U-Net with an input and an output head per scale, class and/or text conditioning.

    Args:
        sample_size: top resolution (square). Level i runs at sample_size / 2^i.
        in_channels / out_channels: image channels (out_channels None = in_channels).
        num_scales: how many of the top levels have input and output heads (1 = a plain U-Net).
        block_out_channels: width of every level (its length is the number of levels).
        layers_per_block: ResBlocks per encoder level (the decoder has one more, as in diffusers' U-Nets).
        attention_resolutions: resolutions whose layers get attention blocks (the middle always has one).
        attention_head_dim: channels per head.
        cross_attention_dim: width of the text encoder's hidden states (None = no text conditioning).
        num_classes / class_dropout_prob: class conditioning (0 = none); with dropout > 0 the table has a
            null row (id num_classes) for classifier-free guidance.
        isolated_downsampling: levels with an input head start from it alone (the paper's design).
        prediction_type: what the heads predict ("v_prediction", "epsilon" or "sample"), for the pipeline.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["UNetLayer"]
    _repeated_blocks = ["UNetLayer"]
    _skip_layerwise_casting_patterns = ["norm"]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 64,
        in_channels: int = 3,
        out_channels: int | None = None,
        num_scales: int = 3,
        block_out_channels: tuple = (64, 128, 256),
        layers_per_block: int = 2,
        attention_resolutions: tuple = (16, 8),
        attention_head_dim: int = 32,
        cross_attention_dim: int | None = None,
        num_classes: int = 0,
        class_dropout_prob: float = 0.1,
        isolated_downsampling: bool = True,
        norm_num_groups: int = 32,
        dropout: float = 0.0,
        prediction_type: str = "v_prediction",
    ):
        super().__init__()
        check_prediction_type(prediction_type, supported=PREDICTION_TYPES)
        widths = list(block_out_channels)
        levels = len(widths)
        if not 1 <= num_scales <= levels:
            raise ValueError(f"num_scales must lie in [1, {levels}] (one head per U-Net level at most); got {num_scales}.")
        self.resolutions = scale_sizes(sample_size, levels)
        self.scale_sizes = self.resolutions[:num_scales]
        out_channels = out_channels or in_channels
        self.register_to_config(out_channels=out_channels)
        emb_dim = 4 * widths[0]

        def layer(level, cin, cout):
            heads = max(1, cout // attention_head_dim) if self.resolutions[level] in attention_resolutions else None
            return UNetLayer(cin, cout, emb_dim, norm_num_groups, dropout, heads, cross_attention_dim)

        # Conditioning: one timestep embedder per scale (each scale may sit at its own noise level), summed.
        self.time_embedders = nn.ModuleList([TimestepEmbedding(emb_dim, frequency_dim=widths[0])
                                             for _ in range(num_scales)])
        self.class_embedding = LabelEmbedding(num_classes, emb_dim, class_dropout_prob) if num_classes else None

        self.input_heads = nn.ModuleList([nn.Conv2d(in_channels, widths[i], 3, padding=1) for i in range(num_scales)])
        self.encoder = nn.ModuleList([
            nn.ModuleList([layer(i, widths[i], widths[i]) for _ in range(layers_per_block)]) for i in range(levels)
        ])
        # Level i -> i + 1 features go down only where level i + 1 takes them (no unused parameters under DDP).
        self.downsamplers = nn.ModuleDict({
            str(i): Downsample2D(widths[i], use_conv=True, out_channels=widths[i + 1], name="op")
            for i in range(levels - 1) if self.takes_features_from_above(i + 1, num_scales, isolated_downsampling)
        })
        mid_heads = max(1, widths[-1] // attention_head_dim)
        self.middle_layers = nn.ModuleList([
            UNetLayer(widths[-1], widths[-1], emb_dim, norm_num_groups, dropout, mid_heads, cross_attention_dim),
            UNetLayer(widths[-1], widths[-1], emb_dim, norm_num_groups, dropout),
        ])
        # decoder[i] runs at level i; every layer concatenates one skip of that level's width.
        self.decoder = nn.ModuleList([
            nn.ModuleList([layer(i, 2 * widths[i], widths[i]) for _ in range(layers_per_block + 1)]) for i in range(levels)
        ])
        self.upsamplers = nn.ModuleList([Upsample2D(widths[i + 1], use_conv=True, out_channels=widths[i])
                                         for i in range(levels - 1)])
        self.output_heads = nn.ModuleList([
            nn.Sequential(nn.GroupNorm(norm_num_groups, widths[i], eps=1e-6), nn.SiLU(),
                          nn.Conv2d(widths[i], out_channels, 3, padding=1))
            for i in range(num_scales)
        ])
        for head in self.output_heads:  # a fresh model predicts 0 at every scale
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)
        self.gradient_checkpointing = False

    # ---- inputs -------------------------------------------------------------------------------------
    def scale_inputs(self, hidden_states) -> list[torch.Tensor]:
        """The noisy image of every scale, top first, from a list/tuple (top first) or a {resolution: tensor} dict."""
        name, sizes = type(self).__name__, self.scale_sizes
        if torch.is_tensor(hidden_states):
            if len(sizes) != 1:
                raise ValueError(f"{name} has {len(sizes)} scales ({sizes}): pass a list of noisy images, top first, "
                                 f"or a dict {{resolution: tensor}}, not a single tensor.")
            hidden_states = [hidden_states]
        if isinstance(hidden_states, dict):
            unknown = sorted(int(r) for r in hidden_states if int(r) not in sizes)
            if unknown:
                raise ValueError(f"{name} has no head for resolution(s) {unknown}; its scales are {sizes}.")
            missing = [s for s in sizes if s not in {int(r) for r in hidden_states}]
            if missing:
                raise ValueError(f"{name} denoises every scale jointly: resolution(s) {missing} are missing "
                                 f"(needs {sizes}).")
            hidden_states = [hidden_states[next(r for r in hidden_states if int(r) == s)] for s in sizes]
        hidden_states = list(hidden_states)
        if len(hidden_states) != len(sizes):
            raise ValueError(f"{name} expects {len(sizes)} noisy images (resolutions {sizes}, top first), "
                             f"got {len(hidden_states)}.")
        batch = hidden_states[0].shape[0]
        for size, x in zip(sizes, hidden_states):
            check_sample(x, self.config.in_channels, 1, name)
            if tuple(x.shape[-2:]) != (size, size):
                raise ValueError(f"{name} has no head for resolution {x.shape[-2]}x{x.shape[-1]} at this position; "
                                 f"its scales are {sizes} (top first), so this entry must be {size}x{size}.")
            if x.shape[0] != batch:
                raise ValueError(f"every scale needs the same batch size; got {x.shape[0]} and {batch}.")
        return hidden_states

    def embed(self, timestep, class_labels, force_drop_ids, batch: int, device, dtype) -> torch.Tensor:
        """Sum of the per-scale timestep embeddings, plus the (possibly dropped) class embedding."""
        if isinstance(timestep, (list, tuple)):
            if len(timestep) != len(self.scale_sizes):
                raise ValueError(f"per-scale timesteps need one entry per scale ({len(self.scale_sizes)}), "
                                 f"got {len(timestep)}.")
            timesteps = [broadcast_timesteps(t, batch, device) for t in timestep]
        else:
            timesteps = [broadcast_timesteps(timestep, batch, device)] * len(self.scale_sizes)
        emb = sum(embedder(t, dtype) for embedder, t in zip(self.time_embedders, timesteps))
        config = self.config
        labels = check_class_labels(class_labels, batch, config.num_classes, config.class_dropout_prob > 0, device,
                                    type(self).__name__)
        if labels is not None:
            if (self.training and config.class_dropout_prob > 0) or force_drop_ids is not None:
                labels = drop_labels(labels, config.num_classes, config.class_dropout_prob, force_drop_ids)
            emb = emb + self.class_embedding(labels)
        return emb.to(dtype)

    # Same shape as the inflated model's camera check (absent / required / shaped): different inputs and messages.
    def check_context(self, encoder_hidden_states, batch: int):
        dim = self.config.cross_attention_dim
        if dim is None:
            if encoder_hidden_states is not None:
                raise ValueError("this model has no text conditioning (cross_attention_dim=None); "
                                 "pass encoder_hidden_states=None or build it with cross_attention_dim.")
            return None
        if encoder_hidden_states is None:
            raise ValueError(f"this model is text-conditional: pass encoder_hidden_states of shape (batch, tokens, {dim}) "
                             "(the text encoder's last hidden states; encode '' for the unconditional branch).")
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[-1] != dim:
            raise ValueError(f"encoder_hidden_states must have shape (batch, tokens, {dim}), "
                             f"got {tuple(encoder_hidden_states.shape)}: use a text encoder with hidden size {dim}.")
        if encoder_hidden_states.shape[0] != batch:
            raise ValueError(f"encoder_hidden_states has batch {encoder_hidden_states.shape[0]} for {batch} images.")
        return encoder_hidden_states

    # ---- stages -------------------------------------------------------------------------------------
    @staticmethod
    def takes_features_from_above(level: int, num_scales: int, isolated: bool) -> bool:
        """Whether encoder level `level` (> 0) starts from the downsampled features of the level above."""
        return level >= num_scales or not isolated

    def encode(self, samples, emb, context=None, context_mask=None, stem_residual=None):
        """Run the encoder; returns (lowest-level features, skips in the order they were made).

        `stem_residual` (a ControlNet's conditioning embedding) is added to the top input head's output."""
        skips, h = [], None
        for level, stage in enumerate(self.encoder):
            down = self.downsamplers[str(level - 1)] if str(level - 1) in self.downsamplers else None
            h = None if down is None else down(h)
            if level < len(samples):  # this level's own input head
                x = self.input_heads[level](samples[level])
                if level == 0 and stem_residual is not None:
                    x = x + stem_residual
                h = x if h is None else h + x
            skips.append(h)
            for layer in stage:
                h = run_block(self, layer, h, emb, context, context_mask)
                skips.append(h)
        return h, skips

    def middle(self, h, emb, context=None, context_mask=None):
        for layer in self.middle_layers:
            h = run_block(self, layer, h, emb, context, context_mask)
        return h

    def decode(self, h, skips, emb, context=None, context_mask=None) -> list[torch.Tensor]:
        """Run the decoder from the lowest level up; returns the output of every scale's head, top first."""
        skips, outputs = list(skips), []
        for level in reversed(range(len(self.decoder))):
            for layer in self.decoder[level]:
                h = run_block(self, layer, torch.cat([h, skips.pop()], dim=1), emb, context, context_mask)
            if level < len(self.output_heads):
                outputs.append(self.output_heads[level](h))
            if level > 0:
                h = self.upsamplers[level - 1](h)
        return outputs[::-1]

    def forward(
        self,
        hidden_states,
        timestep,
        encoder_hidden_states: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        force_drop_ids: torch.Tensor | None = None,
        return_dict: bool = True,
        down_block_additional_residuals=None,
        mid_block_additional_residual=None,
    ):
        r"""Predict every scale's target.

        Args:
            hidden_states: the noisy image at every scale: a list top first, or a {resolution: tensor} dict
                (a single tensor only when num_scales=1).
            timestep: model time (t * 1000 for t in [0, 1]) shared by every scale (scalar or (N,)), or a list with
                one entry per scale.
            encoder_hidden_states: text-encoder hidden states (N, tokens, cross_attention_dim) for a text model.
            class_labels: (N,) class ids for a class-conditional model (num_classes = the null class).
            encoder_attention_mask: optional (N, tokens) mask of the text tokens that may be attended.
            force_drop_ids: (N,) 1 where the class label is replaced by the null class (classifier-free dropout).
            down_block_additional_residuals, mid_block_additional_residual: ControlNet residuals, one per skip
                (in the order `encode` makes them) and one for the middle output (convdiff.models.controlnet).
        Returns:
            `LayeredUNetOutput(sample=top-scale prediction, scales=[every scale, top first])`, or that tuple.
        """
        samples, emb, context = self.prepare(hidden_states, timestep, encoder_hidden_states, class_labels, force_drop_ids)
        h, skips = self.encode(samples, emb, context, encoder_attention_mask)
        h = self.middle(h, emb, context, encoder_attention_mask)
        skips, h = add_control_residuals(skips, h, down_block_additional_residuals, mid_block_additional_residual,
                                         type(self).__name__)
        outputs = self.decode(h, skips, emb, context, encoder_attention_mask)
        if not return_dict:
            return (outputs[0], outputs)
        return LayeredUNetOutput(sample=outputs[0], scales=outputs)

    def prepare(self, hidden_states, timestep, encoder_hidden_states, class_labels, force_drop_ids):
        """Checked per-scale inputs, the embedding and the text context, shared by forward and control_encode."""
        samples = self.scale_inputs(hidden_states)
        batch = samples[0].shape[0]
        emb = self.embed(timestep, class_labels, force_drop_ids, batch, samples[0].device, samples[0].dtype)
        context = self.check_context(encoder_hidden_states, batch)
        if context is not None:
            context = context.to(samples[0].dtype)
        return samples, emb, context

    # ---- ControlNet interface (control_points.py) -------------------------------------------------------
    control_unused_modules = ("decoder", "upsamplers", "output_heads")

    def control_points(self) -> ControlPoints:
        widths = list(self.config.block_out_channels)
        per_level = 1 + self.config.layers_per_block  # the level's input, then every layer's output
        down = tuple((w, 2**level) for level, w in enumerate(widths) for _ in range(per_level))
        return ControlPoints(widths[0], down, (widths[-1], 2 ** (len(widths) - 1)))

    def control_encode(self, hidden_states, timestep, class_labels=None, force_drop_ids=None, stem_residual=None,
                       encoder_hidden_states=None, encoder_attention_mask=None):
        samples, emb, context = self.prepare(hidden_states, timestep, encoder_hidden_states, class_labels, force_drop_ids)
        h, skips = self.encode(samples, emb, context, encoder_attention_mask, stem_residual)
        return skips, self.middle(h, emb, context, encoder_attention_mask)
