"""Moving MNIST made offline from the embedded digits: digits bouncing inside a small frame.

Clip `index` is a pure function of (seed, index): which digit(s), where they start and how fast they move
are drawn from a numpy generator seeded with both, so every run and every process sees the same clips.
A digit moves in a straight line and bounces off the frame edges; its 28x28 box may leave the frame by
`overshoot` pixels (MNIST digits have an empty 4-pixel border, so the ink stays in view). With the default
28x28 frame a single digit wobbles around the centre, close to what an MNIST image model has seen, which
is what an inflated `pipelines/dic-mnist` needs.

`motion="directed"` is the captioned variant for text-to-video: every clip's digit moves in a straight line
in one of four directions (left, right, up, down) across the whole free span without bouncing, and the
item carries that direction, so a caption such as "a digit three moving right" describes the clip.
"""

import numpy as np
import torch

from .mnist import mnist_digits

DIGIT = 28
MOTIONS = ("bounce", "directed")
DIRECTIONS = ("left", "right", "up", "down")
# (row, column) step of each direction, in DIRECTIONS order
DIRECTION_STEPS = ((0, -1), (0, 1), (-1, 0), (1, 0))


class MovingDigits(torch.utils.data.Dataset):
    """Items (clip, label): clip float (1, num_frames, frame_size, frame_size) in [-1, 1] (background -1),
    label = the class of the first digit (so a class-conditional video model can be trained on it); with
    motion="directed", (clip, label, direction) where direction indexes DIRECTIONS.

    Args:
        split: "train" (4,000 digits) or "heldout" (1,000), as in `MNISTDigits`.
        num_frames: frames per clip.
        frame_size: frame side in pixels (>= 28 - 2 * overshoot).
        num_digits: digits per clip (overlaps are combined with max, as in Moving MNIST).
        length: number of distinct clips (indices 0..length-1).
        max_speed: largest speed in pixels per frame along each axis.
        overshoot: how far a digit's 28x28 box may leave the frame (its blank border).
        seed: changes every clip.
        digits: optional (uint8 images (N, 28, 28), labels (N,)) to animate instead of the MNIST split.
        motion: "bounce" (random velocity, reflected at the walls) or "directed" (one of DIRECTIONS, straight
            across the free span at up to max_speed pixels per frame; the perpendicular position is random).
    """

    num_classes = 10

    def __init__(self, split: str = "train", num_frames: int = 8, frame_size: int = 28, num_digits: int = 1,
                 length: int = 10_000, max_speed: float = 1.5, overshoot: int = 4, seed: int = 0,
                 digits: tuple | None = None, motion: str = "bounce"):
        if motion not in MOTIONS:
            raise ValueError(f"motion must be one of {MOTIONS}, got {motion!r}.")
        self.motion = motion
        if num_frames < 1 or num_digits < 1 or length < 1:
            raise ValueError(f"num_frames, num_digits and length must be positive; got {num_frames}, {num_digits}, {length}.")
        if frame_size < DIGIT - 2 * overshoot:
            raise ValueError(f"frame_size must be at least {DIGIT - 2 * overshoot} (28 - 2 * overshoot), got {frame_size}.")
        self.images, self.labels = mnist_digits(split) if digits is None else digits
        if self.images.ndim != 3 or self.images.shape[1:] != (DIGIT, DIGIT) or len(self.images) != len(self.labels):
            raise ValueError(f"digits must be uint8 images (N, 28, 28) with N labels, got {self.images.shape}.")
        self.num_frames, self.frame_size, self.num_digits = num_frames, frame_size, num_digits
        self.length, self.max_speed, self.overshoot, self.seed = length, max_speed, overshoot, seed

    @property
    def sample_shape(self):
        return (1, self.num_frames, self.frame_size, self.frame_size)

    def __len__(self):
        return self.length

    def trajectory(self, rng: np.random.Generator) -> np.ndarray:
        """(num_frames, 2) integer top-left positions of one digit's box, bouncing between the bounds."""
        low, high = -self.overshoot, self.frame_size - DIGIT + self.overshoot
        position = rng.uniform(low, high, size=2)
        velocity = rng.uniform(-self.max_speed, self.max_speed, size=2)
        path = np.empty((self.num_frames, 2))
        for f in range(self.num_frames):
            path[f] = position
            position = position + velocity
            for axis in range(2):  # reflect off the walls
                if position[axis] < low:
                    position[axis], velocity[axis] = 2 * low - position[axis], -velocity[axis]
                elif position[axis] > high:
                    position[axis], velocity[axis] = 2 * high - position[axis], -velocity[axis]
        return np.rint(path).astype(int)

    def directed_trajectory(self, rng: np.random.Generator, direction: int) -> np.ndarray:
        """(num_frames, 2) positions moving straight in DIRECTIONS[direction], from one side of the free span."""
        low, high = -self.overshoot, self.frame_size - DIGIT + self.overshoot
        step = np.array(DIRECTION_STEPS[direction], dtype=float)
        speed = min(self.max_speed, (high - low) / max(self.num_frames - 1, 1))
        travel = speed * (self.num_frames - 1)
        along = rng.uniform(low, high - travel)  # where on the span the straight run starts
        across = rng.uniform(low, high)
        axis = int(np.flatnonzero(step)[0])
        start = np.empty(2)
        start[axis] = along if step[axis] > 0 else high - (along - low)
        start[1 - axis] = across
        path = start + np.arange(self.num_frames)[:, None] * speed * step
        return np.rint(path).astype(int)

    def clip_uint8(self, index: int):
        """(frames uint8 (num_frames, frame_size, frame_size), label) of clip `index`; with motion="directed",
        (frames, label, direction)."""
        if not 0 <= index < self.length:
            raise IndexError(f"clip index {index} out of range for {self.length} clips.")
        rng = np.random.default_rng([self.seed, index])
        frames = np.zeros((self.num_frames, self.frame_size, self.frame_size), dtype=np.uint8)
        picks = rng.integers(0, len(self.images), size=self.num_digits)
        direction = int(rng.integers(0, len(DIRECTIONS))) if self.motion == "directed" else None
        for pick in picks:
            digit = self.images[pick]
            path = self.trajectory(rng) if direction is None else self.directed_trajectory(rng, direction)
            for f, (y, x) in enumerate(path):
                paste_max(frames[f], digit, y, x)
        label = int(self.labels[picks[0]])
        return (frames, label) if direction is None else (frames, label, direction)

    def __getitem__(self, index):
        frames, *labels = self.clip_uint8(int(index))
        clip = torch.from_numpy(frames).float().div(127.5).sub(1.0)[None]
        return (clip, *labels)


def paste_max(canvas: np.ndarray, patch: np.ndarray, y: int, x: int) -> None:
    """canvas = max(canvas, patch placed with its top-left at (y, x)), clipped to the canvas."""
    h, w = patch.shape
    top, left = max(y, 0), max(x, 0)
    bottom, right = min(y + h, canvas.shape[0]), min(x + w, canvas.shape[1])
    if bottom <= top or right <= left:
        return
    region = canvas[top:bottom, left:right]
    np.maximum(region, patch[top - y : bottom - y, left - x : right - x], out=region)
