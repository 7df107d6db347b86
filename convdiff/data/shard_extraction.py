"""Encode an image set into a latent shard folder (latent_shards.py), across processes and resumably.

Shard k holds images [k * shard_size, (k + 1) * shard_size) in the data set's order; under `accelerate launch`
process r encodes shards r, r + P, r + 2P, ... and the main process writes `index.json` once all are there.
Each shard draws its latent samples from its own generator, seeded by (seed, k), so the result does not
depend on the number of processes or on how often the run was interrupted. A shard is written atomically
(latent_shards.write_shard): after a kill, finished shards are kept and the unfinished ones are redone.

A folder holding shards made with other settings (another VAE, scale, flip, resolution, seed, dtype or shard
size) is refused before anything is encoded, so no finished work is overwritten or mixed with other latents.
"""

import logging
from pathlib import Path

import numpy as np
import torch

from .latent_shards import INDEX_FILE, shard_metadata, shard_name, vae_config_hash, write_index, write_shard
from .latents import encode_views

logger = logging.getLogger("convdiff.extract")

# The settings a finished shard must share with this run to be kept (paths may move, so they are recorded only).
MATCHED = ("vae_config_hash", "scaling_factor", "flip", "resolution", "seed", "dtype", "shard_size", "num_items",
           "num_classes")
DTYPES = {"float16": torch.float16, "float32": torch.float32}


def shard_generator(seed: int, number: int, device) -> torch.Generator:
    state = np.random.SeedSequence([seed, number]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state))


def finished_shards(output: Path, settings: dict, num_shards: int) -> set:
    """Numbers of the shards already written with these settings; a ValueError when the folder holds other latents."""
    done, expected = set(), {key: str(settings[key]) for key in MATCHED}
    for number in range(num_shards):
        meta = shard_metadata(output / shard_name(number)) if (output / shard_name(number)).is_file() else None
        if meta is None:
            continue  # not written yet, or damaged: (re)do it
        differ = [f"{key}={meta.get(key)!r} (this run: {expected[key]!r})" for key in MATCHED
                  if meta.get(key) != expected[key]]
        if differ:
            raise ValueError(f"{output} already holds latents made with other settings ({shard_name(number)}: "
                             f"{', '.join(differ)}). Write to another --output folder, or delete that folder to "
                             "start again.")
        done.add(number)
    return done


@torch.no_grad()
def extract_shards(dataset, vae, output, *, vae_name: str, resolution: int, shard_size: int = 4096,
                   batch_size: int = 32, flip: bool = True, seed: int = 0, dtype: str = "float16", state=None,
                   device=None, num_workers: int = 0) -> Path:
    """Encode `dataset` ((image in [-1, 1], label) items) into shards under `output`; returns the folder.

    `state` is accelerate's PartialState (None: one process); `vae` must already be on `device` (default: the
    process's own, `state.device`).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}.")
    output = Path(output)
    rank, procs = (state.process_index, state.num_processes) if state is not None else (0, 1)
    device = torch.device(device) if device is not None else state.device if state is not None else torch.device("cpu")
    num_items = len(dataset)
    num_shards = -(-num_items // shard_size)
    settings = {"vae": vae_name, "vae_config_hash": vae_config_hash(vae), "scaling_factor": vae.config.scaling_factor,
                "flip": flip, "resolution": resolution, "seed": seed, "dtype": dtype, "shard_size": shard_size,
                "num_items": num_items, "num_classes": getattr(dataset, "num_classes", None)}
    done = finished_shards(output, settings, num_shards)
    todo = [k for k in range(rank, num_shards, procs) if k not in done]
    logger.info("process %d of %d: %d shard(s) to encode, %d of %d already finished", rank, procs, len(todo),
                len(done), num_shards)
    for number in todo:
        first, count = number * shard_size, min(shard_size, num_items - number * shard_size)
        subset = torch.utils.data.Subset(dataset, range(first, first + count))
        loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        generator = shard_generator(seed, number, device)
        latents, labels = [], []
        for images, batch_labels in loader:
            latents.append(encode_views(vae, images.to(device, vae.dtype), flip, generator).to(DTYPES[dtype]).cpu())
            labels.append(batch_labels)
        write_shard(output / shard_name(number), torch.cat(latents), torch.cat(labels),
                    {**settings, "first": first, "count": count})
        logger.info("process %d wrote %s (images %d-%d)", rank, shard_name(number), first, first + count - 1)
    if state is not None:
        state.wait_for_everyone()
    if rank == 0:
        missing = sorted(set(range(num_shards)) - finished_shards(output, settings, num_shards))
        if missing:
            raise RuntimeError(f"{output}: shards {missing[:5]} were not written; run the same command again to finish.")
        shards = [{"file": shard_name(k), "count": min(shard_size, num_items - k * shard_size)} for k in range(num_shards)]
        write_index(output, {**settings, "shards": shards})
        logger.info("wrote %s: %d images in %d shard(s)", output / INDEX_FILE, num_items, num_shards)
    if state is not None:
        state.wait_for_everyone()
    return output
