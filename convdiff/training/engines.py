"""The distributed engine a launch asks for (DDP, FSDP, DeepSpeed), run as asked or refused with a reason.

`accelerate launch --config_file configs/accelerate/fsdp.yaml` (or deepspeed.yaml) tells the script through
environment variables (ACCELERATE_USE_FSDP, ACCELERATE_USE_DEEPSPEED). accelerate forms those engines only on
GPU-like devices: on a CPU machine, where the loop passes cpu=True to get a gloo group, it would silently
train plain DDP (DistributedType.MULTI_CPU) instead. So:

- FSDP (version 2, `fully_shard`) runs for real on CPU too: the gloo group is promoted to FSDP before
  anything is prepared, so the model is sharded, checkpoints are sharded (torch.distributed.checkpoint) and
  resume exactly (tests/test_engines.py). FSDP on CPU takes fsdp_version 2 and mixed_precision "no".
- The wrap unit is the model's own `_no_split_modules` (DiCBlock, DiCoBlock, DiffiTBlock, ...), whatever the
  launch config names, so one fsdp.yaml serves every backbone.
- Parameters are made contiguous before sharding: FSDP cannot shard channels-last conv kernels.
- DeepSpeed is refused where it cannot run (not installed, or no CUDA GPU), naming what to install or use.

Under FSDP the EMA weights are shards like the parameters (the EMA update is elementwise, so shard-local is
exact); the sample grids and the saved pipeline are built on the main process from an unsharded copy
gathered from all processes (`on_full_model`).
"""

import os

CPU_CONFIG = "configs/accelerate/cpu-2proc.yaml"


def requested_engine(env=None) -> str:
    """'fsdp', 'deepspeed' or 'ddp' (plain data parallel, also one process), as the launch set it."""
    env = os.environ if env is None else env
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    if env.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    return "ddp"


def check_engine(config, gpu: bool, env=None) -> str:
    """The requested engine, or a ValueError / ImportError saying why it cannot run here and what to do instead."""
    engine = requested_engine(env)
    if engine == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise ImportError("The launch asks for DeepSpeed (distributed_type: DEEPSPEED), which is not installed: "
                              "`pip install deepspeed` on a machine with CUDA GPUs, or launch with "
                              f"configs/accelerate/fsdp.yaml or {CPU_CONFIG} instead.") from None
        if not gpu:
            raise ValueError("The launch asks for DeepSpeed, which needs CUDA GPUs and this machine has none: launch "
                             f"with configs/accelerate/fsdp.yaml (FSDP runs on CPU) or {CPU_CONFIG} (DDP) instead.")
        if config.gradient_accumulation_steps != 1:
            raise ValueError("Under DeepSpeed the engine steps at every backward, so the loop's gradient accumulation "
                             f"cannot run: set gradient_accumulation_steps=1 (got {config.gradient_accumulation_steps}) "
                             "or launch with configs/accelerate/fsdp.yaml.")
    if engine == "fsdp":
        if config.task != "denoise":
            raise ValueError(f"FSDP trains task=denoise only (this recipe: task={config.task!r}, whose frozen parts "
                             f"FSDP would not shard): launch with {CPU_CONFIG} or --multi_gpu (DDP) instead.")
        if config.compile:
            raise ValueError("FSDP with compile=true is not supported by the convdiff loop: set compile=false.")
        if not gpu and config.mixed_precision != "no":
            raise ValueError(f"FSDP on CPU trains in float32 only: set mixed_precision=no "
                             f"(got {config.mixed_precision!r}).")
    return engine


def start_engine(accelerator, engine: str, micro_batch_per_process: int) -> None:
    """Make accelerate run the requested engine; a RuntimeError if it formed another one."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if engine == "fsdp" and accelerator.distributed_type == DistributedType.MULTI_CPU:
        plugin = FullyShardedDataParallelPlugin()  # the launch's FSDP_* settings
        if plugin.fsdp_version != 2:
            raise ValueError("FSDP on CPU runs FSDP2 only: set fsdp_version: 2 in the accelerate config "
                             "(configs/accelerate/fsdp.yaml does).")
        accelerator.state.fsdp_plugin = plugin
        accelerator.state.distributed_type = DistributedType.FSDP
        PartialState().distributed_type = DistributedType.FSDP  # AcceleratorState copies it from here when re-created
    if engine == "deepspeed":
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = micro_batch_per_process
    expected = {"fsdp": DistributedType.FSDP, "deepspeed": DistributedType.DEEPSPEED}.get(engine)
    if expected is not None and accelerator.distributed_type != expected:
        raise RuntimeError(f"The launch asks for {engine} but accelerate formed {accelerator.distributed_type}; "
                           f"check the accelerate config (or launch with {CPU_CONFIG}).")


def is_fsdp(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def wrap_classes(model) -> list:
    """The block classes FSDP shards as units: those of the model's `_no_split_modules` that it contains
    (for diffusers' own baselines, which name none, their repeated block, as inflation uses)."""
    from ..models.inflation import declared_blocks

    names = list(declared_blocks(model, "_no_split_modules"))
    present = {type(m).__name__ for m in model.modules()}
    found = [n for n in names if n in present]  # a converted model may have lost some (ΔConvFusion's attention)
    if not found:
        raise ValueError(f"{type(model).__name__} names no block FSDP could wrap (_no_split_modules={names}): set "
                         f"_no_split_modules on the class, or train it with DDP ({CPU_CONFIG} or --multi_gpu).")
    return found


def fit_model(accelerator, model) -> None:
    """Before `prepare`: under FSDP, wrap the model's own blocks and give every parameter a contiguous layout."""
    if not is_fsdp(accelerator):
        return
    import torch

    plugin = accelerator.state.fsdp_plugin
    plugin.transformer_cls_names_to_wrap = wrap_classes(model)  # not the launch config's: it may name another model's
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.data = parameter.data.contiguous()


def full_tensor(tensor):
    """A DTensor shard gathered into the whole tensor (a collective: every process calls it), others as they are."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def shard_like(tensor, like):
    """`tensor` (whole, the same on every process) cut into the shard that `like` (a DTensor) holds here."""
    if not hasattr(like, "device_mesh"):
        return tensor.to(like.device)
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(tensor.to(like.device_mesh.device_type), like.device_mesh, like.placements)


def on_full_model(accelerator, model, fn) -> None:
    """Call fn(unsharded model) on the main process; every process must call this (FSDP gathers the weights)."""
    base = accelerator.unwrap_model(model)
    if not is_fsdp(accelerator):
        if accelerator.is_main_process:
            fn(base)
        return
    state = {}
    for name, value in base.state_dict().items():
        whole = full_tensor(value)  # a collective: every process gathers, only the main one keeps the weights
        if accelerator.is_main_process:
            state[name] = whole.cpu()  # the copy is built on the CPU: no second full model on the GPU
    if accelerator.is_main_process:
        plain = next(c for c in type(base).__mro__[1:] if "FSDP" not in c.__name__)  # the class fully_shard wrapped
        copy = plain.from_config(base.config)  # a channels-last model builds its weights channels-last
        copy.load_state_dict(state)  # in place: the layout stays
        fn(copy.to(accelerator.device).eval())
    accelerator.wait_for_everyone()
