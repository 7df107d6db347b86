"""Quality per compute: DiC, DiCo and diffusers' UNet2DModel / DiT, each trained on the MNIST digits for the
same CPU wall-clock budget with the same recipe, then scored with the project's one MNIST FID protocol.

For every model (registry names, all about 1.7M parameters) this

1. trains with `convdiff.training.train` on the main job's recipe (configs/dic-mnist-tiny.yaml: its objective,
   optimiser, schedule and EMA) with `max_train_seconds` = the budget, so it stops at whatever step the clock
   allows. What must be the same for all four is forced: `learn_sigma=False` (UNet2DModel cannot learn sigma)
   and no label dropout (UNet2DModel has no null class; samples are drawn at guidance 1, which never uses it).
   Every model sees the very same batches, noise and timesteps (same seed); `--seeds 0 1 2` repeats it all;
2. reads the steps reached, the train loss and the img/s back from the run's TensorBoard log;
3. computes the objective's loss of the EMA weights on fixed held-out (digit, noise, timestep) triples, a
   less noisy loss figure than the last training batches;
4. scores the saved pipeline with `convdiff.apps.mnist_demo.mnist_scores` (balanced labels, the recipe's
   sampler, FID against the held-out digits and the independent classifier's class accuracy).

Run models one after another in one process with one thread (OMP_NUM_THREADS=1), so they share conditions.
The table, the verdict on the target (DiC and DiCo below both baselines' FID) and the command, machine and
date are printed and appended to docs/benchmarks.md (`--no-write` to skip).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import inspect
import os
import re
import shlex
import sys
import time
from pathlib import Path

import torch

from .instruments import append_section

DEFAULT_MODELS = ["dic-mnist", "dico-mnist", "unet-mnist", "dit-mnist"]
OURS = ("DiC", "DiCo")
DOC_PATH = Path("docs/benchmarks.md")
DEFAULT_RECIPE = Path(__file__).resolve().parents[3] / "configs" / "dic-mnist-tiny.yaml"
LAST_STEPS_FOR_LOSS = 20  # "final loss" = mean training loss over the last 20 optimizer steps
HELDOUT_LOSS_SAMPLES = 500


@dataclasses.dataclass
class Run:
    name: str
    family: str
    params: int
    label_dropout: float
    learn_sigma: bool
    steps: int = 0
    batch_size: int = 64
    train_seconds: float = float("nan")  # sum of the logged step intervals (the loop's own clock)
    final_loss: float = float("nan")
    heldout_loss: float = float("nan")
    fid: float = float("nan")
    accuracy: float = float("nan")
    seed: int = 0
    protocol: str = ""
    fid_seconds: float = float("nan")

    @property
    def images(self) -> int:
        return self.steps * self.batch_size

    @property
    def images_per_second(self) -> float:
        return self.images / self.train_seconds if self.train_seconds > 0 else float("nan")


# ------------------------------------------------------------------------------------------------ models

def family(name: str) -> str:
    from ...registry import model_spec

    cls, _ = model_spec(name)
    return {"DiCModel": "DiC", "DiCoModel": "DiCo", "UNet2DModel": "diffusers UNet2DModel",
            "DiTTransformer2DModel": "diffusers DiT"}.get(cls.__name__, cls.__name__)


def recipe_model_overrides(name: str) -> dict:
    """What the benchmark forces to be equal for every model: no learned sigma, no label dropout."""
    from ...registry import model_spec

    cls, _ = model_spec(name)
    params = inspect.signature(cls.__init__).parameters
    overrides = {}
    if "learn_sigma" in params:
        overrides["learn_sigma"] = False
    if "class_dropout_prob" in params:
        overrides["class_dropout_prob"] = 0.0
    return overrides


def build_config(name: str, args, output_root: Path, seed: int = 0):
    from ...training.config import load_config

    config = load_config(args.recipe)
    return dataclasses.replace(
        config, model=name, model_overrides=recipe_model_overrides(name), data="mnist",
        resolution=None, train_batch_size=args.batch_size, max_train_steps=10**7, max_train_seconds=args.budget,
        mixed_precision="no", seed=seed, output_dir=str(output_root / f"{name}-seed{seed}"), checkpointing_steps=0,
        resume_from_checkpoint=None, logging_steps=1, report_to="tensorboard", sample_steps=0,
        sample_final_grid=False, sample_guidance_scale=1.0,
        overwrite=True,  # the benchmark's own folders: a rerun replaces them
        label_dropout=0.0,  # UNet2DModel has no null class, so nobody drops labels (diffusers' DiT would by default)
    )


def describe_model(config) -> Run:
    """Parameters, label dropout and learned sigma of the model exactly as the training loop builds it."""
    from ...registry import create_model
    from ...training.labels import disable_internal_label_dropout, null_class_and_dropout
    from ...training.denoise_task import model_overrides_for

    model = create_model(config.model, **model_overrides_for(config))
    _, _, dropout = null_class_and_dropout(model)  # as the loop does: the model's own, unless the recipe sets one
    disable_internal_label_dropout(model)
    if config.label_dropout is not None:
        dropout = config.label_dropout
    learn_sigma = (model.config.get("out_channels") or model.config.in_channels) == 2 * model.config.in_channels
    return Run(config.model, family(config.model), sum(p.numel() for p in model.parameters()), float(dropout),
               learn_sigma, batch_size=config.train_batch_size, seed=config.seed)


# ------------------------------------------------------------------------------------------------ measuring

def read_training_log(output_dir: Path) -> dict:
    """Steps, per-step losses and img/s from the run's TensorBoard events (the loop logs every step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(Path(output_dir, "logs").rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"No TensorBoard events under {output_dir}/logs: was report_to='tensorboard'?")
    events = EventAccumulator(str(files[-1].parent), size_guidance={"scalars": 0})
    events.Reload()
    losses = events.Scalars("loss")
    speeds = events.Scalars("img_per_s")
    return {"steps": [e.step for e in losses], "loss": [e.value for e in losses], "img_per_s": [e.value for e in speeds]}


def summarize_log(log: dict, batch_size: int, last: int = LAST_STEPS_FOR_LOSS) -> dict:
    """steps reached, mean loss of the last `last` steps, and the summed step time (batch / logged img/s)."""
    steps = max(log["steps"]) if log["steps"] else 0
    tail = log["loss"][-last:]
    seconds = sum(batch_size / v for v in log["img_per_s"] if v > 0)
    return {"steps": steps, "final_loss": sum(tail) / len(tail) if tail else float("nan"), "train_seconds": seconds}


@torch.no_grad()
def heldout_loss(model, n: int = HELDOUT_LOSS_SAMPLES, seed: int = 1234, batch: int = 100, objective_name="epsilon",
                 timestep_sampling: str = "uniform") -> float:
    """The objective's loss on the first n held-out digits with noise and timesteps fixed by `seed` (same for all
    models)."""
    from ...data.mnist import MNISTDigits
    from ...training.labels import conditioning_kwargs
    from ...training.objectives import make_objective

    data = MNISTDigits("heldout")
    x0, labels = data.images[:n], data.labels[:n]
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=g)
    objective = make_objective(objective_name, learned_sigma=False, pixel_space=True,
                               timestep_sampling=timestep_sampling)
    t = objective.sample_timesteps(len(x0), g)
    model.eval()
    total = 0.0
    for s in range(0, len(x0), batch):
        sl = slice(s, s + batch)
        x_t, model_t = objective.noisy_input(x0[sl], noise[sl], t[sl])
        cond = conditioning_kwargs(model, labels[sl], torch.zeros(len(x_t), dtype=torch.bool))
        out = model(x_t, model_t, **cond).sample
        out = out[:, : x0.shape[1]]  # a learned-sigma model's variance half plays no part in the MSE
        total += objective.loss(out, x0[sl], noise[sl], x_t, t[sl]).sum().item()
    return total / len(x0)


def run_one(name: str, args, output_root: Path, log=print, seed: int = 0) -> Run:
    from ..mnist_demo import mnist_scores
    from ...pipelines import ClassConditionalPipeline
    from ...training.loop import train

    config = build_config(name, args, output_root, seed)
    run = describe_model(config)
    log(f"== {name} ({run.family}, {run.params / 1e6:.3f}M params), seed {seed}: training for {args.budget:.0f} s")
    pipeline_dir = train(config)
    summary = summarize_log(read_training_log(Path(config.output_dir)), config.train_batch_size)
    run.steps, run.final_loss, run.train_seconds = summary["steps"], summary["final_loss"], summary["train_seconds"]
    pipe = ClassConditionalPipeline.from_pretrained(pipeline_dir)
    run.heldout_loss = heldout_loss(pipe.transformer, objective_name=config.objective,
                                    timestep_sampling=config.timestep_sampling)
    start = time.perf_counter()
    scores = mnist_scores(pipe, args.fid_samples, args.fid_steps or config.sample_num_inference_steps,
                          args.scheduler or config.sample_scheduler, progress=args.progress)
    run.fid_seconds = time.perf_counter() - start
    run.fid, run.accuracy, run.protocol = float(scores.fid.fid), scores.accuracy, scores.protocol
    log(f"   {run.steps} steps, {run.images} images, {run.images_per_second:.1f} img/s, loss {run.final_loss:.4f}, "
        f"held-out {run.heldout_loss:.4f}, FID {run.fid:.2f}, accuracy {run.accuracy:.1%} ({run.fid_seconds:.0f} s)")
    return run


# ------------------------------------------------------------------------------------------------ report

def _num(x: float, digits: int) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


def format_table(runs: list[Run]) -> str:
    header = ("| model | registry name | seed | params | steps | images seen | train img/s | final train loss "
              f"(last {LAST_STEPS_FOR_LOSS} steps) | held-out loss (EMA) | FID | class accuracy |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in runs:
        lines.append(f"| {r.family} | {r.name} | {r.seed} | {r.params / 1e6:.3f}M | {r.steps} | {r.images:,} | "
                     f"{_num(r.images_per_second, 1)} | {_num(r.final_loss, 4)} | {_num(r.heldout_loss, 4)} | "
                     f"{_num(r.fid, 2)} | {_num(100 * r.accuracy, 1)}% |")
    return "\n".join(lines)


def by_model(runs: list[Run]) -> dict:
    """registry name -> its runs (one per seed), in first-seen order."""
    groups = {}
    for r in runs:
        groups.setdefault(r.name, []).append(r)
    return groups


def _mean_sd(values) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "n/a"
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {sd:.2f}"


def format_seed_summary(runs: list[Run]) -> str:
    """Mean ± sample standard deviation over seeds, per model."""
    header = "| model | seeds | steps | train img/s | FID | class accuracy (%) |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, group in by_model(runs).items():
        lines.append(f"| {group[0].family} ({name}) | {len(group)} | {_mean_sd([r.steps for r in group])} | "
                     f"{_mean_sd([r.images_per_second for r in group])} | {_mean_sd([r.fid for r in group])} | "
                     f"{_mean_sd([100 * r.accuracy for r in group])} |")
    return "\n".join(lines)


def verdict(runs: list[Run]) -> tuple[bool | None, str]:
    """Is the FID of every DiC/DiCo run below that of every baseline? (None when a side is missing.)"""
    runs = [dataclasses.replace(group[0], fid=sum(r.fid for r in group) / len(group))  # mean over seeds
            for group in by_model(runs).values()]
    ours = [r for r in runs if r.family in OURS]
    baselines = [r for r in runs if r.family not in OURS]
    if not ours or not baselines:
        return None, "Target not checked: the run needs at least one of DiC/DiCo and one diffusers baseline."
    best_baseline = min(baselines, key=lambda r: r.fid)
    lines = []
    for r in ours:
        gap = best_baseline.fid - r.fid
        if gap > 0:
            lines.append(f"{r.family} beats the best baseline ({best_baseline.family}, FID {best_baseline.fid:.2f}) by "
                         f"{gap:.2f} FID ({gap / best_baseline.fid:.0%}).")
        else:
            lines.append(f"{r.family} misses: FID {r.fid:.2f} is {-gap:.2f} ({-gap / best_baseline.fid:.0%}) above the "
                         f"best baseline ({best_baseline.family}, FID {best_baseline.fid:.2f}).")
    met = all(r.fid < best_baseline.fid for r in ours)
    head = "**Target met**" if met else "**Target not met**"
    return met, f"{head} (DiC and DiCo reach a lower FID than both diffusers baselines in equal time): " + " ".join(lines)


def machine_text(threads: int) -> str:
    from .instruments import machine_line

    omp = os.environ.get("OMP_NUM_THREADS", "unset")
    return f"{machine_line(threads)}; OMP_NUM_THREADS={omp}"


def recipe_text(config) -> str:
    """The shared optimisation recipe, as the runs used it."""
    clip = f", grad-norm clip {config.max_grad_norm:g}" if config.max_grad_norm else ""
    ema = (f", EMA {config.ema_decay:g}{' with warmup' if config.ema_warmup else ''}" if config.use_ema else ", no EMA")
    return (f"batch {config.train_batch_size}, AdamW lr {config.learning_rate:g} ({config.lr_scheduler}, "
            f"{config.lr_warmup_steps} warmup steps){clip}{ema}, {config.objective} objective, "
            f"{'fp32' if config.mixed_precision == 'no' else config.mixed_precision}")


def format_section(runs: list[Run], args, command: str, machine: str, date: str, recipe: str = "") -> str:
    _, verdict_text = verdict(runs)
    dropouts = {r.label_dropout for r in runs}
    sigmas = {r.learn_sigma for r in runs}
    warn = ""
    if len(dropouts) > 1 or len(sigmas) > 1:
        warn = (f"\n**Warning: the recipe differs between models** (label dropout {sorted(dropouts)}, learned sigma "
                f"{sorted(sigmas)}).\n")
    # the first run computes the reference statistics, later ones say "(cached ...)": one protocol all the same
    protocols = sorted({re.sub(r" \(cached [^)]*\)", "", r.protocol) for r in runs if r.protocol})
    fid_times = ", ".join(f"{r.family} {r.fid_seconds:.0f} s" for r in runs)
    recipe = f"{Path(args.recipe).name}: {recipe}" if recipe else Path(args.recipe).name
    return f"""## Training: quality per CPU-second on MNIST ({date})

Each model trained for the same wall-clock budget of **{args.budget:.0f} s** on {args.threads} CPU thread{'s' if args.threads > 1 else ''}, one after another
in one process, with the same recipe ({recipe}), forced equal where the models differ: `learn_sigma=False` for all (UNet2DModel has no
variance output) and label dropout {sorted(dropouts)} for all (UNet2DModel has no null class; FID samples at
guidance 1, which never uses it). For each seed every model sees the same batches, noise and timesteps; it
stops at whatever step the clock allows. Steps, the train loss (mean over the last {LAST_STEPS_FOR_LOSS} steps)
and img/s (images / summed step time) come from the run's TensorBoard log; the held-out loss is the EMA weights'
loss under the recipe's objective on the first {HELDOUT_LOSS_SAMPLES} held-out digits with fixed noise and timesteps.
FID and class accuracy: `convdiff.apps.mnist_demo.mnist_scores` on the saved pipeline (EMA weights), {args.fid_samples} samples
with balanced labels vs {args.fid_samples} held-out digits, and the share the independent digit classifier reads as asked.
{warn}
{format_seed_summary(runs)}

Per run:

{format_table(runs)}

{verdict_text}

- FID protocol: {"; ".join(f"`{p}`" for p in protocols) or "n/a"}
- FID wall time per model: {fid_times}
- Command: `{command}`
- Machine: {machine}
- Date: {date}
"""


# ------------------------------------------------------------------------------------------------ CLI

def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="benchmark_training.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="registry names, run in this order")
    parser.add_argument("--budget", type=float, default=300.0, help="training wall-clock seconds per model")
    parser.add_argument("--fid-samples", type=int, default=500)
    parser.add_argument("--fid-steps", type=int, default=None, help="sampler steps (default: the recipe's)")
    parser.add_argument("--scheduler", default=None, help="sampler (default: the recipe's sample_scheduler)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="repeat every model with each seed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (also set OMP_NUM_THREADS to match)")
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE))
    parser.add_argument("--output-dir", default="outputs/bench-training")
    parser.add_argument("--doc", default=str(DOC_PATH))
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to docs/benchmarks.md")
    parser.add_argument("--progress", action="store_true", help="show the sampling/FID progress bars")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if os.environ.get("OMP_NUM_THREADS") != str(args.threads):
        print(f"warning: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} but --threads {args.threads}; "
              f"run with OMP_NUM_THREADS={args.threads} for a clean measurement.", file=sys.stderr)
    from ...registry import model_spec

    for name in args.models:
        model_spec(name)  # unknown names fail before any training
    command = "OMP_NUM_THREADS={} python scripts/benchmark_training.py {}".format(
        os.environ.get("OMP_NUM_THREADS", "unset"), " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])))
    date = _dt.date.today().isoformat()
    output_root = Path(args.output_dir)
    started = time.perf_counter()
    runs = [run_one(name, args, output_root, seed=seed) for seed in args.seeds for name in args.models]
    recipe = recipe_text(build_config(args.models[0], args, output_root))
    section = format_section(runs, args, command.strip(), machine_text(args.threads), date, recipe)
    print("\n" + section)
    print(f"total wall time: {time.perf_counter() - started:.0f} s")
    if not args.no_write:
        append_section(section, args.doc)
        print(f"appended to {args.doc}")
    return 0
