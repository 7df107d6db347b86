"""`convdiff train` / `accelerate launch scripts/train.py`: the one training loop (training/loop.py) on a recipe."""

import argparse

from ..training.config import load_config


def train_main(argv=None):
    parser = argparse.ArgumentParser(
        prog="convdiff train",
        description="Train any registered backbone. Run under `accelerate launch` for several processes.",
    )
    parser.add_argument("--config", help="a YAML recipe from configs/ (keys: see convdiff/training/config.py)")
    parser.add_argument("--resume", dest="resume", metavar="latest|FOLDER",
                        help="continue the run in output_dir: 'latest' or a checkpoint-<step> folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in an output_dir that holds an earlier run, removing that run first")
    parser.add_argument("--accept-changes", action="store_true",
                        help="with --resume: apply settings that change what is trained (learning rate, batch, model, "
                             "data, seed, ...) although they differ from the run's train_config.yaml, appending them "
                             "with the resumed step to train_changes.yaml (refused without this flag)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, anywhere after the command, e.g. max_train_steps=200 "
                             "model_overrides.hidden_size=64")
    args = parser.parse_intermixed_args(argv)
    overrides = list(args.overrides)
    if args.resume:
        overrides.append(f"resume_from_checkpoint={args.resume}")
    if args.overwrite:
        overrides.append("overwrite=true")
    if args.accept_changes:
        overrides.append("accept_changes=true")
    config = load_config(args.config, overrides)
    from ..training.loop import train

    return train(config)
