"""Build the training data set named by a recipe: embedded MNIST digits, an image folder, or VAE latents
(one .npz / .safetensors file loaded into memory, or a shard folder read lazily from disk)."""

from pathlib import Path

from ..data import ImageFolderDataset, LatentDataset, LatentShardDataset, MNISTDigits

DATA_KINDS = ("mnist", "image_folder", "latents")


def build_dataset(config):
    if config.data == "mnist":
        return MNISTDigits("train", pad_to=config.resolution)
    if config.data in ("image_folder", "latents") and not config.data_path:
        raise ValueError(f"data={config.data!r} needs data_path=<folder or file>.")
    if config.data == "image_folder":
        if not config.resolution:
            raise ValueError("data=image_folder needs resolution=<pixels> (images are center-cropped to it).")
        channels = config.model_overrides.get("in_channels", 3)
        return ImageFolderDataset(config.data_path, config.resolution, channels=channels)
    if config.data == "latents":
        return LatentShardDataset(config.data_path) if Path(config.data_path).is_dir() else LatentDataset(config.data_path)
    raise ValueError(f"Unknown data {config.data!r}; choose one of {', '.join(DATA_KINDS)}.")
