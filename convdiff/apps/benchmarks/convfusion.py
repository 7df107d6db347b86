"""ΔConvFusion module benchmark: self-attention vs linear attention vs ΔConvBlock over SD1.5's 16 self-attention
layers (the ΔConvFusion paper's setting; docs/convfusion.md), at 512, 1024, 2048 and 4096 px.

    OMP_NUM_THREADS=1 python scripts/benchmark_convfusion.py [--sizes 512 1024 2048 4096] [--budget 20] [--write]

FLOPs (2 per multiply-add, torch's FlopCounterMode; pooling, gates and softmax are not counted) come from the
real SD1.5 UNet configuration built on the meta device, so they are exact at every size. CPU latency is the
median forward time of each layer type at batch 1, fp32, summed over the 16 layers; a layer whose estimated
time exceeds --budget seconds is not run (its sum is shown as "-"). Peak memory is the largest total size of
live activations a module's forward creates (weights and input excluded), tracked op by op; it is measured
on the CPU runs, and for ΔConv / linear attention also on the meta device where the CPU run is skipped
(their ops are the same). Whole-UNet FLOPs: SD1.5 with attention vs the ΔConv student, text context 77x768.
"""

import argparse
import datetime
import functools
import sys
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ...models.convfusion import (DeltaConvSelfAttention, LinearSelfAttention, convert_self_attention,
                                  self_attention_sites)
from .instruments import count, machine_line, round_robin, time_call

# Attention / ΔConv FLOP ratios the paper reports, at least (docs/convfusion.md); linear / ΔConv >= 5.4.
TARGETS = {512: 12, 1024: 39}
LINEAR_TARGET = 5.4
ASSUMED_GFLOPS = 15.0  # for skipping: a conservative single-core rate under load
DOC = Path(__file__).resolve().parents[3] / "docs" / "benchmarks.md"


class LiveActivationBytes(TorchDispatchMode):
    """Peak total bytes of tensors created inside the mode and still alive (views excluded)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0

    def _free(self, nbytes):
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t._base is None:
                nbytes = t.numel() * t.element_size()
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, nbytes)
        return out


def sd15_unet(device="meta"):
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        return UNet2DConditionModel(cross_attention_dim=768)  # the SD1.5 configuration (diffusers defaults)


def sd15_layers():
    """[(name, channels, heads, level, kernel)] of SD1.5's 16 self-attention layers; level = downsampling steps."""
    unet = sd15_unet()
    kernels = {n.rsplit(".", 1)[0]: m.kernel_size for n, m in
               convert_self_attention(sd15_unet(), kernel_sizes="sd15").named_modules()
               if isinstance(m, DeltaConvSelfAttention)}
    layers = []
    for name, block in self_attention_sites(unet):
        part, index = name.split(".")[:2]
        level = 3 if part == "mid_block" else int(index) if part == "down_blocks" else 3 - int(index)
        layers.append((name, block.attn1.to_q.in_features, block.attn1.heads, level, kernels[name]))
    return layers, unet


def build_module(kind, attention, kernel):
    if kind == "attention":
        return attention
    if kind == "linear":
        return LinearSelfAttention.from_attention(attention)
    return DeltaConvSelfAttention(attention.to_q.in_features, kernel)


def module_flops(module, side, channels):
    x = torch.empty(1, side * side, channels, device="meta")
    if isinstance(module, DeltaConvSelfAttention):
        module.spatial_size = (side, side)
    return count(module, (x,))[0]


def measure(module, side, channels, repeats: int):
    """(median seconds, peak live activation bytes) of one CPU forward at batch 1."""
    x = torch.randn(1, side * side, channels)
    if isinstance(module, DeltaConvSelfAttention):
        module.spatial_size = (side, side)
    with torch.inference_mode():
        timing = time_call(lambda: module(x), repeats, warmup=1)
        tracker = LiveActivationBytes()
        with tracker:
            module(x)
    return timing.median, tracker.peak


def meta_peak(module, side, channels):
    x = torch.empty(1, side * side, channels, device="meta")
    if isinstance(module, DeltaConvSelfAttention):
        module.spatial_size = (side, side)
    tracker = LiveActivationBytes()
    with torch.inference_mode(), tracker:
        module(x)
    return tracker.peak


def unet_flops(unet, px):
    latent = px // 8
    inputs = (torch.empty(1, 4, latent, latent, device="meta"), torch.tensor([500], device="meta"),
              torch.empty(1, 77, 768, device="meta"))
    return count(unet, inputs)[0]


def run(sizes, budget, repeats):
    layers, unet = sd15_layers()
    real = {}  # (channels, heads) -> a CPU attention with random weights, shared by its layers
    from diffusers.models.attention_processor import Attention

    student_unet = convert_self_attention(sd15_unet(), kernel_sizes="sd15")
    rows = []
    for px in sizes:
        row = {"px": px}
        totals = {k: dict(flops=0, seconds=0.0, peak=0, skipped=False) for k in ("attention", "linear", "deltaconv")}
        cache = {}
        for name, channels, heads, level, kernel in layers:
            side = px // 8 // 2**level
            if (channels, heads) not in real:
                torch.manual_seed(0)
                real[(channels, heads)] = Attention(channels, heads=heads, dim_head=channels // heads, bias=False,
                                                    out_bias=True).eval()
            for kind, total in totals.items():
                key = (kind, channels, side, kernel)
                if key not in cache:
                    module = build_module(kind, real[(channels, heads)], kernel).eval()
                    meta_module = build_module(kind, real[(channels, heads)], kernel).to("meta") if kind != "attention" \
                        else Attention(channels, heads=heads, dim_head=channels // heads, out_bias=True).to("meta")
                    flops = module_flops(meta_module, side, channels)
                    if flops / 1e9 / ASSUMED_GFLOPS > budget:
                        seconds, peak = None, (meta_peak(meta_module, side, channels) if kind != "attention" else None)
                    else:
                        seconds, peak = measure(module, side, channels, repeats)
                    cache[key] = (flops, seconds, peak)
                flops, seconds, peak = cache[key]
                total["flops"] += flops
                if seconds is None:
                    total["skipped"] = True
                else:
                    total["seconds"] += seconds
                total["peak"] = None if peak is None or total["peak"] is None else max(total["peak"], peak)
        row.update(totals)
        row["unet_attention"], row["unet_deltaconv"] = unet_flops(unet, px), unet_flops(student_unet, px)
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def _ratio(a, b):
    return f"{a / b:.1f}x" if a and b else "-"


def _ms(total):
    return "-" if total["skipped"] else f"{total['seconds'] * 1e3:,.0f}"


def _mb(total):
    return "-" if total["peak"] is None else f"{total['peak'] / 2**20:,.0f}"


HEADER = ("| px | self-attn GFLOPs | linear GFLOPs | ΔConv GFLOPs | attn/ΔConv FLOPs (target) | linear/ΔConv FLOPs "
          "(target) | attn / linear / ΔConv ms (16 layers) | attn/ΔConv latency | linear/ΔConv latency | peak MB attn / "
          "linear / ΔConv (largest layer) | whole UNet GFLOPs attn -> ΔConv (speed-up) |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def format_row(row):
    a, l_, d = row["attention"], row["linear"], row["deltaconv"]
    target = f" (>= {TARGETS[row['px']]}x)" if row["px"] in TARGETS else ""
    latency = lambda x, y: "-" if x["skipped"] or y["skipped"] else _ratio(x["seconds"], y["seconds"])  # noqa: E731
    return (f"| {row['px']} | {a['flops'] / 1e9:,.1f} | {l_['flops'] / 1e9:,.1f} | {d['flops'] / 1e9:,.1f} | "
            f"{_ratio(a['flops'], d['flops'])}{target} | {_ratio(l_['flops'], d['flops'])} (>= {LINEAR_TARGET}x) | "
            f"{_ms(a)} / {_ms(l_)} / {_ms(d)} | {latency(a, d)} | {latency(l_, d)} | {_mb(a)} / {_mb(l_)} / {_mb(d)} | "
            f"{row['unet_attention'] / 1e9:,.0f} -> {row['unet_deltaconv'] / 1e9:,.0f} "
            f"({_ratio(row['unet_attention'], row['unet_deltaconv'])}) |")


def compare_pipelines(folders, batch: int, repeats: int):
    """Denoiser FLOPs and CPU latency of trained class-conditional pipelines (teacher vs students), timed
    interleaved (one pass of each in turn) so a shared machine's load hits all of them alike."""
    from ...models.convfusion import student_modules
    from ...pipelines import ClassConditionalPipeline

    models = {Path(f).parent.name if Path(f).name == "pipeline" else Path(f).name:
              ClassConditionalPipeline.from_pretrained(f).transformer.eval() for f in folders}
    rows = []
    for name, model in models.items():
        config = model.config
        x = torch.randn(batch, config.in_channels, config.sample_size, config.sample_size)
        inputs = (x, torch.full((batch,), 500), torch.arange(batch) % 10)
        mixers = [b.attn1 for _, b in self_attention_sites(model)]
        mixer_flops = 0
        total = count(model, inputs)[0]
        for mixer in mixers:  # the self-attention (or student) modules alone, on their recorded inputs
            captured = {}
            handle = mixer.register_forward_pre_hook(lambda m, a, captured=captured: captured.setdefault("x", a[0]))
            with torch.inference_mode():
                model(*inputs)
            handle.remove()
            mixer_flops += count(mixer, (captured["x"],))[0]
        rows.append((name, model, inputs, total, mixer_flops, len(student_modules(model))))
    with torch.inference_mode():
        timings = round_robin({name: functools.partial(model, *inputs) for name, model, inputs, *_ in rows}, repeats,
                              warmup=1)
    lines = [f"| denoiser | students | self-attention-layer GFLOPs / sample | whole denoiser GFLOPs / sample | "
             f"ms per batch of {batch} (median of {repeats}) |", "|---|---|---|---|---|"]
    for name, model, inputs, total, mixer_flops, students in rows:
        kind = type(next(iter(student_modules(model).values()))).__name__ if students else "self-attention (teacher)"
        lines.append(f"| {name} | {kind} | {mixer_flops / batch / 1e9:.4f} | {total / batch / 1e9:.4f} | "
                     f"{timings[name].median * 1e3:,.0f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--budget", type=float, default=20.0, help="skip a CPU run estimated above this many seconds")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true", help=f"append the table to {DOC}")
    parser.add_argument("--pipelines", nargs="+", help="instead: compare trained class-conditional pipeline folders")
    parser.add_argument("--batch", type=int, default=64, help="batch for --pipelines")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.pipelines:
        print(compare_pipelines(args.pipelines, args.batch, max(args.repeats, 3)))
        return
    print(HEADER)
    rows = run(args.sizes, args.budget, args.repeats)
    table = "\n".join([HEADER] + [format_row(r) for r in rows])
    if args.write:
        command = "OMP_NUM_THREADS=1 python scripts/benchmark_convfusion.py " + " ".join(argv or sys.argv[1:])
        text = (f"\n## ΔConvFusion: self-attention vs linear attention vs ΔConvBlock, SD1.5's 16 self-attention layers\n\n"
                f"`{command.strip()}` on {datetime.date.today()}; {machine_line(args.threads)}. The machine was shared "
                "with other jobs (load 4-8 on 2 cores), so latencies are upper bounds; FLOPs are exact counts on the "
                "real SD1.5 configuration (meta device). Latency \"-\" = not run (estimated over the time budget). "
                "No GPU here: no GPU figures.\n\n" + table + "\n")
        with open(DOC, "a") as f:
            f.write(text)
        print(f"appended to {DOC}")
