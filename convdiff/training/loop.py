"""One accelerate training loop for every task (`accelerate launch scripts/train.py`).

Flat on purpose: the recipe's task (task.py, tasks.py) builds data and model, then for each optimizer step run the micro steps
(gradient accumulation), update EMA, log, checkpoint atomically, and draw sample grids. The last act saves
the whole pipeline with the EMA weights. All randomness comes from (seed, step) (see batches.py), so a run
resumed from a checkpoint continues exactly as if it had never stopped.
"""

import contextlib
import dataclasses
import logging
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, broadcast
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..files import replace_folder
from ..pipelines.denoising import DenoisingPipeline
from ..pipelines.model_card import machine
from .batches import StreamBatchSampler, step_generator
from .checkpoints import (check_checkpoint, claim_run_folder, clear_run_folder, read_step, register_ema, resolve_resume,
                          save_checkpoint)
from .config import TrainConfig, check_config, record_changes, resume_changes, save_config
from .engines import check_engine, fit_model, on_full_model, start_engine
from .optimizer import adamw
from .task import Draws
from .tasks import make_task

logger = logging.getLogger("convdiff.train")


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


def train(config: TrainConfig):
    check_config(config)  # again: the config may have been changed since it was built
    output_dir = Path(config.output_dir)
    earlier = claim_run_folder(output_dir, config.resume_from_checkpoint, config.overwrite)
    resume_path = resolve_resume(output_dir, config.resume_from_checkpoint)
    changes = resume_changes(config, output_dir) if resume_path is not None else {}  # before any work
    task = make_task(config)
    gpu = has_accelerator()
    engine = check_engine(config, gpu=gpu)  # FSDP / DeepSpeed as launched, or a clear refusal
    ddp_kwargs = DistributedDataParallelKwargs(find_unused_parameters=task.find_unused_parameters)
    accelerator = Accelerator(
        cpu=not gpu,  # so `--multi_gpu --num_processes N` gives real gloo DDP on a CPU machine
        mixed_precision=config.mixed_precision,
        log_with=config.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        kwargs_handlers=[ddp_kwargs],
    )
    _setup_logging(accelerator.is_local_main_process)
    procs, accum = accelerator.num_processes, config.gradient_accumulation_steps
    if config.train_batch_size % (procs * accum):
        raise ValueError(f"train_batch_size={config.train_batch_size} must be divisible by processes x accumulation "
                         f"steps = {procs} x {accum}.")
    micro_batch = config.train_batch_size // accum
    start_engine(accelerator, engine, micro_batch // procs)

    dataset = task.build_dataset()
    torch.manual_seed(config.seed)  # model init
    model = task.build_model(dataset)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"task {config.task!r} built a model with no trainable parameters.")
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if config.compile:
        model.compile()  # in place: parameter names, state dicts and saved pipelines stay those of the eager module

    optimizer = adamw(trainable, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                      weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)
    # The prepared scheduler steps once per process per optimizer step (diffusers#3954), hence the factor.
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps * procs,
                                 num_training_steps=config.max_train_steps * procs)
    fit_model(accelerator, model)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    trainable = [p for p in model.parameters() if p.requires_grad]  # FSDP swaps in sharded parameters
    task.to_device(accelerator)

    ema = None
    if config.use_ema:
        ema = EMAModel(trainable, decay=config.ema_decay, min_decay=0.0 if config.ema_warmup else config.ema_decay)
        ema.to(accelerator.device)
        register_ema(accelerator, ema)  # weights-only on resume, unlike accelerate's custom objects

    global_step = 0
    if resume_path is not None:
        check_checkpoint(resume_path)
        accelerator.load_state(str(resume_path))
        global_step = read_step(resume_path)
        if changes:  # accepted: the checkpoint's optimizer state carries the recorded settings
            _apply_optimizer_settings(optimizer, lr_scheduler, config)
        logger.info("resumed from %s at step %d", resume_path, global_step)
    elif config.resume_from_checkpoint == "latest":
        logger.info("no checkpoint in %s yet: starting from scratch", output_dir)
    logger.info("%d process(es) (%s), global batch %d = %d per process x %d accumulation steps", procs,
                accelerator.distributed_type, config.train_batch_size, micro_batch // procs, accum)
    if accelerator.is_main_process:
        if earlier:
            logger.info("overwrite=true: removing the earlier run in %s", output_dir)
            clear_run_folder(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        if resume_path is None or not (output_dir / "train_config.yaml").is_file():
            save_config(config, output_dir / "train_config.yaml")
        elif changes:  # the record stays as it was, with the changes and their step after it
            record_changes(changes, global_step, output_dir)
        tracker_config = {k: v for k, v in dataclasses.asdict(config).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("convdiff", config=tracker_config)

    sampler = StreamBatchSampler(len(dataset), micro_batch, config.seed, start=global_step * accum,
                                 stop=config.max_train_steps * accum, process_index=accelerator.process_index,
                                 num_processes=procs)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=config.dataloader_num_workers)
    batches = iter(loader)
    local = slice(accelerator.process_index * (micro_batch // procs), (accelerator.process_index + 1) * (micro_batch // procs))

    progress = tqdm(total=config.max_train_steps, initial=global_step, desc="train",
                    disable=not accelerator.is_local_main_process)
    model.train()
    tick, images_seen = time.perf_counter(), 0
    started = time.perf_counter()
    while global_step < config.max_train_steps:
        if config.max_train_seconds is not None and _budget_spent(accelerator, started, config.max_train_seconds):
            logger.warning("WARNING: max_train_seconds=%.0f cut the run short at step %d of %d: the model is "
                           "undertrained and depends on the machine's speed; drop max_train_seconds for the full "
                           "recipe", config.max_train_seconds, global_step, config.max_train_steps)
            break
        step_loss = 0.0
        for micro in range(accum):
            micro_step = global_step * accum + micro
            batch = _to_device(next(batches), accelerator.device)
            draws = Draws(step_generator(config.seed, micro_step), micro_batch, local)
            sync = micro == accum - 1
            context = accelerator.no_sync(model) if not sync else contextlib.nullcontext()
            with context:
                loss = task.loss(model, batch, draws)
                accelerator.backward(loss / accum)
            step_loss += loss.detach().item() / accum
        if config.max_grad_norm is not None:
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(trainable)
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
        if config.sample_steps and global_step % config.sample_steps == 0:  # on every process: FSDP gathers
            grid = output_dir / "samples" / f"step-{global_step:07d}.png"
            _with_ema(ema, trainable, lambda: on_full_model(
                accelerator, model, lambda trained: task.save_samples(task.build_pipeline(trained), grid)))
    progress.close()

    accelerator.wait_for_everyone()
    pipeline_dir = output_dir / "pipeline"

    record = training_record(config, global_step, time.perf_counter() - started, resume_path)

    def finish(trained):  # on the main process, with the EMA weights in
        pipeline = task.build_pipeline(trained)
        task.record_sampling(pipeline)
        _save_atomically(pipeline, pipeline_dir, config, record)
        if config.sample_final_grid:
            task.save_samples(pipeline, output_dir / "samples" / "final.png")
    _with_ema(ema, trainable, lambda: on_full_model(accelerator, model, finish))
    accelerator.end_training()
    return pipeline_dir


def _apply_optimizer_settings(optimizer, lr_scheduler, config) -> None:
    """The config's AdamW settings and learning rate over the ones a checkpoint's optimizer state brought back;
    the schedule's multiplier at the resumed step applies to the new base rate."""
    inner = getattr(lr_scheduler, "scheduler", lr_scheduler)
    inner.base_lrs = [config.learning_rate] * len(optimizer.param_groups)
    factors = getattr(inner, "lr_lambdas", None) or [lambda _: 1.0] * len(optimizer.param_groups)
    for group, factor in zip(optimizer.param_groups, factors):
        group.update(betas=(config.adam_beta1, config.adam_beta2), weight_decay=config.adam_weight_decay,
                     eps=config.adam_epsilon, initial_lr=config.learning_rate,
                     lr=config.learning_rate * factor(inner.last_epoch))
    inner._last_lr = [group["lr"] for group in optimizer.param_groups]


def _budget_spent(accelerator, started: float, budget: float) -> bool:
    """Rank 0's clock decides for everyone, so all processes stop at the same step."""
    spent = torch.tensor([float(time.perf_counter() - started >= budget)], device=accelerator.device)
    return bool(broadcast(spent, from_process=0).item())


def _with_ema(ema, parameters, fn):
    """Run fn with the EMA weights swapped in, and put the training weights back afterwards."""
    if ema is None:
        return fn()
    ema.store(parameters)
    ema.copy_to(parameters)
    try:
        return fn()
    finally:
        ema.restore(parameters)


def _to_device(batch, device):
    """Tensors of a batch (a tuple, list or dict, possibly nested) onto the device; other items as they are."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(item, device) for item in batch)
    if isinstance(batch, dict):
        return {key: _to_device(item, device) for key, item in batch.items()}
    return batch


def training_record(config, steps: int, seconds: float, resumed_from) -> dict:
    """What the model card says of the run: the recipe's main values, the steps, wall time and machine."""
    record = {"recipe": f"train_config.yaml in this folder (task {config.task}, model {config.model}, "
                        f"objective {config.objective}, data {config.data})",
              "steps": f"{steps} optimizer steps of {config.train_batch_size} samples (learning rate {config.learning_rate}, "
                       f"{config.lr_scheduler} schedule, EMA {config.ema_decay if config.use_ema else 'off'})",
              "wall time": f"{seconds:.0f} s of training"
                           + (f" after resuming from {Path(resumed_from).name}" if resumed_from else ""),
              "machine": machine(), "date": time.strftime("%Y-%m-%d")}
    base = config.task_options.get("base") or config.task_options.get("teacher")
    if base:
        record["base model"] = base
    return record


def _save_atomically(pipeline, target: Path, config=None, record: dict | None = None):
    """The pipeline (with its recipe and a model card holding the run's `record`, when given) into a hidden partial
    folder, fsynced, then renamed over `target` (see convdiff/files.py)."""
    def write(folder):
        if isinstance(pipeline, DenoisingPipeline):  # convdiff's pipelines write the card with the record
            pipeline.save_pretrained(folder, training=record)
        else:
            pipeline.save_pretrained(folder)
        if config is not None:
            save_config(config, Path(folder) / "train_config.yaml")

    replace_folder(target, write)
