"""The project's MNIST sample-quality protocol: FID against the held-out digits, and class accuracy.

FID: N balanced-label samples against the first N held-out digits (data/mnist.py; 50 per class at N=500), with
the 2015 FID Inception (inception.py). The Inception features of the first 500 held-out digits ship with the
package (assets/mnist-heldout-inception.npz, written by `python -m convdiff.apps.mnist_reference`), so a first run does
not spend 40 s of a 2-core CPU on the reference side; they are used only when the installed Inception file has
the sha256 they were made with, otherwise the reference is computed and cached under ~/.cache/convdiff/fid
(CONVDIFF_CACHE). Class accuracy: the share of samples that an independent digit classifier
(digit_classifier.py, trained on the training digits only) reads as the asked class.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .digit_classifier import class_accuracy, shipped_heldout_accuracy
from .fid import FIDResult, compute_fid
from .frechet import Moments
from .image_io import mnist_reference
from .inception import FEATURE_DIM, InceptionFeatureExtractor

REFERENCE_FEATURES = Path(__file__).resolve().parent / "assets" / "mnist-heldout-inception.npz"
STATS_CACHE = Path(os.environ.get("CONVDIFF_CACHE", Path.home() / ".cache" / "convdiff")) / "fid"


@dataclass
class MNISTScores:
    fid: FIDResult
    accuracy: float
    n: int

    @property
    def protocol(self) -> str:
        return (f"{self.fid.protocol} | class accuracy: share of the {self.n} samples that the digit classifier "
                f"(convdiff/eval/digit_classifier.py, trained on the 4,000 training digits, "
                f"{shipped_heldout_accuracy():.1%} on the 1,000 held-out ones) reads as the asked digit")

    def __str__(self) -> str:
        return f"FID {self.fid.fid:.2f}, class accuracy {self.accuracy:.1%} (N={self.n})"


def shipped_reference_moments(n: int, extractor) -> Moments | None:
    """Moments of the first n held-out digits from the shipped features, or None when they cannot stand in
    (a different Inception file, or more digits than shipped)."""
    if not REFERENCE_FEATURES.is_file():
        return None
    with np.load(REFERENCE_FEATURES, allow_pickle=False) as data:
        if str(data["inception_sha256"]) != extractor.sha256 or n > len(data["features"]):
            return None
        return Moments.from_features(data["features"][:n])


def heldout_reference(n: int, extractor):
    """(FID reference side, statistics cache path or None) for the first n held-out digits: the shipped features
    when they stand in for this extractor, else the digits themselves, with their statistics cached."""
    reference = shipped_reference_moments(n, extractor)
    if reference is not None:
        return reference, None
    STATS_CACHE.mkdir(parents=True, exist_ok=True)
    return mnist_reference("heldout", n=n), STATS_CACHE / f"mnist-heldout-{n}.npz"


def score_mnist_samples(samples, labels, extractor=None, progress: bool = True, **protocol) -> MNISTScores:
    """FID and class accuracy of uint8 samples (N, 28, 28, 1) drawn for `labels` (balanced: i mod 10).

    `protocol` keywords (sampler, steps, guidance, protocol_extra) are recorded in the FID protocol line."""
    n = len(samples)
    if n < 2:
        raise ValueError(f"FID needs at least 2 samples, got {n}.")
    extractor = extractor or InceptionFeatureExtractor()
    reference, save_stats = heldout_reference(n, extractor)
    extra = {"labels": "balanced", "reference": "mnist-heldout" + ("(shipped features)" if save_stats is None else ""),
             **protocol.pop("protocol_extra", {})}
    if n <= FEATURE_DIM:
        extra["note"] = f"N<={FEATURE_DIM}:rank-deficient-covariance,biased-up,compare-only-at-equal-N"
    fid = compute_fid(samples, reference, extractor=extractor, save_stats_b=save_stats, progress=progress,
                      protocol_extra=extra, warn_rank_deficient=False, **protocol)
    return MNISTScores(fid=fid, accuracy=class_accuracy(samples, labels), n=n)


def write_reference_features(path=REFERENCE_FEATURES, n: int = 500) -> Path:
    """Inception features of the first n held-out digits, with the sha256 of the Inception file used."""
    extractor = InceptionFeatureExtractor()
    images = mnist_reference("heldout", n=n)
    features = np.concatenate([extractor(images[i : i + 50]).numpy() for i in range(0, n, 50)])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, features=features.astype(np.float32), inception_sha256=np.str_(extractor.sha256),
                        protocol=np.str_(extractor.protocol))
    return path
