"""Sample grids during and after training, from a pipeline around the model being trained."""

from pathlib import Path

import torch
from PIL import Image

from ..grids import grid_labels, make_grid
from ..pipelines.schedulers import make_scheduler


def build_pipeline(model, objective, config):
    """A ClassConditionalPipeline around `model` with the objective's training scheduler (saved with it), or with
    `official_sampling`, the official sample script's sampler and guidance defaults, as a converted checkpoint."""
    from ..convert.official import load_vae, official_pipeline
    from ..pipelines import ClassConditionalPipeline

    if config.official_sampling:
        return official_pipeline(model, vae=config.vae)
    vae = load_vae(config.vae)  # a local folder only
    return ClassConditionalPipeline(transformer=model, scheduler=objective.make_scheduler(), vae=vae)


def sample_grid(pipeline, num_classes: int, num_inference_steps: int, scheduler: str, guidance_scale: float = 1.0,
                seed: int = 0) -> Image.Image:
    pipeline.scheduler = make_scheduler(scheduler, pipeline.scheduler)
    if num_classes:
        labels, columns = grid_labels(num_classes)
        kwargs = {"class_labels": labels}
    else:
        columns, kwargs = 8, {"batch_size": 64}
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                      generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images
    return make_grid(images, columns)


def save_sample_grid(pipeline, config, path):
    from .labels import null_class_and_dropout

    num_classes, _, _ = null_class_and_dropout(pipeline.transformer)
    scheduler = pipeline.scheduler
    grid = sample_grid(pipeline, num_classes, config.sample_num_inference_steps, config.sample_scheduler,
                       config.sample_guidance_scale, config.seed)
    pipeline.scheduler = scheduler  # the pipeline keeps its own sampler (saved with it, and its default call)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
