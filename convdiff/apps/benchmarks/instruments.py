"""What every benchmark measures with: counted FLOPs, the machine, the matmul peak, other processes' CPU use.

- `count` runs one forward pass under torch's `FlopCounterMode` (matmuls and convolutions, grouped and
  depthwise included, 2 FLOPs per multiply-accumulate, plus a formula for the CPU attention kernel it lacks) and
  recounts it analytically from module shapes (`analytic_macs`); `count_flops` is the first half.
- `machine_line` describes the CPU, its ISA flags, thread count and library versions for docs/benchmarks.md.
- `measure_matmul_peak` is the best `F.linear` rate, the ceiling against which throughput is read.
- `CpuMeter` measures the cores other processes used while a block ran, so a run on a shared machine says so.
- `round_robin` times several calls in turn, round after round, so a change of load hits them all alike;
  `time_call` times one. Every benchmark times with these.
- `add_report_options`: --threads, --no-write, --output, --title of the benchmarks that write docs rows.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

aten = torch.ops.aten
PRECISIONS = ("fp32", "bf16")  # what autocast_context runs


# ----------------------------------------------------------------------------------------------- FLOP counts

def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# Attention kernels FlopCounterMode has no formula for (torch 2.13): the CPU flash kernel that SDPA picks.
_EXTRA_FLOP_FORMULAS = {
    op: _cpu_sdpa_flop
    for op in [getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)]
    if op is not None
}


class _SDPAMacs(TorchFunctionMode):
    """Counts the MACs of every F.scaled_dot_product_attention call (QK^T plus AV)."""

    def __init__(self):
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            batch = q.shape[:-2].numel()
            self.macs += batch * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
        return func(*args, **kwargs)


def count(model: nn.Module, inputs: tuple) -> tuple[int, dict[str, int], dict[str, int]]:
    """One forward pass, counted twice: (FlopCounterMode FLOPs, their split by aten op, analytic MACs by kind).

    FLOPs are 2 per MAC. The analytic count is conv = N*Hout*Wout*Cout*(Cin/groups)*kh*kw per nn.Conv2d,
    linear = rows*in*out per nn.Linear, attention = QK^T + AV per scaled_dot_product_attention call.
    """
    analytic = {"conv": 0, "depthwise/grouped conv": 0, "linear": 0, "attention": 0}

    def conv_hook(module: nn.Conv2d, args, output):
        n, c_out, h, w = output.shape
        macs = n * h * w * c_out * (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
        analytic["depthwise/grouped conv" if module.groups > 1 else "conv"] += macs

    def linear_hook(module: nn.Linear, args, output):
        analytic["linear"] += output.numel() // module.out_features * module.in_features * module.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    sdpa = _SDPAMacs()
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS)
    try:
        with torch.inference_mode(), sdpa, counter:
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    analytic["attention"] = sdpa.macs
    analytic["total"] = sum(analytic.values())
    by_op = {str(op).replace("aten.", ""): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return int(counter.get_total_flops()), by_op, analytic


def count_flops(model: nn.Module, inputs: tuple) -> tuple[int, dict[str, int]]:
    """FLOPs (2 per MAC) of one forward pass on `inputs`, and their split by aten op."""
    flops, by_op, _ = count(model, inputs)
    return flops, by_op


def analytic_macs(model: nn.Module, inputs: tuple) -> dict[str, int]:
    """MACs of one forward pass from module shapes, by kind, with a "total"."""
    return count(model, inputs)[2]


# ------------------------------------------------------------------------------------------------ machine

def cpu_description() -> dict:
    info = {"model": platform.processor() or platform.machine(), "flags": set(), "family": None, "cpu_model": None}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name" and info.get("_seen_name") is None:
                    info["model"], info["_seen_name"] = value, True
                elif key == "cpu family" and info["family"] is None:
                    info["family"] = value
                elif key == "model" and info["cpu_model"] is None:
                    info["cpu_model"] = value
                elif key == "flags" and not info["flags"]:
                    info["flags"] = set(value.split())
    except OSError:
        pass
    info.pop("_seen_name", None)
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile") if f in info["flags"]]
    info["isa"] = isa
    return info


def machine_line(num_threads: int) -> str:
    cpu = cpu_description()
    fam = f" (family {cpu['family']} model {cpu['cpu_model']})" if cpu["family"] else ""
    bf16_native = any(f in cpu["flags"] for f in ("avx512_bf16", "amx_bf16"))
    try:
        import diffusers
        diffusers_version = diffusers.__version__
    except Exception:  # pragma: no cover
        diffusers_version = "?"
    try:
        onednn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover
        onednn_bf16 = "?"
    return (
        f"{cpu['model']}{fam}; ISA flags: {', '.join(cpu['isa']) or 'none found'}"
        f" ({'native bf16 dot products' if bf16_native else 'no native bf16 instructions'};"
        f" oneDNN bf16 supported: {onednn_bf16});"
        f" torch capability {torch.backends.cpu.get_cpu_capability()}; {os.cpu_count()} logical CPUs,"
        f" torch.get_num_threads() = {num_threads}; torch {torch.__version__}, diffusers {diffusers_version},"
        f" Python {platform.python_version()}"
    )


def measure_matmul_peak(precision: str, max_pass_s: float = 1.5) -> float:
    """Best GFLOP/s of `F.linear(a, b)` (a @ b.T, what nn.Linear runs) on n x n matrices, n = 512, 1024, 2048
    (the next size only while a pass stays under max_pass_s); bf16 through autocast, as the models run."""
    best = 0.0
    with torch.inference_mode(), autocast_context(precision):
        for n in (512, 1024, 2048):
            a, b = torch.randn(n, n), torch.randn(n, n)
            F.linear(a, b)
            fastest, reps, start = float("inf"), 0, time.perf_counter()
            while reps < 3 or time.perf_counter() - start < 0.5:  # best of >= 3 passes and >= 0.5 s
                t0 = time.perf_counter()
                F.linear(a, b)
                fastest = min(fastest, time.perf_counter() - t0)
                reps += 1
            best = max(best, 2 * n ** 3 / fastest / 1e9)
            if fastest * 8 > max_pass_s:
                break
    return best


class CpuMeter:
    """CPU time used by *other* processes while a block runs: /proc/stat busy time minus this process's CPU time.

    `others_cores` is their average number of busy cores over the block's wall time (0 on an idle machine;
    steal time counts as busy, since the hypervisor took the core from us). None where /proc/stat is missing.
    """

    def __enter__(self):
        self.busy0, self.own0, self.wall0 = self._busy(), self._own(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall0
        busy1 = self._busy()
        self.others_cores = None
        if busy1 is not None and self.busy0 is not None and self.wall > 0:
            self.others_cores = max(0.0, (busy1 - self.busy0) - (self._own() - self.own0)) / self.wall
        return False

    @staticmethod
    def _busy():
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait

    @staticmethod
    def _own():
        t = os.times()
        return t.user + t.system


@dataclass
class Timing:
    """Seconds of each timed call of one thing, and the cores other processes used during each."""

    seconds: list = field(default_factory=list)
    others: list = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def others_cores(self) -> float | None:
        return mean_of_known(self.others)


def mean_of_known(values) -> float | None:
    """The mean of the values that are not None (None if there are none): cores other processes used."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def elapsed(call, device: str = "cpu") -> float:
    """Seconds one call takes: the wall clock on the CPU; on a GPU, CUDA events recorded around it after a
    synchronisation (a kernel launch returns before the kernel has run, so a wall clock alone times launches)."""
    if device == "cpu":
        tick = time.perf_counter()
        call()
        return time.perf_counter() - tick
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    call()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000.0


def round_robin(calls: dict, rounds: int, repeats: int = 1, warmup: int = 0, device: str = "cpu") -> dict:
    """{key: Timing} of every `calls[key]()`: each round times each key once (`repeats` calls, averaged), in
    turn, so load from other processes falls on all keys alike rather than on whichever ran during a burst.
    First each key gets `warmup` untimed calls, key after key. `device`: what `elapsed` times on."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    timings = {key: Timing() for key in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            with CpuMeter() as meter:
                seconds = sum(elapsed(call, device) for _ in range(repeats)) / repeats
            timings[key].seconds.append(seconds)
            timings[key].others.append(meter.others_cores)
    return timings


def time_call(call, iters: int, warmup: int = 0, device: str = "cpu") -> Timing:
    """`round_robin` of one call: `warmup` untimed calls, then `iters` timed ones."""
    return round_robin({None: call}, iters, warmup=warmup, device=device)[None]


def add_report_options(parser, output) -> None:
    """The options of a benchmark that appends its section to a markdown file (docs/benchmarks.md)."""
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to --output")
    parser.add_argument("--output", type=Path, default=output, help=f"markdown file to append to (default: {output})")
    parser.add_argument("--title", default=None, help="heading for the appended section")


def append_section(section: str, path) -> None:
    """Append a benchmark's markdown section to `path` (docs/benchmarks.md); other sections are never rewritten."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("\n" + section)


def autocast_context(precision: str, device: str = "cpu"):
    """No autocast for fp32; bf16 (any device) or fp16 (a GPU) autocast otherwise."""
    if precision == "fp32":
        return nullcontext()
    if precision == "bf16" or (precision == "fp16" and device != "cpu"):
        return torch.autocast(device, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    raise ValueError(f"Unknown precision {precision!r} on {device}: use one of {', '.join(PRECISIONS)} "
                     "(fp16 on a GPU).")
