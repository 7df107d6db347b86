"""An image folder with one sub-folder per class (the torchvision ImageFolder layout), without torchvision.

Images are center-cropped (ADM style: box-downsample then bicubic) to `resolution`, scaled to [-1, 1].
An empty or missing folder, or an unreadable image, is a clear error before any training step.
`CaptionedImageFolder` reads image-caption pairs instead (text-to-image distillation).
"""

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"}
CAPTIONED_SUFFIXES = IMAGE_SUFFIXES - {".gif"}


def center_crop_resize(image: Image.Image, resolution: int) -> Image.Image:
    """ADM's center_crop_arr: halve with BOX while large, BICUBIC to the short side, then center crop."""
    while min(image.size) >= 2 * resolution:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = resolution / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    left = (image.size[0] - resolution) // 2
    top = (image.size[1] - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


class ImageFolderDataset(torch.utils.data.Dataset):
    def __init__(self, root, resolution: int, channels: int = 3, check_images: bool = True):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"Image folder {root} does not exist; expected <root>/<class name>/<image files>.")
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
        if not class_dirs:
            class_dirs = [root]  # a flat folder: one class
        self.classes = [d.name for d in class_dirs]
        self.files, self.labels = [], []
        for label, folder in enumerate(class_dirs):
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    self.files.append(path)
                    self.labels.append(label)
        if not self.files:
            raise ValueError(f"Image folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}.")
        self.resolution, self.channels = resolution, channels
        self.num_classes = len(class_dirs)
        if check_images:
            for path in self.files:
                self._open(path)

    def _open(self, path) -> Image.Image:
        try:
            with Image.open(path) as image:
                image.load()
                return image.convert("L" if self.channels == 1 else "RGB")
        except Exception as error:
            raise ValueError(f"Cannot read image {path}: {error}. Remove or replace the file.") from error

    @property
    def sample_shape(self):
        return (self.channels, self.resolution, self.resolution)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        image = center_crop_resize(self._open(self.files[index]), self.resolution)
        array = np.asarray(image, dtype=np.float32).reshape(self.resolution, self.resolution, self.channels)
        x = torch.from_numpy(array).permute(2, 0, 1).div(127.5).sub(1.0)
        return x, torch.tensor(self.labels[index])


class CaptionedImageFolder(torch.utils.data.Dataset):
    """(image in [-1, 1] of shape (3, R, R), caption) pairs from `<image>.txt` files or a metadata.jsonl."""

    def __init__(self, root, resolution: int):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"Image-caption folder {root} does not exist.")
        self.resolution = resolution
        metadata = root / "metadata.jsonl"
        if metadata.is_file():
            rows = [json.loads(line) for line in metadata.read_text().splitlines() if line.strip()]
            self.items = [(root / row["file_name"], row["text"]) for row in rows]
        else:
            images = sorted(p for p in root.rglob("*") if p.suffix.lower() in CAPTIONED_SUFFIXES)
            self.items = [(p, p.with_suffix(".txt").read_text().strip()) for p in images if p.with_suffix(".txt").is_file()]
        if not self.items:
            raise ValueError(f"No captioned images in {root}: put a caption in <image name>.txt next to every image, "
                             "or write a metadata.jsonl with file_name and text per line.")

    @property
    def sample_shape(self):
        return (3, self.resolution, self.resolution)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        path, caption = self.items[index]
        image = center_crop_resize(Image.open(path).convert("RGB"), self.resolution)
        x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 127.5 - 1.0
        return x, caption
