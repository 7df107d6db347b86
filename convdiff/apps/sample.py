"""`convdiff sample`: a class grid PNG, or N samples as an ADM-format `.npz` for FID.

Samples are reproducible whatever the batch size: sample i always starts from its own generator seeded
with seed + i, and its label follows a fixed balanced scheme (i mod num_classes), which the ADM evaluator
and our FID both accept. A `.npz` run shards its batches across `accelerate launch` processes and resumes
after a kill (`--resume`); see sharded_sampling.py.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..files import replace_file
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


def class_ids(text: str) -> list:
    """--labels: comma-separated class ids."""
    items = [item.strip() for item in text.split(",")]
    bad = next((item for item in items if not item.lstrip("-").isdigit()), None)
    if bad is not None:
        raise argparse.ArgumentTypeError(f"expected comma-separated class ids such as 0,3,7, got {text!r} "
                                         f"({bad!r} is not an integer)")
    return [int(item) for item in items]


def check_output(output: Path, overwrite: bool, resume: bool) -> None:
    """The output's kind and ownership, before a pipeline is loaded: a .npz or an image format PIL writes; an
    existing image is replaced only with --overwrite (a .npz run's own checks live in sharded_sampling.py)."""
    if output.is_dir():
        raise IsADirectoryError(f"--output {str(output)!r} is a folder: give a file path (e.g. {output / 'grid.png'}).")
    suffix = output.suffix.lower()
    writable = {ext for ext, kind in Image.registered_extensions().items() if kind in Image.SAVE}
    if suffix != ".npz" and suffix not in writable:
        raise ValueError(f"--output {str(output)!r} has the extension {suffix or '(none)'!r}: give a .npz for N samples "
                         "or an image file for a grid (.png, .jpg, .webp, ...).")
    if suffix != ".npz" and output.exists() and not overwrite:
        raise FileExistsError(f"--output {str(output)!r} already exists: pass --overwrite to replace it, or choose "
                              "another path.")
    if suffix != ".npz" and resume:
        raise ValueError("--resume continues a .npz run; a grid is sampled in one go (use --overwrite to replace it).")


def check_decodable(pipeline) -> None:
    """Images need 1 or 3 channels: a latent model's pipeline must have a VAE to decode them."""
    channels = pipeline.transformer.config.in_channels
    if pipeline.vae is None and channels not in (1, 3):
        raise ValueError(f"This pipeline has no VAE and its model makes {channels}-channel latents, not images: "
                         "convert it with a VAE (convdiff convert ... --vae <AutoencoderKL folder>, e.g. a local copy "
                         "of stabilityai/sd-vae-ft-ema) or add one to the folder's model_index.json.")


def check_call(pipeline, labels, call) -> None:
    """The checks a pipeline call makes on these arguments, made before anything is sampled or written."""
    from ..pipelines.arguments import check_sampling_arguments

    check_sampling_arguments(call["num_inference_steps"], call["guidance_scale"], labels)
    first = None if labels is None else labels[:1]
    pipeline.check_inputs(first, None if first else 1, call["guidance_scale"], call["guidance_channels"],
                          call["guidance_schedule"], None, "np", None, None)
    pipeline.check_scheduler()


def run_arguments(args, pipeline, overrides, call, num_classes) -> dict:
    """What defines a .npz run's samples, as JSON values (recorded, and compared on --resume)."""
    from .sharded_sampling import fingerprint

    scheduler = {k: v for k, v in pipeline.scheduler.config.items() if not k.startswith("_")}
    arguments = dict(pipeline=str(Path(args.pipeline).resolve()) if args.pipeline else None,
                     pipeline_fingerprint=fingerprint(args.pipeline) if args.pipeline else None,
                     model=args.model, model_overrides=overrides if args.model else None,
                     scheduler={"class": type(pipeline.scheduler).__name__, **scheduler}, **call, seed=args.seed,
                     num_samples=args.num_samples, batch_size=args.batch_size,
                     labels=f"i mod {num_classes}" if num_classes else None)
    return json.loads(json.dumps(arguments))  # tuples -> lists, as they read back


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
    parser.add_argument("--labels", type=class_ids,
                        help="comma-separated class ids for the grid (default: 10x10 class grid)")
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
    parser.add_argument("--resume", action="store_true",
                        help=".npz: continue the run that writes --output (after a kill), refused if its recorded "
                             "arguments differ; starts afresh when there is none")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output (an image, or an earlier .npz run's output and its batches)")
    args = parser.parse_args(argv)
    if args.num_samples < 1 or args.batch_size < 1:
        parser.error(f"--num-samples and --batch-size must be >= 1, got {args.num_samples} and {args.batch_size}")
    output = Path(args.output)
    check_output(output, args.overwrite, args.resume)

    from accelerate import PartialState

    from ..pipelines.schedulers import make_scheduler
    from ..training.labels import null_class_and_dropout
    from ..training.loop import has_accelerator

    try:
        overrides = json.loads(args.model_overrides)
    except json.JSONDecodeError as error:
        parser.error(f"--model-overrides must be a JSON object, got {args.model_overrides!r} ({error})")
    state = PartialState(cpu=not has_accelerator())  # gloo on a CPU machine, as training does
    if args.model:
        torch.manual_seed(args.seed)  # the same fresh weights in every process and every resumed run
    pipeline = load_pipeline(args.pipeline, args.model, overrides).to(state.device)
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
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".npz":
        from .sharded_sampling import sample_to_npz

        labels = balanced_labels(args.num_samples, num_classes)
        check_call(pipeline, labels, call)  # before the run claims its output

        def make_batch(start, stop):
            batch_labels = None if labels is None else labels[start:stop]
            return generate(pipeline, stop - start, args.seed + start, stop - start, batch_labels, progress=False, **call)

        action, made = sample_to_npz(make_batch, output, run_arguments(args, pipeline, overrides, call, num_classes),
                                  labels, state, resume=args.resume, overwrite=args.overwrite)
        if state.num_processes > 1:
            print(f"process {state.process_index}: sampled {made} of {args.num_samples}", file=sys.stderr)
        if state.is_main_process:
            done = "was already complete" if action == "complete" else f"written ({state.num_processes} process(es))"
            print(f"{output}: {args.num_samples} samples {done} (labels i mod {num_classes}, seeds {args.seed}+i, "
                  f"{describe(args.scheduler, call)})")
        return 0
    if args.labels:
        labels = args.labels
        columns = min(len(labels), 10)
    elif num_classes:
        labels, columns = grid_labels(num_classes)
    else:
        labels, columns = None, 8
    if not state.is_main_process:  # a grid is one process's work: the others would sample it only to drop it
        return 0
    check_call(pipeline, labels, call)
    n = len(labels) if labels is not None else 64
    images = generate(pipeline, n, args.seed, args.batch_size, labels, **call)
    grid = make_grid(images.astype(np.float32) / 255.0, columns)
    image_format = Image.registered_extensions()[output.suffix.lower()]
    replace_file(output, lambda partial: grid.save(partial, format=image_format))  # no half-written grid
    print(f"wrote a {n}-sample grid to {output}")
    return 0
