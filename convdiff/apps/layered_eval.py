"""`convdiff layered-eval`: does a text-conditioned layered MNIST model draw the asked digit at every scale?

For each digit it samples `--per-digit` images with the prompt "a handwritten digit {name}" (the training
template), and reports:
- at the top scale (32x32, MNIST padded by 2 px), the share read as the asked digit by the shipped digit CNN
  (convdiff/eval/digit_classifier.py, 98.5% on real held-out digits), on the central 28x28;
- for every lower scale, the PSNR between what the model drew there and the top scale average-pooled to that
  size (the same pyramid as training, diffusion/multiscale.py): how well the scales of one sample agree;
- the same pair of figures for the pipeline with the prompt emptied (a guidance-free unconditional baseline:
  accuracy near chance), so the accuracy is read against what the prompt adds.
Prints JSON; `--grid FILE` saves a 10-column grid (one column per digit) of the top scale.
"""

import argparse
import json

import numpy as np
import torch

from ..data.mnist import DIGIT_NAMES
from ..diffusion.multiscale import downsample


def scale_agreement(scales: list) -> list[float]:
    """PSNR (dB, images in [0, 1]) of each lower scale against the top scale pooled to its size."""
    from ..eval.video_metrics import psnr

    top = torch.as_tensor(np.asarray(scales[0])).permute(0, 3, 1, 2).float()
    return [psnr(np.asarray(lower), downsample(top, np.asarray(lower).shape[1]).permute(0, 2, 3, 1).numpy())
            for lower in scales[1:]]


def top_scale_accuracy(images, labels) -> float:
    """Share of top-scale images (N, S, S, 1) in [0, 1] read as `labels`, on their central 28x28."""
    from ..eval.digit_classifier import class_accuracy
    from ..eval.image_io import to_uint8

    images = np.asarray(images)
    off = (images.shape[1] - 28) // 2
    return class_accuracy(to_uint8(images[:, off : off + 28, off : off + 28], value_range=(0.0, 1.0)), labels)


def evaluate_layered(pipe, per_digit: int, steps: int | None = None, guidance_scale: float | None = None, seed: int = 0,
                     batch_size: int = 50,
                     template: str = "a handwritten digit {name}") -> tuple[dict, np.ndarray]:
    """({"prompted": ..., "empty prompt": ...} figures, the prompted top-scale images); steps and guidance left as
    None are the pipeline's own (its default call)."""
    labels = np.repeat(np.arange(10), per_digit)
    prompts = [template.format(name=DIGIT_NAMES[y], label=y) for y in labels]
    pipe.set_progress_bar_config(disable=True)
    results = {}
    for name, texts, scale in (("prompted", prompts, guidance_scale), ("empty prompt", [""] * len(prompts), 1.0)):
        scales = None
        for start in range(0, len(texts), batch_size):
            out = pipe(prompt=texts[start : start + batch_size], num_inference_steps=steps, guidance_scale=scale,
                       output_type="np", return_all_scales=True,
                       generator=torch.Generator().manual_seed(seed + start)).scales
            scales = out if scales is None else [np.concatenate([a, b]) for a, b in zip(scales, out)]
        agreement = scale_agreement(scales)
        results[name] = {"top_scale_accuracy": top_scale_accuracy(scales[0], labels),
                         **{f"psnr_{np.asarray(s).shape[1]}px_vs_pooled_top": p for s, p in zip(scales[1:], agreement)}}
        if name == "prompted":
            shown = scales[0]
    results["protocol"] = (f"{len(prompts)} samples ({per_digit} per digit, prompt {template!r}), {steps} steps, "
                           f"guidance {guidance_scale} (empty prompt: 1), seeds {seed} + batch start; digits read by "
                           "the shipped CNN on the central 28x28 of the top scale")
    return results, shown


def layered_eval_main(argv=None):
    parser = argparse.ArgumentParser(prog="convdiff layered-eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default="pipelines/layered-mnist", help="pipeline folder (default: %(default)s)")
    parser.add_argument("--per-digit", type=int, default=20, help="samples per digit (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the pipeline's own)")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="classifier-free guidance (default: the pipeline's own)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first batch (default: %(default)s)")
    parser.add_argument("--grid", help="save the prompted top-scale samples as a grid PNG (one column per digit)")
    args = parser.parse_args(argv)
    from ..grids import make_grid
    from ..pipelines import LayeredTextToImagePipeline

    pipe = LayeredTextToImagePipeline.from_pretrained(args.pipeline)
    results, images = evaluate_layered(pipe, args.per_digit, args.steps, args.guidance_scale, args.seed)
    if args.grid:
        order = np.arange(len(images)).reshape(10, -1).T.reshape(-1)  # row r: sample r of every digit
        make_grid(images[order][: 10 * min(10, args.per_digit)], columns=10).save(args.grid)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(layered_eval_main())
