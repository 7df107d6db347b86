"""Cost per step of the layered U-Net against a single-resolution U-Net of the same top resolution.

Compared at MNIST size (1x32x32, widths 32/64/64, 10 classes):
- layered: `layered-unet-mnist`, heads at 32/16/8 (isolated downsampling), class-conditional, and with text
  (cross-attention to 32 tokens of width 32);
- single: the same network with only the top head (num_scales=1: a plain U-Net, downsampling not isolated);
- diffusers' UNet2DModel of the same widths, depth and attention placement (the usual DDPM U-Net).
For each: parameters, counted forward FLOPs per image (`count_flops` of instruments.py: matmuls, convs and
attention), and median CPU latency of a training step (forward + backward of the loss, batch --batch) and
a sampling step (one inference forward, batch --batch). A larger 128 px / 4-scale configuration is counted
(FLOPs only) to show how the per-scale heads scale. Prints a markdown table; --write appends it to
docs/benchmarks.md with the command, machine and date.

    OMP_NUM_THREADS=1 python scripts/benchmark_layered.py --write
"""

import argparse
import datetime
import shlex
import sys
from pathlib import Path

import torch
from diffusers import UNet2DModel

from ...registry import create_model
from .instruments import count_flops, machine_line, time_call

DOC = Path("docs/benchmarks.md")


def unet2d_like(sample_size, widths, attention_levels, in_channels=1, num_classes=10, groups=8, layers_per_block=1,
                head_dim=32):
    down = ["AttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels]
    up = ["AttnUpBlock2D" if a else "UpBlock2D" for a in attention_levels][::-1]
    return UNet2DModel(sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
                       block_out_channels=widths, layers_per_block=layers_per_block, down_block_types=down,
                       up_block_types=up, norm_num_groups=groups, attention_head_dim=head_dim, num_class_embeds=num_classes)


def cases(batch: int, text_tokens: int):
    """(name, model, make_inputs(batch) -> args, loss(output) -> scalar) for the MNIST-size comparison."""
    g = torch.Generator().manual_seed(0)

    def layered_inputs(model, text):
        def make(n):
            xs = [torch.randn(n, 1, s, s, generator=g) for s in model.scale_sizes]
            t, y = torch.rand(n, generator=g) * 1000, torch.randint(0, 10, (n,), generator=g)
            ctx = torch.randn(n, text_tokens, 32, generator=g) if text else None
            return (xs if len(xs) > 1 else xs[0], t, ctx, y)
        return make

    layered = create_model("layered-unet-mnist")
    layered_text = create_model("layered-unet-mnist", cross_attention_dim=32)
    single = create_model("layered-unet-mnist", num_scales=1)
    unet2d = unet2d_like(32, [32, 64, 64], [False, False, True])

    def unet2d_inputs(n):
        return (torch.randn(n, 1, 32, 32, generator=g), torch.rand(n, generator=g) * 1000,
                torch.randint(0, 10, (n,), generator=g))

    def scales_loss(out):
        return sum(o.square().mean() for o in out.scales)

    return [
        ("layered U-Net, 3 scales (32/16/8), class", layered, layered_inputs(layered, False), scales_loss),
        (f"layered U-Net, 3 scales, class + text ({text_tokens} tokens)", layered_text,
         layered_inputs(layered_text, True), scales_loss),
        ("same network, top head only (single 32 px)", single, layered_inputs(single, False), scales_loss),
        ("diffusers UNet2DModel, same widths (single 32 px)", unet2d,
         lambda n: unet2d_inputs(n), lambda out: out.sample.square().mean()),
    ]


def measure(name, model, make_inputs, loss_fn, batch, warmup, iters):
    params = sum(p.numel() for p in model.parameters())
    flops, _ = count_flops(model.eval(), make_inputs(1))
    inputs = make_inputs(batch)
    model.train()

    def train_step():
        model.zero_grad(set_to_none=True)
        loss_fn(model(*inputs)).backward()

    def sample_step():
        with torch.inference_mode():
            model(*inputs)

    train = time_call(train_step, iters, warmup)
    model.eval()
    sample = time_call(sample_step, iters, warmup)
    loads = [x for x in (train.others_cores, sample.others_cores) if x is not None]
    return dict(name=name, params=params, mflops=flops / 1e6, train_ms=train.median * 1e3,
                sample_ms=sample.median * 1e3, others=max(loads) if loads else None)


def large_rows():
    """FLOPs at 128 px (widths 64/128/256/256, attention at 32 and 16): 4 scales vs the top head only."""
    rows = []
    base = dict(sample_size=128, in_channels=3, block_out_channels=[64, 128, 256, 256], layers_per_block=2,
                attention_resolutions=[32, 16], attention_head_dim=64, norm_num_groups=32, num_classes=10)
    for name, scales in (("layered U-Net, 4 scales (128/64/32/16)", 4), ("same network, top head only", 1)):
        model = create_model("layered-unet-mnist", **base, num_scales=scales).eval()
        xs = [torch.randn(1, 3, s, s) for s in model.scale_sizes]
        flops, _ = count_flops(model, (xs if scales > 1 else xs[0], torch.tensor([500.0]), None, torch.tensor([1])))
        rows.append((name, sum(p.numel() for p in model.parameters()), flops / 1e9))
    unet = unet2d_like(128, [64, 128, 256, 256], [False, False, True, True], in_channels=3, groups=32,
                       layers_per_block=2, head_dim=64)
    flops, _ = count_flops(unet.eval(), (torch.randn(1, 3, 128, 128), torch.tensor([500.0]), torch.tensor([1])))
    rows.append(("diffusers UNet2DModel, same widths", sum(p.numel() for p in unet.parameters()), flops / 1e9))
    return rows


def render(results, large, args, command):
    lines = [
        f"| model (MNIST size, 1x32x32) | params | fwd MFLOP / image | train step ms (batch {args.batch}) "
        f"| sampling step ms (batch {args.batch}) | vs single: FLOPs / train / sample |",
        "|---|---:|---:|---:|---:|---|",
    ]
    single = next(r for r in results if r["name"].startswith("same network"))
    for r in results:
        ratio = (f"{r['mflops'] / single['mflops']:.2f}x / {r['train_ms'] / single['train_ms']:.2f}x / "
                 f"{r['sample_ms'] / single['sample_ms']:.2f}x")
        lines.append(f"| {r['name']} | {r['params'] / 1e6:.3f}M | {r['mflops']:.1f} | {r['train_ms']:.0f} | "
                     f"{r['sample_ms']:.0f} | {ratio} |")
    if large:
        lines += ["", "| model (128 px, 3 channels, widths 64/128/256/256) | params | fwd GFLOP / image | vs single |",
                  "|---|---:|---:|---:|"]
        top = next(g for n, _, g in large if n.startswith("same network"))
        lines += [f"| {n} | {p / 1e6:.2f}M | {g:.2f} | {g / top:.2f}x |" for n, p, g in large]
    loads = [r["others"] for r in results if r["others"] is not None]
    lines += ["", f"Other processes kept {max(loads):.2f} cores busy on average during the timed passes "
              "(the machine is shared; latency is the median of the passes)." if loads else ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--text-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-large", action="store_true", help="skip the 128 px FLOP count")
    parser.add_argument("--write", action="store_true", help=f"append the results to {DOC}")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    command = "OMP_NUM_THREADS=1 python scripts/benchmark_layered.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    results = []
    for name, model, make_inputs, loss_fn in cases(args.batch, args.text_tokens):
        results.append(measure(name, model, make_inputs, loss_fn, args.batch, args.warmup, args.iters))
        print(f"measured {name}", file=sys.stderr)
    large = [] if args.no_large else large_rows()
    table = render(results, large, args, command)
    print(table)
    if args.write:
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        section = (f"\n## Layered U-Net: cost per step vs a single-resolution U-Net ({date})\n\n"
                   f"Command: `{command.strip()}`  \nMachine: {machine_line(torch.get_num_threads())}; no GPU.\n\n"
                   f"{table}\n")
        with DOC.open("a") as f:
            f.write(section)
    return 0
