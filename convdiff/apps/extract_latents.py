"""`convdiff extract-latents`: encode an image folder (and each image's horizontal flip) with an AutoencoderKL.

`--output <folder>` writes safetensors shards read lazily in training (data/latent_shards.py); it runs under
`accelerate launch` (each process encodes its own shards) and resumes when run again after a kill.
`--output <file>.npz` writes the single in-memory file of small sets and demos (data/latents.py).
"""

import argparse


def extract_main(argv=None):
    parser = argparse.ArgumentParser(prog="convdiff extract-latents", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="image folder, one sub-folder per class")
    parser.add_argument("--vae", required=True, help="a local AutoencoderKL folder (e.g. a copy of stabilityai/sd-vae-ft-ema)")
    parser.add_argument("--resolution", type=int, default=256, help="center-crop size in pixels (default: 256)")
    parser.add_argument("--output", required=True,
                        help="a folder of latent shards (resumable, for large sets), or a .npz file (small sets)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per VAE forward pass (default: 32)")
    parser.add_argument("--no-flip", action="store_true", help="store only the image, not its flip")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latent sampling (default: 0)")
    parser.add_argument("--shard-size", type=int, default=4096, help="images per shard (default: 4096)")
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                        help="how shards store the latents (default: float16; the .npz is always float32)")
    parser.add_argument("--num-workers", type=int, default=0, help="image-decoding workers per process (default: 0)")
    parser.add_argument("--device", default=None,
                        help="torch device (default: this process's GPU under accelerate launch, else cuda or cpu)")
    args = parser.parse_args(argv)
    import logging
    from pathlib import Path

    if not Path(args.data).is_dir():  # before the VAE is read: a typo here should not wait for it
        raise FileNotFoundError(f"--data {args.data}: no such folder; expected <root>/<class name>/<image files>.")
    import torch

    from ..convert.official import load_vae
    from ..data.image_folder import ImageFolderDataset

    vae = load_vae(args.vae).eval()  # a local folder only: nothing is fetched from the Hub
    flip = not args.no_flip
    if args.output.endswith(".npz"):
        from ..data.latents import extract_latents

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dataset = ImageFolderDataset(args.data, args.resolution, channels=vae.config.in_channels)
        path = extract_latents(dataset, vae.to(device), args.output, args.batch_size, flip=flip, seed=args.seed,
                               device=device)
    else:
        from accelerate import PartialState

        from ..data.shard_extraction import extract_shards

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

        # cpu=True forms a gloo group when launched on a machine without GPUs (as the training loop does)
        state = PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available())
        device = torch.device(args.device) if args.device else state.device
        # images are read (and a broken one reported) as they are encoded, not all opened up front by every process
        dataset = ImageFolderDataset(args.data, args.resolution, channels=vae.config.in_channels, check_images=False)
        path = extract_shards(dataset, vae.to(device), args.output, vae_name=args.vae, resolution=args.resolution,
                              shard_size=args.shard_size, batch_size=args.batch_size, flip=flip, seed=args.seed,
                              dtype=args.dtype, state=state, device=device,
                              num_workers=args.num_workers)
        if not state.is_main_process:
            return 0
    print(f"wrote latents of {len(dataset)} images ({'with' if flip else 'without'} flips) to {path}")
    return 0
