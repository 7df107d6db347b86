"""DiffiT-XL vs DiT-XL/2 (FLOPs per image and CPU throughput) and the attention backends side by side.

    OMP_NUM_THREADS=1 python scripts/benchmark_attention.py            # prints the tables, appends to docs/benchmarks.md
    python scripts/benchmark_attention.py --no-write --skip-models       # backends only

1. FLOPs of one image's forward at 256px (32x32x4 latent), counted with `count` of instruments.py (FlopCounterMode
   plus an analytic recount; 2 FLOPs per MAC), for convdiff's DiffiT-XL and diffusers' DiTTransformer2DModel
   at XL/2 (the baseline in the registry, "dit-xl-2").
2. Forward throughput at batch 1 and 2, fp32, the two models timed alternately pass by pass so load from other
   processes hits both alike; medians over the passes, with the cores other processes used meanwhile.
3. Latency of `convdiff.nn.attention.attention` on the same inputs for every backend that runs here, for the
   DiffiT-XL attention shape (and with its relative position bias as an additive mask) and a longer sequence.
   Backends that cannot run on this machine are listed with the reason (xformers / flash / cudnn need a GPU).
"""

import argparse
import datetime as _dt
import functools
import os
import shlex
import sys
import warnings
from pathlib import Path

import torch

from ...nn.attention import BACKENDS, attention
from ...registry import create_model
from .instruments import CpuMeter, append_section, count, machine_line, round_robin, time_call

MODELS = ("diffit-xl", "dit-xl-2")


def model_inputs(model, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 32, 32, generator=g)
    return x, torch.randint(0, 1000, (batch,), generator=g), torch.randint(0, 1000, (batch,), generator=g)


def flop_rows(models: dict) -> list[str]:
    rows = ["| model | params (M) | GFLOPs/img (FlopCounterMode) | GMACs/img | analytic GMACs (linear / attention / conv) |",
            "|---|---|---|---|---|"]
    for name, model in models.items():
        flops, _, analytic = count(model, model_inputs(model, 1))
        params = sum(p.numel() for p in model.parameters()) / 1e6
        rows.append(f"| {name} | {params:.2f} | {flops / 1e9:.2f} | {flops / 2e9:.2f} | {analytic['total'] / 1e9:.2f} "
                    f"({analytic['linear'] / 1e9:.2f} / {analytic['attention'] / 1e9:.2f} / {analytic['conv'] / 1e9:.2f}) |")
    return rows


def throughput_rows(models: dict, batches, passes: int) -> list[str]:
    rows = ["| batch | model | passes | ms/batch (median) | img/s | other procs (cores, mean) |", "|---|---|---|---|---|---|"]
    for batch in batches:
        inputs = {name: model_inputs(m, batch) for name, m in models.items()}
        calls = {name: functools.partial(model, *inputs[name]) for name, model in models.items()}
        with torch.inference_mode():
            timings = round_robin(calls, passes, warmup=1)
        for name, timing in timings.items():
            rows.append(f"| {batch} | {name} | {passes} | {timing.median * 1e3:,.0f} | {batch / timing.median:.3f} | "
                        f"{timing.others_cores or 0.0:.2f} |")
    return rows


def backend_rows(repeats: int) -> list[str]:
    from ...nn.position import RelativePositionBias

    g = torch.Generator().manual_seed(0)
    cases = []
    shape = (2, 16, 256, 72)  # DiffiT-XL at 256: batch 2, 16 heads, 16x16 tokens, head dim 72
    q, k, v = (torch.randn(shape, generator=g) for _ in range(3))
    bias = RelativePositionBias(16, 16)().detach()[None]
    cases.append(("DiffiT-XL attention (2x16x256x72)", (q, k, v), None))
    cases.append(("same + relative position bias (additive mask)", (q, k, v), bias))
    long = (1, 8, 1024, 64)  # a 32x32 token grid (DiffiT-XL at 512 has 1024 tokens)
    cases.append(("1x8x1024x64", tuple(torch.randn(long, generator=g) for _ in range(3)), None))
    rows = ["| inputs | " + " | ".join(BACKENDS) + " |", "|---|" + "---|" * len(BACKENDS)]
    notes = {}
    for label, (q, k, v), mask in cases:
        reference = attention(q, k, v, attn_mask=mask, backend="math")
        cells = []
        for backend in BACKENDS:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out = attention(q, k, v, attn_mask=mask, backend=backend)
                    seconds = time_call(lambda: attention(q, k, v, attn_mask=mask, backend=backend), repeats,
                                        warmup=1).median
                diff = (out - reference).abs().max().item()
                cells.append(f"{seconds * 1e3:.1f} ms (diff {diff:.0e})")
            except (RuntimeError, ValueError) as error:
                first = str(error).strip().splitlines()[0]
                notes[backend] = first[:160]
                cells.append("n/a")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    rows.append("")
    rows.append("Not available here (first line of the error): " + "; ".join(f"**{b}**: {n}" for b, n in notes.items()))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--passes", type=int, default=3, help="timed passes per model and batch")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per attention backend")
    parser.add_argument("--skip-models", action="store_true", help="only the attention backends")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    started = _dt.datetime.now(_dt.timezone.utc)
    command = "OMP_NUM_THREADS=1 python " + " ".join(
        ["scripts/benchmark_attention.py"] + [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)])
    parts = [f"## DiffiT-XL vs DiT-XL/2 and attention backends ({started:%Y-%m-%d %H:%M} UTC)", "",
             f"- Command: `{command}`", f"- Machine: {machine_line(torch.get_num_threads())}",
             f"- 1-min load average at the start: {os.getloadavg()[0]:.2f} (the machine is shared with other jobs)", ""]
    with CpuMeter() as meter:
        if not args.skip_models:
            models = {name: create_model(name).eval() for name in MODELS}
            parts += ["### FLOPs per image (256px, 32x32x4 latent)", "", *flop_rows(models), ""]
            print("\n".join(parts[-3:]), flush=True)  # progress: the FLOP table
            parts += ["### Forward throughput, fp32, CPU (models alternated pass by pass)", "",
                      *throughput_rows(models, args.batches, args.passes), ""]
            del models
        parts += ["### Attention backends, fp32, CPU (median latency; diff = max |out - math backend|)", "",
                  *backend_rows(args.repeats), ""]
    parts.insert(4, f"- Wall time {meter.wall / 60:.1f} min; other processes used "
                    f"{meter.others_cores if meter.others_cores is not None else float('nan'):.2f} cores on average")
    section = "\n".join(parts) + "\n"
    print(section)
    if not args.no_write:
        append_section(section, args.output)
        print(f"appended to {args.output}")
    return 0
