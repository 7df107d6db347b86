"""A latent data set too large for memory: a folder of safetensors shards plus an `index.json`.

Layout (written by `convdiff extract-latents --output <folder>`, see convdiff/apps/extract_latents.py):

    <folder>/shard-00000.safetensors   latents (n, [2,] C, H, W) float16 or float32, labels (n,) int64
    <folder>/shard-00001.safetensors   ... each one holds `shard_size` images (the last one fewer)
    <folder>/index.json                the shards and their counts, plus what made them: the VAE (name or path
                                       and a hash of its config), scaling factor, flips, resolution, seed, dtype

Why safetensors shards (rather than numpy memmap files or a Hugging Face `datasets` folder): one file holds
both arrays and the provenance (its header metadata), so a shard is written atomically by one rename and a
finished shard can be recognised on resume; the format cannot run code when read (no pickle), is already
how this project stores weights, and needs no new dependency; each array is one contiguous, uncompressed
byte range at an offset the header gives, so one item is one small read. A `datasets` folder would add a
dependency and Arrow's own cache files; numpy memmaps need two files per shard and no metadata.

Reading is lazy: `LatentShardDataset` keeps only the index and each shard's header, and reads one item per
`__getitem__` with a positioned read (`os.pread`) at that offset. It deliberately keeps no memory mapping:
pages touched through a mapping count as the process's resident memory (reclaimable, but they grow to the
whole data set over an epoch), while positioned reads go through the shared page cache and leave the
process's resident memory flat however large the set is (tests/test_latent_shards.py bounds it).
"""

import bisect
import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import torch

from ..files import replace_file

INDEX_FILE = "index.json"
FORMAT = "convdiff-latent-shards/1"
# safetensors dtype names -> numpy dtypes (the ones a latent shard may hold)
_DTYPES = {"F16": np.float16, "F32": np.float32, "BF16": None, "I64": np.int64}


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.safetensors"


def vae_config_hash(vae) -> str:
    """sha256 of the VAE's config (private keys such as the load path dropped): which VAE made the latents."""
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def write_shard(path, latents: torch.Tensor, labels: torch.Tensor, metadata: dict) -> Path:
    """One shard, atomically (hidden partial file, fsync, rename); metadata values are stored as strings."""
    from safetensors.torch import save_file

    tensors = {"latents": latents.contiguous().cpu(), "labels": labels.to(torch.int64).contiguous().cpu()}
    meta = {key: str(value) for key, value in metadata.items()}
    return replace_file(path, lambda partial: save_file(tensors, str(partial), metadata=meta))


def read_header(path) -> dict:
    """The safetensors header of a shard (JSON, read without touching the data); ValueError when damaged."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100_000_000:
                raise ValueError(f"header length {length}")
            header = json.loads(handle.read(length))
        size = path.stat().st_size
    except (OSError, ValueError, struct.error) as error:
        raise ValueError(f"Latent shard {path} is damaged or truncated ({error}); delete it and run "
                         "`convdiff extract-latents` again with the same arguments to redo it.") from error
    header["__data_start__"] = 8 + length
    ends = [v["data_offsets"][1] for k, v in header.items() if isinstance(v, dict) and "data_offsets" in v]
    if 8 + length + max(ends, default=0) > size:
        raise ValueError(f"Latent shard {path} is truncated ({size} bytes); delete it and run "
                         "`convdiff extract-latents` again with the same arguments to redo it.")
    return header


def shard_metadata(path) -> dict | None:
    """The provenance stored in a shard, or None when the file is damaged (then it is redone)."""
    try:
        return read_header(path).get("__metadata__", {})
    except ValueError:
        return None


def write_index(folder, info: dict) -> Path:
    text = json.dumps({"format": FORMAT, **info}, indent=1)
    return replace_file(Path(folder) / INDEX_FILE, lambda partial: Path(partial).write_text(text))


def read_index(folder) -> dict:
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {INDEX_FILE}: it is not a finished latent shard folder. Make one with "
                                "`convdiff extract-latents --output <folder>` (an interrupted run resumes when run again).")
    info = json.loads(path.read_text())
    if info.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} index (format {info.get('format')!r}).")
    return info


class _Array:
    """Where one array of a shard lies in its file: per-item byte size, numpy dtype and item shape."""

    def __init__(self, path, header, key):
        if key not in header:
            raise ValueError(f"Latent shard {path} has no {key!r} array; it has {sorted(header)}.")
        entry = header[key]
        self.dtype = _DTYPES.get(entry["dtype"])
        if self.dtype is None:
            raise ValueError(f"Latent shard {path}: {key} has dtype {entry['dtype']}; expected F16, F32 or I64.")
        self.count, self.item_shape = entry["shape"][0], tuple(entry["shape"][1:])
        self.item_bytes = int(np.prod(self.item_shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize
        self.start = header["__data_start__"] + entry["data_offsets"][0]

    def read(self, fd, index: int) -> np.ndarray:
        data = os.pread(fd, self.item_bytes, self.start + index * self.item_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape(self.item_shape)


class LatentShardDataset(torch.utils.data.Dataset):
    """(latent, label) items of a shard folder, read one at a time from disk; latents come back as float32."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.info = read_index(self.folder)
        self.shards, counts = [], []
        for entry in self.info["shards"]:
            path = self.folder / entry["file"]
            if not path.is_file():
                raise FileNotFoundError(f"{path} is listed in {self.folder / INDEX_FILE} but missing; run "
                                        "`convdiff extract-latents` again with the same arguments to redo it.")
            header = read_header(path)
            latents, labels = _Array(path, header, "latents"), _Array(path, header, "labels")
            if latents.count != entry["count"] or labels.count != entry["count"] or len(latents.item_shape) not in (3, 4):
                raise ValueError(f"Latent shard {path} holds latents {[latents.count, *latents.item_shape]} and labels "
                                 f"({labels.count},); the index expects {entry['count']} items of ([2,] C, H, W).")
            self.shards.append((path, latents, labels))
            counts.append(entry["count"])
        if not self.shards or sum(counts) == 0:
            raise ValueError(f"Latent shard folder {self.folder} holds no items.")
        self.starts = np.cumsum([0, *counts]).tolist()
        self.has_flip_pairs = len(self.shards[0][1].item_shape) == 4
        self.num_classes = int(self.info["num_classes"])
        self._fds, self._pid = {}, None

    @property
    def sample_shape(self):
        return tuple(self.shards[0][1].item_shape[-3:])

    def __len__(self):
        return self.starts[-1]

    def _fd(self, number: int) -> int:
        if self._pid != os.getpid():  # a DataLoader worker: open its own descriptors
            self._fds, self._pid = {}, os.getpid()
        if number not in self._fds:
            self._fds[number] = os.open(self.shards[number][0], os.O_RDONLY)
        return self._fds[number]

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} latents")
        number = bisect.bisect_right(self.starts, index) - 1
        _, latents, labels = self.shards[number]
        fd, local = self._fd(number), index - self.starts[number]
        x = torch.from_numpy(latents.read(fd, local).astype(np.float32))
        return x, torch.tensor(int(labels.read(fd, local)))

    def __getstate__(self):
        return {**self.__dict__, "_fds": {}, "_pid": None}  # descriptors do not travel to spawned workers

    def __del__(self):
        if getattr(self, "_pid", None) == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
