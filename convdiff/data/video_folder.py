"""A folder of video files read with decord, as fixed-length clips for video diffusion training.

Layout: `<root>/<class name>/<videos>` (labels = class folders, as ImageFolder) or a flat `<root>/<videos>`
(unconditional, label 0). A clip is `num_frames` frames `frame_stride` apart from a random start
(AnimateDiff's sampling: span = min(n, (F - 1) * stride + 1), F indices spread evenly over the span),
resized so the short side is `resolution` and cropped to a square, in [-1, 1], shaped (C, F, H, W).

Robustness (decord 0.6.0, its last release, June 2021): decord reads happen in a separate worker process
under a deadline, because decord can loop forever in native code while holding the GIL on a file whose header over-reports
its frame count; such a worker is killed and restarted. A file that cannot be opened, is truncated, or
times out is skipped with a warning (the next file in the folder is used instead) and never retried.
Inside DataLoader worker processes (daemonic, so they cannot start children) the read runs in a thread
with the same deadline instead; a hung thread is abandoned rather than killed there.

Determinism: the random start and crop of item `index` come from a generator seeded by (seed, index), or
from a generator you pass to `get_clip`, so the same seed gives the same clips in every run and process.
With `clips_per_video=k` the data set holds k differently placed clips of each file.
"""

import concurrent.futures
import multiprocessing
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


class VideoDecodeError(RuntimeError):
    """A video file could not be read (unreadable, truncated, or its decode ran past the deadline)."""


def require_decord():
    try:
        import decord
    except ImportError as error:
        raise ImportError("Reading video files needs decord: pip install 'convdiff[video]' (decord==0.6.0; "
                          "x86_64 Linux/Windows wheels only, see docs/video.md).") from error
    return decord


def clip_indices(num_available: int, num_frames: int, stride: int, start_fraction: float) -> np.ndarray:
    """F frame indices `stride` apart (squeezed evenly into the file when it is shorter), from a start at
    `start_fraction` in [0, 1) of the possible start positions."""
    span = min(num_available, (num_frames - 1) * stride + 1)
    start = int(start_fraction * (num_available - span + 1))
    return np.linspace(start, start + span - 1, num_frames).round().astype(np.int64)


def decode_clip(path: str, num_frames: int, stride: int, start_fraction: float) -> np.ndarray:
    """Read one clip with decord -> uint8 (F, H, W, 3). Runs in the decode worker."""
    decord = require_decord()
    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    try:
        num_available = len(reader)
        if num_available < 1:
            raise VideoDecodeError(f"{path} holds no frames")
        frames = reader.get_batch(list(clip_indices(num_available, num_frames, stride, start_fraction))).asnumpy()
    finally:
        del reader  # decord leaks readers kept alive (dmlc/decord#1)
    if frames.ndim != 4 or frames.shape[0] != num_frames:
        raise VideoDecodeError(f"{path}: expected {num_frames} frames, decoded shape {frames.shape}")
    return frames


def _serve(connection) -> None:
    """Decode worker: answer (path, num_frames, stride, start_fraction) requests until told to stop (None)."""
    while True:
        request = connection.recv()
        if request is None:
            return
        try:
            connection.send((True, decode_clip(*request)))
        except Exception as error:  # noqa: BLE001 - every decode failure goes back to the caller as text
            connection.send((False, f"{type(error).__name__}: {error}"))


class TimedDecoder:
    """Runs `decode_clip` in a child process and kills it when a read exceeds `timeout` seconds.

    `timeout=None` decodes in the calling process (no protection: only for trusted files).
    """

    def __init__(self, timeout: float | None = 30.0):
        self.timeout = timeout
        self._process = self._connection = None

    def __call__(self, *request) -> np.ndarray:
        if self.timeout is None:
            return decode_clip(*request)
        if multiprocessing.current_process().daemon:
            return self._in_thread(request)
        if self._process is None or not self._process.is_alive():
            self._start()
        self._connection.send(request)
        if not self._connection.poll(self.timeout):
            self.close(kill=True)
            raise VideoDecodeError(f"{request[0]}: decoding took longer than {self.timeout:g} s (worker killed)")
        ok, result = self._connection.recv()
        if not ok:
            raise VideoDecodeError(result)
        return result

    def _start(self) -> None:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")  # fork: no re-import of torch
        self._connection, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child,), daemon=True, name="convdiff-video-decode")
        self._process.start()
        child.close()

    def _in_thread(self, request) -> np.ndarray:
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        future = executor.submit(decode_clip, *request)
        try:
            return future.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            raise VideoDecodeError(f"{request[0]}: decoding took longer than {self.timeout:g} s "
                                   "(thread abandoned: use num_workers=0 to have hung reads killed)") from None
        except VideoDecodeError:
            raise
        except Exception as error:  # noqa: BLE001
            raise VideoDecodeError(f"{type(error).__name__}: {error}") from error
        finally:
            executor.shutdown(wait=False)

    def close(self, kill: bool = False) -> None:
        if self._process is not None:
            if kill or not self._process.is_alive():
                self._process.kill()
            else:
                try:
                    self._connection.send(None)
                except OSError:
                    pass
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.kill()
        if self._connection is not None:
            self._connection.close()
        self._process = self._connection = None

    def __del__(self):
        try:
            self.close(kill=True)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def resize_and_crop(frames: torch.Tensor, resolution: int, crop_y: float = 0.5, crop_x: float = 0.5) -> torch.Tensor:
    """(F, H, W, C) uint8 -> float (C, F, resolution, resolution) in [0, 255]: short side to `resolution`
    (antialiased bilinear), then a square crop placed at fractions (crop_y, crop_x) of the slack (0.5 = centre)."""
    x = frames.permute(0, 3, 1, 2).float()
    height, width = x.shape[-2:]
    scale = resolution / min(height, width)
    size = (max(resolution, round(height * scale)), max(resolution, round(width * scale)))
    if size != (height, width):
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    top = int(round(crop_y * (size[0] - resolution)))
    left = int(round(crop_x * (size[1] - resolution)))
    return x[:, :, top : top + resolution, left : left + resolution].permute(1, 0, 2, 3)


class VideoFolderDataset(torch.utils.data.Dataset):
    """Items (clip float (C, num_frames, resolution, resolution) in [-1, 1], label int).

    Args:
        root: the folder (class sub-folders or a flat folder of videos).
        num_frames: frames per clip; frame_stride: distance between them in the file.
        resolution: output side; random_crop: random square crop position (else centred).
        channels: 3 (RGB) or 1 (luma).
        clips_per_video: distinct random clips per file (the data set length is files x this).
        timeout: seconds allowed for one decode (None: decode in-process, unprotected).
        seed: seeds the per-item generator.
    """

    def __init__(self, root, num_frames: int = 16, frame_stride: int = 1, resolution: int = 64,
                 channels: int = 3, random_crop: bool = False, clips_per_video: int = 1,
                 timeout: float | None = 30.0, seed: int = 0):
        require_decord()
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"Video folder {root} does not exist; expected <root>/<class>/<videos> or <root>/<videos>.")
        if num_frames < 1 or frame_stride < 1 or resolution < 1 or clips_per_video < 1:
            raise ValueError("num_frames, frame_stride, resolution and clips_per_video must be positive; got "
                             f"{num_frames}, {frame_stride}, {resolution}, {clips_per_video}.")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}.")
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
        self.classes = [d.name for d in class_dirs] or [root.name]
        self.files, self.labels = [], []
        for label, folder in enumerate(class_dirs or [root]):
            pattern = folder.rglob("*") if class_dirs else folder.glob("*")
            for path in sorted(pattern):
                if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
                    self.files.append(path)
                    self.labels.append(label)
        if not self.files:
            raise ValueError(f"Video folder {root} holds no video files ({', '.join(sorted(VIDEO_SUFFIXES))}); "
                             "put clips in it (or in one sub-folder per class).")
        self.num_classes = len(class_dirs)  # 0 for a flat folder: unconditional
        self.num_frames, self.frame_stride, self.resolution = num_frames, frame_stride, resolution
        self.channels, self.random_crop, self.clips_per_video = channels, random_crop, clips_per_video
        self.seed, self.timeout = seed, timeout
        self.bad_files: set[Path] = set()
        self._decoder = None

    @property
    def sample_shape(self):
        return (self.channels, self.num_frames, self.resolution, self.resolution)

    def __len__(self):
        return len(self.files) * self.clips_per_video

    def __getstate__(self):  # the decode worker stays with the process that started it
        return dict(self.__dict__, _decoder=None)

    @property
    def decoder(self) -> TimedDecoder:
        if self._decoder is None:
            self._decoder = TimedDecoder(self.timeout)
        return self._decoder

    def __getitem__(self, index):
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"clip index {index} out of range for {len(self)} clips.")
        return self.get_clip(index, torch.Generator().manual_seed(self.seed * 1_000_003 + index))

    def get_clip(self, index: int, generator: torch.Generator):
        """Clip `index` (file index % number of files) with its start and crop drawn from `generator`;
        an unreadable file is skipped (with a warning) for the next readable one."""
        start, crop_y, crop_x = torch.rand(3, generator=generator).tolist()
        if not self.random_crop:
            crop_y = crop_x = 0.5
        first = index % len(self.files)
        for offset in range(len(self.files)):
            position = (first + offset) % len(self.files)
            path = self.files[position]
            if path in self.bad_files:
                continue
            try:
                frames = self.decoder(str(path), self.num_frames, self.frame_stride, start)
            except VideoDecodeError as error:
                self.bad_files.add(path)
                warnings.warn(f"Skipping unreadable video {path}: {error}", RuntimeWarning, stacklevel=2)
                continue
            clip = resize_and_crop(torch.from_numpy(frames), self.resolution, crop_y, crop_x)
            if self.channels == 1:
                clip = (clip * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1, 1)).sum(0, keepdim=True)
            return clip.div(127.5).sub(1.0), self.labels[position]
        raise VideoDecodeError(f"None of the {len(self.files)} video files could be read "
                               f"(unreadable: {', '.join(p.name for p in sorted(self.bad_files))}).")

    def close(self) -> None:
        """Stop the decode worker (it also stops when the data set is garbage collected)."""
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None
