"""`convdiff distill --config configs/distill-*.yaml [--resume latest] [key=value ...]`

Runs the accelerate training loop with the `distill` task (distill/task.py): the recipe names the teacher pipeline
folder and the student type in `task_options`. Run it under `accelerate launch` for several processes.
"""

import argparse

from ..training.config import load_config


def distill_main(argv=None):
    parser = argparse.ArgumentParser(prog="convdiff distill", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a configs/distill-*.yaml recipe")
    parser.add_argument("--resume", help="'latest' or a checkpoint-<step> folder to continue from")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. task_options.teacher=path/to/pipeline")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"resume_from_checkpoint={args.resume}"] if args.resume else [])
    config = load_config(args.config, overrides)
    if config.task != "distill":
        raise ValueError(f"convdiff distill runs recipes with task: distill; {args.config} has task: {config.task}.")
    from ..training.loop import train

    pipeline_dir = train(config)
    print(f"distilled pipeline: {pipeline_dir}")
    return 0
