"""Task names a recipe can give as `task:`, mapped lazily to their classes (so a task's imports load only when used)."""

import difflib
import importlib

TASKS = {
    "denoise": "convdiff.training.denoise_task:DenoiseTask",
    "layered": "convdiff.training.layered_task:LayeredTask",
    "controlnet": "convdiff.training.controlnet_task:ControlNetTask",
    "distill": "convdiff.distill.task:make_distill_task",
    "video": "convdiff.training.video_task:VideoTask",
}


def make_task(config):
    if config.task not in TASKS:
        close = difflib.get_close_matches(config.task, list(TASKS), n=2)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown task {config.task!r}; choose one of {', '.join(TASKS)}.{hint}")
    module, name = TASKS[config.task].split(":")
    return getattr(importlib.import_module(module), name)(config)
