"""Timestep and class-label embeddings shared by every convdiff backbone.

The timestep formula follows the official DiT/DiC/DiCo code (facebookresearch/DiT `models.py`; docs/parity.md):
frequencies exp(-ln(max_period) * i / half) -- divided by `half`, not `half - 1` as diffusers' `Timesteps` with
`downscale_freq_shift=1` does -- laid out cos first. Keeping it exact lets official weights convert with
identical outputs.
"""

import math

import torch
from torch import nn


def timestep_sinusoid(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(N,) timesteps (int or float) -> (N, dim) float32 features laid out [cos | sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class TimestepEmbedding(nn.Module):
    """Sinusoid -> Linear -> SiLU -> Linear, the DiT timestep embedder (N(0, 0.02) init)."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.init_weights()

    def init_weights(self):
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, timesteps: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """`dtype` is the dtype the model computes in (its hidden states'), as diffusers' DiT passes `hidden_dtype`
        to its embedder. Not the weights' dtype: under diffusers' layerwise casting the weights are stored in a
        low-precision dtype (fp16, bf16, fp8) and upcast only while each layer runs."""
        features = timestep_sinusoid(timesteps, self.frequency_dim)
        return self.mlp(features.to(dtype))


def drop_labels(labels: torch.Tensor, null_class: int, dropout_prob: float, force_drop_ids=None) -> torch.Tensor:
    """Replace labels by the null class with probability `dropout_prob` (or where force_drop_ids == 1)."""
    if force_drop_ids is not None:
        drop = force_drop_ids == 1
    else:
        drop = torch.rand(labels.shape[0], device=labels.device) < dropout_prob
    return torch.where(drop, torch.full_like(labels, null_class), labels)


class LabelEmbedding(nn.Module):
    """Class table with one extra null row (id = num_classes) when classifier-free dropout is on."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float = 0.1):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)
        self.init_weights()

    def init_weights(self):
        nn.init.normal_(self.embedding_table.weight, std=0.02)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


class StageConditioning(nn.Module):
    """One timestep embedder and one label table per width, as DiC and DiCo use per resolution level.

    Label dropout is drawn once and the same dropped ids feed every level (both official codes do this).
    Returns the list of conditions c_k = t_emb_k + y_emb_k, one per width. num_classes=0 gives an
    unconditional model (time only).
    """

    def __init__(self, widths, num_classes: int, class_dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.class_dropout_prob = class_dropout_prob
        self.time_embedders = nn.ModuleList([TimestepEmbedding(w) for w in widths])
        self.label_embedders = nn.ModuleList(
            [LabelEmbedding(num_classes, w, class_dropout_prob) for w in widths] if num_classes > 0 else []
        )

    def forward(self, timesteps: torch.Tensor, labels=None, force_drop_ids=None, dtype: torch.dtype = torch.float32):
        conditions = [embed(timesteps, dtype) for embed in self.time_embedders]
        if self.num_classes > 0:
            if (self.training and self.class_dropout_prob > 0) or force_drop_ids is not None:
                labels = drop_labels(labels, self.num_classes, self.class_dropout_prob, force_drop_ids)
            conditions = [c + embed(labels) for c, embed in zip(conditions, self.label_embedders)]
        return conditions
