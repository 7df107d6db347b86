"""`convdiff bench-resolution`: what a step costs as the resolution grows, the conv models against DiT.

Convolution cost grows with the pixels, attention with their square, so the conv backbones' edge over a
transformer should grow with resolution (the DiCo paper: 2.7x over DiT-XL/2 at 256 px, 3.1x at 512 px, A100).
This benchmark measures that edge on one machine, in one run:

- DiC-S and DiCo-S against DiT-S/2 (`--xl` adds DiC-XL and DiCo-XL against DiT-XL/2) at 256, 512, 1024 and
  2048 px images, i.e. SD-VAE latents of 32 ... 256 px (4 channels, stride 8); batch `--batch` (1: per image);
- forward (inference) and training step (forward + backward + AdamW) per image, the models alternated round by
  round so a change of load falls on all of them (one model resident at a time for the training steps);
- peak memory per image: the largest rise of the process's resident memory (CPU) or of
  `torch.cuda.max_memory_allocated` (GPU) during one call, measured after every timing (PeakMemory);
- each model's MACs at each resolution, counted on its warm-up call (`instruments.analytic_macs`). A conv model's
  **MAC-parity ratio** against DiT is DiT's MACs / its MACs: the speed ratio it reaches if it runs as many MACs per
  second as DiT does. Its measured ratio over that is its efficiency relative to DiT;
- the efficiency gap (`--profile`): time per kind of op on one forward and on one training step (dense =
  convolutions and matmuls, depthwise conv, attention, and the rest: norms, modulations, elementwise, the
  optimizer) against the arithmetic floor of its MACs at the matmul rate measured in the same run (a training
  step's floor: 3x the forward's, the forward plus the two backward products of every layer).

On a GPU (`--device cuda`) each call is timed with CUDA events after a synchronisation (`instruments.elapsed`), and
the TF32 and autocast settings of the run are recorded with the figures. `scripts/gpu_bench.sh` is the prepared GPU run.
Writes a markdown section (docs/benchmarks.md) and two PNG plots (time per image against pixels, log-log, with the
MAC-parity lines; the efficiency gap).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

OUTPUT = Path(__file__).resolve().parents[3] / "docs" / "benchmarks.md"
PLOTS = Path(__file__).resolve().parents[3] / "docs" / "benchmarks"
CONV = ("dic-s", "dico-s")
BASELINE = "dit-s-2"
XL = ("dic-xl", "dico-xl", "dit-xl-2")  # --xl: the XL conv models against DiT-XL/2
KINDS = ("dense", "depthwise conv", "attention", "other")
TRAIN_FLOOR = 3  # a training step's MACs over the forward's: the forward, and the input and weight gradients
VAE_STRIDE = 8


@dataclass
class Cell:
    """One model at one resolution: seconds per image (forward, training step), peak bytes, MACs by kind."""

    model: str
    pixels: int
    forward: list = field(default_factory=list)
    train: list = field(default_factory=list)
    forward_bytes: int = 0
    train_bytes: int = 0
    macs: dict = field(default_factory=dict)
    kind_seconds: dict = field(default_factory=dict)
    train_kind_seconds: dict = field(default_factory=dict)

    @property
    def total_macs(self) -> int:
        return sum(self.macs.values())

    @staticmethod
    def median(values) -> float:
        """The upper median (with two rounds: the slower one), a value that was measured."""
        ordered = sorted(values)
        return ordered[len(ordered) // 2] if ordered else float("nan")


# ------------------------------------------------------------------------------------------------ devices

class PeakMemory:
    """The largest rise of memory in use during a block: resident memory sampled every 2 ms on the CPU
    (/proc/self/statm), `torch.cuda.max_memory_allocated` on a GPU.

    On the CPU, glibc's malloc keeps freed heap memory for reuse, so a call could run in memory an earlier call
    freed and show no rise at all. The first measurement tells glibc to serve every allocation of 64 KiB or more
    from its own mapping, which free() returns to the system at once, so the resident size follows the tensors
    alive. Mapping every tensor slows calls down, so `measure` runs after every timing of the run.
    """

    M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)

    def __init__(self, device: str):
        self.device = device
        self.libc = None
        if device == "cpu":
            import ctypes
            import ctypes.util

            self.libc = ctypes.CDLL(ctypes.util.find_library("c"))
            if not hasattr(self.libc, "mallopt"):
                raise SystemExit("convdiff bench-resolution: error: no glibc mallopt, so peak memory on this CPU "
                                 "would be read from reused heap memory; run on glibc Linux.")

    @staticmethod
    def _resident() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def measure(self, call) -> int:
        import torch

        if self.device != "cpu":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            call()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - before
        gc.collect()
        self.libc.mallopt(self.M_MMAP_THRESHOLD, 64 * 1024)
        self.libc.malloc_trim(0)
        before, peak, done = self._resident(), [0], threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], self._resident())
                time.sleep(0.002)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            call()
        finally:
            done.set()
            sampler.join()
        return max(peak[0], self._resident()) - before


def check_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("convdiff bench-resolution: error: --device cuda, but torch sees no CUDA device "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); run it on a GPU machine "
                         "or leave --device out for the CPU.")


def settings_line(device: str, precision: str) -> str:
    """What decides the numbers besides the code: precision, TF32 switches, threads, versions."""
    import torch

    parts = [f"device {device}", f"precision {precision} ({'autocast' if precision != 'fp32' else 'no autocast'})"]
    if device == "cuda":
        parts += [torch.cuda.get_device_name(0),
                  f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, TF32 cuDNN {torch.backends.cudnn.allow_tf32}",
                  f"CUDA {torch.version.cuda}"]
    else:
        parts.append(f"{torch.get_num_threads()} threads")
    return "; ".join(parts + [f"torch {torch.__version__}"])


def matmul_rate(device: str, precision: str) -> float:
    """Best GFLOP/s of an n x n matmul (n up to 4096 on a GPU), in the run's precision."""
    import torch

    from .instruments import autocast_context, measure_matmul_peak, time_call

    if device == "cpu":
        return measure_matmul_peak("bf16" if precision == "bf16" else "fp32")
    best = 0.0
    with torch.inference_mode(), autocast_context(precision, device):
        for n in (1024, 2048, 4096):
            a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
            fastest = min(time_call(lambda: a @ b, 5, warmup=1, device=device).seconds)
            best = max(best, 2 * n ** 3 / fastest / 1e9)
    return best


# ------------------------------------------------------------------------------------------------ calls

def build(name: str, pixels: int, device: str, train: bool, batch: int):
    """A seeded registry model for `pixels`-px images (latents of pixels / 8), and `batch` example inputs."""
    import torch

    from ...registry import create_model
    from .model_paths import example_inputs

    torch.manual_seed(0)
    model = create_model(name, sample_size=pixels // VAE_STRIDE).to(device).train(train)
    return model, tuple(t.to(device) for t in example_inputs(model, batch))


def forward_call(model, inputs, device: str, precision: str):
    """One inference forward (paths.inference) under the run's autocast."""
    from .instruments import autocast_context
    from .paths import inference

    run = inference(model, inputs)

    def call():
        with autocast_context(precision, device):
            run()
    return call


def train_call(model, inputs, device: str, precision: str):
    """One training step (model_paths.train_step: forward, backward, AdamW) under the run's autocast."""
    from .instruments import autocast_context
    from .model_paths import train_step

    step = train_step(model, "default", inputs)

    def call():
        with autocast_context(precision, device):
            step()
    return call


def kind_of(event) -> str:
    """Which kind of work an aten op is, for the efficiency gap."""
    name = event.key
    if "attention" in name:
        return "attention"
    op = name.rpartition("::")[2]
    if "conv" in op:  # the op, not its namespace (convdiff::)
        shapes = getattr(event, "input_shapes", None) or []
        at = 2 if "backward" in op else 1  # backward ops take (grad_output, input, weight, ...)
        weight = shapes[at] if len(shapes) > at else []
        return "depthwise conv" if len(weight) == 4 and weight[1] == 1 and weight[2] > 1 else "dense"
    if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
                "mkldnn::_linear_pointwise"):  # the last: fast_conv's GEMM route with its GELU fused in
        return "dense"
    return "other"


def profile_kinds(call, device: str) -> dict:
    """Seconds per kind of op (self time of the aten ops) over one call."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        call()
    seconds = dict.fromkeys(KINDS, 0.0)
    for event in prof.key_averages(group_by_input_shape=True):
        if not event.key.startswith(("aten::", "mkldnn::", "convdiff::")):  # mkldnn: fast_conv's fused ops;
            continue  # convdiff: nn/norm_modulate.py's kernel
        own = event.self_device_time_total if device == "cuda" else event.self_cpu_time_total
        seconds[kind_of(event)] += own / 1e6
    return seconds


def macs_by_kind(model, inputs, device: str, precision: str) -> dict:
    """MACs of one forward, grouped as the efficiency gap groups time (dense = convs + linears)."""
    import torch

    from .instruments import analytic_macs, autocast_context

    with torch.inference_mode(), autocast_context(precision, device):
        counted = analytic_macs(model, inputs)
    return {"dense": counted["conv"] + counted["linear"], "depthwise conv": counted["depthwise/grouped conv"],
            "attention": counted["attention"], "other": 0}


# ------------------------------------------------------------------------------------------------ the run

def measure(args, log=print) -> tuple[list, float]:
    """{(model, pixels): Cell} for every model and resolution, and the matmul rate of this run."""
    from .instruments import round_robin, time_call

    memory = PeakMemory(args.device)
    rate = matmul_rate(args.device, args.precision)
    log(f"matmul rate {rate:.0f} GFLOP/s ({args.precision}, {args.device})")
    models = run_models(args)
    cells = {}
    for pixels in args.resolutions:
        log(f"{pixels} px images ({pixels // VAE_STRIDE} px latents)")
        resident = {}
        for name in models:  # forward: all models side by side, alternated
            model, inputs = build(name, pixels, args.device, train=False, batch=args.batch)
            cell = cells[(name, pixels)] = Cell(name, pixels)
            cell.macs = macs_by_kind(model, inputs, args.device, args.precision)  # also the warm-up call
            call = forward_call(model, inputs, args.device, args.precision)
            if args.profile:
                cell.kind_seconds = {k: v / args.batch for k, v in profile_kinds(call, args.device).items()}
            resident[name] = (model, call)
        timed = round_robin({name: call for name, (_, call) in resident.items()}, args.rounds, warmup=1,
                            device=args.device)
        for name in models:
            cells[(name, pixels)].forward = [seconds / args.batch for seconds in timed[name].seconds]
            log(f"  forward {name:10s} {cells[(name, pixels)].median(cells[(name, pixels)].forward):8.3f} s/image")
        resident.clear()
        gc.collect()
        if args.train_rounds:
            for _ in range(args.train_rounds):  # training: one model resident at a time, in turn
                for name in models:
                    model, inputs = build(name, pixels, args.device, train=True, batch=args.batch)
                    call = train_call(model, inputs, args.device, args.precision)
                    cell = cells[(name, pixels)]
                    cell.train.append(time_call(call, 1, warmup=1, device=args.device).seconds[0] / args.batch)
                    if args.profile and not cell.train_kind_seconds:  # after the timing: the profiler slows a call
                        cell.train_kind_seconds = {k: v / args.batch
                                                   for k, v in profile_kinds(call, args.device).items()}
                    del model, call
                    gc.collect()
            for name in models:
                log(f"  train   {name:10s} {Cell.median(cells[(name, pixels)].train):8.3f} s/image")
    for pixels in args.resolutions:  # memory last: measuring it changes how the allocator serves later calls
        for name in models:
            cell = cells[(name, pixels)]
            model, inputs = build(name, pixels, args.device, train=False, batch=args.batch)
            cell.forward_bytes = memory.measure(forward_call(model, inputs, args.device, args.precision)) // args.batch
            if args.train_rounds:
                model, inputs = build(name, pixels, args.device, train=True, batch=args.batch)
                step = train_call(model, inputs, args.device, args.precision)
                cell.train_bytes = memory.measure(step) // args.batch
            del model, inputs
            gc.collect()
            log(f"  memory  {name:10s} {pixels} px: {cell.forward_bytes / 2**20:.0f} / {cell.train_bytes / 2**20:.0f} MB")
    return cells, rate


def run_models(args) -> list:
    """Every model of the run, each conv model before its baseline."""
    return [*args.models, args.baseline, *(XL if args.xl else ())]


def pairs(args) -> list:
    """(conv model, the transformer baseline it is measured against) in the run."""
    return [(m, args.baseline) for m in args.models] + ([(m, XL[-1]) for m in XL[:-1]] if args.xl else [])


def table(cells: dict, resolutions, models, pairs_: list) -> str:
    head = ("| model | px | MACs (G) | forward s/image | train s/image | peak MB/image (fwd / train) | "
            "forward vs baseline | train vs baseline | MAC parity | forward / parity |")
    lines = [head, "|---" * 10 + "|"]
    baseline_of = dict(pairs_)
    for pixels in resolutions:
        for name in models:
            c = cells[(name, pixels)]
            fwd, trn = Cell.median(c.forward), Cell.median(c.train)
            ratio = ratio_train = parity = share = "-"
            if name in baseline_of:
                b = cells[(baseline_of[name], pixels)]
                parity_value = b.total_macs / max(c.total_macs, 1)
                ratio_value = Cell.median(b.forward) / fwd
                ratio, parity = f"{ratio_value:.2f}x", f"{parity_value:.2f}x"
                share = f"{ratio_value / parity_value:.0%}"
                if c.train and b.train:
                    ratio_train = f"{Cell.median(b.train) / trn:.2f}x"
            train_text = f"{trn:.3f}" if c.train else "-"
            lines.append(f"| {name} | {pixels} | {c.total_macs / 1e9:.1f} | {fwd:.3f} | {train_text} | "
                         f"{c.forward_bytes / 2**20:.0f} / {c.train_bytes / 2**20:.0f} | {ratio} | {ratio_train} | "
                         f"{parity} | {share} |")
    return "\n".join(lines)


def gap_table(cells: dict, resolutions, models, rate: float) -> str:
    """Seconds per image by kind, with the kind's arithmetic floor, for the forward and (where profiled) the
    training step."""
    lines = ["| model | px | pass | " + " | ".join(f"{k} s (floor)" for k in KINDS) + " |",
             "|---|---|---|" + "---|" * len(KINDS)]
    for pixels in resolutions:
        for name in models:
            c = cells[(name, pixels)]
            for label, seconds, factor in (("forward", c.kind_seconds, 1), ("train", c.train_kind_seconds, TRAIN_FLOOR)):
                if seconds:
                    parts = [f"{seconds[k]:.3f} ({factor * 2 * c.macs.get(k, 0) / (rate * 1e9):.3f})" for k in KINDS]
                    lines.append(f"| {name} | {pixels} | {label} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def plot(cells: dict, resolutions, models, pairs_: list, rate: float, folder: Path, stamp: str) -> list:
    """Two PNGs: time per image against pixels (log-log) with each conv model's MAC-parity line, and the
    efficiency gap (time per kind against its floor at the measured matmul rate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    pixels = [p * p for p in resolutions]
    colors = {}
    for name in models:
        line, = ax.plot(pixels, [Cell.median(cells[(name, p)].forward) for p in resolutions], "o-", label=name)
        colors[name] = line.get_color()
    for name, base in pairs_:  # the conv model at the transformer's MACs per second
        parity = [Cell.median(cells[(base, p)].forward) * cells[(name, p)].total_macs / cells[(base, p)].total_macs
                  for p in resolutions]
        ax.plot(pixels, parity, ":", color=colors[name], label=f"{name} at {base}'s MACs per second")
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel("pixels per image"), ax.set_ylabel("forward seconds per image")
    ax.set_title("cost against resolution")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(folder / f"resolution-{stamp}.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    profiled = [(n, p) for p in resolutions for n in models if cells[(n, p)].kind_seconds]
    if profiled:
        passes = [("forward", "kind_seconds", 1)]
        if all(cells[key].train_kind_seconds for key in profiled):
            passes.append(("training step", "train_kind_seconds", TRAIN_FLOOR))
        width = max(6.5, 0.45 * len(profiled))
        fig, axes = plt.subplots(1, len(passes), figsize=(width * len(passes), 4.5), squeeze=False)
        for ax, (label, attribute, factor) in zip(axes[0], passes):
            bottom = [0.0] * len(profiled)
            for kind in KINDS:
                heights = [getattr(cells[key], attribute)[kind] for key in profiled]
                ax.bar(range(len(profiled)), heights, bottom=bottom, label=kind)
                bottom = [b + h for b, h in zip(bottom, heights)]
            floors = [factor * sum(2 * cells[key].macs.get(k, 0) for k in KINDS) / (rate * 1e9) for key in profiled]
            ax.scatter(range(len(profiled)), floors, marker="_", s=300, color="black", label="arithmetic floor",
                       zorder=3)
            ax.set_xticks(range(len(profiled)), [f"{n}\n{p}px" for n, p in profiled], fontsize=6, rotation=90)
            ax.set_yscale("log")
            ax.set_ylabel(f"{label} seconds per image")
            ax.set_title(f"efficiency gap, {label}: time per kind vs the floor at {rate:.0f} GFLOP/s", fontsize=9)
            ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(folder / f"efficiency-gap-{stamp}.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def parse_args(argv=None) -> argparse.Namespace:
    from .instruments import add_report_options

    parser = argparse.ArgumentParser(prog="convdiff bench-resolution", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(CONV),
                        help="conv models, each measured against --baseline (default: %(default)s)")
    parser.add_argument("--baseline", default=BASELINE, help="the transformer they are measured against (default: %(default)s)")
    parser.add_argument("--xl", action="store_true", help="also the XL sizes (DiC-XL, DiCo-XL, DiT-XL/2)")
    parser.add_argument("--resolutions", nargs="+", type=int, default=[256, 512, 1024, 2048],
                        help="image sizes in pixels, divisible by 32 (latents = pixels / 8; default: %(default)s)")
    parser.add_argument("--batch", type=int, default=1, help="images per call (default: 1, time per image)")
    parser.add_argument("--rounds", type=int, default=3, help="timed forward rounds per model (default: 3)")
    parser.add_argument("--train-rounds", type=int, default=1,
                        help="timed training steps per model, each after a warm-up step (0: forward only; default: 1)")
    parser.add_argument("--profile", action="store_true", help="the efficiency gap: time per kind of op vs its floor")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="fp32, or bf16 / fp16 autocast (default: fp32)")
    parser.add_argument("--plots", type=Path, default=PLOTS, help=f"folder for the PNG plots (default: {PLOTS})")
    add_report_options(parser, OUTPUT)
    args = parser.parse_args(argv)
    bad = [r for r in args.resolutions if r <= 0 or r % 32]
    if bad:
        parser.error(f"--resolutions must be positive multiples of 32 (latents divisible by the models' stride 4), got {bad}")
    if args.batch < 1 or args.rounds < 1 or args.train_rounds < 0:
        parser.error("--batch and --rounds must be >= 1 and --train-rounds >= 0")
    if args.device == "cpu" and args.precision == "fp16":
        parser.error("--precision fp16 needs --device cuda (CPU autocast runs bf16)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from .instruments import CpuMeter, append_section, machine_line

    check_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.precision != "fp32"
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with CpuMeter() as meter:
        cells, rate = measure(args)
    models, pairs_ = run_models(args), pairs(args)
    stamp = time.strftime("%Y%m%d-%H%M", time.gmtime())
    plots = plot(cells, args.resolutions, models, pairs_, rate, args.plots, stamp)
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    others = "" if meter.others_cores is None else f"; other processes used {meter.others_cores:.2f} cores meanwhile"
    section = "\n".join([
        f"## {args.title or 'Cost against resolution'} ({started})", "",
        f"Command: `convdiff bench-resolution {argv_text}`. Machine: {machine_line(torch.get_num_threads())}. "
        f"Settings: {settings_line(args.device, args.precision)}. Matmul rate measured in this run: "
        f"{rate:.0f} GFLOP/s{others}.", "",
        table(cells, args.resolutions, models, pairs_), "",
        "MAC parity: the baseline's MACs / the model's, the speed ratio at equal MACs per second; "
        "forward / parity: the measured ratio over it (100% = as efficient per MAC as the transformer).", "",
        *([gap_table(cells, args.resolutions, models, rate), ""] if args.profile else []),
        *[f"![{path.stem}]({os.path.relpath(path, args.output.parent)})" for path in plots], ""])
    print(section)
    if not args.no_write:
        append_section(section, args.output)
    return 0
