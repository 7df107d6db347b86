"""The figures of the papers' tables for a sample batch against an ADM reference batch: FID, sFID, Inception
Score, precision and recall, as ADM's evaluator (Dhariwal & Nichol 2021, arXiv 2105.05233) computes them, offline.

* Reference batch: an ADM ``.npz`` (e.g. ``VIRTUAL_imagenet256_labeled.npz``) with ``arr_0`` (uint8 NHWC images)
  and/or precomputed statistics ``mu``/``sigma`` (pool3) and ``mu_s``/``sigma_s`` (sFID features); or any image
  source of ``fid.open_source`` (folder, ADM sample ``.npz``, uint8 array). As in ADM, stored statistics are
  used for FID / sFID when present (they cover the whole training set), and the images only where needed:
  for statistics the file lacks, and for precision / recall (which need features, not moments).
* Samples: images (folder, ADM sample ``.npz`` with ``arr_0``, uint8 array), streamed once through the Inception:
  pool3 moments for FID, sFID moments (``inception_taps.SpatialTap``), and the pool3 features kept in memory for
  the Inception Score (logits ``pool3 @ W``, ``inception_score.py``) and precision / recall
  (``precision_recall.py``, k = 3).
* The Inception Score needs the 1008-way classifier weights, which the shipped ``default_1.pt`` lacks: pass
  ``classifier=PATH`` (CLI ``--inception-classifier``), see ``inception_taps.load_inception_classifier``.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .fid import ImageShapeWarning, open_source, shape_mismatch
from .frechet import Moments, RunningMoments, frechet_distance, warn_if_rank_deficient
from .image_io import NpzImageSource, save_stats
from .inception import InceptionFeatureExtractor
from .inception_score import inception_score
from .inception_taps import inception_logits, load_inception_classifier
from .precision_recall import precision_recall

__all__ = ["METRICS", "ReferenceBatch", "EvaluationResult", "read_reference_batch", "evaluate"]

METRICS = ("fid", "sfid", "inception_score", "precision_recall")
STAT_KEYS = {"mu": "sigma", "mu_s": "sigma_s"}


@dataclass
class ReferenceBatch:
    """A reference side: ``images`` (a source with ``iter_batches``, or None), stored ``pool`` / ``spatial``
    moments (or None), and where they came from."""

    name: str
    images: object | None = None
    pool: Moments | None = None
    spatial: Moments | None = None
    protocol: str | None = None


def read_reference_batch(source) -> ReferenceBatch:
    """An ADM reference ``.npz`` (``arr_0`` and/or ``mu``, ``sigma``[, ``mu_s``, ``sigma_s``]) or an image source."""
    path = Path(source).expanduser() if isinstance(source, (str, os.PathLike)) else None
    if path is None or path.suffix != ".npz" or not path.is_file():
        images = open_source(source)
        if not hasattr(images, "iter_batches"):
            raise ValueError(f"reference {source!r} must be an ADM .npz or images, not {type(images).__name__}")
        return ReferenceBatch(name=images.describe(), images=images)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a valid .npz file (not a zip archive)")
    with np.load(path, allow_pickle=False) as data:
        keys = set(data.files)
        for mu, sigma in STAT_KEYS.items():
            if (mu in keys) != (sigma in keys):
                raise ValueError(f"{path}: has {mu if mu in keys else sigma} without {sigma if mu in keys else mu}; "
                                 f"an ADM reference batch stores both {mu} and {sigma}")
        if "arr_0" not in keys and "mu" not in keys:
            raise ValueError(f"{path}: not an ADM reference batch: expected arr_0 (uint8 NHWC images) and/or "
                             f"mu, sigma [, mu_s, sigma_s] (statistics); found keys {sorted(keys)}")
        n = int(data["n"]) if "n" in keys else None
        pool = Moments(data["mu"], data["sigma"], n) if "mu" in keys else None
        spatial = Moments(data["mu_s"], data["sigma_s"], n) if "mu_s" in keys else None
        protocol = str(data["protocol"]) if "protocol" in keys else None
    images = NpzImageSource(path) if "arr_0" in keys else None
    return ReferenceBatch(name=path.name, images=images, pool=pool, spatial=spatial, protocol=protocol or None)


@dataclass
class _Features:
    n: int
    pool: Moments
    spatial: Moments | None
    kept: torch.Tensor | None  # pool3 features, for IS and precision / recall


def _extract(source, extractor, spatial: bool, keep: bool, batch_size: int, progress: bool, desc: str) -> _Features:
    pool_acc, spatial_acc, kept = RunningMoments(), RunningMoments(), []
    with tqdm(total=len(source), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for batch in source.iter_batches(batch_size):
            pool, spatial_features = extractor.extract(batch)
            pool_acc.update(pool)
            if spatial:
                spatial_acc.update(spatial_features)
            if keep:
                kept.append(pool)
            bar.update(len(pool))
    return _Features(n=pool_acc.n, pool=pool_acc.moments(), spatial=spatial_acc.moments() if spatial else None,
                     kept=torch.cat(kept) if keep else None)


@dataclass
class EvaluationResult:
    """The figures asked for (None for those not computed), N of each side and the protocol."""

    n_samples: int
    n_reference: int | None
    protocol: str
    fid: float | None = None
    sfid: float | None = None
    inception_score: float | None = None
    inception_score_std: float | None = None
    precision: float | None = None
    recall: float | None = None
    raw: dict = field(default_factory=dict, repr=False)

    def __str__(self) -> str:
        rows = [("Inception Score", self.inception_score), ("FID", self.fid), ("sFID", self.sfid),
                ("Precision", self.precision), ("Recall", self.recall)]
        lines = [f"{name}: {value:.4f}" for name, value in rows if value is not None]
        return "\n".join(lines + [f"protocol: {self.protocol}"])


def _check_metrics(metrics) -> tuple[str, ...]:
    metrics = tuple(metrics)
    unknown = set(metrics) - set(METRICS)
    if unknown or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {metrics}")
    return metrics


def evaluate(
    samples,
    reference,
    metrics=METRICS,
    *,
    extractor=None,
    inception_weights=None,
    classifier=None,
    device: str | torch.device | None = None,
    batch_size: int = 50,
    splits: int = 10,
    k: int = 3,
    save_reference_stats=None,
    protocol_extra: dict | None = None,
    method: str = "eigh",
    progress: bool = True,
) -> EvaluationResult:
    """ADM's figures of ``samples`` against ``reference`` (see the module docstring).

    ``classifier``: path of the Inception classifier weights (or a (classes, 2048) tensor), needed for
    ``"inception_score"``. ``save_reference_stats=PATH`` writes the reference's statistics, when computed from its
    images, as an ADM-style ``.npz`` (``mu``, ``sigma``, ``mu_s``, ``sigma_s``) to pass as ``reference`` later.
    ``protocol_extra`` (e.g. ``{"sampler": "ddpm", "steps": 250}``) is recorded in the protocol; ``method``: the
    Fréchet distance's eigenvalue route (``frechet.trace_sqrt_product``)."""
    metrics = _check_metrics(metrics)
    want_sfid, want_is, want_pr = "sfid" in metrics, "inception_score" in metrics, "precision_recall" in metrics
    weight = None
    if want_is:
        if classifier is None:
            raise ValueError(
                "the Inception Score needs the 2015 Inception's 1008-way classifier, which the FID TorchScript "
                "does not hold: pass --inception-classifier PATH (a state dict with fc.weight (1008, 2048), e.g. "
                "pytorch-fid's pt_inception-2015-12-05-6726825d.pth); nothing is downloaded")
        weight = classifier if isinstance(classifier, torch.Tensor) else load_inception_classifier(classifier)
    sample_source = open_source(samples)
    if not hasattr(sample_source, "iter_batches"):
        raise ValueError("the evaluator needs sample images (a folder, an ADM .npz with arr_0, or uint8 images), "
                         f"not precomputed statistics ({type(sample_source).__name__})")
    ref = read_reference_batch(reference)
    if want_pr and ref.images is None:
        raise ValueError(f"{ref.name}: precision / recall need reference images (arr_0), and it holds statistics only")
    mismatch = shape_mismatch(sample_source, ref.images)
    if mismatch:
        warnings.warn(f"evaluator: {mismatch}.", ImageShapeWarning, stacklevel=2)
    ref_needs_images = want_pr or ref.pool is None or (want_sfid and ref.spatial is None)
    if ref_needs_images and ref.images is None:
        raise ValueError(f"{ref.name}: sFID needs mu_s / sigma_s or reference images (arr_0), and it has neither")
    if extractor is None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        extractor = InceptionFeatureExtractor(inception_weights, device=device, spatial=want_sfid)
    if want_sfid and not getattr(extractor, "spatial", False):
        raise ValueError("sFID needs an extractor built with spatial=True")

    fake = _extract(sample_source, extractor, want_sfid, want_is or want_pr, batch_size, progress, "inception samples")
    real = None
    if ref_needs_images:
        real = _extract(ref.images, extractor, want_sfid and ref.spatial is None, want_pr, batch_size, progress,
                        "inception reference")
        if save_reference_stats is not None:
            save_stats(save_reference_stats, real.pool, protocol=extractor.protocol, source=ref.name,
                       spatial=real.spatial)
    ref_pool = ref.pool or real.pool
    ref_spatial = ref.spatial or (real.spatial if real is not None else None)

    result = EvaluationResult(n_samples=fake.n, n_reference=real.n if real is not None else ref_pool.n, protocol="")
    if "fid" in metrics:
        warn_if_rank_deficient(fake.n, fake.pool.dim, "samples", stacklevel=2)
        result.raw["fid"] = frechet_distance(fake.pool.mu, fake.pool.sigma, ref_pool.mu, ref_pool.sigma, method)
        result.fid = max(result.raw["fid"], 0.0)
    if want_sfid:
        result.raw["sfid"] = frechet_distance(fake.spatial.mu, fake.spatial.sigma, ref_spatial.mu, ref_spatial.sigma,
                                              method)
        result.sfid = max(result.raw["sfid"], 0.0)
    if want_is:
        result.inception_score, result.inception_score_std = inception_score(
            inception_logits(fake.kept, weight), splits=splits)
    if want_pr:
        result.precision, result.recall = precision_recall(real.kept, fake.kept, k=k,
                                                           device=getattr(extractor, "device", None))
    stored = "stored " + "+".join(n for n, m in (("mu/sigma", ref.pool), ("mu_s/sigma_s", ref.spatial)) if m)
    parts = [
        extractor.protocol,
        f"N_samples={fake.n} N_reference={result.n_reference if result.n_reference is not None else '?'}",
        f"reference={ref.name}" + (f" ({stored} statistics, extractor "
                                    f"{'unrecorded, e.g. the ADM TF graph' if ref.protocol is None else 'recorded'})"
                                    if ref.pool or ref.spatial else ""),
        f"frechet=float64 {method}",
    ]
    if want_is:
        parts.append(f"IS: unbiased logits pool3 @ fc.weight, {splits} splits")
    if want_pr:
        parts.append(f"precision/recall: k={k} on pool3, reference images N={real.n}")
    extra = " ".join(f"{key}={value}" for key, value in (protocol_extra or {}).items() if value is not None)
    result.protocol = " | ".join(parts + ([extra] if extra else []))
    return result
