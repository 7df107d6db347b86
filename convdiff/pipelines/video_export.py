"""Write generated frames to mp4 / GIF files, and lay a 4D grid out as one image (rows = time, columns = views).

Frames may be a list of PIL images, a float array (F, H, W, C) in [0, 1] (what `output_type="np"` gives per
sample), a uint8 array, or a torch tensor (F, C, H, W) in [0, 1] (`output_type="pt"`). Unlike diffusers'
`export_to_video`, uint8 arrays are taken as they are (diffusers multiplies every numpy frame by 255).

mp4 goes through imageio-ffmpeg (H.264) when it is installed, else OpenCV's MPEG-4 Part 2 (`mp4v`) encoder
from opencv-python-headless; GIFs through Pillow. Files are written atomically (`files.replace_file`: a partial file, fsynced, then
renamed), so a failed export never leaves a half-written file.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..files import replace_file


def frames_to_uint8(frames) -> np.ndarray:
    """Any supported frame sequence -> uint8 (F, H, W, C) with C in (1, 3)."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().float()
        if frames.ndim == 4 and frames.shape[1] in (1, 3) and frames.shape[-1] not in (1, 3):
            frames = frames.permute(0, 2, 3, 1)
        frames = frames.numpy()
    if isinstance(frames, (list, tuple)) and frames and isinstance(frames[0], Image.Image):
        frames = np.stack([np.asarray(f.convert("RGB") if f.mode not in ("L", "RGB") else f) for f in frames])
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3) or len(frames) == 0:
        raise ValueError(f"Expected frames (F, H, W, C) with C = 1 or 3 (or a list of PIL images), got shape {frames.shape}.")
    if frames.dtype != np.uint8:
        if not np.issubdtype(frames.dtype, np.floating):
            raise ValueError(f"Float frames must lie in [0, 1] and uint8 frames in [0, 255]; got dtype {frames.dtype}.")
        frames = np.clip(np.rint(frames * 255), 0, 255).astype(np.uint8)
    return frames


def _write_gif(frames: np.ndarray, path: Path, fps: float, scale: int) -> None:
    images = [Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in frames]
    if scale != 1:
        images = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in images]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=int(round(1000 / fps)),
                   loop=0)


def _write_mp4(frames: np.ndarray, path: Path, fps: float, scale: int) -> None:
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    if scale != 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    try:
        import imageio.v2 as imageio  # H.264 through imageio-ffmpeg, when installed

        # even sizes for yuv420p: pad by edge replication
        pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        with imageio.get_writer(path, format="FFMPEG", fps=fps, codec="libx264", macro_block_size=1) as writer:
            for frame in frames:
                writer.append_data(frame)
        return
    except ImportError:
        pass
    try:
        import cv2
    except ImportError as error:
        raise ImportError("Writing mp4 needs imageio[ffmpeg] or opencv-python-headless: pip install "
                          "opencv-python-headless (or export a .gif, which needs only Pillow).") from error
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV could not open an mp4 writer for {path}.")
    try:
        for frame in frames:
            writer.write(np.ascontiguousarray(frame[..., ::-1]))  # OpenCV wants BGR
    finally:
        writer.release()


def export_to_video(frames, path, fps: float = 8, scale: int = 1) -> Path:
    """Write frames to `path` (.mp4 or .gif, chosen by the suffix); `scale` enlarges small frames (nearest)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise ValueError(f"export_to_video writes .mp4 or .gif files, got {path.name!r}.")
    if fps <= 0 or scale < 1:
        raise ValueError(f"fps must be positive and scale >= 1, got fps={fps}, scale={scale}.")
    frames = frames_to_uint8(frames)
    write = _write_gif if suffix == ".gif" else _write_mp4
    return replace_file(path, lambda partial: write(frames, partial, fps, scale), keep_suffix=True)


def grid_4d(frames, padding: int = 1, pad_value: int = 255) -> Image.Image:
    """A 4D sample (V, T, H, W, C) -> one image with a row per timestamp and a column per view."""
    frames = np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames.detach().cpu().numpy()
    if frames.ndim != 5:
        raise ValueError(f"grid_4d expects one 4D sample (views, time, H, W, C), got shape {frames.shape}.")
    views, times = frames.shape[:2]
    tiles = frames_to_uint8(frames.reshape(views * times, *frames.shape[2:])).reshape(views, times, *frames.shape[2:])
    h, w, c = tiles.shape[2:]
    canvas = np.full((times * (h + padding) + padding, views * (w + padding) + padding, c), pad_value, np.uint8)
    for v in range(views):
        for t in range(times):
            y, x = padding + t * (h + padding), padding + v * (w + padding)
            canvas[y : y + h, x : x + w] = tiles[v, t]
    return Image.fromarray(canvas[..., 0] if c == 1 else canvas)


def views_side_by_side(frames, padding: int = 1, pad_value: int = 255) -> np.ndarray:
    """A 4D sample (V, T, H, W, C) -> frames (T, H, V*W, C): one video with all views next to each other."""
    frames = np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames.detach().cpu().numpy()
    if frames.ndim != 5:
        raise ValueError(f"views_side_by_side expects (views, time, H, W, C), got shape {frames.shape}.")
    views, times, h, w, _ = frames.shape
    tiles = frames_to_uint8(frames.reshape(views * times, h, w, -1)).reshape(views, times, h, w, -1)
    pad = np.full((times, h, padding, tiles.shape[-1]), pad_value, np.uint8)
    parts = []
    for v in range(views):
        parts += [tiles[v], pad] if v < views - 1 else [tiles[v]]
    return np.concatenate(parts, axis=2)
