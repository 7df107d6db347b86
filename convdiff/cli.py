"""`convdiff <command>`: train, sample, fid, convert, bench, bench-paths, bench-resolution, extract-latents, distill,
mnist-demo, controlnet-demo, layered-eval, video-demo (the COMMANDS table below, also `convdiff --help`).

Each command is an application module in `convdiff/apps/` (docs/architecture.md); this file only dispatches,
importing lazily so `convdiff --help` stays fast. A user error (bad input: ValueError, or a missing, existing or
unwritable file: OSError) prints one line,
`convdiff <command>: error: ...`, and exits 2; `--debug` anywhere on the command line shows the full
traceback instead. Other exceptions are bugs and keep their traceback.
"""

import argparse
import sys

COMMANDS = {
    "train": ("convdiff.apps.train", "train_main", "train any registered backbone (run under accelerate launch)"),
    "sample": ("convdiff.apps.sample", "sample_main", "sample a grid or an ADM-format .npz from a pipeline folder or a registry model"),
    "fid": ("convdiff.apps.fid", "fid_main", "FID between folders / .npz images / .npz statistics, offline"),
    "convert": ("convdiff.apps.convert", "convert_main", "convert an official DiC / DiCo (.pt) or DiffiT (.safetensors) checkpoint into a convdiff folder"),
    "bench": ("convdiff.apps.benchmarks.forward", "main", "forward throughput and FLOPs of DiC, DiCo and DiT; appends to docs/benchmarks.md"),
    "bench-resolution": ("convdiff.apps.benchmarks.resolution", "main", "DiC / DiCo vs DiT from 256 to 2048 px: time, memory, MACs, efficiency gap; appends to docs/benchmarks.md"),
    "bench-paths": ("convdiff.apps.benchmarks.paths", "main", "DiC / DiCo vs DiT at default and best paths (NCHW, default, compiled): forward, training step, sampling, vs the targets; appends to docs/benchmarks.md"),
    "extract-latents": ("convdiff.apps.extract_latents", "extract_main", "encode an image folder (and its flips) into VAE latents"),
    "distill": ("convdiff.apps.distill", "distill_main", "ΔConvFusion: distil a pipeline's self-attention into ΔConv / linear-attention students"),
    "mnist-demo": ("convdiff.apps.mnist_demo", "demo_main", "train a tiny DiC on the embedded MNIST digits, sample a grid, print FID"),
    "controlnet-demo": ("convdiff.apps.controlnet_demo", "controlnet_demo_main", "edge-map ControlNet on the shipped MNIST model: train, measure adherence, grid"),
    "layered-eval": ("convdiff.apps.layered_eval", "layered_eval_main", "sample a text-conditioned layered MNIST model per digit: top-scale digit accuracy, scale agreement (PSNR)"),
    "video-demo": ("convdiff.apps.video_demo", "video_demo_main", "inflate the MNIST model to video (or train a tiny 4D model), train on CPU, GIFs, metrics"),
}

USER_ERRORS = (ValueError, OSError)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = argparse.ArgumentParser(prog="convdiff", description="convdiff command line",
                                         epilog="--debug (anywhere): show the full traceback of an error")
        parser.add_argument("command", choices=sorted(COMMANDS), help="; ".join(f"{k}: {v[2]}" for k, v in COMMANDS.items()))
        parser.parse_args(argv[:1] or ["--help"])
        return 2
    command = argv[0]
    module_name, function, _ = COMMANDS[command]
    import importlib

    try:
        result = getattr(importlib.import_module(module_name), function)(argv[1:])
    except USER_ERRORS as error:
        if debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"convdiff {command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"convdiff {command}: interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
