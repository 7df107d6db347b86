"""`convdiff controlnet-demo`: edge control for the shipped MNIST model, measured.

Trains (or loads, with --controlnet) a ControlNet on pipelines/dic-mnist conditioned on the Canny edge map of
a digit (configs/controlnet-dic-mnist.yaml), then, on held-out digits the ControlNet never saw, samples each
digit's class once with its edge map as the condition and once without control (same label, same noise), and
compares the Canny edges of every sample with the condition:
- edge IoU (exact pixels) and edge IoU with 1 pixel of slack,
- edge pixel error: the share of pixels where the two binary edge maps disagree.
Prints a markdown table and writes a grid (condition | controlled | uncontrolled).
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..training.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RECIPE = ROOT / "configs" / "controlnet-dic-mnist.yaml"
SHIPPED = ROOT / "pipelines" / "controlnet-dic-mnist"


def adherence(samples: torch.Tensor, conditions: torch.Tensor, detector: str = "canny") -> dict:
    """Mean edge agreement between samples in [0, 1] (N, C, H, W) and binary edge conditions (N, 1, H, W)."""
    from ..data.edges import edge_iou, edge_map

    edges = edge_map(samples, detector)
    return {
        "edge IoU": edge_iou(edges, conditions).mean().item(),
        "edge IoU (1 px slack)": edge_iou(edges, conditions, tolerance=1).mean().item(),
        "edge pixel error": (edges != (conditions > 0.5).float()).float().mean().item(),
    }


def evaluate(pipeline, num_digits: int = 200, steps: int | None = None, scheduler: str | None = None, seed: int = 0,
             batch_size: int = 100):
    """(metrics per arm, conditions, controlled, uncontrolled) on the first `num_digits` held-out digits, sampled
    with the pipeline's own steps and guidance (`ControlNetPipeline.from_base` keeps the base's) unless given."""
    from ..data.edges import canny_edges
    from ..data.mnist import mnist_digits
    from ..pipelines.schedulers import make_scheduler

    images, labels = mnist_digits("heldout")  # round-robin over classes: any prefix is balanced
    if not 1 <= num_digits <= len(images) - 10:
        raise ValueError(f"num_digits must lie in [1, {len(images) - 10}]; got {num_digits}.")
    digits = torch.from_numpy(np.asarray(images[:num_digits])).float().div(255)[:, None]
    labels = labels[:num_digits].tolist()
    conditions = canny_edges(digits)
    if scheduler is not None:  # None: the base pipeline's own sampler
        pipeline.scheduler = make_scheduler(scheduler, pipeline.scheduler)
    pipeline.set_progress_bar_config(disable=True)
    arms = {"controlled": 1.0, "uncontrolled": 0.0}  # scale 0 = exactly the base model (tested)
    outputs = {}
    for arm, scale in arms.items():
        chunks = []
        for start in range(0, num_digits, batch_size):
            sl = slice(start, start + batch_size)
            generator = [torch.Generator().manual_seed(seed + i) for i in range(start, min(start + batch_size, num_digits))]
            chunks.append(pipeline(conditions[sl], class_labels=labels[sl], controlnet_conditioning_scale=scale,
                                   num_inference_steps=steps, generator=generator, output_type="pt").images)
        outputs[arm] = torch.cat(chunks)
    metrics = {arm: adherence(outputs[arm], conditions) for arm in arms}
    # Reference: how well a real digit of the same class, but another one, matches the condition.
    others = torch.from_numpy(np.asarray(images[10 : num_digits + 10])).float().div(255)[:, None]
    metrics["another held-out digit of the class"] = adherence(others, conditions)
    return metrics, conditions, outputs["controlled"], outputs["uncontrolled"]


def evaluate_video(pipeline, num_clips: int = 20, num_frames: int = 8, seed: int = 0, batch_size: int = 10):
    """(metrics per arm, conditions, controlled, uncontrolled) for a video ControlNet pipeline: held-out
    moving-digit clips (MovingDigits seed 1, digits never trained on), one Canny map per frame as the condition,
    each clip's class as the label, the pipeline's own call otherwise; edge agreement per frame. Clips and
    conditions come back as frames (N*F, C, H, W)."""
    from ..data.edges import canny_edges
    from ..data.moving_digits import MovingDigits
    from ..nn.layouts import frames_to_video, video_to_frames

    clips = MovingDigits("heldout", num_frames=num_frames, length=num_clips, seed=1)
    videos = torch.stack([clips[i][0] for i in range(num_clips)])  # (N, 1, F, H, W) in [-1, 1]
    labels = [int(clips[i][1]) for i in range(num_clips)]
    frames = (video_to_frames(videos) + 1) / 2  # (N*F, 1, H, W) in [0, 1]
    conditions = canny_edges(frames)
    per_clip = frames_to_video(conditions, num_clips)  # (N, 1, F, H, W)
    pipeline.set_progress_bar_config(disable=True)
    outputs = {}
    for arm, scale in {"controlled": 1.0, "uncontrolled": 0.0}.items():
        chunks = []
        for start in range(0, num_clips, batch_size):
            sl = slice(start, start + batch_size)
            out = pipeline(per_clip[sl], class_labels=labels[sl], controlnet_conditioning_scale=scale,
                           generator=torch.Generator().manual_seed(seed + start), output_type="pt").frames
            chunks.append(out.flatten(0, 1))  # (n*F, C, H, W)
        outputs[arm] = torch.cat(chunks)
    metrics = {arm: adherence(outputs[arm], conditions) for arm in outputs}
    metrics["the clip's own frames (the detector's ceiling)"] = adherence(frames, conditions)
    return metrics, conditions, outputs["controlled"], outputs["uncontrolled"]


def comparison_grid(conditions, controlled, uncontrolled, count: int = 10, per_row: int = 2, zoom: int = 3) -> Image.Image:
    """Rows of (condition | controlled | uncontrolled) triples, `per_row` triples side by side, upscaled."""
    from ..grids import make_grid

    triples = torch.stack([conditions[:count], controlled[:count], uncontrolled[:count]], dim=1)
    tiles = triples.reshape(-1, *conditions.shape[1:]).permute(0, 2, 3, 1).numpy()
    grid = make_grid(tiles, columns=3 * per_row)
    return grid.resize((grid.width * zoom, grid.height * zoom), Image.NEAREST)


def markdown_table(metrics: dict) -> str:
    names = list(next(iter(metrics.values())))
    lines = ["| samples | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for arm, values in metrics.items():
        lines.append(f"| {arm} | " + " | ".join(f"{values[n]:.3f}" for n in names) + " |")
    return "\n".join(lines)


def controlnet_demo_main(argv=None):
    parser = argparse.ArgumentParser(prog="convdiff controlnet-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_RECIPE), help="training recipe (task: controlnet)")
    parser.add_argument("--controlnet", help=f"skip training and evaluate this ControlNet folder (e.g. {SHIPPED.relative_to(ROOT)})")
    parser.add_argument("--num-digits", type=int, default=200,
                        help="held-out digits to evaluate (held-out clips for a video base)")
    parser.add_argument("--steps", type=int, default=None,
                        help="sampler steps for the evaluation (default: the base pipeline's own)")
    parser.add_argument("--scheduler", default=None,
                        help="sampler (convdiff.pipelines.schedulers name; default: the base pipeline's own)")
    parser.add_argument("--grid", default=None, help="where to write the grid (default: <output_dir>/controlnet-grid.png)")
    parser.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from ..models.controlnet import ControlNet
    from ..pipelines import ClassConditionalPipeline, ControlNetPipeline, VideoControlNetPipeline, VideoPipeline
    from ..training.controlnet_task import is_video_pipeline

    config = load_config(args.config, args.overrides)
    if args.controlnet:
        controlnet_dir = Path(args.controlnet)
    else:
        from ..training.loop import train

        started = time.perf_counter()
        controlnet_dir = train(config) / "controlnet"
        print(f"trained in {time.perf_counter() - started:.0f} s")
    video = is_video_pipeline(config.task_options["base"])
    started = time.perf_counter()
    if video:
        base = VideoPipeline.from_pretrained(config.task_options["base"])
        pipe = VideoControlNetPipeline.from_base(base, ControlNet.from_pretrained(controlnet_dir))
        num_frames = int(config.task_options.get("num_frames", 8))
        metrics, *images = evaluate_video(pipe, args.num_digits, num_frames)
        what = (f"{args.num_digits} held-out clips x {num_frames} frames x 2 arms", "the pipeline's default call",
                "every sampled frame")
        grid = dict(count=2 * num_frames, per_row=num_frames // 2)
    else:
        base = ClassConditionalPipeline.from_pretrained(config.task_options["base"])
        pipe = ControlNetPipeline.from_base(base, ControlNet.from_pretrained(controlnet_dir))
        metrics, *images = evaluate(pipe, args.num_digits, args.steps, args.scheduler)
        what = (f"{args.num_digits} held-out digits x 2 arms", args.scheduler or type(pipe.scheduler).__name__,
                "the samples")
        grid = {}
    print(f"evaluated {what[0]} in {time.perf_counter() - started:.0f} s ({what[1]}, "
          f"{pipe.sampling_arguments(num_inference_steps=args.steps)}, Canny edges of {what[2]} vs the condition)")
    print(markdown_table(metrics))
    name = "controlnet-video-grid.png" if video else "controlnet-grid.png"
    grid_path = Path(args.grid) if args.grid else Path(config.output_dir) / name
    grid_path.parent.mkdir(parents=True, exist_ok=True)
    comparison_grid(*images, **grid).save(grid_path)
    print(f"grid (condition | controlled | uncontrolled): {grid_path}")
    return 0
    base = ClassConditionalPipeline.from_pretrained(config.task_options["base"])
    pipe = ControlNetPipeline.from_base(base, ControlNet.from_pretrained(controlnet_dir))
    started = time.perf_counter()
    metrics, conditions, controlled, uncontrolled = evaluate(pipe, args.num_digits, args.steps, args.scheduler)
    print(f"evaluated {args.num_digits} held-out digits x 2 arms in {time.perf_counter() - started:.0f} s "
          f"({args.scheduler or type(pipe.scheduler).__name__}, {pipe.sampling_arguments(num_inference_steps=args.steps)}, "
          "Canny edges of the samples vs the condition)")
    print(markdown_table(metrics))
    grid_path = Path(args.grid) if args.grid else Path(config.output_dir) / "controlnet-grid.png"
    grid_path.parent.mkdir(parents=True, exist_ok=True)
    comparison_grid(conditions, controlled, uncontrolled).save(grid_path)
    print(f"grid (condition | controlled | uncontrolled): {grid_path}")
    return 0
