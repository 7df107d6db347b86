"""Offline FID: Inception features, Fréchet distance, image / statistics ``.npz`` I/O, MNIST reference."""

from .fid import FIDResult, compute_fid, compute_moments, fid_main, open_source
from .frechet import Moments, RankDeficientWarning, RunningMoments, frechet_distance, warn_if_rank_deficient
from .image_io import (
    MNIST_HELDOUT_PER_CLASS,
    UnreadableImageError,
    list_images,
    load_stats,
    mnist_reference,
    mnist_split_indices,
    read_adm_npz,
    read_image,
    save_adm_npz,
    save_mnist_reference,
    save_stats,
    to_uint8,
)
from .inception import (
    InceptionFeatureExtractor,
    InceptionWeightsNotFound,
    find_default_inception_weights,
    resolve_inception_weights,
)

__all__ = [
    "FIDResult",
    "compute_fid",
    "compute_moments",
    "fid_main",
    "open_source",
    "Moments",
    "RunningMoments",
    "RankDeficientWarning",
    "frechet_distance",
    "warn_if_rank_deficient",
    "MNIST_HELDOUT_PER_CLASS",
    "UnreadableImageError",
    "list_images",
    "load_stats",
    "mnist_reference",
    "mnist_split_indices",
    "read_adm_npz",
    "read_image",
    "save_adm_npz",
    "save_mnist_reference",
    "save_stats",
    "to_uint8",
    "InceptionFeatureExtractor",
    "InceptionWeightsNotFound",
    "find_default_inception_weights",
    "resolve_inception_weights",
]
