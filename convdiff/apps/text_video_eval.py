"""Does a text-to-video model draw what its prompt asks? For moving digits: "a digit {name} moving {direction}".

For every (digit, direction) caption the model samples videos; an independent digit classifier
(convdiff/eval/digit_classifier.py, 98.5% on real held-out digits) reads every frame, and the motion is read
from the ink's centroid (eval/video_metrics.motion_directions). Beside the trained model: the same model with
its text layers switched off (as at inflation: the frozen image model with its null class, which ignores the
prompt, so its scores are chance), and real directed clips of held-out digits (the readers' ceiling).
"""

import copy

import numpy as np
import torch

from ..data.mnist import DIGIT_NAMES
from ..data.moving_digits import DIRECTIONS, MovingDigits


def caption_grid(template: str, per_caption: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(prompts, digits, directions): every digit x direction caption, `per_caption` times each."""
    digits, directions = np.meshgrid(np.arange(10), np.arange(len(DIRECTIONS)), indexing="ij")
    digits = np.repeat(digits.reshape(-1), per_caption)
    directions = np.repeat(directions.reshape(-1), per_caption)
    prompts = [template.format(name=DIGIT_NAMES[d], label=d, direction=DIRECTIONS[m]) for d, m in zip(digits, directions)]
    return prompts, digits, directions


def sample_prompts(pipeline, prompts, num_frames: int, steps: int, guidance_scale: float, seed: int,
                   batch_size: int = 8) -> np.ndarray:
    """(N, F, H, W, C) in [0, 1], batch b seeded with seed + b."""
    pipeline.set_progress_bar_config(disable=True)
    out = []
    for start in range(0, len(prompts), batch_size):
        out.append(pipeline(prompt=prompts[start : start + batch_size], num_frames=num_frames, num_inference_steps=steps,
                            guidance_scale=guidance_scale, output_type="np",
                            generator=torch.Generator().manual_seed(seed + start)).frames)
    return np.concatenate(out)


def prompt_scores(videos, digits, directions) -> dict:
    """eval.video_metrics.digit_scores, and the share of videos moving in the asked direction (and of those
    also showing the asked digit by majority)."""
    from ..eval.video_metrics import digit_scores, majority_digits, motion_directions, read_digits

    read = read_digits(videos)
    moved = motion_directions(videos) == directions
    return {**digit_scores(read, digits), "direction_accuracy": float(moved.mean()),
            "both_right": float((moved & (majority_digits(read) == digits)).mean())}


def without_text(model):
    """A copy of a text-conditioned video model whose text layers output zero, as at inflation."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".text.2." in name or ".text_modulation." in name:  # the zero-initialised text layers
                p.zero_()
    return model


def evaluate_text_video(pipe, config, per_caption: int, steps: int, guidance_scale: float) -> tuple[dict, dict]:
    """(metrics, sample sets) of the trained model, its text layers off, and real directed clips."""
    from ..pipelines.video import VideoPipeline

    options = config.task_options
    num_frames = int(options.get("num_frames", 8))
    template = options.get("caption_template", "a digit {name} moving {direction}")
    prompts, digits, directions = caption_grid(template, per_caption)
    samples = {"trained": sample_prompts(pipe, prompts, num_frames, steps, guidance_scale, seed=10_000)}
    off = VideoPipeline(**dict(pipe.components, transformer=without_text(pipe.transformer)))
    samples["text layers off (chance)"] = sample_prompts(off, prompts, num_frames, steps, guidance_scale, seed=10_000)
    real = MovingDigits("heldout", num_frames=num_frames, length=len(prompts) * 20, motion="directed", seed=1)
    picked, missing = {}, len(prompts)
    for i in range(len(real)):  # real clips with the same captions, drawn until every caption has its share
        clip, digit, direction = real.clip_uint8(i)
        if len(picked.setdefault((digit, direction), [])) < per_caption:
            picked[(digit, direction)].append(clip)
            missing -= 1
            if not missing:
                break
    real_videos = np.stack([picked[(d, m)].pop() for d, m in zip(digits, directions)])[..., None] / 255.0
    samples["real directed clips (held out)"] = real_videos
    metrics = {name: prompt_scores(videos, digits, directions) for name, videos in samples.items()}
    metrics["protocol"] = (f"{len(prompts)} videos ({per_caption} per caption, 10 digits x {len(DIRECTIONS)} directions) x "
                           f"{num_frames} frames, {type(pipe.scheduler).__name__} {steps} steps, guidance {guidance_scale}; "
                           "digits read by the shipped CNN, direction from the ink centroid's first-to-last move")
    return metrics, samples
