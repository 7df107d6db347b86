"""Forward-only inference benchmark of the denoisers: throughput, counted FLOPs, share of the matmul peak.

For every model x precision (x memory layout) this builds the model from the registry, counts the FLOPs of
one image's forward pass, times batched forward passes under `torch.inference_mode`, and prints a markdown
table; the table, the throughput ratios against the papers' targets, and the exact command, machine and date
are appended to docs/benchmarks.md (benchmarks are scripts that write rows, not timed tests: docs/architecture.md).

What is counted (`count` in instruments.py, shared by every benchmark): torch's `FlopCounterMode` counts matmuls
(mm/addmm/bmm) and convolutions, including grouped and depthwise ones (it uses the weight's
in-channels-per-group), at 2 FLOPs per multiply-accumulate. It has no formula for the CPU attention kernel
(`aten._scaled_dot_product_flash_attention_for_cpu`), so DiT's QK^T and AV products would be missed; we add
that formula. Elementwise ops (norms, GELU, modulation, gates, the channel-attention pool) are not counted,
which is why our GMACs sit a fraction of a percent under the papers' torchprofile figures (torchprofile also
counts elementwise multiplies and norms). `analytic_macs` recounts independently from module shapes
(every nn.Conv2d / nn.Linear plus every scaled_dot_product_attention call) and the two must agree.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .instruments import (PRECISIONS, CpuMeter, add_report_options, append_section, autocast_context, count,
                          machine_line, mean_of_known, measure_matmul_peak, time_call)

DEFAULT_MODELS = ["dic-s", "dico-s", "dit-s-2", "dic-xl", "dico-xl", "dit-xl-2"]
# Matmul ceilings (GFLOP/s) the lead measured for this class of machine (2 cores); overridable on the command line.
DEFAULT_PEAKS = {"fp32": 210.0, "bf16": 850.0}
# The papers' "GFLOPs" (which are MACs) at 256px: DiC (arXiv 2501.00603), DiCo (arXiv 2505.11196, Table 6),
# DiT (Peebles & Xie, ICCV 2023, Tables 1 and 4).
PAPER_GMACS = {
    "dic-s": 5.87, "dic-b": 23.46, "dic-xl": 116.14, "dic-h": 204.40,
    "dico-s": 4.25, "dico-b": 16.88, "dico-l": 60.24, "dico-xl": 87.30, "dico-h": 194.15,
    "dit-s-2": 6.06, "dit-b-2": 23.02, "dit-l-2": 80.73, "dit-xl-2": 118.66,
}
# DiCo paper Table 1: A100, fp32, batch 64 (img/s); DiT there uses FlashAttention-2.
PAPER_A100_THROUGHPUT = {"dit-s-2": 1234.01, "dico-s": 1695.73, "dit-b-2": 380.11, "dico-b": 822.97,
                         "dit-l-2": 114.63, "dico-l": 288.32, "dit-xl-2": 76.90, "dico-xl": 208.47}
# (numerator, denominator, minimum throughput ratio) -- the targets this benchmark checks.
RATIO_TARGETS = [
    ("dico-s", "dit-s-2", 1.37, "DiCo paper, A100 fp32"),
    ("dico-xl", "dit-xl-2", 2.7, "DiCo paper, A100 fp32"),
    ("dic-s", "dit-s-2", 1.0, "DiC faster than DiT at equal size"),
    ("dic-xl", "dit-xl-2", 1.0, "DiC faster than DiT at equal size"),
]
CONV_PEAK_SHARE_TARGET = 0.60
# A timed pass counts as clean when other processes used fewer cores than this meanwhile; the median is taken
# over the clean passes (over all of them when none is clean), so a short burst of foreign work is dropped.
CLEAN_OTHERS_CORES = 0.25
DOC_PATH = Path("docs/benchmarks.md")


# ------------------------------------------------------------------------------------------------ timing

@dataclass
class Result:
    model: str
    precision: str
    layout: str
    batch: int
    params: int
    flops_per_image: int
    flops_by_op: dict
    analytic_macs_per_image: int
    warmup: int = 0
    times: list = field(default_factory=list)
    others: list = field(default_factory=list)  # cores used by other processes during each timed pass
    note: str = ""

    @property
    def skipped(self) -> bool:
        return not self.times

    @property
    def n_clean(self) -> int:
        others = list(self.others) + [None] * (len(self.times) - len(self.others))
        return sum(o is None or o < CLEAN_OTHERS_CORES for o in others)

    @property
    def clean_times(self) -> list:
        """Timed passes during which other processes used < CLEAN_OTHERS_CORES cores (all passes if none was)."""
        others = list(self.others) + [None] * (len(self.times) - len(self.others))
        clean = [t for t, o in zip(self.times, others) if o is None or o < CLEAN_OTHERS_CORES]
        return clean or list(self.times)

    @property
    def others_cores(self) -> float | None:
        return mean_of_known(self.others)

    @property
    def seconds_per_batch(self) -> float:
        return statistics.median(self.clean_times)

    @property
    def images_per_second(self) -> float:
        return self.batch / self.seconds_per_batch if self.times else 0.0

    @property
    def achieved_gflops(self) -> float:
        return self.flops_per_image * self.images_per_second / 1e9

    @property
    def gmacs(self) -> float:
        return self.flops_per_image / 2e9


def default_batch(name: str) -> int:
    return 2 if any(s in name for s in ("-l", "-xl", "-h")) else 8


def default_passes(name: str) -> tuple[int, int]:
    """(warmup, timed iterations): few for the ~120 GMACs/img XL models, more for the small ones."""
    return (1, 3) if default_batch(name) == 2 else (2, 8)


def make_inputs(batch: int, model: nn.Module, channels_last: bool, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    size = cfg.sample_size
    x = torch.randn(batch, cfg.in_channels, size, size, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    num_classes = getattr(cfg, "num_classes", None) or getattr(cfg, "num_embeds_ada_norm", 1000)
    t = torch.randint(0, 1000, (batch,), generator=g)
    y = torch.randint(0, num_classes, (batch,), generator=g)
    return x, t, y


def time_forward(model: nn.Module, inputs: tuple, precision: str, warmup: int, iters: int,
                 budget_s: float = 0.0) -> tuple[int, list[float], list[float | None]]:
    """(warmup passes run, seconds of each timed pass, cores other processes used during each timed pass).

    With budget_s > 0 the passes stay within about budget_s seconds: warmup stops once another pass would end
    past half the budget, and timing once another pass would end past the budget (always >= 1 timed pass). If
    the first warmup pass alone takes more than half the budget it is kept as the one timed pass: at that
    length the first call's one-off costs are negligible.
    """
    times, others, done_warmup = [], [], 0
    start = time.perf_counter()

    def timed_pass():
        timing = time_call(lambda: model(*inputs), 1)
        return timing.seconds[0], timing.others[0]

    with torch.inference_mode(), autocast_context(precision):
        for w in range(warmup):
            dt, other = timed_pass()
            done_warmup += 1
            if budget_s > 0 and w == 0 and dt > budget_s / 2:
                return 0, [dt], [other]
            if budget_s > 0 and time.perf_counter() - start + dt > budget_s / 2:
                break
        for _ in range(iters):
            dt, other = timed_pass()
            times.append(dt)
            others.append(other)
            if budget_s > 0 and time.perf_counter() - start + dt > budget_s:
                break
    return done_warmup, times, others


def plan_batch(batch: int, seconds_per_image: float, budget_s: float) -> int:
    """The batch to time: the requested one, or smaller when two passes of it would not fit the budget;
    0 when even one pass of one image is predicted to take longer than the budget (the row is skipped)."""
    if budget_s <= 0 or seconds_per_image * batch * 2 <= budget_s:
        return batch
    if seconds_per_image > budget_s:
        return 0
    return max(1, min(batch, int(budget_s / (2 * seconds_per_image))))


def is_conv_model(model: nn.Module) -> bool:
    return not type(model).__name__.startswith("DiT")


def build(name: str) -> nn.Module:
    from ...registry import create_model

    return create_model(name).eval()


# ------------------------------------------------------------------------------------------------ tables

def _fmt(x: float, digits: int = 2) -> str:
    return f"{x:,.{digits}f}"


def format_results_table(results: list[Result], peaks: dict, measured_peaks: dict | None = None) -> str:
    header = ["model", "precision", "layout", "batch", "passes: warmup+timed (clean)", "params (M)", "GMACs/img",
              "GMACs paper", "GFLOPs/img", "ms/batch (median)", "img/s", "GFLOP/s", "% of peak"]
    if measured_peaks:
        header.append("% of measured mm")
    header.append("other procs (cores)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        paper = PAPER_GMACS.get(r.model)
        passes = f"{r.warmup}+{len(r.times)} ({r.n_clean})" if r.times else "-"
        row = [r.model, r.precision, r.layout, str(r.batch) if r.batch else "-", passes,
               _fmt(r.params / 1e6), _fmt(r.gmacs), _fmt(paper) if paper else "-", _fmt(r.flops_per_image / 1e9)]
        if r.skipped:
            row += ["-", f"skipped: {r.note}", "-", "-"] + (["-"] if measured_peaks else [])
        else:
            ips = r.images_per_second
            row += [_fmt(r.seconds_per_batch * 1e3, 1), _fmt(ips, 3 if ips < 1 else 2 if ips < 100 else 1),
                    _fmt(r.achieved_gflops, 1), f"{100 * r.achieved_gflops / peaks[r.precision]:.1f}%"]
            if measured_peaks:
                row.append(f"{100 * r.achieved_gflops / measured_peaks[r.precision]:.0f}%")
        row.append("-" if r.others_cores is None else f"{r.others_cores:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def format_flop_check_table(results: list[Result]) -> str:
    lines = ["| model | counted GMACs (FlopCounterMode + CPU SDPA) | by op | analytic GMACs (module shapes) | agree | paper GMACs |",
             "|---|---|---|---|---|---|"]
    seen = set()
    for r in results:
        if r.model in seen:
            continue
        seen.add(r.model)
        by_op = ", ".join(f"{op} {n / 2e9:.3f}" for op, n in sorted(r.flops_by_op.items(), key=lambda kv: -kv[1]))
        analytic = r.analytic_macs_per_image / 1e9
        agree = "yes" if abs(analytic - r.gmacs) <= 1e-3 * max(r.gmacs, 1e-9) else f"NO ({analytic - r.gmacs:+.3f})"
        paper = PAPER_GMACS.get(r.model)
        lines.append(f"| {r.model} | {r.gmacs:.3f} | {by_op} | {analytic:.3f} | {agree} | {paper if paper else '-'} |")
    return "\n".join(lines)


def best_throughput(results: list[Result], model: str, precision: str, layout: str | None = None) -> Result | None:
    pool = [r for r in results if r.model == model and r.precision == precision and not r.skipped
            and (layout is None or r.layout == layout)]
    return max(pool, key=lambda r: r.images_per_second) if pool else None


def format_ratio_table(results: list[Result], precisions: list[str]) -> str:
    lines = ["| ratio | precision | layouts | measured | target | met | shortfall |", "|---|---|---|---|---|---|---|"]
    any_row = False
    for num, den, target, source in RATIO_TARGETS:
        for precision in precisions:
            for layout in ("NCHW", None):
                a, b = best_throughput(results, num, precision, layout), best_throughput(results, den, precision, layout)
                if a is None or b is None or (layout is None and a.layout == "NCHW"):
                    continue  # the "best layout" row only when channels_last won for the conv model
                ratio = a.images_per_second / b.images_per_second
                met = ratio >= target
                shortfall = "-" if met else f"{ratio / target - 1:+.0%} of target ({target - ratio:.2f}x short)"
                lines.append(f"| {num} / {den} | {precision} | {a.layout} / {b.layout} | {ratio:.2f}x | "
                             f">= {target:g}x ({source}) | {'yes' if met else 'no'} | {shortfall} |")
                any_row = True
    return "\n".join(lines) if any_row else ""


def format_peak_table(results: list[Result], peaks: dict, measured_peaks: dict | None = None) -> str:
    header = ["conv model", "precision", "layout", "GFLOP/s", f"% of peak (target >= {CONV_PEAK_SHARE_TARGET:.0%})",
              "met", "shortfall"]
    if measured_peaks:
        header.append("% of measured mm")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        if not r.model.startswith("dic") or r.skipped:
            continue
        share = r.achieved_gflops / peaks[r.precision]
        met = share >= CONV_PEAK_SHARE_TARGET
        row = [r.model, r.precision, r.layout, f"{r.achieved_gflops:.1f}", f"{share:.1%}", "yes" if met else "no",
               "-" if met else f"{(CONV_PEAK_SHARE_TARGET - share) * 100:.0f} points"]
        if measured_peaks:
            row.append(f"{r.achieved_gflops / measured_peaks[r.precision]:.0%}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ profile

def profile_table(model: nn.Module, inputs: tuple, precision: str, iters: int = 2, top: int = 12) -> str:
    """Top aten ops by self CPU time over `iters` forward passes."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), autocast_context(precision):
        model(*inputs)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(iters):
                model(*inputs)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events) or 1
    lines = ["| op | self CPU ms / forward | share | calls / forward |", "|---|---|---|---|"]
    for e in events[:top]:
        lines.append(f"| {e.key} | {e.self_cpu_time_total / 1e3 / iters:.1f} | {100 * e.self_cpu_time_total / total:.1f}% | "
                     f"{e.count // iters} |")
    lines.append(f"| (all ops) | {total / 1e3 / iters:.1f} | 100% | |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="registry names (default: %(default)s)")
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS,
                   help="precisions to time (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward (default: 8 for S/B, 2 for L/XL/H)")
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default: 8 for S/B, 3 for L/XL/H)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warmup iterations (default: 2 for S/B, 1 for L/XL/H)")
    p.add_argument("--budget-s", type=float, default=40.0,
                   help="seconds of forward passes per model x precision x layout (default %(default)s; 0 = no limit): "
                        "warmup stops early past half of it, timing stops past all of it (>= 1 timed pass), and a "
                        "row whose single image is predicted (from the last measured GFLOP/s of the same kind of "
                        "model, precision and layout, else the matmul probe) to take longer is skipped")
    p.add_argument("--channels-last", action="store_true",
                   help="also time the conv models (DiC, DiCo) in torch.channels_last memory format")
    p.add_argument("--peak-fp32", type=float, default=DEFAULT_PEAKS["fp32"], help="fp32 matmul ceiling, GFLOP/s")
    p.add_argument("--peak-bf16", type=float, default=DEFAULT_PEAKS["bf16"], help="bf16 matmul ceiling, GFLOP/s")
    p.add_argument("--profile", action="store_true",
                   help="also profile each model x precision x layout (torch.profiler, top ops by self CPU time)")
    p.add_argument("--profile-only", action="store_true", help="profile without timing")
    add_report_options(p, DOC_PATH)
    args = p.parse_args(argv)
    for name in ("batch_size", "iters", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.warmup is not None and args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.budget_s < 0:
        p.error(f"--budget-s must be >= 0 (0 = no limit), got {args.budget_s}")
    return args


def _command_line(argv) -> str:
    if argv is None:
        argv = sys.argv[1:]
    return "python " + " ".join(["scripts/benchmark.py"] + [shlex.quote(a) for a in argv])


def run(args: argparse.Namespace, probe_rates: dict, log=print) -> tuple[list[Result], list[tuple[str, str]]]:
    from ...registry import model_spec

    for name in args.models:
        model_spec(name)  # fail fast with the registry's message on an unknown name
    results, profiles = [], []
    rates = {}  # (model class, precision, layout) -> last achieved GFLOP/s, to predict the next, bigger model
    for name in args.models:
        model = build(name)
        kind = type(model).__name__
        params = sum(p.numel() for p in model.parameters())
        flops, by_op, analytic = count(model, make_inputs(1, model, channels_last=False))
        d_warmup, d_iters = default_passes(name)
        warmup = d_warmup if args.warmup is None else args.warmup
        iters = d_iters if args.iters is None else args.iters
        layouts = ["NCHW"] + (["channels_last"] if args.channels_last and is_conv_model(model) else [])
        for layout in layouts:
            channels_last = layout == "channels_last"
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            for precision in args.precisions:
                requested = args.batch_size or default_batch(name)
                rate = rates.get((kind, precision, layout)) or probe_rates[precision]
                seconds_per_image = flops / (rate * 1e9)
                batch = plan_batch(requested, seconds_per_image, args.budget_s)
                r = Result(name, precision, layout, batch, params, flops, by_op, analytic["total"])
                row_warmup = warmup
                if args.budget_s > 0 and batch * seconds_per_image > args.budget_s / 2 and warmup:
                    row_warmup = 0  # one pass must fit; the first call's one-off costs are small next to it
                if not args.profile_only:
                    if batch == 0:
                        r.note = (f"predicted {seconds_per_image:,.0f} s per image at {rate:.1f} GFLOP/s > "
                                  f"--budget-s {args.budget_s:g}")
                    else:
                        inputs = make_inputs(batch, model, channels_last)
                        r.warmup, r.times, r.others = time_forward(model, inputs, precision, row_warmup, iters, args.budget_s)
                        rates[(kind, precision, layout)] = r.achieved_gflops
                    results.append(r)
                    log(f"{name:>9} {precision} {layout:<13} batch {batch}: "
                        + (f"{r.images_per_second:8.3f} img/s, {r.achieved_gflops:6.1f} GFLOP/s, {r.gmacs:.2f} GMACs/img, "
                           f"passes {r.warmup}+{len(r.times)} ({r.n_clean} clean), other procs {r.others_cores or 0:.2f} cores"
                           if not r.skipped else f"skipped ({r.note})"))
                if (args.profile or args.profile_only) and batch:
                    title = f"{name}, {precision}, {layout}, batch {batch}"
                    profiles.append((title, profile_table(model, make_inputs(batch, model, channels_last), precision,
                                                          iters=2)))
                    log(f"profile: {title}\n{profiles[-1][1]}")
        del model
        gc.collect()
    return results, profiles


def render_section(args, argv, results, profiles, peaks, measured_peaks, started, meter) -> str:
    title = args.title or f"Run {started:%Y-%m-%d %H:%M} UTC"
    others = "-" if meter.others_cores is None else f"{meter.others_cores:.2f}"
    parts = [f"## {title}", "",
             f"- Command: `{_command_line(argv)}`",
             f"- Date: {started:%Y-%m-%d %H:%M} UTC; wall time {meter.wall / 60:.1f} min",
             f"- Machine: {machine_line(torch.get_num_threads())}",
             f"- Other processes used {others} cores on average during the run (0 = idle machine"
             + ("; per timed pass in the table's last column" if results else "")
             + f"); 1-min load average at the start: {args._load_before:.2f}",
             f"- Ceilings: fp32 {peaks['fp32']:g} GFLOP/s, bf16 {peaks['bf16']:g} GFLOP/s (\"% of peak\"); "
             f"measured here at the start (best square `F.linear`, n <= 2048): fp32 {measured_peaks['fp32']:.1f} GFLOP/s, "
             f"bf16 autocast {measured_peaks['bf16']:.1f} GFLOP/s (\"% of measured mm\")",
             ""]
    if results:
        parts += ["### Throughput", "", format_results_table(results, peaks, measured_peaks), "",
                  "### FLOP count check (per image)", "", format_flop_check_table(results), ""]
        ratios = format_ratio_table(results, args.precisions)
        if ratios:
            parts += ["### Throughput ratios vs targets", "", ratios, ""]
        conv_peak = format_peak_table(results, peaks, measured_peaks)
        if conv_peak.count("\n") > 1:
            parts += ["### Conv backbones vs the matmul peak", "", conv_peak, ""]
    for title, table in profiles:
        parts += [f"### Profile: {title} (top ops by self CPU time)", "", table, ""]
    return "\n".join(parts) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = _dt.datetime.now(_dt.timezone.utc)
    args._load_before = os.getloadavg()[0]
    peaks = {"fp32": args.peak_fp32, "bf16": args.peak_bf16}
    with CpuMeter() as meter:
        measured_peaks = {p: measure_matmul_peak(p) for p in PRECISIONS}
        print("measured matmul GFLOP/s: " + ", ".join(f"{p} {v:.1f}" for p, v in measured_peaks.items()))
        results, profiles = run(args, measured_peaks)
    section = render_section(args, argv, results, profiles, peaks, measured_peaks, started, meter)
    print()
    print(section)
    if not args.no_write:
        append_section(section, args.output)
        print(f"appended to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
