"""`convdiff sample`: a class grid PNG, or N samples as an ADM-format `.npz` for FID.

Samples are reproducible whatever the batch size: sample i always starts from its own generator seeded
with seed + i, and its label follows a fixed balanced scheme (i mod num_classes), which the ADM evaluator
and our FID both accept.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..grids import balanced_labels, grid_labels, make_grid

SCHEDULES = ("constant", "power-cosine")  # pipelines/guidance.py, named here so --help imports no diffusers


def load_pipeline(pipeline_dir=None, model=None, model_overrides=None):
    """A saved ClassConditionalPipeline folder, or a freshly initialised registry model in pixel space."""
    from ..pipelines import ClassConditionalPipeline

    if pipeline_dir:
        if not (Path(pipeline_dir) / "model_index.json").is_file():
            raise FileNotFoundError(f"{pipeline_dir} is not a pipeline folder (no model_index.json).")
        return ClassConditionalPipeline.from_pretrained(pipeline_dir)
    from ..pipelines.schedulers import adm_scheduler
    from ..registry import create_model

    net = create_model(model, **(model_overrides or {})).eval()
    learned = net.config.out_channels == 2 * net.config.in_channels
    return ClassConditionalPipeline(transformer=net, scheduler=adm_scheduler(learned))


def guidance_channels(text: str):
    """--guidance-channels: a channel count, or "all"."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a channel count (e.g. 3) or 'all', got {text!r}") from None


def check_decodable(pipeline) -> None:
    """Images need 1 or 3 channels: a latent model's pipeline must have a VAE to decode them."""
    channels = pipeline.transformer.config.in_channels
    if pipeline.vae is None and channels not in (1, 3):
        raise ValueError(f"This pipeline has no VAE and its model makes {channels}-channel latents, not images: "
                         "convert it with a VAE (convdiff convert ... --vae <AutoencoderKL folder>, e.g. a local copy "
                         "of stabilityai/sd-vae-ft-ema) or add one to the folder's model_index.json.")


def describe(scheduler_name: str, call: dict) -> str:
    """The sampler and guidance of a run, for its report line."""
    channels = call["guidance_channels"] or "all"
    return (f"{scheduler_name} {call['num_inference_steps']} steps, guidance {call['guidance_scale']} "
            f"({call['guidance_schedule']}, {channels} channels)")


def generate(pipeline, n: int, seed: int = 0, batch_size: int = 50, labels=None, progress: bool = True, **call_kwargs):
    """n samples as uint8 (N, H, W, C), sample i seeded with seed + i."""
    pipeline.set_progress_bar_config(disable=True)
    out = []
    for start in tqdm(range(0, n, batch_size), desc="sample", disable=not progress):
        stop = min(n, start + batch_size)
        generators = [torch.Generator().manual_seed(seed + i) for i in range(start, stop)]
        kwargs = dict(call_kwargs)
        if labels is not None:
            kwargs["class_labels"] = labels[start:stop]
        else:
            kwargs["batch_size"] = stop - start
        images = pipeline(generator=generators, output_type="np", **kwargs).images
        out.append((images * 255).round().clip(0, 255).astype(np.uint8))
    return np.concatenate(out)


def sample_main(argv=None):
    parser = argparse.ArgumentParser(prog="convdiff sample", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pipeline", help="a saved pipeline folder (e.g. pipelines/dic-mnist)")
    source.add_argument("--model", help="a registry name, freshly initialised (for smoke tests before training)")
    parser.add_argument("--model-overrides", default="{}", help='JSON config overrides for --model, e.g. {"in_channels": 1}')
    parser.add_argument("--output", required=True, help="a .png for a class grid, or a .npz for N samples (ADM format)")
    parser.add_argument("--num-samples", type=int, default=100, help="samples in the .npz (default: 100)")
    parser.add_argument("--labels", help="comma-separated class ids for the grid (default: 10x10 class grid)")
    parser.add_argument("--scheduler", default=None,
                        help="ddpm, ddim, dpm++, euler, euler-ancestral, heun, unipc (flow models: euler, heun); "
                             "default: the pipeline's own (a --model gets ADM's DDPM sampler)")
    parser.add_argument("--steps", type=int, default=None,
                        help="sampler steps, >= 1 (default: the pipeline's sampling_defaults, e.g. 250 for a converted "
                             "official checkpoint, else 50)")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="classifier-free guidance scale, active when > 1 (default: the pipeline's, else 1)")
    parser.add_argument("--guidance-channels", type=guidance_channels, default=None, metavar="N|all",
                        help="guide only the first N latent channels (3 = official DiT/DiC/DiCo/DiffiT rule) or all "
                             "(diffusers); default: the pipeline's, else all")
    parser.add_argument("--guidance-schedule", choices=SCHEDULES, default=None,
                        help="constant, or power-cosine (DiffiT-256: the scale ramps up to --guidance-scale as t -> 0); "
                             "default: the pipeline's, else constant")
    parser.add_argument("--seed", type=int, default=0, help="sample i starts from seed + i (default: 0)")
    parser.add_argument("--batch-size", type=int, default=50, help="samples per forward pass (default: 50)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the denoiser first (a one-off compile, then one graph for every step)")
    args = parser.parse_args(argv)

    from ..pipelines.schedulers import make_scheduler
    from ..training.labels import null_class_and_dropout

    try:
        overrides = json.loads(args.model_overrides)
    except json.JSONDecodeError as error:
        parser.error(f"--model-overrides must be a JSON object, got {args.model_overrides!r} ({error})")
    pipeline = load_pipeline(args.pipeline, args.model, overrides)
    if args.compile:
        pipeline.transformer.compile()  # in place, as diffusers' ModelMixin.compile(); tests/test_compile.py
    if args.scheduler is not None:
        pipeline.scheduler = make_scheduler(args.scheduler, pipeline.scheduler)
    args.scheduler = args.scheduler or type(pipeline.scheduler).__name__  # for the report below
    num_classes, _, _ = null_class_and_dropout(pipeline.transformer)
    channels = pipeline.transformer.config.in_channels if args.guidance_channels == "all" else args.guidance_channels
    call = pipeline.sampling_arguments(num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                                       guidance_channels=channels, guidance_schedule=args.guidance_schedule)
    check_decodable(pipeline)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".npz":
        from ..eval.image_io import save_adm_npz

        labels = balanced_labels(args.num_samples, num_classes)
        images = generate(pipeline, args.num_samples, args.seed, args.batch_size, labels, **call)
        save_adm_npz(images, output, labels=labels)
        print(f"wrote {len(images)} samples to {output} (labels i mod {num_classes}, seeds {args.seed}+i, "
              f"{describe(args.scheduler, call)})")
        return 0
    if args.labels:
        labels = [int(v) for v in args.labels.split(",")]
        columns = min(len(labels), 10)
    elif num_classes:
        labels, columns = grid_labels(num_classes)
    else:
        labels, columns = None, 8
    n = len(labels) if labels is not None else 64
    images = generate(pipeline, n, args.seed, args.batch_size, labels, **call)
    make_grid(images.astype(np.float32) / 255.0, columns).save(output)
    print(f"wrote a {n}-sample grid to {output}")
    return 0
