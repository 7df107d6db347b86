"""An MNIST digit classifier that is not part of any generative model: it reads which digit a sample shows.

Class accuracy of class-conditional samples ("is the asked digit drawn?") complements FID (which cannot tell a
well-drawn 3 asked for a 7). The network is a small CNN (three 3x3 conv layers of 32/64/64 channels, each
followed by a 2x max pool, dropout, linear; 61k parameters) trained only on the 4,000 training digits (data/mnist.py) with random
shifts of up to 2 pixels. The shipped weights (assets/mnist-classifier.safetensors) come from
`python -m convdiff.apps.digit_classifier` (seed 0); their held-out accuracy is stored in the file's metadata
and checked by tests/test_mnist_protocol.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from safetensors import safe_open
from torch import nn

from ..data.mnist import mnist_digits

WEIGHTS = Path(__file__).resolve().parent / "assets" / "mnist-classifier.safetensors"


class DigitClassifier(nn.Module):
    """uint8 or [0, 1] float digits (N, 28, 28[, 1]) / (N, 1, 28, 28) -> logits (N, 10)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 3 * 3, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def as_model_input(images) -> torch.Tensor:
    """uint8 digits in any of (N, 28, 28), (N, 28, 28, 1), (N, 1, 28, 28) -> float (N, 1, 28, 28) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images))
    if x.dtype != torch.uint8:
        raise TypeError(f"digit images must be uint8 (0..255), got {x.dtype}")
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    elif x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3 or tuple(x.shape[1:]) != (28, 28):
        raise ValueError(f"expected grayscale 28x28 digits (N, 28, 28[, 1]) or (N, 1, 28, 28), got {tuple(x.shape)}")
    return x[:, None].float().div(127.5).sub(1.0)


def load_digit_classifier(path=WEIGHTS) -> DigitClassifier:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No digit classifier weights at {path}: train them with "
                                "`python -m convdiff.apps.digit_classifier`.")
    model = DigitClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval()


@torch.inference_mode()
def predict_digits(images, classifier: DigitClassifier | None = None, batch_size: int = 500) -> np.ndarray:
    classifier = classifier or load_digit_classifier()
    x = as_model_input(images)
    return torch.cat([classifier(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]).numpy()


def class_accuracy(images, labels, classifier: DigitClassifier | None = None) -> float:
    """Share of images that the classifier reads as their label."""
    labels = np.asarray(labels)
    if len(labels) != len(images):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels")
    return float((predict_digits(images, classifier) == labels).mean())


def shipped_heldout_accuracy(path=WEIGHTS) -> float:
    with safe_open(str(path), framework="pt") as f:
        return float(f.metadata()["heldout_accuracy"])


def _random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2,), generator=generator).tolist()
    return padded[..., dy : dy + 28, dx : dx + 28]


def train_digit_classifier(epochs: int = 30, batch_size: int = 64, seed: int = 0) -> tuple[DigitClassifier, float]:
    """Train on the 4,000 training digits; returns the model and its accuracy on the 1,000 held-out ones."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    images, labels = mnist_digits("train")
    x, y = as_model_input(images), torch.from_numpy(labels)
    model = DigitClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (len(x) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x) - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(model(_random_shift(x[index], generator)), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    heldout_images, heldout_labels = mnist_digits("heldout")
    return model, class_accuracy(heldout_images, heldout_labels, model)
