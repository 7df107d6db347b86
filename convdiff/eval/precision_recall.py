"""Improved precision and recall (Kynkäänniemi et al. 2019, arXiv 1904.06991), as ADM's evaluator reports them.

Each set's manifold is the union of balls around its points, the radius of a point being the distance to its
k-th nearest neighbour in the same set (k = 3, the point itself not counted). Precision: the share of samples
inside the reference manifold; recall: the share of reference points inside the sample manifold. ADM uses
2048-d pool features of 10k reference images against all samples. Distances are float32 (as ADM's) and
computed in blocks, so memory stays at ``block x block`` whatever N is. For 50k samples the samples' own radii
take 50k x 50k distances: about 5 minutes on one CPU thread, seconds with ``device="cuda"``.
"""

from __future__ import annotations

import torch

__all__ = ["precision_recall", "knn_radii"]


def _as_features(x, name: str, device) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be features (N, D), got shape {tuple(x.shape)}")
    return x.to(device=device, dtype=torch.float32)


def knn_radii(features: torch.Tensor, k: int = 3, block: int = 4096) -> torch.Tensor:
    """Distance of every point to its k-th nearest other point of the same set."""
    if len(features) <= k:
        raise ValueError(f"k={k} nearest neighbours need more than {k} points, got {len(features)}")
    radii = []
    for part in features.split(block):  # the k + 1 nearest of each column block (the point itself among them)
        nearest = [torch.cdist(part, other).topk(min(k + 1, len(other)), dim=1, largest=False).values
                   for other in features.split(block)]
        radii.append(torch.cat(nearest, dim=1).kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _share_inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int) -> float:
    inside = torch.zeros(len(points), dtype=torch.bool, device=points.device)
    for start in range(0, len(centres), block):
        balls = centres[start : start + block]
        for i, part in enumerate(points.split(block)):
            rows = slice(i * block, i * block + len(part))
            inside[rows] |= (torch.cdist(part, balls) <= radii[start : start + block]).any(dim=1)
    return inside.double().mean().item()


def precision_recall(reference, samples, k: int = 3, block: int = 4096, device=None) -> tuple[float, float]:
    """(precision, recall) of ``samples`` against ``reference``, both features (N, D)."""
    device = device or torch.as_tensor(samples).device
    reference, samples = _as_features(reference, "reference", device), _as_features(samples, "samples", device)
    if reference.shape[1] != samples.shape[1]:
        raise ValueError(f"feature dims differ: reference {reference.shape[1]}, samples {samples.shape[1]}")
    precision = _share_inside(samples, reference, knn_radii(reference, k, block), block)
    recall = _share_inside(reference, samples, knn_radii(samples, k, block), block)
    return precision, recall
