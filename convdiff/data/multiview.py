"""A synthetic multi-view video (4D) set: shaded spheres and cubes moving in 3D, seen by V posed cameras.

Each clip is a scene of 1..max_objects objects (random colour, size, start and velocity; they bounce off
the walls of a box) rendered at T timestamps from V pinhole cameras on a circle around the scene, by an
exact numpy ray caster (ray-sphere and ray-box intersections, Lambert shading with one fixed light, 2x2
supersampling). The grid X[v, t] therefore has real 3D structure: the same objects seen from different
sides (view consistency) moving smoothly (temporal consistency), with the camera poses known.

Camera convention (OpenCV): x_cam = R x_world + t, camera x right, y down, z forward; the camera vector
of a view is the flattened 3x4 extrinsic [R | t] (12 numbers); the intrinsics are shared (focal length in
units of half the image side, principal point at the centre). Clip `index` is a pure function of (seed, index).
"""

import numpy as np
import torch

LIGHT = np.array([0.6, 0.4, 0.7]) / np.linalg.norm([0.6, 0.4, 0.7])
AMBIENT = 0.3
BOX = 0.8  # object centres stay in [-BOX, BOX]^3


def look_at(center: np.ndarray, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """World-to-camera extrinsic (3, 4) of a camera at `center` looking at `target` (OpenCV axes)."""
    forward = np.asarray(target, float) - center
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])
    return np.concatenate([rotation, -rotation @ center[:, None]], axis=1)


def orbit_cameras(num_views: int, azimuth: float = 0.0, elevation: float = 0.35, radius: float = 3.0) -> np.ndarray:
    """(num_views, 3, 4) extrinsics evenly spaced in azimuth on a circle, all looking at the origin."""
    cameras = []
    for v in range(num_views):
        angle = azimuth + 2 * np.pi * v / num_views
        center = radius * np.array([np.cos(angle) * np.cos(elevation), np.sin(angle) * np.cos(elevation),
                                    np.sin(elevation)])
        cameras.append(look_at(center))
    return np.stack(cameras)


def camera_rays(extrinsic: np.ndarray, size: int, focal: float, supersample: int):
    """Ray origins (3,) and unit directions (size*s, size*s, 3) in world space for one camera."""
    n = size * supersample
    coords = (np.arange(n) + 0.5) / n * 2 - 1  # pixel centres in [-1, 1]
    v, u = np.meshgrid(coords, coords, indexing="ij")
    directions = np.stack([u / focal, v / focal, np.ones_like(u)], axis=-1)  # camera frame
    rotation, translation = extrinsic[:, :3], extrinsic[:, 3]
    directions = directions @ rotation  # R^T d for each ray (rows)
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    return -rotation.T @ translation, directions


def intersect_sphere(origin, directions, center, radius):
    """(hit distance or inf, normals) for a sphere."""
    offset = origin - center
    b = directions @ offset
    disc = b * b - (offset @ offset - radius * radius)
    root = np.sqrt(np.maximum(disc, 0.0))
    t = -b - root
    t = np.where((disc > 0) & (t > 1e-6), t, np.inf)
    points = origin + np.where(np.isfinite(t), t, 0.0)[..., None] * directions
    return t, (points - center) / radius


def intersect_cube(origin, directions, center, half):
    """(hit distance or inf, normals) for an axis-aligned cube (slab method)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = 1.0 / np.where(directions == 0, 1e-12, directions)
    t1, t2 = (center - half - origin) * inverse, (center + half - origin) * inverse
    near_axes = np.minimum(t1, t2)
    t_near, t_far = near_axes.max(axis=-1), np.maximum(t1, t2).min(axis=-1)
    t = np.where((t_near < t_far) & (t_near > 1e-6), t_near, np.inf)
    axis = near_axes.argmax(axis=-1)
    normals = np.zeros_like(directions)
    np.put_along_axis(normals, axis[..., None], -np.sign(np.take_along_axis(directions, axis[..., None], -1)), -1)
    return t, normals


def render(objects: list[dict], extrinsic: np.ndarray, size: int, focal: float = 3.0, supersample: int = 2,
           background: float = 0.0) -> np.ndarray:
    """Render objects ({"kind": "sphere"|"cube", "center", "size", "color"}) -> float (size, size, 3) in [0, 1]."""
    origin, directions = camera_rays(extrinsic, size, focal, supersample)
    depth = np.full(directions.shape[:-1], np.inf)
    image = np.full(directions.shape, background, dtype=np.float64)
    for obj in objects:
        hit = intersect_sphere if obj["kind"] == "sphere" else intersect_cube
        t, normals = hit(origin, directions, np.asarray(obj["center"]), obj["size"])
        closer = t < depth
        shade = AMBIENT + (1 - AMBIENT) * np.clip(normals @ LIGHT, 0.0, 1.0)
        image[closer] = (shade[..., None] * np.asarray(obj["color"]))[closer]
        depth = np.where(closer, t, depth)
    return image.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))


def bounce(position: np.ndarray, velocity: np.ndarray, steps: int, limit: float) -> np.ndarray:
    """(steps, 3) positions moving at `velocity` per step, reflected off the walls of [-limit, limit]^3."""
    path = np.empty((steps, 3))
    position, velocity = position.copy(), velocity.copy()
    for s in range(steps):
        path[s] = position
        position = position + velocity
        over, under = position > limit, position < -limit
        position = np.where(over, 2 * limit - position, np.where(under, -2 * limit - position, position))
        velocity = np.where(over | under, -velocity, velocity)
    return path


class MultiViewObjects(torch.utils.data.Dataset):
    """Items dict(video=(3, V, T, H, W) in [-1, 1], cameras=(V, 12) float32, timestamps=(T,) in [0, 1], label=0).

    Args:
        num_views, num_frames: the V x T grid.
        image_size: square image side (pixels).
        max_objects: 1..max_objects objects per scene, spheres or cubes.
        random_azimuth: rotate the whole camera rig by a random azimuth per clip (else views are fixed, so
            the camera parameters carry no information a model could not infer from the view index).
        speed: largest object speed per frame (world units; the scene box is [-0.8, 0.8]^3).
        length: number of distinct clips; seed: changes every clip.
        cache: keep rendered clips in memory (rendering costs ~10 ms per 16x16 image; training revisits clips).
    """

    num_classes = 0
    camera_dim = 12

    def __init__(self, num_views: int = 4, num_frames: int = 4, image_size: int = 16, max_objects: int = 2,
                 random_azimuth: bool = True, speed: float = 0.15, focal: float = 3.0, length: int = 10_000,
                 seed: int = 0, cache: bool = False):
        if num_views < 1 or num_frames < 1 or image_size < 4 or max_objects < 1 or length < 1:
            raise ValueError("num_views, num_frames, max_objects and length must be positive and image_size >= 4; got "
                             f"{num_views}, {num_frames}, {max_objects}, {length}, {image_size}.")
        self.num_views, self.num_frames, self.image_size = num_views, num_frames, image_size
        self.max_objects, self.random_azimuth, self.speed = max_objects, random_azimuth, speed
        self.focal, self.length, self.seed = focal, length, seed
        self._cache = {} if cache else None

    @property
    def sample_shape(self):
        return (3, self.num_views, self.num_frames, self.image_size, self.image_size)

    def __len__(self):
        return self.length

    def scene(self, index: int):
        """(objects per timestamp: list of T lists of dicts, extrinsics (V, 3, 4)) of clip `index`."""
        if not 0 <= index < self.length:
            raise IndexError(f"clip index {index} out of range for {self.length} clips.")
        rng = np.random.default_rng([self.seed, index])
        count = int(rng.integers(1, self.max_objects + 1))
        paths, static = [], []
        for _ in range(count):
            kind = "sphere" if rng.random() < 0.5 else "cube"
            size = rng.uniform(0.3, 0.5) if kind == "sphere" else rng.uniform(0.25, 0.4)
            color = rng.uniform(0.3, 1.0, size=3)
            start = rng.uniform(-0.6, 0.6, size=3)
            velocity = rng.uniform(-self.speed, self.speed, size=3)
            paths.append(bounce(start, velocity, self.num_frames, BOX))
            static.append({"kind": kind, "size": size, "color": color})
        frames = [[dict(obj, center=path[t]) for obj, path in zip(static, paths)] for t in range(self.num_frames)]
        azimuth = rng.uniform(0, 2 * np.pi) if self.random_azimuth else 0.0
        return frames, orbit_cameras(self.num_views, azimuth)

    def __getitem__(self, index):
        index = int(index)
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        item = self.render_clip(index)
        if self._cache is not None:
            self._cache[index] = item
        return item

    def render_grid(self, frames: list[list[dict]], extrinsics: np.ndarray) -> np.ndarray:
        """(V, T, H, W, 3) in [0, 1]: the objects of each timestamp (as `scene` gives them) seen by each camera."""
        return np.stack([np.stack([render(objects, extrinsic, self.image_size, self.focal) for objects in frames])
                         for extrinsic in extrinsics])

    def render_clip(self, index: int) -> dict:
        frames, extrinsics = self.scene(index)
        grid = self.render_grid(frames, extrinsics)
        video = torch.from_numpy(grid).float().permute(4, 0, 1, 2, 3).mul(2).sub(1)
        timestamps = torch.arange(self.num_frames, dtype=torch.float32) / max(self.num_frames - 1, 1)
        cameras = torch.from_numpy(extrinsics.reshape(self.num_views, 12)).float()
        return {"video": video, "cameras": cameras, "timestamps": timestamps, "label": 0}
