"""Atomic accelerate checkpoints: `checkpoint-<step>` folders under the run's output folder.

`accelerator.save_state` writes into a hidden `.checkpoint-<step>.partial` folder that is renamed only once
complete, so a run killed mid-save leaves the previous checkpoints intact and `latest` never points at a
partial one. Old checkpoints are pruned only after the new one is in place.
"""

import json
import re
import shutil
from pathlib import Path

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


def read_step(checkpoint) -> int:
    return json.loads((Path(checkpoint) / "training_state.json").read_text())["global_step"]


def save_checkpoint(accelerator, output_dir, step: int, total_limit: int | None):
    """Save the full training state for `step` atomically; prune to `total_limit` checkpoints."""
    root = Path(output_dir)
    final = root / f"checkpoint-{step}"
    partial = root / f".checkpoint-{step}.partial"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / "training_state.json").write_text(json.dumps({"global_step": step}))
        stale = root / f".checkpoint-{step}.old"
        if final.exists():  # the same step saved again after a resume: swap, then drop the old copy
            final.rename(stale)
        partial.rename(final)
        if stale.exists():
            shutil.rmtree(stale)
        if total_limit is not None:
            for _, old in list_checkpoints(root)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final
