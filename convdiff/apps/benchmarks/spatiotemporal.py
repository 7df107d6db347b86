"""Cost of view-time mixing designs on V x T grids: FLOPs, CPU latency and peak memory.

Every design is one layer (pre-norm attention with a residual, or a conv) applied to the tokens of a
(B, C, V, T, H', W') grid, H' x W' = the latent size over the patch size:
- full:       one attention over all V*T*S tokens (the cost factorization avoids);
- sequential: attention over the T*S tokens of each view (a video DiT's 3D attention), then over the V*S
              tokens of each timestep (MVDream-style view attention);
- two-stream: 4Real-Video: the same two attentions run side by side on two copies of the tokens, then a soft
              sync layer (attention + sync only; in a model the rest of every block also runs twice);
- fused:      4Real-Video-V2: one attention over all tokens, a token sees its view or its timestep. FLOPs are
              those of a block-sparse kernel (tiles of 128 x 128 tokens the block mask lists); the CPU latency
              is dense masked SDPA, which computes every tile (only FlexAttention skips them; see --flex);
- per-pixel:  convdiff's cheap factorization: attention over the T frames of each pixel, then over the V
              views of each pixel (TemporalAttention + ViewAttention(scope="pixel"));
- p3d:        P3D's temporal 3x1x1 conv (C -> C) over the frames of each view (no view mixing).

FLOPs are counted by torch's FlopCounterMode on meta tensors (2 per multiply-add; SDPA = QK^T + AV), so
even the largest grid is counted without running it. Latency is the median of timed forward passes on the
CPU with one thread; peak memory is the growth of the process's peak RSS over the pass, measured in a
forked child per row. A row whose dense work or mask exceeds --max-gflop / --max-mask-gb is not timed.

    python scripts/benchmark_spatiotemporal.py --write-docs
"""

import argparse
import datetime
import multiprocessing
import os
import resource
import sys
import time
from pathlib import Path

import torch
from torch import nn

from ...nn.attention import MultiHeadAttention, attention_backend
from ...nn.layouts import (
    Grid,
    grid_seq_to_tokens,
    tokens_to_grid_seq,
    tokens_to_view_frames,
    tokens_to_view_videos,
    view_frames_to_tokens,
    view_videos_to_tokens,
)
from ...nn.spatiotemporal import SyncLayer, TemporalAttention, TemporalConv, ViewAttention
from ...nn.view_time_attention import FusedViewTimeAttention, kept_fraction, view_time_block_mask
from .instruments import count, machine_line, time_call

DESIGNS = ("full", "sequential", "two-stream", "fused", "per-pixel", "p3d")
DOC_PATH = Path("docs/benchmarks.md")


class SequenceAttention(nn.Module):
    """x + Attention(LayerNorm(x)) over (N, L, C) sequences."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads)

    def forward(self, seq):
        return seq + self.attn(self.norm(seq))


class Design(nn.Module):
    """One view-time mixing design as a module of the grid's tokens (B*V*T, S, C)."""

    def __init__(self, name: str, grid: Grid, dim: int, heads: int):
        super().__init__()
        self.name, self.grid = name, grid
        if name == "full":
            self.attn = SequenceAttention(dim, heads)
        elif name in ("sequential", "two-stream"):
            self.time_attn, self.view_attn = SequenceAttention(dim, heads), SequenceAttention(dim, heads)
            if name == "two-stream":
                self.sync = SyncLayer(dim, 128, "soft")
                self.register_buffer("noise_level", torch.randn(grid.num_frames_total, 128))
        elif name == "fused":
            self.attn = FusedViewTimeAttention(dim, heads, max_views=grid.views, max_frames=grid.frames, mask="dense")
        elif name == "per-pixel":
            self.time_attn = TemporalAttention(dim, heads, max_frames=grid.frames)
            self.view_attn = ViewAttention(dim, heads, max_views=grid.views, scope="pixel")
        elif name == "p3d":
            self.conv = TemporalConv(dim, dim)
        else:
            raise ValueError(f"unknown design {name!r}; choose from {', '.join(DESIGNS)}")

    def forward(self, tokens):
        g = self.grid
        if self.name == "full":
            return grid_seq_to_tokens(self.attn(tokens_to_grid_seq(tokens, g)), g)
        if self.name == "sequential":
            tokens = view_videos_to_tokens(self.time_attn(tokens_to_view_videos(tokens, g)), g)
            return view_frames_to_tokens(self.view_attn(tokens_to_view_frames(tokens, g)), g)
        if self.name == "two-stream":
            view_stream = view_frames_to_tokens(self.view_attn(tokens_to_view_frames(tokens, g)), g)
            time_stream = view_videos_to_tokens(self.time_attn(tokens_to_view_videos(tokens, g)), g)
            return self.sync(view_stream, time_stream, self.noise_level)
        if self.name in ("fused",):
            return self.attn(tokens, g)
        if self.name == "per-pixel":
            return self.view_attn(self.time_attn(tokens, g), g)
        return self.conv(tokens.transpose(1, 2), g).transpose(1, 2)  # (N, C, S) maps


def count_flops(name: str, grid: Grid, tokens: int, dim: int, heads: int) -> tuple[int, int]:
    """(FLOPs as run, FLOPs of the attention cores) of one forward, counted on meta tensors."""
    with torch.device("meta"):
        design = Design(name, grid, dim, heads)
        x = torch.empty(grid.num_frames_total, tokens, dim)
    if name == "fused":
        design.attn.mask_arguments = lambda g, s, device: {}  # count the dense attention; sparsity applied below
    total, _, analytic = count(design, (x,))
    return total, 2 * analytic["attention"]


def _measure(design, x, reps, warmup, pipe):
    torch.set_num_threads(1)
    with open("/proc/self/statm") as f:
        base_rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    with torch.inference_mode():
        timing = time_call(lambda: design(x), reps, warmup)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    pipe.send((timing.median, max(0, peak - base_rss)))


def measure(design: nn.Module, x: torch.Tensor, reps: int, warmup: int):
    """(median seconds, peak extra bytes) of forward passes, in a forked child (isolates memory peaks)."""
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.get_context("fork").Process(target=_measure, args=(design, x, reps, warmup, child))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        return None, f"child exited with {proc.exitcode} (out of memory?)"
    return parent.recv(), None


def flex_latency(grid: Grid, tokens: int, dim: int, heads: int, reps: int):
    """Median seconds of the fused layer with FlexAttention compiled for the CPU (the kernel skips tiles)."""
    layer = FusedViewTimeAttention(dim, heads, grid.views, grid.frames, mask="block")
    x = torch.randn(grid.num_frames_total, tokens, dim)
    compiled = torch.compile(layer)
    with torch.inference_mode(), attention_backend("flex"):
        start = time.perf_counter()
        compiled(x, grid)
        compile_s = time.perf_counter() - start
        timing = time_call(lambda: compiled(x, grid), reps)
    return timing.median, compile_s


def run(args) -> tuple[list, str]:
    torch.set_num_threads(1)
    tokens = (args.latent // args.patch) ** 2
    rows, notes = [], []
    for spec in args.grids:
        views, frames = (int(n) for n in spec.lower().split("x"))
        grid = Grid(args.batch, views, frames)
        length = views * frames * tokens
        results = {}
        for name in args.designs:
            flops, core = count_flops(name, grid, tokens, args.channels, args.heads)
            dense_flops = flops
            if name == "fused":
                fraction = kept_fraction(view_time_block_mask(views, frames, tokens))
                flops = flops - core + round(core * fraction)
                core = round(core * fraction)
            row = dict(grid=spec, design=name, tokens=length, gflops=flops / 1e9, core_gflops=core / 1e9, latency=None,
                       memory=None, note="")
            mask_gb = length**2 * 5 / 1e9 if name == "fused" else 0  # bool mask + SDPA's float copy
            if dense_flops / 1e9 > args.max_gflop:
                row["note"] = f"not timed ({dense_flops / 1e9:.0f} GFLOP dense > --max-gflop {args.max_gflop:g})"
            elif mask_gb > args.max_mask_gb:
                row["note"] = f"not timed (dense {length}x{length} mask ~{mask_gb:.1f} GB > --max-mask-gb)"
            else:
                design = Design(name, grid, args.channels, args.heads)
                x = torch.randn(grid.num_frames_total, tokens, args.channels)
                reps, warmup = (args.reps, 1) if dense_flops < 2e10 else (1, 0)
                measured, error = measure(design, x, reps, warmup)
                if error:
                    row["note"] = error
                else:
                    row["latency"], row["memory"] = measured[0], measured[1] / 2**20
            results[name] = row
            rows.append(row)
            print(f"{spec} {name}: {row['gflops']:.2f} GFLOP, latency {row['latency']}, {row['note']}", file=sys.stderr)
        if args.flex and "fused" in results:
            seconds, compile_s = flex_latency(grid, tokens, args.channels, args.heads, args.reps)
            row = dict(results["fused"], design="fused (flex)", latency=seconds, memory=None,
                       note=f"compiled FlexAttention on the CPU (compile {compile_s:.0f} s); memory not isolated")
            results["fused (flex)"] = row
            rows.append(row)
            print(f"{spec} fused (flex): latency {seconds}", file=sys.stderr)
        full = results.get("full")
        for row in results.values():
            if full:
                row["flops_vs_full"] = row["gflops"] / full["gflops"]
                if full["core_gflops"]:
                    row["core_vs_full"] = row["core_gflops"] / full["core_gflops"]
                if row["latency"] is not None and full["latency"] is not None:
                    row["latency_vs_full"] = row["latency"] / full["latency"]
            if row["design"].startswith("fused"):
                row["target"] = (views + frames - 1) / (views * frames)
    return rows, "\n".join(notes)


def fmt(value, digits=2, suffix=""):
    return "-" if value is None else f"{value:,.{digits}f}{suffix}"


def table(rows) -> str:
    lines = ["| V x T | design | tokens | GFLOP (layer) | layer vs full | attention GFLOP | attention vs full | "
             "target | CPU latency (s) | latency vs full | peak memory (MiB) | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        target = r.get("target")
        core_ratio = r.get("core_vs_full")
        met = "" if target is None or core_ratio is None else (" (met)" if core_ratio <= target + 1e-9 else " (missed)")
        lines.append(f"| {r['grid']} | {r['design']} | {r['tokens']:,} | {fmt(r['gflops'])} | "
                     f"{fmt(r.get('flops_vs_full') and 100 * r['flops_vs_full'], 1, '%')} | "
                     f"{fmt(r['core_gflops'])} | {fmt(core_ratio and 100 * core_ratio, 1, '%')} | "
                     f"{fmt(target and 100 * target, 1, '%')}{met} | {fmt(r['latency'], 3)} | "
                     f"{fmt(r.get('latency_vs_full') and 100 * r['latency_vs_full'], 0, '%')} | "
                     f"{fmt(r['memory'], 0)} | {r['note']} |")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grids", nargs="+", default=["1x16", "2x16", "4x16", "8x16"], help="V x T grids")
    parser.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=DESIGNS)
    parser.add_argument("--latent", type=int, default=32, help="latent height = width")
    parser.add_argument("--patch", type=int, default=2, help="patch size (tokens per frame = (latent / patch)^2)")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3, help="timed passes for rows under 20 GFLOP (else 1)")
    parser.add_argument("--max-gflop", type=float, default=400.0, help="do not time rows with more dense work")
    parser.add_argument("--max-mask-gb", type=float, default=3.0, help="do not time fused rows with a bigger mask")
    parser.add_argument("--flex", action="store_true", help="also time the fused layer with compiled FlexAttention")
    parser.add_argument("--write-docs", action="store_true", help=f"append the table to {DOC_PATH}")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    load_before = os.getloadavg()
    rows, notes = run(args)
    load_after = os.getloadavg()
    command = "python scripts/benchmark_spatiotemporal.py " + " ".join(sys.argv[1:] if argv is None else argv)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join([
        f"## View-time mixing designs: FLOPs, CPU latency, peak memory ({stamp})", "",
        f"Command: `{command.strip()}`", "",
        f"Machine: {machine_line(torch.get_num_threads())}. No GPU. Load average (1 min) from other work on the "
        f"machine: {load_before[0]:.1f} at the start, {load_after[0]:.1f} at the end, so latencies are noisy.", "",
        f"One layer per design on the tokens of a batch-{args.batch} grid of {args.latent}x{args.latent} latents at "
        f"patch {args.patch} ({(args.latent // args.patch) ** 2} tokens per frame), {args.channels} channels, "
        f"{args.heads} head(s), fp32. Attention GFLOP = QK^T + AV of every attention (2 FLOPs per multiply-add); "
        f"the layer adds norms, q/k/v/out projections and (two-stream) the sync layer. Fused attention FLOPs count "
        f"the 128x128 tiles a block-sparse kernel computes (the target is on these); its `fused` CPU latency is dense "
        f"masked SDPA, which computes every tile; `fused (flex)` is FlexAttention compiled by torch.compile for the "
        f"CPU, which skips the unlisted tiles.", "",
        table(rows), ""] + ([notes, ""] if notes else []))
    print(text)
    if args.write_docs:
        with DOC_PATH.open("a") as f:
            f.write("\n" + text)
