"""Recipe sweep for the main job: train each variant of configs/dic-mnist-tiny.yaml for its steps, then score
samples (FID vs held-out digits, class accuracy) under a few sampler settings. Writes one JSON line per
(variant, sampler) to <root>/results.jsonl and prints a markdown table (docs/mnist-recipe-sweep.md).

  python scripts/sweep_mnist_recipe.py --variant base "" --variant lr2e-3 "learning_rate=0.002" \
      --samplers ddim:25:1.0 ddim:10:2.0
"""

import argparse
import json
import shlex
import time
from pathlib import Path

from convdiff.apps.mnist_demo import DEFAULT_RECIPE, mnist_samples, mnist_scores
from convdiff.pipelines import ClassConditionalPipeline
from convdiff.training.config import load_config
from convdiff.training.loop import train


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_RECIPE))
    parser.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "OVERRIDES"), required=True,
                        help="a name and its space-separated key=value overrides")
    parser.add_argument("--samplers", nargs="+", default=["ddim:25:1.0"], help="scheduler:steps:guidance")
    parser.add_argument("--fid-samples", type=int, default=500)
    parser.add_argument("--root", default="outputs/sweep")
    args = parser.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    for name, overrides in args.variant:
        config = load_config(args.config, [*shlex.split(overrides), f"output_dir={root / name}", "overwrite=true",
                                           "sample_final_grid=false", "checkpointing_steps=0"])
        tick = time.perf_counter()
        pipe = ClassConditionalPipeline.from_pretrained(train(config))
        train_seconds = time.perf_counter() - tick
        for spec in args.samplers:
            scheduler, steps, guidance = spec.split(":")
            tick = time.perf_counter()
            samples = mnist_samples(pipe, args.fid_samples, int(steps), scheduler, float(guidance), progress=False)
            sample_seconds = time.perf_counter() - tick
            scores = mnist_scores(pipe, args.fid_samples, int(steps), scheduler, float(guidance), samples=samples,
                                  progress=False)
            row = {"variant": name, "overrides": overrides, "steps": config.max_train_steps,
                   "batch": config.train_batch_size, "train_s": round(train_seconds, 1), "sampler": spec,
                   "sample_s": round(sample_seconds, 1), "fid": round(scores.fid.fid, 2),
                   "accuracy": round(scores.accuracy, 4)}
            print(json.dumps(row), flush=True)
            with open(root / "results.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
