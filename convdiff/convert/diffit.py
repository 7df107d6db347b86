"""The official DiffiT checkpoint layout (`diffit_256.safetensors`, `diffit_512.safetensors`; NVlabs/DiffiT).

A flat state dict under the official module names (the NVlabs/DiffiT release; docs/parity.md):
`x_embedder.proj`, `t_embedder.mlp.{0,2}`, `y_embedder.embedding_table`, `pos_embed`,
`blocks.N.attn.{qkv, qkv_temb, proj, relative_position_bias_table, relative_position_index}`,
`blocks.N.mlp.{fc1, fc2}`, `final_layer.linear`. DiffiTModel keeps these names except that the bias table and
its index live in `blocks.N.attn.position_bias`, so the map renames those two and nothing else; no tensor is
reshaped. `relative_position_index` is a buffer that a file may or may not carry: when present it must be the
Swin index of the grid (checked), when absent it is recomputed.

The generic converter (`convdiff.convert.official`) imports this module and registers the "diffit" family
from the names below, so `convdiff convert --checkpoint diffit_256.safetensors --model diffit-xl --output DIR`
works like DiC/DiCo. This module imports nothing from official.py, so the two do not import each other.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

from ..models.diffit import DiffiTModel
from ..nn.position import relative_position_index

_BIAS = re.compile(r"^blocks\.(\d+)\.attn\.(relative_position_bias_table|relative_position_index)$")
_OURS_BIAS = re.compile(r"^blocks\.(\d+)\.attn\.position_bias\.(relative_position_bias_table|relative_position_index)$")
_SAME_NAME = re.compile(
    r"^(x_embedder\.proj\.(weight|bias)|t_embedder\.mlp\.[02]\.(weight|bias)|y_embedder\.embedding_table\.weight"
    r"|pos_embed|blocks\.\d+\.attn\.(qkv|qkv_temb|proj)\.(weight|bias)|blocks\.\d+\.mlp\.fc[12]\.(weight|bias)"
    r"|final_layer\.linear\.(weight|bias))$"
)


class DiffiTKeyMap:
    """Official DiffiT key <-> DiffiTModel key (the interface of `official.KeyMap`)."""

    family = "diffit"

    @staticmethod
    def to_ours(official_key: str):
        match = _BIAS.match(official_key)
        if match:
            return f"blocks.{match[1]}.attn.position_bias.{match[2]}"
        return official_key if _SAME_NAME.match(official_key) else None

    @staticmethod
    def to_official(our_key: str):
        match = _OURS_BIAS.match(our_key)
        if match:
            return f"blocks.{match[1]}.attn.{match[2]}"
        return our_key if _SAME_NAME.match(our_key) else None


def prepare_state_dict(state_dict: Mapping) -> dict:
    """Check the relative position index buffers a file carries and add the ones it leaves out."""
    out = dict(state_dict)
    for key, table in state_dict.items():
        match = _BIAS.match(key)
        if not match or match[2] != "relative_position_bias_table":
            continue
        side = (math.isqrt(table.shape[0]) + 1) // 2  # table rows = (2w - 1)^2
        if (2 * side - 1) ** 2 != table.shape[0]:
            raise ValueError(f"{key} has {table.shape[0]} rows; a square window w needs (2w-1)^2 rows.")
        expected = relative_position_index(side, side)
        index_key = f"blocks.{match[1]}.attn.relative_position_index"
        if index_key not in out:
            out[index_key] = expected
        elif tuple(out[index_key].shape) != tuple(expected.shape) or not torch.equal(out[index_key].long(), expected):
            raise ValueError(f"{index_key} is not the Swin relative position index of a {side}x{side} window; "
                             "the checkpoint does not come from the official DiffiT code.")
        else:
            out[index_key] = out[index_key].long()
    return out


def infer_config(state_dict: Mapping) -> dict:
    """Config hints read off the official shapes (for the 'which size fits' message)."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    stem, head = shapes.get("x_embedder.proj.weight"), shapes.get("final_layer.linear.weight")
    if stem is None or head is None or len(stem) != 4:
        return {}
    hidden, in_channels, patch = stem[0], stem[1], stem[2]
    config = dict(hidden_size=hidden, in_channels=in_channels, patch_size=patch,
                  learn_sigma=head[0] == patch * patch * 2 * in_channels,
                  depth=len({m[1] for k in shapes for m in [re.match(r"^blocks\.(\d+)\.", k)] if m}))
    table = shapes.get("blocks.0.attn.relative_position_bias_table")
    if table is not None:
        config["num_heads"] = table[1]
    fc1 = shapes.get("blocks.0.mlp.fc1.weight")
    if fc1 is not None:
        ratio = fc1[0] / hidden
        config["mlp_ratio"] = int(ratio) if ratio == int(ratio) else ratio
    pos = shapes.get("pos_embed")
    if pos is not None and math.isqrt(pos[1]) ** 2 == pos[1]:
        config["sample_size"] = math.isqrt(pos[1]) * patch
    labels = shapes.get("y_embedder.embedding_table.weight")
    config["num_classes"] = labels[0] - 1 if labels is not None else 0
    return config


# What official.py registers for the family (its KEY_MAPS, FAMILY_CLASSES, ... tables).
FAMILY = "diffit"
KEY_MAP = DiffiTKeyMap()
FAMILY_CLASS = DiffiTModel
FAMILY_NAME = "DiffiT (NVlabs/DiffiT)"
SIGNATURE = re.compile(r"^blocks\.\d+\.attn\.qkv_temb\.")  # a key only the official DiffiT has
