"""Offline FID: Inception features, Fréchet distance, image / statistics ``.npz`` I/O, MNIST reference; the ADM
evaluator's other figures (sFID, Inception Score, precision / recall); FVD with a user-given I3D."""

from .adm_evaluator import EvaluationResult, evaluate, read_reference_batch
from .fid import FIDResult, compute_fid, compute_moments, open_source
from .frechet import Moments, RankDeficientWarning, RunningMoments, frechet_distance, warn_if_rank_deficient
from .fvd import FVDResult, I3DFeatureExtractor, compute_fvd
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
from .inception_score import inception_score
from .precision_recall import precision_recall

__all__ = [
    "EvaluationResult",
    "evaluate",
    "read_reference_batch",
    "inception_score",
    "precision_recall",
    "FIDResult",
    "FVDResult",
    "I3DFeatureExtractor",
    "compute_fvd",
    "compute_fid",
    "compute_moments",
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
