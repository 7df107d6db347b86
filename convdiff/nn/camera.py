"""Camera and timestamp conditioning: per-frame vectors added to a backbone's timestep embedding.

Human4DiT embeds the camera parameters of a frame, runs them through a zero-initialised MLP and adds the
result to the diffusion timestep embedding, so they reach every block that reads the condition
(Human4DiT: Shao et al., SIGGRAPH Asia 2024, arXiv 2405.17405). We do the same for a camera vector (e.g. a
flattened 3x4 [R | t], camera_dim=12)
and for a frame's timestamp (seconds or a normalised time). Both are expanded into Fourier features first,
so the MLP can resolve small pose and time differences. A text-conditioned video model adds a clip's pooled
text embedding (CLIP's pooled output, one vector per clip) the same way, through its own MLP on the raw
vector, as Stable Video Diffusion and AnimateDiff-style models condition on a global embedding. The last
layers start at zero: an inflated model ignores cameras, times and text until training teaches it to use them.
"""

import math

import torch
from torch import nn


def fourier_features(x: torch.Tensor, num_frequencies: int) -> torch.Tensor:
    """(N, D) values -> (N, D * (2 * num_frequencies + 1)): [x, sin(2^k pi x / 8), cos(2^k pi x / 8)].

    Periods run from 16 down to 16 / 2^(num_frequencies - 1), which covers unit-scale camera parameters
    and frame times of a few seconds.
    """
    freqs = (2.0 ** torch.arange(num_frequencies, device=x.device, dtype=torch.float32)) * (math.pi / 8)
    angles = x.float()[..., None] * freqs  # (N, D, K)
    return torch.cat([x.float(), angles.sin().flatten(1), angles.cos().flatten(1)], dim=1)


def zero_output_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear -> SiLU -> Linear whose last layer starts at zero, so its output starts at zero."""
    mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, out_dim))
    nn.init.normal_(mlp[0].weight, std=0.02)
    nn.init.zeros_(mlp[0].bias)
    nn.init.zeros_(mlp[2].weight)
    nn.init.zeros_(mlp[2].bias)
    return mlp


class FrameConditionEmbedding(nn.Module):
    """Camera parameters, a timestamp and / or a text embedding per frame -> an (N, out_dim) vector, zero at
    initialisation.

    Camera, time and text have separate MLPs whose outputs add up, so a video model's trained time embedding
    carries over unchanged when it is inflated to a camera-conditioned 4D model.
    """

    def __init__(self, out_dim: int, camera_dim: int | None = None, timestamps: bool = True,
                 num_frequencies: int = 8, hidden_dim: int | None = None, text_dim: int | None = None):
        super().__init__()
        if not camera_dim and not timestamps and not text_dim:
            raise ValueError("FrameConditionEmbedding needs camera_dim > 0, timestamps=True or text_dim > 0.")
        self.camera_dim = camera_dim or 0
        self.text_dim = text_dim or 0
        self.num_frequencies = num_frequencies
        hidden_dim = hidden_dim or out_dim
        features = 2 * num_frequencies + 1
        self.camera = zero_output_mlp(self.camera_dim * features, hidden_dim, out_dim) if camera_dim else None
        self.time = zero_output_mlp(features, hidden_dim, out_dim) if timestamps else None
        self.text = zero_output_mlp(text_dim, hidden_dim, out_dim) if text_dim else None

    def forward(self, cameras: torch.Tensor | None = None, timestamps: torch.Tensor | None = None,
                text: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """cameras (N, camera_dim) when built with camera_dim; timestamps (N,) when built with timestamps;
        text (N, text_dim) when built with text_dim. `dtype` is the model's compute dtype (see
        `TimestepEmbedding.forward`)."""
        out = 0
        if self.camera is not None:
            if cameras is None or cameras.dim() != 2 or cameras.shape[1] != self.camera_dim:
                got = None if cameras is None else tuple(cameras.shape)
                raise ValueError(f"expected per-frame cameras of shape (N, {self.camera_dim}), got {got}.")
            features = fourier_features(cameras, self.num_frequencies)
            out = out + self.camera(features.to(dtype))
        if self.time is not None:
            if timestamps is None or timestamps.dim() != 1:
                got = None if timestamps is None else tuple(timestamps.shape)
                raise ValueError(f"expected per-frame timestamps of shape (N,), got {got}.")
            features = fourier_features(timestamps[:, None], self.num_frequencies)
            out = out + self.time(features.to(dtype))
        if self.text is not None:
            if text is None or text.dim() != 2 or text.shape[1] != self.text_dim:
                got = None if text is None else tuple(text.shape)
                raise ValueError(f"expected per-frame text embeddings of shape (N, {self.text_dim}), got {got}.")
            out = out + self.text(text.to(dtype))
        return out
