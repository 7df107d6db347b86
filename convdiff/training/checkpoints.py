"""Atomic accelerate checkpoints: `checkpoint-<step>` folders under the run's output folder.

`accelerator.save_state` writes into a hidden `.checkpoint-<step>.partial` folder that is renamed only once
complete, so a run killed mid-save leaves the previous checkpoints intact and `latest` never points at a
partial one. Every file is fsynced before the rename; a save that fails (disk full, no permission) removes
its partial folder and raises one OSError naming the folder and the cause, so the previous checkpoint stays
`latest`. Old checkpoints are pruned only after the new one is in place.

Everything in a checkpoint is read back with `torch.load(weights_only=True)` or as safetensors: the EMA
weights are saved by a save-state hook as `ema_state.pt` rather than through accelerate's custom-object
state, which accelerate reloads with full unpickling (code from the file would run).
"""

import json
import re
import shutil
from pathlib import Path

import torch

from ..files import (first_line, fsync_dir, fsync_tree, is_write_failure, load_weights_only, read_json, swap_into_place,
                     write_failure)
from .engines import full_tensor, shard_like

EMA_FILE = "ema_state.pt"

PATTERN = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir):
    """Complete checkpoints, oldest first, as (step, path)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := PATTERN.match(p.name))]
    return sorted(found)


def resolve_resume(output_dir, resume):
    """Path of the checkpoint to resume from, None to start fresh ('latest' with none saved yet)."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / "training_state.json").is_file():
        raise FileNotFoundError(
            f"No checkpoint at {path}: expected a checkpoint-<step> folder written by convdiff train "
            f"(existing ones: {[str(p) for _, p in list_checkpoints(output_dir)] or 'none'})."
        )
    return path


# What a run writes into its output folder (besides checkpoint-<step> folders and their hidden partials).
RUN_FILES = ("train_config.yaml", "train_changes.yaml", "pipeline", ".pipeline.partial", ".pipeline.old", "samples", "logs")


def earlier_run(output_dir) -> list:
    """The traces of an earlier run in `output_dir`: its checkpoints, train_config.yaml or pipeline."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    marks = [p for _, p in list_checkpoints(root)]
    marks += [root / name for name in ("train_config.yaml", "pipeline") if (root / name).exists()]
    return marks


def claim_run_folder(output_dir, resume, overwrite: bool) -> list:
    """Check that a run may write into `output_dir`; returns the earlier run's files that overwrite will clear.

    A folder belongs to one run: a fresh run (no resume) into a folder holding an earlier run's checkpoints,
    config or pipeline is refused before anything is written, unless overwrite=True.
    """
    if resume is not None:
        return []  # continuing the run this folder holds
    found = earlier_run(output_dir)
    if found and not overwrite:
        shown = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
        raise FileExistsError(f"{output_dir} already holds an earlier run ({shown}). Continue it with --resume latest "
                              "(resume_from_checkpoint=latest), replace it with --overwrite (overwrite=true), or "
                              "choose another output_dir.")
    return found


def clear_run_folder(output_dir) -> None:
    """Remove everything a run writes into `output_dir` (and nothing else that may live there)."""
    root = Path(output_dir)
    if not root.is_dir():
        return
    for path in root.iterdir():
        if path.name in RUN_FILES or PATTERN.match(path.name) or re.match(r"^\.checkpoint-\d+\.(partial|old)$", path.name):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def read_step(checkpoint) -> int:
    path = Path(checkpoint) / "training_state.json"
    step = read_json(path, 'an object like {"global_step": 2} written by convdiff train').get("global_step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"{path} records global_step={step!r}, expected an integer >= 0; resume from another "
                         "checkpoint (--resume <checkpoint folder>).")
    return step


def save_checkpoint(accelerator, output_dir, step: int, total_limit: int | None):
    """Save the full training state for `step` atomically; prune to `total_limit` checkpoints."""
    root = Path(output_dir)
    final = root / f"checkpoint-{step}"
    partial = root / f".checkpoint-{step}.partial"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    # A write error on any process is shared with all (failed_anywhere), so none waits at a barrier for a
    # process that gave up; the main process seals the folder only after every part is written.
    error = None
    try:
        accelerator.save_state(str(partial))
    except Exception as caught:
        error = caught
    failed = failed_anywhere(accelerator, error is not None)
    if not failed:
        try:
            if accelerator.is_main_process:
                (partial / "training_state.json").write_text(json.dumps({"global_step": step}))
                fsync_tree(partial)
        except Exception as caught:
            error = caught
        failed = failed_anywhere(accelerator, error is not None)
    if failed:
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        if error is None:
            error = OSError(f"another process failed to write its part of {final}; see its error above")
        if is_write_failure(error):
            previous = list_checkpoints(root)
            kept = f"The latest checkpoint is still {previous[-1][1]}." if previous else "No checkpoint was kept."
            raise write_failure(final, error, kept) from error
        raise error
    try:
        if accelerator.is_main_process:
            swap_into_place(partial, final)  # the same step saved again after a resume replaces the old copy
            if total_limit is not None:
                for _, old in list_checkpoints(root)[:-total_limit]:
                    shutil.rmtree(old)
            fsync_dir(root)
    except Exception as caught:
        error = caught
    if failed_anywhere(accelerator, error is not None):  # the last barrier, failure-aware
        raise error or OSError(f"the main process failed to put {final} in place; see its error above")
    return final


def failed_anywhere(accelerator, failed: bool) -> bool:
    """True on every process when any process failed: a collective sum of the failure flags, which also
    stands in for the barrier after writing."""
    if getattr(accelerator, "num_processes", 1) == 1:
        return failed
    flag = torch.tensor([float(failed)], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def register_ema(accelerator, ema) -> None:
    """Save the EMA weights into every checkpoint as `ema_state.pt` and read them back weights-only on resume."""

    def save(models, weights, output_dir):
        state = ema.state_dict()
        state["shadow_params"] = [full_tensor(p) for p in state["shadow_params"]]  # FSDP shards: gathered by all
        if accelerator.is_main_process:
            torch.save(state, Path(output_dir) / EMA_FILE)

    def load(models, input_dir):
        path = Path(input_dir) / EMA_FILE
        if not path.is_file():
            legacy = Path(input_dir) / "custom_checkpoint_0.pkl"
            hint = (f" It has {legacy.name} from an older convdiff: rename it to {EMA_FILE} to resume from it."
                    if legacy.is_file() else "")
            raise FileNotFoundError(f"{input_dir} has no EMA weights ({EMA_FILE}); it was not written by a run with "
                                    f"use_ema=true.{hint}")
        device = ema.shadow_params[0].device if ema.shadow_params else "cpu"
        shards = list(ema.shadow_params)
        ema.load_state_dict(load_weights_only(path, map_location=device))
        ema.shadow_params = [shard_like(p, like) for p, like in zip(ema.shadow_params, shards)]  # FSDP: cut again

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)


def check_checkpoint(checkpoint) -> None:
    """Fail with the file's name when a checkpoint's files are truncated, damaged or hold Python objects, before
    loading: its step record, its safetensors and the pickled states accelerate reads back (optimizer, scheduler,
    random states), the latter weights-only with accelerate's own allow-list."""
    from accelerate.utils.other import TORCH_SAFE_GLOBALS
    from safetensors import safe_open

    read_step(checkpoint)
    for path in sorted(Path(checkpoint).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as error:  # noqa: BLE001  (safetensors raises its own error type for every defect)
            raise ValueError(f"{path} is damaged or truncated ({first_line(error)}); resume from another "
                             f"checkpoint (resume_from_checkpoint=<folder>).") from error
    for path in sorted([*Path(checkpoint).glob("*.bin"), *Path(checkpoint).glob("random_states_*.pkl")]):
        try:
            load_weights_only(path, safe_globals=TORCH_SAFE_GLOBALS)
        except ValueError as error:
            raise type(error)(f"{error} Resume from another checkpoint (resume_from_checkpoint=<folder>).") from error
