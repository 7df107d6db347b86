"""A tiny Stable-Diffusion-style teacher for the MNIST ΔConvFusion demo.

An `UNet2DConditionModel` (self-attention + cross-attention transformer blocks, as in SD1.5) whose
`encoder_hidden_states` come from a learned label embedding instead of a text encoder: each class is a
sequence of `num_tokens` context vectors, and class id `num_classes` is the null class for guidance.
It follows convdiff's class-conditional interface, so the training loop and `ClassConditionalPipeline`
drive it, and `convfusion` in its config (written by `convert_self_attention`) rebuilds a converted student
on `from_pretrained`.
"""

import torch
from diffusers import ConfigMixin, ModelMixin, UNet2DConditionModel  # noqa: F401 (names for model_index.json)
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from .convfusion import ConversionRecordMixin
from .memory_format import ExactReloadMixin


class LabelConditionedUNet(ConversionRecordMixin, ExactReloadMixin, ModelMixin, ConfigMixin):
    _supports_gradient_checkpointing = True
    _no_split_modules = ["BasicTransformerBlock", "ResnetBlock2D"]  # the units FSDP shards (training/engines.py)

    @register_to_config
    def __init__(self, sample_size: int = 28, in_channels: int = 1, out_channels: int = 1, num_classes: int = 10,
                 class_dropout_prob: float = 0.1, block_out_channels=(32, 64, 64), layers_per_block: int = 1,
                 attention_levels=(True, True, False), num_attention_heads: int = 4, cross_attention_dim: int = 64,
                 num_tokens: int = 4, norm_num_groups: int = 8):
        super().__init__()
        if len(attention_levels) != len(block_out_channels):
            raise ValueError(f"attention_levels needs one flag per level ({len(block_out_channels)}), got {attention_levels}.")
        down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels]
        up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels)]
        self.unet = UNet2DConditionModel(
            sample_size=sample_size, in_channels=in_channels, out_channels=out_channels, down_block_types=down,
            up_block_types=up, block_out_channels=list(block_out_channels), layers_per_block=layers_per_block,
            cross_attention_dim=cross_attention_dim, attention_head_dim=num_attention_heads,
            norm_num_groups=norm_num_groups)
        # One extra row: the null class used for label dropout and classifier-free guidance.
        self.label_tokens = nn.Embedding(num_classes + 1, num_tokens * cross_attention_dim)
        nn.init.normal_(self.label_tokens.weight, std=0.02)

    def enable_gradient_checkpointing(self, *args, **kwargs):
        self.unet.enable_gradient_checkpointing(*args, **kwargs)

    def forward(self, hidden_states, timestep, class_labels=None, force_drop_ids=None, return_dict: bool = True):
        batch = hidden_states.shape[0]
        if class_labels is None:
            class_labels = torch.full((batch,), self.config.num_classes, device=hidden_states.device)
        class_labels = torch.as_tensor(class_labels, device=hidden_states.device).long().expand(batch)
        if force_drop_ids is not None:
            class_labels = torch.where(force_drop_ids.bool(), torch.full_like(class_labels, self.config.num_classes),
                                       class_labels)
        context = self.label_tokens(class_labels).view(batch, self.config.num_tokens, self.config.cross_attention_dim)
        timestep = torch.as_tensor(timestep, device=hidden_states.device).expand(batch)
        out = self.unet(hidden_states, timestep, encoder_hidden_states=context.to(hidden_states.dtype)).sample
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)
