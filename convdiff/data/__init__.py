from .image_folder import ImageFolderDataset
from .latents import LatentDataset
from .mnist import MNISTDigits, mnist_digits

__all__ = ["ImageFolderDataset", "LatentDataset", "MNISTDigits", "mnist_digits"]
