"""Feature taps for layer-wise distillation: the hidden state right after the self-attention residual add,
h + attn1(norm1(h)) (gated by adaLN in DiT / PixArt), of every transformer block (ΔConvFusion: Dong et al.,
ICCV 2025, arXiv 2504.21292).

No monkey-patching: the tapped tensor is the input of the first module the block calls after the add, so a
forward pre-hook on that module sees it:
  * blocks with cross-attention: `norm2` (layer_norm, ada_norm_zero, ...), or `attn2` itself for PixArt's
    ada_norm_single, which feeds the raw stream to cross-attention;
  * blocks without: `norm3` (before the FFN), or `norm2` for ada_norm_single;
  * DiffiT blocks (x + TMSA(norm1(x)), then the MLP on norm2): `norm2`.
Taps are stored in a dict keyed by block name and only while `collect()` is active, so the recomputed
forwards of gradient checkpointing (which run during backward) neither grow nor overwrite them.
"""

import contextlib

from ..models.convfusion import self_attention_sites


def _tap_module(block):
    if not hasattr(block, "attn1"):  # DiffiTBlock: x + attn(norm1(x)) goes straight into norm2
        return block.norm2
    norm_type = getattr(block, "norm_type", "layer_norm")
    if getattr(block, "attn2", None) is not None:
        return block.attn2 if norm_type == "ada_norm_single" else block.norm2
    return block.norm2 if norm_type == "ada_norm_single" else block.norm3


class FeatureTaps:
    """`with taps.collect(): model(...)`, then `taps.features` = {block name: post-self-attention state}."""

    def __init__(self, model):
        sites = self_attention_sites(model)
        if not sites:
            raise ValueError(f"{type(model).__name__} has no self-attention blocks to tap.")
        self.names = [name for name, _ in sites]
        self.features = {}
        self._collecting = False
        self._handles = [_tap_module(block).register_forward_pre_hook(self._hook(name), with_kwargs=True)
                         for name, block in sites]

    def _hook(self, name):
        def hook(module, args, kwargs):
            if self._collecting:
                self.features[name] = args[0] if args else kwargs["hidden_states"]
        return hook

    @contextlib.contextmanager
    def collect(self):
        self.features = {}
        self._collecting = True
        try:
            yield self.features
        finally:
            self._collecting = False

    def remove(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []
