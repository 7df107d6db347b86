"""`convdiff convert` / `python -m convdiff.convert`: the argument parser is built before torch is imported."""

import argparse
import json
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convdiff convert",
        description="Convert an official DiC / DiCo training checkpoint (.pt) or DiffiT checkpoint (.safetensors) "
                    "into a ClassConditionalPipeline folder (model_index.json, transformer/, scheduler/ [, vae/]) that "
                    "samples like the official sample script (ADM's 250-step DDPM, 3-channel guidance) without flags.",
    )
    parser.add_argument("--checkpoint", required=True, help="official .pt file (or a .safetensors state dict)")
    parser.add_argument("--model", default="dico-xl",
                        help="registry name of the architecture: dic-s|b|xl|h, dico-s|b|l|xl|h, diffit-s|b|l|xl|xl-512 "
                             "or a tiny size (default: dico-xl)")
    parser.add_argument("--output", required=True, help="pipeline folder to write (the model is its transformer/ subfolder)")
    parser.add_argument("--vae", default=None,
                        help="local AutoencoderKL folder to include as vae/ (e.g. a copy of stabilityai/sd-vae-ft-ema); "
                             "without it the pipeline samples latents")
    parser.add_argument("--weights", choices=["ema", "model"], default="ema", help="which weights of a training checkpoint (default: ema)")
    parser.add_argument("--sample-size", type=int, default=None, help="latent size to record in the config (e.g. 64 for a 512px model)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="other config override, value as JSON (e.g. --set num_classes=10); repeatable")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="UNSAFE: fully unpickle a .pt file that holds Python objects other than tensors and the "
                             "trainer's argparse args, which runs any code in it; only for files you trust (default: refuse)")
    return parser


def convert_main(argv=None) -> int:
    """`convdiff convert` / `python -m convdiff.convert`: returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..convert.official import convert_official_to_folder
    from ..registry import normalize_name

    overrides = {} if args.sample_size is None else {"sample_size": args.sample_size}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--set takes KEY=VALUE, got {item!r}")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    try:
        out = convert_official_to_folder(args.checkpoint, args.output, model=args.model, use_ema=args.weights == "ema",
                                         overwrite=args.overwrite, trust_pickle=args.trust_pickle, vae=args.vae,
                                         **overrides)
    except (ValueError, OSError) as error:
        print(f"convdiff convert: error: {error}", file=sys.stderr)
        return 2
    print(f"Converted {args.checkpoint} to {out} as {normalize_name(args.model)}.")
    return 0
