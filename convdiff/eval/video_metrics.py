"""Video and 4D metrics that run offline (FVD: Unterthiner et al., arXiv 1812.01717; content-debiased FVD:
Ge et al., CVPR 2024, arXiv 2404.12391).

- `frame_fid`: FID over all frames as images, with the offline Inception of `convdiff.eval` (spatial quality only).
- `fvd`: Fréchet Video Distance with the I3D TorchScript the user gives (`fvd.py`; needs that file).
- `temporal_consistency`: mean cosine similarity of the features of adjacent frames (CLIP-consistency style,
  with Inception pool3 features by default or any extractor `uint8 NHWC -> (N, D)`), plus the similarity of every
  frame to the first one. Read it beside `frame_difference` (mean absolute change between adjacent frames, a
  flicker proxy): a frozen video scores perfectly on both.
- `digit_scores`: for digit videos, how many frames and videos read as the asked digit and stay one digit.
- `psnr`, and `fourd_view_synthesis`: for the synthetic multi-view set, sample the grid conditioned on the
  ground-truth first view (its whole video) and measure PSNR of the generated other views against the
  ground-truth renders, next to the trivial baseline that copies the first view into every view;
  `fourd_grid_completion` for 4Real-Video's grid, with `grid_completion_references`: what predictors that know
  the scene except what the given cells cannot show would score.

Videos are float arrays (N, F, H, W, C) in [0, 1] (a pipeline's `output_type="np"`) or uint8 arrays.
"""

import numpy as np
import torch

from .fid import compute_fid
from .fvd import compute_fvd
from .image_io import videos_uint8


def frame_fid(videos, reference, extractor=None, **kwargs):
    """FID between all frames of `videos` and `reference` (anything `compute_fid` takes: uint8 images,
    a folder, a statistics file, or more videos (N, F, H, W, C)). Returns an `FIDResult`."""
    frames = videos_uint8(videos)
    frames = frames.reshape(-1, *frames.shape[2:])
    if isinstance(reference, np.ndarray) and reference.ndim == 5:
        reference = videos_uint8(reference)
        reference = reference.reshape(-1, *reference.shape[2:])
    extra = dict(kwargs.pop("protocol_extra", None) or {}, frames_per_video=videos.shape[1])
    return compute_fid(frames, reference, extractor=extractor, protocol_extra=extra, **kwargs)


def fvd(videos, reference, i3d, **kwargs):
    """FVD between `videos` and `reference` (videos or their `Moments`) with the I3D TorchScript at `i3d`
    (`compute_fvd` in fvd.py). Returns an `FVDResult`."""
    return compute_fvd(videos, reference, i3d, **kwargs)


def frame_features(videos, extractor, batch_size: int = 64) -> torch.Tensor:
    """(N, F, D) features of every frame."""
    frames = videos_uint8(videos)
    n, f = frames.shape[:2]
    flat = frames.reshape(n * f, *frames.shape[2:])
    features = torch.cat([torch.as_tensor(extractor(flat[i : i + batch_size])).float()
                          for i in range(0, len(flat), batch_size)])
    return features.reshape(n, f, -1)


def temporal_consistency(videos, extractor=None, batch_size: int = 64) -> dict:
    """{"adjacent": mean cosine similarity of consecutive frames' features, "to_first": mean similarity of
    frames 1.. to frame 0} (1.0 = identical features). `extractor` defaults to the offline Inception."""
    if extractor is None:
        from .inception import InceptionFeatureExtractor

        extractor = InceptionFeatureExtractor()
    if np.asarray(videos).shape[1] < 2:
        raise ValueError("temporal_consistency needs at least 2 frames per video.")
    return consistency_of_features(frame_features(videos, extractor, batch_size))


def consistency_of_features(features: torch.Tensor) -> dict:
    """`temporal_consistency` from precomputed (N, F, D) frame features (so FID can share one extraction)."""
    features = torch.nn.functional.normalize(features.float(), dim=-1)
    adjacent = (features[:, 1:] * features[:, :-1]).sum(-1)
    to_first = (features[:, 1:] * features[:, :1]).sum(-1)
    return {"adjacent": adjacent.mean().item(), "to_first": to_first.mean().item()}


def frame_difference(videos) -> float:
    """Mean absolute difference between consecutive frames, on the [0, 1] scale."""
    frames = videos_uint8(videos).astype(np.float64) / 255.0
    return float(np.abs(np.diff(frames, axis=1)).mean())


def motion_directions(videos, steps=((0, -1), (0, 1), (-1, 0), (1, 0))) -> np.ndarray:
    """(N,) index into `steps` ((row, column) unit moves; default left, right, up, down) of each video's motion:
    the step closest in direction to how far the ink's centroid moved from the first frame to the last.
    Measured on the pixels alone, so it reads generated and real clips alike."""
    frames = videos_uint8(videos).astype(np.float64).mean(-1)  # (N, F, H, W)
    rows, cols = np.mgrid[: frames.shape[2], : frames.shape[3]]
    mass = frames.sum((2, 3)) + 1e-9
    centroid = np.stack([(frames * rows).sum((2, 3)) / mass, (frames * cols).sum((2, 3)) / mass], -1)  # (N, F, 2)
    moved = centroid[:, -1] - centroid[:, 0]
    return np.argmax(moved @ np.asarray(steps, dtype=np.float64).T, axis=1)


def read_digits(videos) -> np.ndarray:
    """(N, F) the digit the project's digit CNN (eval/digit_classifier.py, not part of any generator) reads in
    every frame of digit videos (N, F, H, W, 1)."""
    from .digit_classifier import predict_digits

    n, f = videos.shape[:2]
    return predict_digits(videos_uint8(videos).reshape(n * f, *videos.shape[2:])).reshape(n, f)


def majority_digits(read: np.ndarray) -> np.ndarray:
    """(N,) the digit each video's frames are read as most often, from `read_digits`' (N, F)."""
    return np.array([np.bincount(r, minlength=10).argmax() for r in read])


def digit_scores(read: np.ndarray, digits) -> dict:
    """How well videos keep their asked digits (N,), from `read_digits`' (N, F): the share of frames read as
    the asked digit, of videos whose majority reading is it, of videos read as one digit in every frame and
    as the asked digit in every frame, and of frames read as their video's first frame (drift, long clips)."""
    digits = np.asarray(digits).reshape(-1, 1)
    return {"digit_accuracy_frames": float((read == digits).mean()),
            "digit_accuracy_videos": float((majority_digits(read) == digits[:, 0]).mean()),
            "one_digit_videos": float((read == read[:, :1]).all(axis=1).mean()),
            "asked_digit_every_frame": float((read == digits).all(axis=1).mean()),
            "frames_as_first_frame": float((read == read[:, :1]).mean())}


def psnr(prediction, target, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio (dB) between two arrays of the same shape, averaged over the first axis."""
    prediction = np.asarray(prediction, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if prediction.shape != target.shape:
        raise ValueError(f"psnr needs equal shapes, got {prediction.shape} and {target.shape}.")
    return float(np.mean(decibels(((prediction - target) ** 2).reshape(len(prediction), -1).mean(axis=1), data_range)))


def decibels(mse, data_range: float = 1.0) -> np.ndarray:
    """PSNR (dB) of mean squared errors; an exact match (MSE 0) scores 120 dB."""
    return 10 * np.log10(data_range**2 / np.maximum(np.asarray(mse, dtype=np.float64), 1e-12))


def complete_grids(pipeline, dataset, given: str = "first_view", num_clips: int = 16, num_inference_steps: int = 25,
                   seed: int = 0, batch_size: int = 8, start: int = 0, num_samples: int = 1):
    """(outputs, truths), both (clips, V, T, H, W, C) in [0, 1]: the pipeline completes each clip from its given
    cells, view 0's video (given="first_view") or also every view at time 0 (given="grid", 4Real-Video's first
    row and column); with num_samples = K > 1 the K outputs per clip (K noise draws) are averaged."""
    if given not in ("first_view", "grid"):
        raise ValueError(f"given must be 'first_view' or 'grid', got {given!r}.")
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be >= 1 (outputs averaged per clip), got {num_samples}.")
    outputs, truths = [], []
    generator = torch.Generator().manual_seed(seed)
    for first in range(start, start + num_clips, batch_size):
        items = [dataset[i] for i in range(first, min(first + batch_size, start + num_clips))]
        video = torch.stack([it["video"] for it in items])
        cells = {"first_view": video[:, :, 0]}
        if given == "grid":
            cells["first_frame"] = video[:, :, :, 0]
        outputs.append(np.mean([pipeline(batch_size=len(items), num_views=video.shape[2], num_frames=video.shape[3],
                                         cameras=torch.stack([it["cameras"] for it in items]),
                                         timestamps=torch.stack([it["timestamps"] for it in items]),
                                         num_inference_steps=num_inference_steps, generator=generator,
                                         output_type="np", **cells).frames for _ in range(num_samples)], axis=0))
        truths.append(((video.permute(0, 2, 3, 4, 5, 1).numpy() + 1) / 2).clip(0, 1))
    return np.concatenate(outputs), np.concatenate(truths)


def fourd_grid_completion(pipeline, dataset, num_clips: int = 16, num_inference_steps: int = 25, seed: int = 0,
                          batch_size: int = 8, start: int = 0, num_samples: int = 1) -> dict:
    """4Real-Video's task: given view 0's video (the grid's first row) and every view at time 0 (its first
    column), generate the other cells (view v >= 1 at time t >= 1) and compare them with the renders.

    Beside the generated cells' PSNR, the two copy baselines a model must beat: each cell's own view at time 0
    (the scene frozen) and view 0 at the cell's time (the motion seen from the wrong camera). PSNR on [0, 1]
    over each clip's generated cells, averaged over the clips; and per view (a view's cells of each clip).
    """
    out, truth = complete_grids(pipeline, dataset, "grid", num_clips, num_inference_steps, seed, batch_size, start,
                                num_samples)
    real = truth[:, 1:, 1:]
    same_view = np.broadcast_to(truth[:, 1:, :1], real.shape)  # view v at time 0
    same_time = np.broadcast_to(truth[:, :1, 1:], real.shape)  # view 0 at time t
    return {"psnr_generated": psnr(out[:, 1:, 1:], real), "psnr_generated_by_view": by_view(out[:, 1:, 1:], real),
            "psnr_view_at_time_0": psnr(same_view, real),
            "psnr_view_0_at_time": psnr(same_time, real), "num_clips": num_clips,
            "num_inference_steps": num_inference_steps, "num_samples": num_samples}


def by_view(generated, real) -> list:
    """PSNR of (clips, V - 1, T - 1, ...) generated cells per view (views 1, 2, ...), each averaged over clips."""
    return [psnr(generated[:, v], real[:, v]) for v in range(real.shape[1])]


def grid_completion_references(dataset, num_clips: int = 16, start: int = 0, redraws: int = 8, seed: int = 0) -> dict:
    """What predictors that know each scene, except what the given cells cannot show, score on the generated cells
    of `MultiViewObjects` clips (PSNR as `fourd_grid_completion` reports it): reference points for a model, not
    bounds.

    The given cells show every object at time 0 from all cameras (its 3D position) and its motion as view 0 sees
    it: the two components across view 0's image. The component along view 0's optical axis only changes the
    object's size there (a fraction of a pixel at 16 px), yet views 1 and 3 see it as sideways motion.
    - depth_frozen: the true paths with that component held at its time-0 value (no motion guessed where the given
      cells show none): a sharp, mean-like guess.
    - depth_redrawn: that component of each velocity redrawn from the data's prior (uniform per world axis) and
      the path bounced off the walls again: a stand-in for one exact posterior sample. `redraws` draws per scene
      (one draw per scene moves a 16-scene figure by more than 1 dB): their PSNR averaged, the expectation of a
      sample's figure as `fourd_grid_completion` measures it, and each scene's PSNR of its mean squared error
      over the draws (lower: the average of decibels favours lucky draws; the renders are discrete, so a draw
      can match the truth exactly and score 120 dB: their count is returned).
    """
    from ..data.multiview import BOX, bounce

    if dataset.num_views < 2 or dataset.num_frames < 2:
        raise ValueError("grid_completion_references needs a grid with cells to generate: num_views >= 2 and "
                         f"num_frames >= 2, got {dataset.num_views} views x {dataset.num_frames} frames.")
    rng = np.random.default_rng(seed)
    truths, frozen, redrawn = [], [], []
    for index in range(start, start + num_clips):
        frames, extrinsics = dataset.scene(index)
        axis = extrinsics[0][2, :3]  # view 0's optical axis in world coordinates (the third row of R)
        paths = [np.stack([objects[k]["center"] for objects in frames]) for k in range(len(frames[0]))]

        def grid(new_paths):
            moved = [[dict(obj, center=path[t]) for obj, path in zip(objects, new_paths)]
                     for t, objects in enumerate(frames)]
            return dataset.render_grid(moved, extrinsics)

        truths.append(grid(paths))
        frozen.append(grid([path - np.outer((path - path[0]) @ axis, axis) for path in paths]))
        velocities = [path[1] - path[0] for path in paths]  # the velocity, unless a wall was hit in the first step
        for _ in range(redraws):
            draws = [rng.uniform(-dataset.speed, dataset.speed, size=3) @ axis for _ in paths]
            redrawn.append(grid([bounce(path[0], v + (draw - v @ axis) * axis, len(frames), BOX)
                                 for path, v, draw in zip(paths, velocities, draws)]))
    real, frozen = np.stack(truths)[:, 1:, 1:], np.stack(frozen)[:, 1:, 1:]
    redrawn = np.stack(redrawn).reshape(num_clips, redraws, *truths[0].shape)[:, :, 1:, 1:]
    mse = ((redrawn - real[:, None]) ** 2).reshape(num_clips, redraws, -1).mean(axis=2)  # (clips, redraws)
    return {"psnr_depth_frozen": psnr(frozen, real), "psnr_depth_frozen_by_view": by_view(frozen, real),
            "psnr_depth_redrawn": float(decibels(mse).mean()),
            "psnr_depth_redrawn_of_mean_mse": float(decibels(mse.mean(axis=1)).mean()),
            "depth_redrawn_exact_matches": int((mse == 0).sum()), "num_clips": num_clips, "redraws": redraws}


def fourd_view_synthesis(pipeline, dataset, num_clips: int = 16, num_inference_steps: int = 25, seed: int = 0,
                         batch_size: int = 8, start: int = 0, num_samples: int = 1) -> dict:
    """Generate views 1..V-1 of multi-view clips from their ground-truth first view and compare with the renders.

    With `num_samples` = K > 1 the K outputs per clip (K noise draws) are averaged: a Monte Carlo estimate of the
    posterior mean given view 0, the MSE-best prediction (PSNR rewards it over any single sample).

    `dataset` items are dicts (video (3, V, T, H, W) in [-1, 1], cameras (V, 12), timestamps (T,)), e.g.
    `MultiViewObjects`. Returns PSNR (dB) of the generated views, of the copy-the-first-view baseline, of two
    references for any model that makes each view without seeing view 0 (a per-view image model): the same
    views of another scene (the next clip: what a perfect such model samples) and the mean image of the other
    clips' views (the best it can predict), and the temporal frame difference of generated vs real views.
    """
    out, truth = complete_grids(pipeline, dataset, "first_view", num_clips, num_inference_steps, seed, batch_size,
                                start, num_samples)
    generated, real = out[:, 1:], truth[:, 1:]
    copied = np.repeat(truth[:, :1], truth.shape[1] - 1, axis=1)
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731 - (clips*views, T, H, W, C)
    clip_means = real.mean(axis=(1, 2))  # (clips, H, W, C)
    others_mean = (clip_means.sum(0) - clip_means) / max(len(real) - 1, 1)  # leave-one-out
    return {
        "psnr_generated": psnr(generated, real),
        "psnr_copy_first_view": psnr(copied, real),
        "psnr_other_scene": psnr(np.roll(real, 1, axis=0), real),
        "psnr_mean_image": psnr(np.broadcast_to(others_mean[:, None, None], real.shape), real),
        "frame_difference_generated": frame_difference(flat(generated)),
        "frame_difference_real": frame_difference(flat(real)),
        "num_clips": num_clips,
        "num_inference_steps": num_inference_steps,
        "num_samples": num_samples,
    }
