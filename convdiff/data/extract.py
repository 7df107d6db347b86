"""`convdiff extract-latents`: encode an image folder (and each image's horizontal flip) with an AutoencoderKL."""

import argparse


def extract_main(argv=None):
    parser = argparse.ArgumentParser(prog="convdiff extract-latents", description=__doc__)
    parser.add_argument("--data", required=True, help="image folder, one sub-folder per class")
    parser.add_argument("--vae", required=True, help="a local AutoencoderKL folder (e.g. a copy of stabilityai/sd-vae-ft-ema)")
    parser.add_argument("--resolution", type=int, default=256, help="center-crop size in pixels (default: 256)")
    parser.add_argument("--output", required=True, help="the .npz to write (latents, labels)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per VAE forward pass (default: 32)")
    parser.add_argument("--no-flip", action="store_true", help="store only the image, not its flip")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latent sampling (default: 0)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    args = parser.parse_args(argv)
    import torch
    from diffusers import AutoencoderKL

    from .image_folder import ImageFolderDataset
    from .latents import extract_latents

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    vae = AutoencoderKL.from_pretrained(args.vae).to(args.device).eval()
    dataset = ImageFolderDataset(args.data, args.resolution, channels=vae.config.in_channels)
    path = extract_latents(dataset, vae, args.output, args.batch_size, flip=not args.no_flip, seed=args.seed, device=args.device)
    print(f"wrote latents of {len(dataset)} images ({'with' if not args.no_flip else 'without'} flips) to {path}")
    return 0
