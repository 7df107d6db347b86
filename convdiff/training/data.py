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
        if not Path(config.data_path).is_dir():
            return LatentDataset(config.data_path)
        dataset = LatentShardDataset(config.data_path)
        if config.vae:
            check_vae(dataset.info, config.vae, config.data_path)
        return dataset
    raise ValueError(f"Unknown data {config.data!r}; choose one of {', '.join(DATA_KINDS)}.")


def check_vae(info: dict, vae_path, data_path) -> None:
    """Refuse a recipe whose `vae` (which decodes samples and ships in the pipeline) did not make the latents."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL

    from ..data.latent_shards import vae_config_hash

    recorded = info.get("vae_config_hash")
    if recorded is None:
        return
    with init_empty_weights():  # the config is all that is compared: no weights are read or allocated
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(vae_path))
    given = vae_config_hash(vae)
    if given != recorded:
        raise ValueError(f"data_path={data_path} holds latents made with the VAE {info['vae']} (config hash "
                         f"{recorded[:12]}), but vae={vae_path} has another config "
                         f"({given[:12]}): set vae= to the VAE that made them, or extract the latents "
                         "again with this one.")
