"""Bounds on a model config read from a file (a recipe, a pipeline folder, a ControlNet's or a video model's
recorded backbone) before anything is allocated.

A config from someone else can ask for `depth: [100000, ...]` (minutes of construction) or `hidden_size: 10**9`
(tens of GB). `check_model_config` first checks that every size is a positive integer (one error naming the
key), then builds the model on the meta device, which allocates nothing, counting the parameters and buffers as
they are registered and stopping as soon as they pass the limit. The limit is `CONVDIFF_MAX_PARAMS` (parameters
and buffer elements; default 2e9, 8 GB in float32), raised explicitly by setting that variable
(docs/security.md). The number of tensors is bounded with it (10,000, or one per 200,000 allowed elements when
that is more; the largest paper sizes hold under 1,000), since a very deep stack of small blocks is slow to build
long before it is large.
"""

import inspect
import math
import os
import re
from pathlib import Path

import torch

from ..files import read_json

MAX_PARAMS_ENV = "CONVDIFF_MAX_PARAMS"
DEFAULT_MAX_PARAMS = 2_000_000_000
ELEMENTS_PER_TENSOR = 200_000
MIN_TENSORS = 10_000

# Config keys that count or size something, and the ones among them where 0 means "none".
SIZE_KEY = re.compile(r"(^num_\w+|size|channels|depth|heads|head_dim|_dim|layers|per_block|groups|stride|resolutions|"
                      r"frames|views|tokens)$")
ZERO_ALLOWED = {"num_classes", "num_class_embeds", "num_train_timesteps", "freq_shift"}

_building = []  # set while a meta build runs: the models a model builds inside it are counted by that build


class ModelTooLarge(ValueError):
    """A config whose model would pass the size limit."""


def max_params() -> int:
    text = os.environ.get(MAX_PARAMS_ENV)
    if text is None:
        return DEFAULT_MAX_PARAMS
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"{MAX_PARAMS_ENV}={text!r} must be a number of parameters >= 1, e.g. 5e9.")
    return int(value)


def tensor_limit(limit: int) -> int:
    return max(MIN_TENSORS, limit // ELEMENTS_PER_TENSOR)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def size_problems(config: dict, source: str) -> list:
    """One line per size key of `config` that is not a positive integer (or a list of them)."""
    problems = []
    for key, value in config.items():
        if not isinstance(key, str) or not SIZE_KEY.search(key) or value is None:
            continue
        lowest = 0 if key in ZERO_ALLOWED else 1
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        bad = [v for v in values if not (_is_int(v) and v >= lowest)]
        if bad or not values:
            expected = f"an integer >= {lowest}" + (" (or a list of them)" if isinstance(value, (list, tuple)) else "")
            problems.append(f"{key} must be {expected}, got {value!r} in {source}")
    return problems


def check_sizes(config: dict, source: str) -> None:
    """Raise one ValueError naming every size key of `config` that is not a positive integer."""
    problems = size_problems(config, source)
    if problems:
        raise ValueError("; ".join(problems) + ".")


def _too_large(source: str, cls, count: int, tensors: int, limit: int) -> ModelTooLarge:
    most = tensor_limit(limit)
    passed = (f"more than {most:,} tensors (so many blocks take minutes to build)" if tensors > most
              else f"more than {limit:,} parameters and buffer elements ({count * 4 / 2**30:.1f} GiB in float32 "
                   "counted so far)")
    return ModelTooLarge(f"{cls.__name__} from {source} would hold {passed}, above the size limit. Check its sizes; "
                         f"if you trust this config and have the memory, raise the limit with {MAX_PARAMS_ENV}=<number "
                         f"of elements> (now {limit:,}; docs/security.md).")


def estimate_size(cls, config: dict, source: str) -> int:
    """Parameters and buffer elements of `cls.from_config(config)`, counted on the meta device (nothing is allocated);
    raises ModelTooLarge as soon as the count passes the limit."""
    limit = max_params()
    most_tensors = tensor_limit(limit)
    counted = {"elements": 0, "tensors": 0}

    def count(module, name, tensor):
        if tensor is None:
            return
        counted["elements"] += tensor.numel()
        counted["tensors"] += 1
        if counted["elements"] > limit or counted["tensors"] > most_tensors:
            raise _too_large(source, cls, counted["elements"], counted["tensors"], limit)

    hooks = [torch.nn.modules.module.register_module_parameter_registration_hook(count),
             torch.nn.modules.module.register_module_buffer_registration_hook(count)]
    _building.append(cls)
    try:
        with torch.device("meta"):  # from_config: built as a loader builds it (a recorded conversion included)
            cls.from_config(config)
    finally:
        _building.pop()
        for hook in hooks:
            hook.remove()
    return counted["elements"]


def check_model_config(cls, config: dict, source: str) -> None:
    """Sizes positive integers, and `cls(**config)` within the size limit, before the caller builds it.

    `source` names where the config came from (a file, a flag, a recipe key) for the error message. Inside
    the meta build of an outer model only the sizes are checked: the outer build already counts the inner one.
    """
    if not isinstance(config, dict):
        raise ValueError(f"{source} must be a mapping of settings, got {config!r}.")
    check_sizes(config, source)
    if _building:
        return
    large = [(k, v) for k, v in config.items() if _is_int(v) and v > max_params() and SIZE_KEY.search(str(k))]
    if large:
        key, value = large[0]
        raise ModelTooLarge(f"{key}={value} in {source} is larger than the whole size limit of {max_params():,} "
                            f"elements; if you mean it, raise the limit with {MAX_PARAMS_ENV}=<number> "
                            "(docs/security.md).")
    estimate_size(cls, config, source)


def check_saved_config(cls, config: dict, source: str) -> None:
    """`check_model_config` on a saved config.json: its private keys (`_class_name`, ...) and, as diffusers'
    `from_config` does, keys the class does not take are left out."""
    parameters = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    kept = {k: v for k, v in config.items() if not k.startswith("_") and (takes_any or k in parameters)}
    check_model_config(cls, kept, source)


def check_folder_config(cls, folder, subfolder=None) -> None:
    """A local model folder's config.json (`folder/subfolder/config.json`), bounded like any config from a file,
    before diffusers' `from_pretrained` builds anything from it. A Hub id is left to diffusers' own checks."""
    path = Path(folder, subfolder or "", "config.json")
    if path.is_file():
        check_saved_config(cls, read_json(path), str(path))
