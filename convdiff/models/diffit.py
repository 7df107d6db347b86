"""DiffiT (Hatamizadeh et al., ECCV 2024), the released latent model, exact to the official code.

An isotropic ViT over 2x2 latent patches (paper §3.1-3.2 and the released NVlabs/DiffiT code):
- the time token c = t_emb + y_emb enters every block through TMSA: projected (C -> 3C) and added into
  q, k and v; no adaLN, no gates anywhere;
- attention is global over the whole token grid, with a learned relative position bias over that grid,
  on top of a fixed 2D sin-cos absolute embedding added after patchify;
- the final layer is unconditioned: LN -> SiLU -> Linear -> unpatchify.

Module names follow the official checkpoint (x_embedder, t_embedder, y_embedder, pos_embed, blocks.N.attn,
blocks.N.mlp, final_layer), so `convdiff.convert.diffit` only renames the bias table. `pos_embed` is a
frozen Parameter as in the official code, so parameter counts match it (561.33M for DiffiT-XL at 256).
`window_size` smaller than the token grid gives non-overlapping windowed attention instead (not in the
released model).
"""

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin  # noqa: F401  (names must be bound here for pipeline reloads)
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from einops import rearrange
from torch import nn

from ..diffusion.prediction import check_prediction_type
from ..nn.embeddings import LabelEmbedding, TimestepEmbedding, drop_labels
from ..nn.inputs import check_inputs, resolve_out_channels
from ..nn.position import sincos_2d_position_embedding
from ..nn.resample import init_like_official, xavier_like_linear
from ..nn.tmsa import TimeDependentSelfAttention
from ..nn.window import check_window, repeat_per_window, window_merge, window_partition
from .checkpointing import run_block
from .control_points import ControlPoints, check_in_flight_residuals
from .convfusion import ConversionRecordMixin
from .memory_format import ExactReloadMixin
from .regional_compile import RegionalCompileMixin


class Mlp(nn.Module):
    """Linear -> GELU(tanh) -> Linear (timm's Mlp as DiT and DiffiT use it)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiffiTBlock(nn.Module):
    """x + TMSA(LN(x), c); x + MLP(LN(x)). LN without affine, eps 1e-6.

    Works on token sequences (B, L, C): the whole grid (global attention) or one window of it. `attn` is the
    self-attention (a TimeDependentSelfAttention with `qkv`, `qkv_temb`, `proj`, `position_bias`).
    """

    # its rows are windows of a frame (run_in_windows): video inflation gathers them per frame (inflation.py)
    runs_on_windows = True

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, window_size=None,
                 temb_dim: int | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = TimeDependentSelfAttention(hidden_size, num_heads, temb_dim=temb_dim, window_size=window_size)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), temb)
        return x + self.mlp(self.norm2(x))


def run_in_windows(block: nn.Module, x: torch.Tensor, temb: torch.Tensor, height: int, width: int,
                   window_size: int) -> torch.Tensor:
    """Apply a per-token/per-window block to (B, H*W, C) tokens window by window (identity reshape for a
    window covering the whole grid)."""
    if window_size == height == width:
        return block(x, temb)
    windows = window_partition(x.view(x.shape[0], height, width, -1), window_size)
    out = block(windows, repeat_per_window(temb, height, width, window_size))
    return window_merge(out, height, width, window_size).flatten(1, 2)


def time_token(model, hidden_states, timestep, class_labels, force_drop_ids, stride: int) -> torch.Tensor:
    """Check a DiffiT model's inputs and return its time token c = t_emb (+ y_emb, labels dropped for CFG)."""
    config = model.config
    timesteps, labels = check_inputs(hidden_states, timestep, class_labels, config, stride, type(model).__name__)
    temb = model.t_embedder(timesteps, hidden_states.dtype)
    if labels is not None:
        if (model.training and config.class_dropout_prob > 0) or force_drop_ids is not None:
            labels = drop_labels(labels, config.num_classes, config.class_dropout_prob, force_drop_ids)
        temb = temb + model.y_embedder(labels)
    return temb.to(hidden_states.dtype)


class PatchEmbed(nn.Module):
    """p x p patches -> tokens (B, H/p * W/p, C) with a strided conv (initialised like a Linear)."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)

    def init_weights(self):
        xavier_like_linear(self.proj)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class FinalLayer(nn.Module):
    """LN (no affine) -> SiLU -> Linear to p*p*out_channels; unconditioned, zero-initialised."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)

    def init_weights(self):
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x):
        return self.linear(F.silu(self.norm_final(x)))


class DiffiTModel(ConversionRecordMixin, ExactReloadMixin, RegionalCompileMixin, ModelMixin, ConfigMixin):
    _supports_gradient_checkpointing = True
    _no_split_modules = ["DiffiTBlock"]
    _repeated_blocks = ["DiffiTBlock"]
    _skip_layerwise_casting_patterns = ["pos_embed", "norm"]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        out_channels: int | None = None,
        learn_sigma: bool = True,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        window_size: int | None = None,
        num_classes: int = 1000,
        class_dropout_prob: float = 0.1,
        prediction_type: str = "epsilon",
    ):
        super().__init__()
        check_prediction_type(prediction_type, learn_sigma)
        if sample_size % patch_size:
            raise ValueError(f"sample_size {sample_size} must be divisible by patch_size {patch_size}")
        expected_out = resolve_out_channels(in_channels, out_channels, learn_sigma)
        self.register_to_config(out_channels=expected_out)
        self.grid_size = sample_size // patch_size
        self.window = self.grid_size if window_size is None else window_size
        check_window(self.grid_size, self.grid_size, self.window)

        self.x_embedder = PatchEmbed(in_channels, hidden_size, patch_size)
        self.t_embedder = TimestepEmbedding(hidden_size)
        self.y_embedder = LabelEmbedding(num_classes, hidden_size, class_dropout_prob) if num_classes > 0 else None
        # Frozen, but a Parameter as in the official code (it is in the checkpoint and in the parameter count).
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size**2, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(
            [DiffiTBlock(hidden_size, num_heads, mlp_ratio, window_size=self.window) for _ in range(depth)]
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, expected_out)
        self.gradient_checkpointing = False
        init_like_official(self)
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d_position_embedding(hidden_size, self.grid_size)[None])

    # ---- forward, in three readable stages: embed -> blocks -> head -------------------------------------
    def forward(self, hidden_states, timestep, class_labels=None, force_drop_ids=None, return_dict: bool = True,
                down_block_additional_residuals=None, mid_block_additional_residual=None):
        x, temb = self._embed(hidden_states, timestep, class_labels, force_drop_ids)
        residuals = self._control_residuals(x, down_block_additional_residuals, mid_block_additional_residual)
        for i, block in enumerate(self.blocks):
            x = self._block(block, x, temb)
            if residuals is not None and i < len(residuals):  # ControlNet residual after each first-half block
                x = x + residuals[i]
        out = self._head(x)
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)

    def _embed(self, hidden_states, timestep, class_labels, force_drop_ids):
        """Checked inputs -> patch tokens with position embedding (B, L, C) and the time token c (B, C)."""
        temb = time_token(self, hidden_states, timestep, class_labels, force_drop_ids, self.config.patch_size)
        size = self.config.sample_size
        if tuple(hidden_states.shape[-2:]) != (size, size):
            raise ValueError(f"{type(self).__name__} was built for {size}x{size} inputs (fixed position embedding and "
                             f"relative position bias), got {tuple(hidden_states.shape[-2:])}; build it with "
                             f"sample_size={hidden_states.shape[-1]} or resize the input.")
        x = self.x_embedder(hidden_states) + self.pos_embed.to(hidden_states.dtype)
        return x, temb

    def _block(self, block, x, temb):
        grid = self.grid_size
        return run_block(self, run_in_windows, block, x, temb, grid, grid, self.window)

    def _head(self, x):
        """Unconditioned final layer, then tokens back to (B, out_channels, H, W)."""
        p = self.config.patch_size
        return rearrange(self.final_layer(x), "b (h w) (p q c) -> b c (h p) (w q)", h=self.grid_size, p=p, q=p)

    # ---- ControlNet interface (control_points.py): the first half of the blocks are the control points ---
    control_unused_modules = ("final_layer",)

    def _control_count(self) -> int:
        return max(1, self.config.depth // 2)

    def _tokens_to_map(self, x):
        return rearrange(x, "b (h w) c -> b c h w", h=self.grid_size)

    def _control_residuals(self, x, down, mid):
        shape = (x.shape[0], x.shape[-1], self.grid_size, self.grid_size)
        residuals = check_in_flight_residuals(down, mid, shape, self._control_count(), type(self).__name__)
        if residuals is None:
            return None
        return [rearrange(r.to(x.dtype), "b c h w -> b (h w) c") for r in residuals]

    def control_points(self) -> ControlPoints:
        width, patch = self.config.hidden_size, self.config.patch_size
        return ControlPoints(width, ((width, patch),) * (self._control_count() - 1), (width, patch), stem_factor=patch)

    def control_prune(self) -> None:
        """Keep the embedders and the first-half blocks (a ControlNet copy)."""
        del self.final_layer
        self.blocks = self.blocks[: self._control_count()]

    def control_encode(self, hidden_states, timestep, class_labels=None, force_drop_ids=None, stem_residual=None):
        x, temb = self._embed(hidden_states, timestep, class_labels, force_drop_ids)
        if stem_residual is not None:
            x = x + rearrange(stem_residual, "b c h w -> b (h w) c")
        outputs = []
        for block in self.blocks[: self._control_count()]:
            x = self._block(block, x, temb)
            outputs.append(self._tokens_to_map(x))
        return outputs[:-1], outputs[-1]
