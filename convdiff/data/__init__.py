from .image_folder import ImageFolderDataset
from .latent_shards import LatentShardDataset
from .latents import LatentDataset
from .mnist import MNISTDigits, mnist_digits

__all__ = ["ImageFolderDataset", "LatentDataset", "LatentShardDataset", "MNISTDigits", "mnist_digits"]

from .moving_digits import MovingDigits  # noqa: E402
from .multiview import MultiViewObjects  # noqa: E402
from .video_folder import VideoFolderDataset  # noqa: E402  (decord is imported only when a folder is opened)

__all__ += ["MovingDigits", "MultiViewObjects", "VideoFolderDataset"]
