"""Default path vs best path: DiC and DiCo against diffusers' DiT, side by side in one run, against the targets.

For each group of models (default: S = dic-s, dico-s, dit-s-2 and XL = dic-xl, dico-xl, dit-xl-2), fp32:
- forward throughput under torch.inference_mode on every path of model_paths.py (nchw for the conv models,
  default, compiled), with counted FLOPs per image (instruments.count), achieved GFLOP/s and their share of the
  fp32 matmul rate, which is measured at the start and at the end of this same run; a model's best path is its
  fastest;
- a training step (forward + backward + AdamW) at the default and compiled paths (the XL group only with
  --train-xl, on the default path, one model in memory at a time: 700M parameters x 4 copies each);
- sampling: a full DDIM call of ClassConditionalPipeline, latents out and with a tiny VAE decode (diffusers'
  AutoencoderTiny in its default TAESD shape, random weights: timing only), for every group but XL;
- the ratios against the targets, each met or with its shortfall; --profile adds each model's top aten ops.
Within a group the models alternate round-robin (every round times every (model, path) once; medians over the
rounds), so load from other processes falls on them all alike. Compile time is excluded from the timings and
shown as the first call. Prints markdown and appends it to docs/benchmarks.md (--no-write to skip).

    OMP_NUM_THREADS=2 python scripts/benchmark_paths.py --threads 2      # or: convdiff bench-paths --threads 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .forward import profile_table
from .instruments import (CpuMeter, Timing, add_report_options, append_section, count, machine_line,
                          measure_matmul_peak, round_robin)
from .model_paths import DIAGNOSTIC_PATHS, PATHS, build, example_inputs, has_nchw_path, on_path, train_step

GROUPS = {"S": ("dic-s", "dico-s", "dit-s-2"), "XL": ("dic-xl", "dico-xl", "dit-xl-2")}
# The project's CPU fp32 speed targets, conv model over its group's transformer: (conv, transformer, path) -> the
# least img/s ratio. DiCo-S's default-path 1.37x is the DiCo paper's A100 ratio (1695.73 / 1234.01 img/s).
TARGETS = {
    ("dico-s", "dit-s-2", "default"): 1.37, ("dico-xl", "dit-xl-2", "default"): 1.36,
    ("dic-s", "dit-s-2", "default"): 1.2,
    ("dico-s", "dit-s-2", "best"): 1.6, ("dico-xl", "dit-xl-2", "best"): 1.5,
}
MATMUL_SHARE_TARGET = 0.60  # conv backbones' achieved GFLOP/s over the fp32 matmul rate of the same run
TRAIN_PATHS = ("default", "compiled", "aten-norm")  # the NCHW training path has its own benchmark (train_speed.py)
SAMPLING_PATHS = ("default", "compiled")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DOC_PATH = Path(__file__).resolve().parents[3] / "docs" / "benchmarks.md"
TINY_VAE = "AutoencoderTiny decode (random weights)"


@dataclass
class Group:
    label: str
    models: tuple

    @property
    def large(self) -> bool:
        """XL-size groups skip training (unless --train-xl) and sampling: memory and hours."""
        return self.label == "XL" or any(part in ("l", "xl", "h") for name in self.models for part in name.split("-"))


@dataclass
class Row:
    group: str
    model: str
    kind: str  # "forward", "train" or the sampling output ("latent", TINY_VAE)
    path: str
    batch: int
    timing: Timing
    first_s: float  # the first call, compile included on the compiled path
    flops_per_image: int = 0

    @property
    def images_per_second(self) -> float:
        return self.batch / self.timing.median

    @property
    def gflops(self) -> float:
        return self.flops_per_image * self.images_per_second / 1e9


@dataclass
class Report:
    rows: list = field(default_factory=list)
    conv: dict = field(default_factory=dict)  # model -> has an NCHW path (a channels-last conv model)
    params: dict = field(default_factory=dict)
    profiles: list = field(default_factory=list)  # (title, markdown table)
    matmul: tuple = (0.0, 0.0)  # fp32 GFLOP/s at the start and at the end

    @property
    def matmul_rate(self) -> float:
        return max(self.matmul)  # the ceiling: a burst of load can only lower one of the two

    def find(self, kind: str, model: str, path: str) -> Row | None:
        return next((r for r in self.rows if (r.kind, r.model, r.path) == (kind, model, path)), None)

    def best(self, kind: str, model: str) -> Row | None:
        pool = [r for r in self.rows if (r.kind, r.model) == (kind, model) and r.path not in DIAGNOSTIC_PATHS]
        return max(pool, key=lambda r: r.images_per_second) if pool else None


# ------------------------------------------------------------------------------------------------ timing

def alternate(calls: dict, rounds: int, warmup: int, log) -> tuple[dict, dict]:
    """({key: Timing}, {key: seconds of the first call}): `warmup` untimed calls each, then round-robin rounds."""
    first = {}
    for key, call in calls.items():
        tick = time.perf_counter()
        call()
        first[key] = time.perf_counter() - tick
        for _ in range(warmup - 1):
            call()
        log(f"  {' '.join(map(str, key)):44s} first call {first[key]:7.1f} s")
    return round_robin(calls, rounds), first


def alternate_one_resident(factories: dict, rounds: int, warmup: int, log) -> tuple[dict, dict]:
    """`alternate` for models too big to sit side by side: in every round each factory builds its call afresh
    (seeded, so the same weights each time), which gets `warmup` untimed calls and one timed call and is freed
    before the next. The round-robin order is kept, so load still falls on all keys alike."""
    timings = {key: Timing() for key in factories}
    first = {}
    for _ in range(rounds):
        for key, factory in factories.items():
            call = factory()
            tick = time.perf_counter()
            call()
            first.setdefault(key, time.perf_counter() - tick)
            for _ in range(warmup - 1):
                call()
            timed = round_robin({key: call}, 1)[key]
            timings[key].seconds += timed.seconds
            timings[key].others += timed.others
            log(f"  {' '.join(map(str, key)):44s} {timed.seconds[0]:7.2f} s")
            del call
            gc.collect()
    return timings, first


def inference(call, inputs):
    def run():
        with torch.inference_mode():
            call(*inputs)
    return run


def time_forward(group: Group, args, report: Report, log):
    calls, flops, defaults = {}, {}, {}
    for name in group.models:
        model = build(name, "default", sample_size=args.latent_size)
        report.conv[name] = has_nchw_path(model)
        report.params[name] = sum(p.numel() for p in model.parameters())
        flops[name] = count(model, example_inputs(model, 1))[0]
        inputs = example_inputs(model, args.batch)
        defaults[name] = (model, inputs)
        for path in args.paths:
            if path in ("nchw", *DIAGNOSTIC_PATHS) and not report.conv[name]:
                continue  # a transformer runs the same on both: its default path is the one to compare
            if path == "nchw":
                runner = build(name, "nchw", sample_size=args.latent_size)
            elif path == "compiled":  # a wrapper sharing the default's weights: XL models fit in memory
                runner = torch.compile(model, mode=args.compile_mode, dynamic=False)
            else:  # default, or onednn: the default's model, run by on_path without the GEMM route
                runner = model
            calls[name, path] = inference(on_path(runner, path), inputs)
    log(f"forward, group {group.label}: {len(calls)} (model, path) pairs, {args.rounds} rounds")
    timings, first = alternate(calls, args.rounds, warmup=2, log=log)
    for (name, path), timing in timings.items():
        report.rows.append(Row(group.label, name, "forward", path, args.batch, timing, first[name, path], flops[name]))
    if args.profile:
        for name, (model, inputs) in defaults.items():
            report.profiles.append((f"{name}, default path, fp32, batch {args.batch}",
                                    profile_table(model, inputs, "fp32", iters=2)))


def time_training(group: Group, args, report: Report, log):
    options = {"mode": args.compile_mode, "dynamic": False}
    paths = [p for p in args.paths if p in TRAIN_PATHS and (p == "default" or not group.large)]

    def factory(name, path):
        def make():
            model = build(name, path, train=True, compile_options=options, sample_size=args.latent_size)
            return train_step(model, path, example_inputs(model, args.batch))
        return make

    factories = {(name, path): factory(name, path) for name in group.models for path in paths
                 if path not in DIAGNOSTIC_PATHS or report.conv.get(name)}  # a transformer has no conv path
    if factories:
        log(f"training step, group {group.label}: {len(factories)} (model, path) pairs, {args.rounds} rounds"
            + (", one model in memory at a time" if group.large else ""))
        if group.large:
            timings, first = alternate_one_resident(factories, args.rounds, warmup=2, log=log)
        else:
            timings, first = alternate({key: make() for key, make in factories.items()}, args.rounds, warmup=2, log=log)
        for (name, path), timing in timings.items():
            report.rows.append(Row(group.label, name, "train", path, args.batch, timing, first[name, path]))


def sampler(pipe, labels: list, args, output_type: str):
    def run():  # a fresh generator each call: every call samples the same noise
        pipe(class_labels=labels, num_inference_steps=args.sampling_steps, guidance_scale=args.guidance_scale,
             generator=torch.Generator().manual_seed(0), output_type=output_type)
    return run


def time_sampling(group: Group, args, report: Report, log):
    from diffusers import AutoencoderTiny, DDIMScheduler

    from ...pipelines.class_conditional import ClassConditionalPipeline

    torch.manual_seed(0)
    vae = AutoencoderTiny().eval()  # TAESD-shaped (latent 4 channels, x8 upsampling), random weights
    options = {"mode": args.compile_mode, "dynamic": False}
    calls = {}
    for name in group.models:
        for path in (p for p in args.paths if p in SAMPLING_PATHS):
            model = build(name, path, compile_options=options, sample_size=args.latent_size)
            labels = example_inputs(model, args.batch)[2].tolist()
            for output, decoder in (("latent", None), (TINY_VAE, vae)):
                pipe = ClassConditionalPipeline(transformer=model, scheduler=DDIMScheduler(clip_sample=False), vae=decoder)
                pipe.set_progress_bar_config(disable=True)
                calls[name, path, output] = sampler(pipe, labels, args, "latent" if decoder is None else "pt")
    if calls:
        log(f"sampling, group {group.label}: {len(calls)} (model, path, output) triples, {args.sampling_rounds} rounds")
        timings, first = alternate(calls, args.sampling_rounds, warmup=1, log=log)
        for (name, path, output), timing in timings.items():
            report.rows.append(Row(group.label, name, output, path, args.batch, timing, first[name, path, output]))


def measure(args, log=print) -> Report:
    report = Report()
    start = measure_matmul_peak("fp32")
    log(f"fp32 matmul rate at the start: {start:.1f} GFLOP/s")
    for group in args.groups:
        phases = [time_forward]
        if not args.skip_train and (args.train_xl or not group.large):
            phases.append(time_training)
        if not args.skip_sampling and not group.large:
            phases.append(time_sampling)
        for phase in phases:
            phase(group, args, report, log)
            if "compiled" in args.paths:
                torch._dynamo.reset()  # the next phase compiles afresh, and the last one's graphs can go
            gc.collect()
    report.matmul = (start, measure_matmul_peak("fp32"))
    log(f"fp32 matmul rate at the end: {report.matmul[1]:.1f} GFLOP/s")
    return report


# ------------------------------------------------------------------------------------------------ tables

def _table(header: list, rows: list) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def _others(timing: Timing) -> str:
    return "-" if timing.others_cores is None else f"{timing.others_cores:.2f}"


def _ips(x: float) -> str:
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.1f}"


def forward_table(report: Report) -> str:
    rows = []
    for r in (r for r in report.rows if r.kind == "forward"):
        best = report.best("forward", r.model) is r
        rows.append([r.group, r.model, r.path, r.batch, f"{report.params[r.model] / 1e6:.1f}",
                     f"{r.flops_per_image / 1e9:.4g}", f"{r.timing.median * 1e3:.1f}",
                     _ips(r.images_per_second), f"{r.gflops:.1f}", f"{r.gflops / report.matmul_rate:.0%}",
                     "**best**" if best else "", f"{r.first_s:.1f}", _others(r.timing)])
    return _table(["group", "model", "path", "batch", "params (M)", "GFLOP/img", "ms/batch (median)", "img/s", "GFLOP/s",
                   "% of matmul", "best path", "first call (s)", "other procs (cores)"], rows)


def train_table(report: Report) -> str:
    rows = [[r.group, r.model, r.path, r.batch, f"{r.timing.median * 1e3:.1f}", _ips(r.images_per_second),
             "**best**" if report.best("train", r.model) is r else "", f"{r.first_s:.1f}", _others(r.timing)]
            for r in report.rows if r.kind == "train"]
    return _table(["group", "model", "path", "batch", "ms/step (median)", "img/s", "best path", "first step (s)",
                   "other procs (cores)"], rows)


def sampling_table(report: Report) -> str:
    rows = [[r.group, r.model, r.path, "latent (no decode)" if r.kind == "latent" else r.kind, r.batch,
             f"{r.timing.median:.2f}", _ips(r.images_per_second), f"{r.first_s:.1f}", _others(r.timing)]
            for r in report.rows if r.kind in ("latent", TINY_VAE)]
    return _table(["group", "model", "path", "output", "batch", "s/call (median)", "img/s", "first call (s)",
                   "other procs (cores)"], rows)


def _ratio(x: float) -> str:
    return f"{x:.2f}x"


def _share(x: float) -> str:
    return f"{x:.0%}"


def _points(x: float) -> str:
    return f"{100 * x:.0f} points"


def _verdict(value: float, target: float | None, fmt, gap_fmt) -> list:
    """[target, met, shortfall] cells; "-" where the comparison has no target (e.g. tiny models)."""
    if target is None:
        return ["-", "-", "-"]
    if value >= target:
        return [f">= {fmt(target)}", "yes", "-"]
    return [f">= {fmt(target)}", "no", f"{gap_fmt(target - value)} short ({value / target - 1:+.0%})"]


def _pick(report: Report, kind: str, model: str, which: str) -> Row | None:
    return report.find(kind, model, "default") if which == "default" else report.best(kind, model)


def ratio_rows(report: Report, groups: list) -> list:
    """[comparison, path, forward, target, met, shortfall, training step] for every conv model of every group:
    its throughput over the group's transformer (default paths, then best paths), then its GFLOP/s over the
    matmul rate."""
    rows = []
    for group in groups:
        base = next((m for m in group.models if not report.conv.get(m, True)), None)
        for conv in (m for m in group.models if report.conv.get(m)):
            for which in ("default", "best") if base else ():
                a, b = _pick(report, "forward", conv, which), _pick(report, "forward", base, which)
                if a is None or b is None:
                    continue
                ratio = a.images_per_second / b.images_per_second
                ta, tb = _pick(report, "train", conv, which), _pick(report, "train", base, which)
                train = "-" if ta is None or tb is None else _ratio(ta.images_per_second / tb.images_per_second)
                if which == "best" and train != "-":
                    train += f" ({ta.path} / {tb.path})"
                label = which if which == "default" else f"best ({a.path} / {b.path})"
                rows.append([f"{conv} / {base}", label, _ratio(ratio),
                             *_verdict(ratio, TARGETS.get((conv, base, which)), _ratio, _ratio), train])
            for which in ("default", "best"):
                r = _pick(report, "forward", conv, which)
                if r is not None:
                    share = r.gflops / report.matmul_rate
                    label = which if which == "default" else f"best ({r.path})"
                    rows.append([f"{conv} GFLOP/s / fp32 matmul", label, _share(share),
                                 *_verdict(share, MATMUL_SHARE_TARGET, _share, _points), "-"])
    return rows


def ratio_table(report: Report, groups: list) -> str:
    return _table(["comparison", "path", "forward", "target", "met", "shortfall", "training step"],
                  ratio_rows(report, groups))


def command_line(argv) -> str:
    threads = os.environ.get("OMP_NUM_THREADS")
    prefix = f"OMP_NUM_THREADS={threads} " if threads else ""
    return prefix + "python scripts/benchmark_paths.py " + shlex.join(sys.argv[1:] if argv is None else argv)


def render(args, argv, report: Report, started, meter: CpuMeter, load_before: float) -> str:
    size = args.latent_size
    others = "-" if meter.others_cores is None else f"{meter.others_cores:.2f}"
    parts = [
        f"## {args.title or 'DiC / DiCo vs DiT: default and best paths, forward, training step, sampling'}"
        f" ({started:%Y-%m-%d %H:%M} UTC)", "",
        f"- Command: `{command_line(argv).strip()}`",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; wall time {meter.wall / 60:.1f} min",
        f"- Machine: {machine_line(torch.get_num_threads())}",
        f"- fp32 matmul rate (best square `F.linear`, n <= 2048) in this run: {report.matmul[0]:.1f} GFLOP/s at the "
        f"start, {report.matmul[1]:.1f} at the end; \"% of matmul\" reads against the higher",
        f"- Other processes used {others} cores on average during the run (0 = idle machine; per (model, path) in the "
        f"tables' last column); 1-min load average at the start: {load_before:.2f}",
        f"- Inputs: fp32, batch {args.batch}, {size}x{size}x4 latents ({8 * size} px), random timesteps and class "
        f"labels; models alternated round-robin within a group, median of {args.rounds} rounds; compiled = "
        f"`torch.compile(mode={args.compile_mode!r}, dynamic=False)`, compile time in \"first call\" only",
        "",
        "### Forward (torch.inference_mode)", "", forward_table(report), "",
        "### Ratios vs targets", "", ratio_table(report, args.groups), "",
    ]
    if any(r.kind == "train" for r in report.rows):
        parts += ["### Training step (forward + backward + AdamW)", "", train_table(report), ""]
    if any(r.kind in ("latent", TINY_VAE) for r in report.rows):
        parts += [f"### Sampling: ClassConditionalPipeline, DDIM {args.sampling_steps} steps, guidance scale "
                  f"{args.guidance_scale:g}" + (" (the batch doubles for guidance)" if args.guidance_scale > 1 else ""),
                  "", f"Median of {args.sampling_rounds} rounds. The tiny VAE is diffusers' AutoencoderTiny in its "
                  "default (TAESD) shape with random weights, built here: its decode times the cost, not the images.",
                  "", sampling_table(report), ""]
    for title, table in report.profiles:
        parts += [f"### Profile: {title} (top aten ops by self CPU time)", "", table, ""]
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------------ main

def parse_group(token: str) -> Group:
    if token.upper() in GROUPS:
        return Group(token.upper(), GROUPS[token.upper()])
    return Group(token, tuple(name.strip() for name in token.split(",") if name.strip()))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = p.add_mutually_exclusive_group()
    presets = "; ".join(f"{label}: {' '.join(models)}" for label, models in GROUPS.items())
    which.add_argument("--groups", nargs="+", default=["S", "XL"],
                       help=f"groups to compare, each a preset ({presets}) or comma-separated registry names; a group's "
                            "first non-conv model is the baseline of its ratios (default: %(default)s)")
    which.add_argument("--models", nargs="+", help="registry names forming one group (instead of --groups)")
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS + DIAGNOSTIC_PATHS,
                   help="paths to time (default: %(default)s); onednn: a conv model's default path with every conv "
                        "through oneDNN (fast_conv's GEMM route off; never a best path); aten-norm: DiCo's LayerNorm + "
                        "modulation as ATen ops, not the native pass (never a best path; also timed in training); "
                        "sampling uses default and compiled only")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds of forward and training (default %(default)s)")
    p.add_argument("--sampling-rounds", type=int, default=3, help="timed rounds of sampling (default %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="images per forward, step and sampling call (default %(default)s)")
    p.add_argument("--latent-size", type=int, default=32, help="latent side; 32 = 256 px images (default %(default)s)")
    p.add_argument("--compile-mode", default="default", choices=COMPILE_MODES, help="torch.compile mode (default %(default)s)")
    p.add_argument("--skip-train", action="store_true", help="no training-step timing")
    p.add_argument("--train-xl", action="store_true", help="also time the XL group's training step on the default path, each model built afresh every "
                        "round and freed before the next (~11 GB + activations: one XL model in memory at a time)")
    p.add_argument("--skip-sampling", action="store_true", help="no sampling timing")
    p.add_argument("--sampling-steps", type=int, default=25, help="DDIM steps per sampling call (default %(default)s)")
    p.add_argument("--guidance-scale", type=float, default=1.0,
                   help="classifier-free guidance scale while sampling; > 1 doubles the batch (default %(default)s)")
    p.add_argument("--profile", action="store_true", help="top aten ops by self CPU time of each model's default path")
    add_report_options(p, DOC_PATH)
    args = p.parse_args(argv)
    for name in ("rounds", "sampling_rounds", "batch", "latent_size", "threads", "sampling_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.guidance_scale < 1:
        p.error(f"--guidance-scale must be >= 1 (1 = no guidance), got {args.guidance_scale:g}")
    args.groups = [Group("models", tuple(args.models))] if args.models else [parse_group(t) for t in args.groups]
    from ...registry import model_spec

    for group in args.groups:
        if not group.models:
            p.error(f"group {group.label!r} names no model")
        for name in group.models:
            try:
                model_spec(name)
            except ValueError as error:
                p.error(str(error))  # the registry's message, with close matches
    return args


def run(argv=None, log=print) -> tuple[Report, str]:
    """Measure, render and (unless --no-write) append; returns the report and the markdown section."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started, load_before = dt.datetime.now(dt.timezone.utc), os.getloadavg()[0]
    with CpuMeter() as meter:
        report = measure(args, log)
    section = render(args, argv, report, started, meter, load_before)
    log("\n" + section)
    if not args.no_write:
        append_section(section, args.output)
        log(f"appended to {args.output}")
    return report, section


def main(argv=None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
