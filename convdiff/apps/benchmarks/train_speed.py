"""Training-step speed on MNIST-shaped batches: img/s of forward + backward + AdamW for DiC, DiCo and diffusers'
UNet2DModel / DiT (~1.7M params each, registry names *-mnist), NCHW against channels-last, and compiled.

Paths, measured side by side in one process and alternated round-robin so that load on the machine hits all alike:
- `nchw`: our conv models with 4-D weights and input kept NCHW (model_paths.py);
- `default`: what `create_model(name)` gives (DiC / DiCo channels-last inside; diffusers models unchanged);
- `compiled`: the default path under `torch.compile` (the recipe key `compile: true`), compile time excluded.
The 2048^3 fp32 matmul rate is measured in the same run. Prints a markdown table and appends it to
docs/benchmarks.md with the command, machine and date (`--no-write` to skip).

    python scripts/benchmark_train_speed.py                 # batch 64, 2 threads, ~3 min
"""

import argparse
import datetime as dt
import shlex
import sys
import time
from pathlib import Path

import torch

from .instruments import append_section, machine_line, measure_matmul_peak, round_robin
from .model_paths import PATHS, build, example_inputs, train_step

MODELS = ["dic-mnist", "dico-mnist", "unet-mnist", "dit-mnist"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds; each times every (model, path) once")
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    peak = measure_matmul_peak("fp32")
    steps = {}
    for name in args.models:
        for path in args.paths:
            model = build(name, path, train=True)
            step = train_step(model, path, example_inputs(model, args.batch))
            tick = time.perf_counter()
            step()
            step()  # warm-up (and the compile, for the compiled path)
            print(f"{name:11s} {path:8s} warm-up {time.perf_counter() - tick:6.1f} s", flush=True)
            steps[name, path] = step
    timings = round_robin(steps, args.rounds, repeats=args.steps)
    peak_after = measure_matmul_peak("fp32")

    rate = {key: args.batch / timing.median for key, timing in timings.items()}  # median step
    header = "| model | " + " | ".join(f"{p} img/s" for p in args.paths) + " | default / nchw | best / nchw |"
    lines = [header, "|" + "---|" * (len(args.paths) + 3)]
    for name in args.models:
        row = [f"{rate[name, p]:.1f}" for p in args.paths]
        base = rate.get((name, "nchw"))
        default = rate.get((name, "default"))
        best = max(rate[name, p] for p in args.paths)
        lines.append(f"| {name} | " + " | ".join(row) + f" | {default / base:.2f}x | {best / base:.2f}x |"
                     if base and default else f"| {name} | " + " | ".join(row) + " | | |")
    table = "\n".join(lines)
    command = "python scripts/benchmark_train_speed.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    section = (f"## Training-step speed on MNIST batches: NCHW vs channels-last vs compiled\n\n"
               f"- command: `{command.strip()}`\n- date: {dt.date.today().isoformat()}\n"
               f"- machine: {machine_line(torch.get_num_threads())}\n"
               f"- fp32 matmul (2048^3) rate in this run: {peak:.0f} GFLOP/s before the models, {peak_after:.0f} after\n"
               f"- batch {args.batch} of 1x28x28, forward + backward + AdamW, median of {args.rounds} rounds x "
               f"{args.steps} steps, paths alternated round-robin\n\n{table}\n")
    print(section)
    if not args.no_write:
        append_section(section, Path(__file__).resolve().parents[3] / "docs" / "benchmarks.md")
    return 0
