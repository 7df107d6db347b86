"""FID between two image sets, offline: ``compute_fid(a, b)`` (the ``convdiff fid`` command: apps/fid.py).

A source is an image folder, an ADM sample ``.npz`` (``arr_0`` uint8 NHWC), a statistics ``.npz``
(``mu``/``sigma``, e.g. ADM's reference batches or one written by ``--save-stats``), in-memory uint8 images
(numpy/torch) or a ``Moments``. Every result carries a ``protocol`` string naming the extractor (weights file
+ sha256 prefix), resize mode, N of each side, the Fréchet method, and sampler / steps / guidance when the
caller gives them, and ``str(result)`` prints the FID with it — quote both together.

Statistics caching: ``save_stats_b=PATH`` (CLI ``--save-stats PATH``) writes B's statistics together with a
cache key (extractor sha256 + resize + a fingerprint of the source: file names, sizes, mtimes). The next run
with the same ``save_stats_b`` and an unchanged B reuses the file instead of re-extracting; a changed source
or extractor recomputes and overwrites it. The file is also a valid B on its own (``compute_fid(a, PATH)``).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .frechet import Moments, RunningMoments, frechet_distance, warn_if_rank_deficient
from .image_io import (
    ArrayImageSource,
    ImageFolderSource,
    NpzImageSource,
    is_stats_npz,
    load_stats,
    read_image,
    save_stats,
)
from .inception import InceptionFeatureExtractor

__all__ = ["FIDResult", "compute_fid", "compute_moments", "open_source"]

logger = logging.getLogger(__name__)


@dataclass
class FIDResult:
    """``fid``: the value to display (clamped at 0); ``fid_raw``: unclamped; ``n_a``/``n_b``: images per side
    (None for precomputed statistics without a count); ``protocol``: how the number was obtained."""

    fid: float
    fid_raw: float
    n_a: int | None
    n_b: int | None
    protocol: str
    moments_a: Moments | None = field(default=None, repr=False)
    moments_b: Moments | None = field(default=None, repr=False)

    def __float__(self) -> float:
        return self.fid

    def __str__(self) -> str:
        return f"FID {self.fid:.4f} | {self.protocol}"


@dataclass
class _StatsSource:
    path: Path
    moments: Moments
    meta: dict

    def describe(self) -> str:
        return f"stats {self.path.name}"


def open_source(source):
    """A folder / ``.npz`` path, uint8 array or tensor, or ``Moments`` -> a source object (see module doc)."""
    if isinstance(source, Moments):
        return source
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return ArrayImageSource(source)
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if path.is_dir():
            return ImageFolderSource(path)
        if path.is_file() and path.suffix == ".npz":
            if not zipfile.is_zipfile(path):
                raise ValueError(f"{path} is not a valid .npz file (not a zip archive)")
            if is_stats_npz(path):
                moments, meta = load_stats(path)
                return _StatsSource(path, moments, meta)
            return NpzImageSource(path)
        if not path.exists():
            raise FileNotFoundError(f"FID source not found: {path}")
    raise ValueError(
        f"unsupported FID source {source!r}: expected an image folder, an ADM sample .npz (arr_0 uint8 NHWC), "
        "a statistics .npz (mu, sigma), uint8 images (numpy/torch) or a Moments"
    )


def compute_moments(source, extractor, batch_size: int = 50, progress: bool = True, desc: str = "inception") -> Moments:
    """Stream a source's images through ``extractor`` into float64 mean / covariance."""
    source = open_source(source) if not hasattr(source, "iter_batches") else source
    if isinstance(source, Moments):
        return source
    if isinstance(source, _StatsSource):
        return source.moments
    acc = RunningMoments()
    with tqdm(total=len(source), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for batch in source.iter_batches(batch_size):
            acc.update(extractor(batch))
            bar.update(len(batch))
    return acc.moments()


class ImageShapeWarning(UserWarning):
    """The two sides of a FID hold images of different sizes or channel counts."""


def image_shape(source) -> tuple | None:
    """(H, W, C) of a source's images (its first image for a folder); None for statistics."""
    if isinstance(source, NpzImageSource):
        return (*source.shape[1:], 1)[:3]
    if isinstance(source, ArrayImageSource):
        return tuple(source.images.shape[1:])
    if isinstance(source, ImageFolderSource) and source.files:
        return read_image(source.files[0]).shape
    return None


def shape_mismatch(src_a, src_b) -> str | None:
    """A line saying how the sides' images differ (both are resized to Inception's 299x299 RGB, so the FID
    measures the resizing as much as the images), None when they agree or a side is statistics."""
    shapes = image_shape(src_a), image_shape(src_b)
    if None in shapes or shapes[0] == shapes[1]:
        return None
    a, b = ("x".join(map(str, s)) for s in shapes)
    return (f"the sides differ in size or channels: A's images are {a} (HxWxC), B's {b}; compare samples with "
            "references of the same resolution and channels")


def _cache_key(extractor, source) -> str:
    return hashlib.sha256(f"{extractor.protocol}\n{source.fingerprint()}".encode()).hexdigest()


def _side_moments(src, extractor, batch_size, progress, save_path, name):
    """(Moments, description, stored protocol or None) for one side."""
    if isinstance(src, Moments):
        return src, f"{name}=moments", None
    if isinstance(src, _StatsSource):
        return src.moments, f"{name}={src.describe()}", src.meta.get("protocol") or None
    key = _cache_key(extractor, src) if save_path is not None else ""
    if save_path is not None and Path(save_path).is_file():
        try:
            cached, meta = load_stats(save_path)
        except (ValueError, OSError, zipfile.BadZipFile):
            cached, meta = None, {}
        if cached is not None and meta.get("cache_key") == key:
            logger.info("FID: reusing cached statistics %s for %s", save_path, src.describe())
            return cached, f"{name}={src.describe()} (cached {Path(save_path).name})", extractor.protocol
    moments = compute_moments(src, extractor, batch_size, progress, desc=f"inception {name}")
    if save_path is not None:
        save_stats(save_path, moments, protocol=extractor.protocol, cache_key=key, source=src.describe())
    return moments, f"{name}={src.describe()}", extractor.protocol


def compute_fid(
    source_a,
    source_b,
    *,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    inception_weights=None,
    extractor=None,
    save_stats_a=None,
    save_stats_b=None,
    sampler: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    protocol_extra: dict | None = None,
    method: str = "eigh",
    progress: bool = True,
    warn_rank_deficient: bool = True,
) -> FIDResult:
    """FID between two sources (folder, ADM ``.npz``, stats ``.npz``, uint8 images, ``Moments``).

    ``extractor`` defaults to ``InceptionFeatureExtractor(inception_weights, device)`` (device: CUDA when
    available, else CPU), built only when a side holds images. ``sampler``/``steps``/``guidance``/
    ``protocol_extra`` (e.g. ``{"ema": True, "vae": "ema"}``) are recorded in ``result.protocol``. Warns
    (``RankDeficientWarning``) when a side has N <= 2048 images, and when a statistics file was computed with
    another or an unrecorded extractor (``warn_rank_deficient=False``: callers that say it in their protocol)."""
    src_a, src_b = open_source(source_a), open_source(source_b)
    mismatch = shape_mismatch(src_a, src_b)
    if mismatch:
        warnings.warn(f"FID: {mismatch}.", ImageShapeWarning, stacklevel=2)
    needs_images = any(not isinstance(s, (Moments, _StatsSource)) for s in (src_a, src_b))
    if extractor is None and needs_images:
        extractor = InceptionFeatureExtractor(inception_weights, device=device or _default_device())
    mom_a, desc_a, proto_a = _side_moments(src_a, extractor, batch_size, progress, save_stats_a, "A")
    mom_b, desc_b, proto_b = _side_moments(src_b, extractor, batch_size, progress, save_stats_b, "B")
    for m, name in ((mom_a, "A"), (mom_b, "B")):
        if warn_rank_deficient:
            warn_if_rank_deficient(m.n, m.dim, name, stacklevel=3)

    if extractor is not None:
        extractor_desc = extractor.protocol
        for src, proto, name in ((src_a, proto_a, "A"), (src_b, proto_b, "B")):
            if isinstance(src, _StatsSource) and proto != extractor_desc:
                warnings.warn(
                    f"{name}'s statistics were computed with "
                    f"{'an unrecorded extractor (e.g. the ADM TF graph)' if proto is None else repr(proto)}, "
                    f"not with {extractor_desc!r}: the FID mixes protocols",
                    stacklevel=2,
                )
    elif proto_a == proto_b:
        extractor_desc = proto_a or "extractor unrecorded (precomputed statistics)"
    else:
        extractor_desc = f"A: {proto_a or 'unrecorded'}; B: {proto_b or 'unrecorded'}"

    fd = frechet_distance(mom_a.mu, mom_a.sigma, mom_b.mu, mom_b.sigma, method=method)
    n_desc = f"N_A={mom_a.n if mom_a.n is not None else '?'} N_B={mom_b.n if mom_b.n is not None else '?'}"
    parts = [extractor_desc, n_desc, f"{desc_a}, {desc_b}", f"frechet=float64 {method}"]
    if mismatch:
        parts.append(f"WARNING: {mismatch}")
    gen = {"sampler": sampler, "steps": steps, "guidance": guidance, **(protocol_extra or {})}
    gen = " ".join(f"{k}={v}" for k, v in gen.items() if v is not None)
    if gen:
        parts.append(gen)
    return FIDResult(
        fid=max(fd, 0.0), fid_raw=fd, n_a=mom_a.n, n_b=mom_b.n, protocol=" | ".join(parts),
        moments_a=mom_a, moments_b=mom_b,
    )


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
