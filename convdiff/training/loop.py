"""One accelerate training loop for every registered backbone (`accelerate launch scripts/train.py`).

Flat on purpose: build data and model, check they fit, then for each optimizer step run the micro steps
(gradient accumulation), update EMA, log, checkpoint atomically, and draw sample grids. The last act saves
the whole pipeline with the EMA weights. All randomness comes from (seed, step) (see batches.py), so a run
resumed from a checkpoint continues exactly as if it had never stopped.
"""

import contextlib
import dataclasses
import inspect
import logging
import shutil
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, broadcast
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..registry import create_model, model_spec
from .batches import StreamBatchSampler, step_generator
from .checkpoints import read_step, resolve_resume, save_checkpoint
from .config import TrainConfig, save_config
from .data import build_dataset
from .labels import conditioning_kwargs, disable_internal_label_dropout, null_class_and_dropout
from .objectives import make_objective
from .samples import build_pipeline, save_sample_grid

logger = logging.getLogger("convdiff.train")


def check_model_fits_data(model, dataset, config: TrainConfig):
    """Fail before any training step when the model cannot take the data."""
    shape = dataset.sample_shape
    channels = model.config.in_channels
    if shape[0] != channels:
        raise ValueError(
            f"Model {config.model!r} takes {channels}-channel input but data {config.data!r} gives {shape[0]} channels "
            f"of size {shape[1]}x{shape[2]}: set model_overrides.in_channels={shape[0]}."
        )
    num_classes, _, _ = null_class_and_dropout(model)
    data_classes = getattr(dataset, "num_classes", 0)
    if num_classes and data_classes > num_classes:
        raise ValueError(f"The data has {data_classes} classes but the model only {num_classes}: "
                         f"set model_overrides.num_classes={data_classes}.")
    probe = torch.zeros(1, *shape)
    labels = torch.zeros(1, dtype=torch.long) if num_classes else None
    try:
        with torch.no_grad():
            model.eval()(probe, torch.zeros(1, dtype=torch.long), class_labels=labels)
    except (ValueError, RuntimeError) as error:
        raise ValueError(f"Model {config.model!r} does not fit data samples of shape {shape}: {error}") from error
    finally:
        model.train()


def _setup_logging(main_process: bool) -> None:
    """Our own handler: basicConfig is a no-op once an imported library has configured the root logger."""
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if main_process else logging.WARNING)
    logging.getLogger("accelerate").setLevel(logging.INFO if main_process else logging.WARNING)


def has_accelerator() -> bool:
    """True when torch sees a GPU-like device; without one accelerate only forms a process group if told cpu=True."""
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or torch.backends.mps.is_available() or bool(xpu and xpu.is_available())


def model_overrides_for(config: TrainConfig) -> dict:
    """The recipe's overrides, plus the objective recorded as prediction_type where the model config has one."""
    overrides = dict(config.model_overrides)
    cls, _ = model_spec(config.model)
    if "prediction_type" in inspect.signature(cls.__init__).parameters:
        overrides.setdefault("prediction_type", config.objective)
    return overrides


def train(config: TrainConfig):
    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        cpu=not has_accelerator(),  # so `--multi_gpu --num_processes N` gives real gloo DDP on a CPU machine
        mixed_precision=config.mixed_precision,
        log_with=config.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    _setup_logging(accelerator.is_local_main_process)
    procs, accum = accelerator.num_processes, config.gradient_accumulation_steps
    if config.train_batch_size % (procs * accum):
        raise ValueError(f"train_batch_size={config.train_batch_size} must be divisible by processes x accumulation "
                         f"steps = {procs} x {accum}.")
    micro_batch = config.train_batch_size // accum

    dataset = build_dataset(config)
    torch.manual_seed(config.seed)  # model init
    model = create_model(config.model, **model_overrides_for(config))
    check_model_fits_data(model, dataset, config)
    num_classes, null_id, dropout_prob = null_class_and_dropout(model)  # read before switching the model's own off
    disable_internal_label_dropout(model)
    if config.label_dropout is not None:
        if config.label_dropout > 0 and null_id is None:
            raise ValueError(f"label_dropout={config.label_dropout} needs a null class, and model {config.model!r} has "
                             "none (convdiff models: class_dropout_prob > 0 in model_overrides).")
        dropout_prob = config.label_dropout
    pixel_space = config.data != "latents"
    objective = make_objective(config.objective, model.config.out_channels == 2 * model.config.in_channels, pixel_space)
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()

    ema = None
    if config.use_ema:
        ema = EMAModel(model.parameters(), decay=config.ema_decay,
                       min_decay=0.0 if config.ema_warmup else config.ema_decay,
                       model_cls=type(model), model_config=model.config)
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                  weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)
    # The prepared scheduler steps once per process per optimizer step (diffusers#3954), hence the factor.
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps * procs,
                                 num_training_steps=config.max_train_steps * procs)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    base_model = accelerator.unwrap_model(model)

    global_step = 0
    resume_path = resolve_resume(output_dir, config.resume_from_checkpoint)
    if resume_path is not None:
        accelerator.load_state(str(resume_path))
        global_step = read_step(resume_path)
        logger.info("resumed from %s at step %d", resume_path, global_step)
    elif config.resume_from_checkpoint == "latest":
        logger.info("no checkpoint in %s yet: starting from scratch", output_dir)
    logger.info("%d process(es) (%s), global batch %d = %d per process x %d accumulation steps", procs,
                accelerator.distributed_type, config.train_batch_size, micro_batch // procs, accum)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / "train_config.yaml")
        tracker_config = {k: v for k, v in dataclasses.asdict(config).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("convdiff", config=tracker_config)

    sampler = StreamBatchSampler(len(dataset), micro_batch, config.seed, start=global_step * accum,
                                 stop=config.max_train_steps * accum, process_index=accelerator.process_index,
                                 num_processes=procs)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=config.dataloader_num_workers)
    batches = iter(loader)
    local = slice(accelerator.process_index * (micro_batch // procs), (accelerator.process_index + 1) * (micro_batch // procs))
    flip_pairs = getattr(dataset, "has_flip_pairs", False)

    progress = tqdm(total=config.max_train_steps, initial=global_step, desc="train",
                    disable=not accelerator.is_local_main_process)
    model.train()
    tick, images_seen = time.perf_counter(), 0
    started = time.perf_counter()
    while global_step < config.max_train_steps:
        if config.max_train_seconds is not None and _budget_spent(accelerator, started, config.max_train_seconds):
            logger.info("wall-clock budget of %.0f s spent at step %d", config.max_train_seconds, global_step)
            break
        step_loss = 0.0
        for micro in range(accum):
            micro_step = global_step * accum + micro
            x0, labels = next(batches)
            g = step_generator(config.seed, micro_step)
            # Draw for the whole global micro batch, then keep this process's slice (see batches.py).
            if flip_pairs:
                x0 = x0[torch.arange(len(x0)), torch.randint(0, 2, (micro_batch,), generator=g)[local]]
            elif config.random_flip:
                flip = torch.rand(micro_batch, generator=g)[local] < 0.5
                x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
            noise = torch.randn((micro_batch, *x0.shape[1:]), generator=g)[local]
            t = objective.sample_timesteps(micro_batch, g)[local]
            drop = (torch.rand(micro_batch, generator=g)[local] < dropout_prob) if null_id is not None else None
            x0, noise = x0.to(accelerator.device), noise.to(accelerator.device)
            x_t, model_t = objective.noisy_input(x0, noise, t)
            cond = conditioning_kwargs(base_model, labels.to(accelerator.device) if num_classes else None,
                                       drop.to(accelerator.device) if drop is not None else torch.zeros(len(x0), dtype=torch.bool))
            sync = micro == accum - 1
            context = accelerator.no_sync(model) if not sync else contextlib.nullcontext()
            with context:
                out = model(x_t, model_t.to(accelerator.device), **cond).sample
                loss = objective.loss(out, x0, noise, x_t, t.to(accelerator.device)).mean()
                accelerator.backward(loss / accum)
            step_loss += loss.detach().item() / accum
        if config.max_grad_norm is not None:
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(model.parameters())
        global_step += 1
        images_seen += config.train_batch_size
        progress.update(1)

        if global_step % config.logging_steps == 0 or global_step == config.max_train_steps:
            mean_loss = accelerator.gather(torch.tensor([step_loss], device=accelerator.device)).mean().item()
            speed = images_seen / (time.perf_counter() - tick)
            tick, images_seen = time.perf_counter(), 0
            logs = {"loss": mean_loss, "lr": lr_scheduler.get_last_lr()[0], "img_per_s": speed}
            progress.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{speed:.1f}")
            accelerator.log(logs, step=global_step)
        if config.checkpointing_steps and global_step % config.checkpointing_steps == 0:
            path = save_checkpoint(accelerator, output_dir, global_step, config.checkpoints_total_limit)
            if accelerator.is_main_process:
                progress.write(f"saved {path}")
        if accelerator.is_main_process and config.sample_steps and global_step % config.sample_steps == 0:
            _with_ema(ema, base_model, lambda: save_sample_grid(build_pipeline(base_model, objective, config), config,
                                                                output_dir / "samples" / f"step-{global_step:07d}.png"))
    progress.close()

    accelerator.wait_for_everyone()
    pipeline_dir = output_dir / "pipeline"
    if accelerator.is_main_process:
        def finish():
            pipeline = build_pipeline(base_model, objective, config)
            _save_atomically(pipeline, pipeline_dir)
            save_sample_grid(pipeline, config, output_dir / "samples" / "final.png")
        _with_ema(ema, base_model, finish)
    accelerator.end_training()
    return pipeline_dir


def _budget_spent(accelerator, started: float, budget: float) -> bool:
    """Rank 0's clock decides for everyone, so all processes stop at the same step."""
    spent = torch.tensor([float(time.perf_counter() - started >= budget)], device=accelerator.device)
    return bool(broadcast(spent, from_process=0).item())


def _with_ema(ema, model, fn):
    """Run fn with the EMA weights swapped in, and put the training weights back afterwards."""
    if ema is None:
        return fn()
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        return fn()
    finally:
        ema.restore(model.parameters())


def _save_atomically(pipeline, target: Path):
    partial = target.with_name(f".{target.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    pipeline.save_pretrained(partial)
    stale = target.with_name(f".{target.name}.old")
    if target.exists():
        target.rename(stale)
    partial.rename(target)
    if stale.exists():
        shutil.rmtree(stale)
