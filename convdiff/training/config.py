"""Training recipes: a flat YAML file of known keys, plus `key=value` overrides from the command line.

Every key lives in TrainConfig below with its default, so a typo is an error that names the close matches
before any work starts.
"""

import dataclasses
import difflib
from pathlib import Path

import yaml


@dataclasses.dataclass
class TrainConfig:
    # what to train (training/tasks.py): denoise | layered | controlnet | distill | video, with its own options
    task: str = "denoise"
    task_options: dict = dataclasses.field(default_factory=dict)
    # model: a registry name plus config overrides (channels, size, classes, learn_sigma, ...)
    model: str = "dic-tiny"
    model_overrides: dict = dataclasses.field(default_factory=dict)
    objective: str = "epsilon"  # epsilon (hybrid loss when the model learns sigma) | v_prediction | flow
    # data: mnist | image_folder | latents
    data: str = "mnist"
    data_path: str | None = None
    resolution: int | None = None  # image_folder only; mnist is 28 (pad_to 32 with resolution=32)
    random_flip: bool = False
    vae: str | None = None  # AutoencoderKL folder for latent data (decoding samples, shipped pipeline)
    # optimisation
    train_batch_size: int = 64  # global batch per optimizer step, over all processes and accumulation
    gradient_accumulation_steps: int = 1
    max_train_steps: int = 1000
    max_train_seconds: float | None = None  # wall-clock budget: stop early (and save) once it is spent
    learning_rate: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = None
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    mixed_precision: str = "no"  # no | bf16 | fp16
    gradient_checkpointing: bool = False
    label_dropout: float | None = None  # classifier-free label dropout; None = the model's own (0.1 in DiT/DiC/DiCo)
    use_ema: bool = True
    ema_decay: float = 0.9999
    ema_warmup: bool = False  # diffusers' (1+step)/(10+step) ramp; off = DiT's constant decay
    # bookkeeping
    seed: int = 0
    output_dir: str = "outputs/run"
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = None  # a checkpoint folder or "latest"
    logging_steps: int = 10
    report_to: str | None = "tensorboard"
    sample_steps: int = 0  # write a sample grid every N steps (0: only at the end)
    sample_num_inference_steps: int = 50
    sample_scheduler: str = "ddim"
    sample_guidance_scale: float = 1.0
    dataloader_num_workers: int = 0

    def __post_init__(self):
        if self.mixed_precision is False:  # YAML reads a bare `no` as false
            self.mixed_precision = "no"
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be no, bf16 or fp16; got {self.mixed_precision!r}.")


def config_keys():
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _check_key(key: str):
    if key not in config_keys():
        close = difflib.get_close_matches(key, config_keys(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown config key {key!r}.{hint}")


def parse_override(text: str):
    """'key=value', 'model_overrides.key=value' or 'task_options.key=value'; the value is parsed as YAML."""
    if "=" not in text:
        raise ValueError(f"Override {text!r} must look like key=value.")
    key, value = text.split("=", 1)
    return key.strip().lstrip("-").replace("-", "_"), yaml.safe_load(value)


def load_config(path=None, overrides=()) -> TrainConfig:
    values = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Config file {path} does not exist.")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"Config file {path} must hold a mapping of keys to values.")
        for key in values:
            _check_key(key)
    for text in overrides:
        key, value = parse_override(text)
        group, _, name = key.partition(".")
        if group in ("model_overrides", "task_options") and name:
            values[group] = dict(values.get(group) or {}, **{name: value})
            continue
        _check_key(key)
        values[key] = value
    return TrainConfig(**values)


def save_config(config: TrainConfig, path) -> None:
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
