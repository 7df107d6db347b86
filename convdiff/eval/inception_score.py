"""Inception Score (Salimans et al. 2016, arXiv 1606.03498): exp E_x KL(p(y|x) || p(y)), over splits.

As in ADM's evaluator (Dhariwal & Nichol 2021): the 1008-way softmax of the 2015 Inception (logits from
``inception_taps.inception_logits``), 10 contiguous splits in sample order (5,000 each for 50k samples), and
the mean over splits is the reported figure; the standard deviation is returned beside it. Computed in float64
from logits with ``log_softmax``, so a class of probability 0 contributes exactly 0.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["inception_score"]


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
    """(mean, std) over ``splits`` of exp(mean KL(p(y|x) || mean p(y))) for logits (N, K).

    Split i covers samples [i N // splits, (i + 1) N // splits). Uniform predictions give 1; N samples spread
    evenly over K classes with one-hot predictions give K per split."""
    logits = torch.as_tensor(logits).to(torch.float64)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"Inception Score needs logits (N, classes), got shape {tuple(logits.shape)}")
    n = logits.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be in 1..N={n}, got {splits}")
    log_p = torch.log_softmax(logits, dim=1)
    scores = []
    for i in range(splits):
        part = log_p[i * n // splits : (i + 1) * n // splits]
        log_marginal = torch.logsumexp(part, dim=0) - np.log(len(part))  # log of the split's mean p(y)
        kl = (part.exp() * (part - log_marginal)).sum(dim=1).mean()
        scores.append(kl.exp().item())
    return float(np.mean(scores)), float(np.std(scores))
