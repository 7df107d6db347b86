"""Image grids and the label schemes behind them, shared by training previews, the CLI and the demos.

numpy and PIL only, so every layer can use it.
"""

import numpy as np
from PIL import Image


def grid_labels(num_classes: int, rows: int = 10):
    """One column per class (up to 10), `rows` samples each: the 10x10 class grid."""
    columns = min(num_classes, 10)
    return [c for _ in range(rows) for c in range(columns)], columns


def balanced_labels(n: int, num_classes: int):
    """Sample i gets class i mod num_classes (the fixed scheme of FID sample files); None when unconditional."""
    return [i % num_classes for i in range(n)] if num_classes else None


def make_grid(images: np.ndarray, columns: int) -> Image.Image:
    """(N, H, W, C) floats in [0, 1] -> one PIL image, row-major."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    canvas = np.ones((rows * h, columns * w, c), dtype=np.float32)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        canvas[r * h : (r + 1) * h, col * w : (col + 1) * w] = image
    array = (canvas * 255).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(array[..., 0] if c == 1 else array)
