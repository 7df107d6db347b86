"""Pre-extracted VAE latents (fast-DiT / DiCo style) in one file, for small sets and demos.

Sets too large for memory go into a shard folder instead (latent_shards.py, `convdiff extract-latents
--output <folder>`).

File layout (`.npz` or `.safetensors`): `latents` float (N, 2, C, H, W) -- the image and its horizontal
flip, already multiplied by the VAE scaling factor -- or (N, C, H, W) without flips; `labels` int (N,).
The training loop picks one of the two views per sample ("random flip" as DiCo's extract_features does).
"""

from pathlib import Path

import numpy as np
import torch


def load_latent_file(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Latent file {path} does not exist; make one with `convdiff extract-latents`.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(path)
    elif path.suffix == ".npz":
        with np.load(path) as data:
            tensors = {k: torch.from_numpy(data[k]) for k in data.files}
    else:
        raise ValueError(f"Latent file {path} must be .npz or .safetensors.")
    if "latents" not in tensors or "labels" not in tensors:
        raise ValueError(f"Latent file {path} must hold 'latents' and 'labels' arrays; it has {sorted(tensors)}.")
    latents, labels = tensors["latents"].float(), tensors["labels"].long()
    if latents.ndim not in (4, 5) or latents.shape[0] != labels.shape[0]:
        raise ValueError(f"Expected latents (N, [2,] C, H, W) and labels (N,); got {tuple(latents.shape)} and {tuple(labels.shape)}.")
    if latents.shape[0] == 0:
        raise ValueError(f"Latent file {path} is empty.")
    return latents, labels


class LatentDataset(torch.utils.data.Dataset):
    def __init__(self, path):
        self.latents, self.labels = load_latent_file(path)
        self.has_flip_pairs = self.latents.ndim == 5
        self.num_classes = int(self.labels.max()) + 1

    @property
    def sample_shape(self):
        return tuple(self.latents.shape[-3:])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.latents[index], self.labels[index]


def encode_views(vae, images, flip: bool, generator):
    """Scaled latent samples of a batch, (B, 2, C, h, w) with each image's horizontal flip or (B, C, h, w) without."""
    views = [images, images.flip(-1)] if flip else [images]
    encoded = [vae.encode(v).latent_dist.sample(generator=generator) * vae.config.scaling_factor for v in views]
    return torch.stack(encoded, dim=1) if flip else encoded[0]


@torch.no_grad()
def extract_latents(dataset, vae, output, batch_size: int = 32, flip: bool = True, seed: int = 0, device="cpu"):
    """Encode every image of `dataset` (and its flip) with an AutoencoderKL; write `output` atomically."""
    output = Path(output)
    generator = torch.Generator(device=device).manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    all_latents, all_labels = [], []
    for images, labels in loader:
        all_latents.append(encode_views(vae, images.to(device, vae.dtype), flip, generator))
        all_labels.append(labels)
    latents = torch.cat(all_latents).float().cpu().numpy()
    labels = torch.cat(all_labels).cpu().numpy()
    tmp = output.with_name(output.name + ".partial.npz")
    np.savez(tmp, latents=latents, labels=labels)
    tmp.replace(output if output.suffix == ".npz" else output.with_suffix(".npz"))
    return output
