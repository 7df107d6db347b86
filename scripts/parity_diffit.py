"""Output parity of convdiff's DiffiTModel with the official DiffiT code, through the checkpoint converter.

The official model file cannot ship here (NVIDIA Source Code License-NC): pass its path. It imports timm
(`trunc_normal_`, `Mlp`, `PatchEmbed`; the release pins timm 0.9.16), so run with timm importable:

    PYTHONPATH=<dir with timm> python scripts/parity_diffit.py --official /path/to/DiffiT/diffit/diffit.py \
        --sizes tiny s b xl

For each size: build the official model, overwrite every parameter with random values (fan-in scaled, so the
zero-initialised head does not hide anything), save its state dict as safetensors (the `diffit_256.safetensors`
layout), convert that file with `convdiff.convert.convert_official_checkpoint`, run both in eval mode on the
same inputs, print max |diff| (float32, and float64 with --fp64) as a markdown table.
"""

import argparse
import importlib.util
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convdiff.convert import convert_official_checkpoint  # noqa: E402
from convdiff.registry import model_spec  # noqa: E402

SIZES = {  # registry name -> official constructor arguments (the released factory is depth 28 / 1152 / 16)
    "tiny": ("diffit-tiny", dict(input_size=16, depth=2, hidden_size=32, num_heads=2, num_classes=10)),
    "s": ("diffit-s", dict(depth=12, hidden_size=384, num_heads=6)),
    "b": ("diffit-b", dict(depth=12, hidden_size=768, num_heads=12)),
    "xl": ("diffit-xl", dict(depth=28, hidden_size=1152, num_heads=16)),
}


def load_official(path: str):
    spec = importlib.util.spec_from_file_location("diffit_official", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def randomize_fan_in(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name == "pos_embed":
            continue  # fixed sin-cos in both codes
        std = 1 / math.sqrt(p[0].numel()) if p.dim() >= 2 and "embedding_table" not in name else 0.05
        p.copy_(torch.randn(p.shape, generator=generator) * std)


def compare(official_module, size: str, fp64: bool, seed: int = 7):
    from safetensors.torch import save_file

    name, args = SIZES[size]
    official = official_module.DiffiT(patch_size=2, **args).eval()
    randomize_fan_in(official, seed)
    params = sum(p.numel() for p in official.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "diffit.safetensors")
        save_file({k: v.contiguous() for k, v in official.state_dict().items()}, path)
        ours = convert_official_checkpoint(path, name, **({"sample_size": args["input_size"]}
                                                          if "input_size" in args else {}))
    ours_params = sum(p.numel() for p in ours.parameters())
    g = torch.Generator().manual_seed(seed)
    sample = model_spec(name)[1].get("sample_size", args.get("input_size", 32))
    x = torch.randn(2, 4, sample, sample, generator=g)
    t = torch.randint(0, 1000, (2,), generator=g)
    num_classes = args.get("num_classes", 1000)
    y = torch.tensor([3, num_classes])  # a class and the null (CFG) class
    start = time.perf_counter()
    ref = official(x, t, y)
    out = ours(x, t, y).sample
    row = dict(model=name, params_official=params, params_ours=ours_params,
               diff32=(ref - out).abs().max().item(), std=ref.std().item(), seconds=time.perf_counter() - start)
    if fp64:
        official.double()
        ours.double()
        # the official sinusoid is hard-coded float32: cast it to the MLP dtype, as ours does
        te = official.t_embedder
        te.forward = lambda t: te.mlp(te.timestep_embedding(t, te.frequency_embedding_size).double())
        row["diff64"] = (official(x.double(), t, y) - ours(x.double(), t, y).sample).abs().max().item()
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, help="path to the official diffit/diffit.py")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "s"], choices=sorted(SIZES))
    parser.add_argument("--fp64", action="store_true", help="also compare in float64")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    module = load_official(args.official)
    print("| model | params official | params ours | max \\|diff\\| fp32 | output std | max \\|diff\\| fp64 |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        r = compare(module, size, args.fp64)
        diff64 = f"{r['diff64']:.1e}" if "diff64" in r else "-"
        print(f"| {r['model']} | {r['params_official']:,} | {r['params_ours']:,} | {r['diff32']:.1e} | "
              f"{r['std']:.3f} | {diff64} |", flush=True)


if __name__ == "__main__":
    main()
