"""Regional vs whole-model compilation: compile time, graphs compiled and forward speed, beside eager.

Paths, per model:
- `eager`: the model as built;
- `whole`: `model.compile(fullgraph=True)`, one graph for the whole forward;
- `regional`: `model.compile_repeated_blocks(fullgraph=True)`, one graph per distinct block shape
  (convdiff/models/regional_compile.py), the rest of the forward eager.
Each compile starts cold (Dynamo reset, an empty inductor cache), and its time is the first call's wall time
minus an eager call's. Every call uses a new timestep, so a recompilation across timesteps would show in the
graph count. The timed forwards (inference mode) are alternated round-robin so load on the machine hits every
path alike; the fp32 matmul rate is measured in the same run, before and after. Prints a markdown table and
appends it to docs/benchmarks.md with the command, machine and date (`--no-write` to skip).

    OMP_NUM_THREADS=1 python scripts/benchmark_regional_compile.py    # dic-tiny, diffit-tiny, batch 4: minutes
"""

import argparse
import datetime as dt
import itertools
import os
import shlex
import sys
from pathlib import Path

import torch
from torch._inductor.utils import fresh_inductor_cache

from ...registry import create_model
from .instruments import add_report_options, append_section, elapsed, machine_line, measure_matmul_peak, round_robin

# DiC: 10 blocks of 5 shapes (a U-shape); DiffiT: identical blocks, the case diffusers' regional compile was made for
MODELS = ["dic-tiny", "diffit-tiny"]
PATHS = ("eager", "whole", "regional")


def forward_call(model, batch: int):
    """A forward at batch `batch` that takes a new timestep at every call."""
    g = torch.Generator().manual_seed(0)
    size, channels = model.config.sample_size, model.config.in_channels
    x = torch.randn(batch, channels, size, size, generator=g)
    labels = torch.randint(0, model.config.num_classes, (batch,), generator=g)
    timesteps = itertools.count(1)

    def call():
        with torch.inference_mode():
            return model(x, torch.full((batch,), next(timesteps) % 1000), labels).sample
    return call


def on_path(name: str, path: str, batch: int, eager_seconds: float):
    """(call, compile seconds, graphs) of a fresh model on `path`, its compile done by a first call. No Dynamo
    reset between models: it would drop the graphs of the models compiled before, which are timed afterwards."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    call = forward_call(model, batch)
    if path == "eager":
        return call, 0.0, 0
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with fresh_inductor_cache():
        if path == "whole":
            model.compile(fullgraph=True)
        else:
            model.compile_repeated_blocks(fullgraph=True)
        seconds = elapsed(call) - eager_seconds
    return call, seconds, torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds; each times every (model, path) once")
    parser.add_argument("--repeats", type=int, default=3, help="forward calls per timed round")
    add_report_options(parser, Path(__file__).resolve().parents[3] / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    started = dt.datetime.now(dt.timezone.utc)
    load = os.getloadavg()[0]
    peak = measure_matmul_peak("fp32")
    torch._dynamo.reset()
    calls, compile_seconds, graphs, blocks = {}, {}, {}, {}
    for name in args.models:
        eager_call, _, _ = on_path(name, "eager", args.batch, 0.0)
        eager_call()  # warm-up
        eager_seconds = elapsed(eager_call)
        for path in PATHS:
            call, seconds, count = on_path(name, path, args.batch, eager_seconds)
            call()  # one more call at a new timestep: it must find the graphs compiled
            calls[name, path] = call
            compile_seconds[name, path], graphs[name, path] = seconds, count
            print(f"{name:12s} {path:8s} compile {seconds:6.1f} s, {count} graphs", flush=True)
        model = create_model(name)
        blocks[name] = sum(type(m).__name__ in model._repeated_blocks for m in model.modules())
    counters = torch._dynamo.utils.counters
    before = counters["stats"]["unique_graphs"]
    timings = round_robin(calls, args.rounds, repeats=args.repeats)
    recompiled = counters["stats"]["unique_graphs"] - before
    peak_after = measure_matmul_peak("fp32")

    lines = ["| model | repeated blocks | path | graphs compiled | compile (s) | ms / forward (median) | vs eager |"
             " other procs (cores) |", "|---|---|---|---|---|---|---|---|"]
    for name in args.models:
        eager = timings[name, "eager"].median
        for path in PATHS:
            timing = timings[name, path]
            others = timing.others_cores
            lines.append(f"| {name} | {blocks[name]} | {path} | {graphs[name, path] or '-'} | "
                         f"{compile_seconds[name, path]:.1f} | {timing.median * 1e3:.1f} | {eager / timing.median:.2f}x | "
                         f"{'?' if others is None else f'{others:.2f}'} |")
    command = "OMP_NUM_THREADS=1 python scripts/benchmark_regional_compile.py " + shlex.join(
        argv if argv is not None else sys.argv[1:])
    others = [t.others_cores for t in timings.values() if t.others_cores is not None]
    shared = max(others, default=0.0)
    title = args.title or "Regional vs whole-model compilation"
    section = (f"## {title} ({started:%Y-%m-%d %H:%M} UTC)\n\n"
               f"- command: `{command.strip()}`\n"
               f"- machine: {machine_line(torch.get_num_threads())}\n"
               f"- fp32 matmul rate in this run: {peak:.0f} GFLOP/s before the models, {peak_after:.0f} after\n"
               f"- load: 1-min load average {load:.2f} at the start; other processes used up to {shared:.2f} cores "
               f"while timing{' (a shared, loaded machine: read ratios, not absolute times)' if shared > 0.5 else ''}\n"
               f"- batch {args.batch}, fp32, torch.inference_mode, a new timestep at every call; compile = first "
               f"call minus an eager call, cold (Dynamo reset, empty inductor cache); median of {args.rounds} rounds x "
               f"{args.repeats} calls, paths alternated round-robin; graphs compiled while timing (recompilations): "
               f"{recompiled}\n\n" + "\n".join(lines) + "\n")
    print(section)
    if not args.no_write:
        append_section(section, args.output)
        print(f"appended to {args.output}")
    return 0
