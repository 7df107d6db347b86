"""Training recipes: a flat YAML file of known keys, plus `key=value` overrides from the command line.

Every key lives in TrainConfig below with its default, so a typo is an error that names the close matches
before any work starts. `check_config` is the one place values are validated: the type of every key (read
from the annotations, so new keys are checked too), ranges (RANGES), known choices (choices()) and relations,
each error naming the key, the value and what is expected.
"""

import dataclasses
import difflib
import inspect
import math
import types
import typing
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
    timestep_sampling: str = "uniform"  # flow only: uniform | logit_normal (SD3's)
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
    compile: bool = False  # torch.compile the trained module (pays a one-off compile, then faster steps)
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
    sample_final_grid: bool = True  # samples/final.png after training (the MNIST demo draws its own grid instead)
    # the saved pipeline samples as the official DiC / DiCo / DiffiT sample scripts do (adm_scheduler: 250 steps
    # 999, 995, ..., no clipping; the family's guidance defaults): the ImageNet recipes (docs/parity.md)
    official_sampling: bool = False
    dataloader_num_workers: int = 0
    # a fresh run into a folder that holds an earlier run: refused unless true, which clears that run first
    overwrite: bool = False
    # on resume, settings that change what is trained (every key but RUN_KEYS) differ from the run's
    # train_config.yaml: refused unless true, which applies them and appends them, with their step, to
    # train_changes.yaml (train_config.yaml keeps what the run began with)
    accept_changes: bool = False

    def __post_init__(self):
        if self.mixed_precision is False:  # YAML reads a bare `no` as false
            self.mixed_precision = "no"
        check_config(self)


# Ranges: key -> (test on the typed value, what is expected). None passes wherever the annotation allows it.
RANGES = {
    "max_train_steps": (lambda v: v >= 1, "an integer >= 1"),
    "train_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "gradient_accumulation_steps": (lambda v: v >= 1, "an integer >= 1"),
    "max_train_seconds": (lambda v: v >= 0, "a number >= 0 (seconds) or null"),
    "learning_rate": (lambda v: v > 0, "a number > 0"),
    "adam_beta1": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "adam_beta2": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "adam_weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "adam_epsilon": (lambda v: v > 0, "a number > 0"),
    "max_grad_norm": (lambda v: v > 0, "a number > 0 or null"),
    "lr_warmup_steps": (lambda v: v >= 0, "an integer >= 0"),
    "label_dropout": (lambda v: 0 <= v <= 1, "a probability in [0, 1] or null"),
    "ema_decay": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "seed": (lambda v: v >= 0, "an integer >= 0"),
    "resolution": (lambda v: v >= 1, "an integer >= 1 (pixels) or null"),
    "checkpointing_steps": (lambda v: v >= 0, "an integer >= 0 (0: no checkpoints)"),
    "checkpoints_total_limit": (lambda v: v >= 1, "an integer >= 1 or null (keep all)"),
    "logging_steps": (lambda v: v >= 1, "an integer >= 1"),
    "sample_steps": (lambda v: v >= 0, "an integer >= 0 (0: only at the end)"),
    "sample_num_inference_steps": (lambda v: v >= 1, "an integer >= 1"),
    "dataloader_num_workers": (lambda v: v >= 0, "an integer >= 0"),
}


def choices() -> dict:
    """key -> the values it may take (imported lazily: they live with the code that uses them)."""
    from diffusers.optimization import SchedulerType

    from ..pipelines.schedulers import DDPM_FAMILY, FLOW_FAMILY
    from .data import DATA_KINDS
    from .objectives import OBJECTIVES, TIMESTEP_SAMPLING
    from .tasks import TASKS

    return {"task": list(TASKS), "objective": list(OBJECTIVES), "timestep_sampling": list(TIMESTEP_SAMPLING),
            "data": list(DATA_KINDS),
            "lr_scheduler": [s.value for s in SchedulerType], "mixed_precision": ["no", "bf16", "fp16"],
            "sample_scheduler": list(dict.fromkeys([*DDPM_FAMILY, *FLOW_FAMILY]))}


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping",
               list: "a list"}


def _expected(annotation) -> str:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _expected(a) for a in args)
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    base = typing.get_origin(annotation) or annotation
    return _TYPE_NAMES.get(base, getattr(base, "__name__", str(base)))


def coerce(value, annotation):
    """`value` as the annotated type (an int for a float key, '1e-4' for a number, 2.0 for an integer);
    raises TypeError when it is not one."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(value, option)
            except TypeError:
                pass
        raise TypeError
    if origin is typing.Literal:
        if value in args:
            return value
        raise TypeError
    base = origin or annotation
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base in (int, float):
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise TypeError from None
        if isinstance(number, (int, float)) and not isinstance(number, bool) and math.isfinite(number):
            if base is float:
                return float(number)
            if float(number).is_integer():
                return int(number)
    elif isinstance(base, type):
        if isinstance(value, base):
            return value
    else:
        return value  # an annotation this check does not understand: leave the value to its user
    raise TypeError


def check_config(config) -> None:
    """Validate and normalise every key of a TrainConfig in place; one ValueError lists all problems."""
    problems = []
    for field in dataclasses.fields(config):
        key, value = field.name, getattr(config, field.name)
        test, expected = RANGES.get(key, (None, _expected(field.type)))
        try:
            value = coerce(value, field.type)
        except TypeError:
            problems.append(f"{key} must be {expected}, got {value!r}")
            continue
        if test is not None and value is not None and not test(value):
            problems.append(f"{key} must be {expected}, got {value!r}")
            continue
        setattr(config, key, value)
    if not problems:
        for key, allowed in choices().items():
            value = getattr(config, key)
            if (value.lower() if key == "sample_scheduler" else value) not in allowed:
                close = difflib.get_close_matches(str(value), allowed, n=2)
                hint = f". Did you mean {' or '.join(close)}?" if close else ""
                problems.append(f"{key} must be one of {', '.join(allowed)}, got {value!r}{hint}")
        if config.train_batch_size % config.gradient_accumulation_steps:
            problems.append(f"train_batch_size={config.train_batch_size} must be divisible by "
                            f"gradient_accumulation_steps={config.gradient_accumulation_steps}")
        problems += _model_override_problems(config)
        if config.official_sampling:
            problems += _official_sampling_problems(config)
    if problems:
        text = "; ".join(problems)
        raise ValueError(f"Invalid training config: {text}" + ("" if text.endswith("?") else "."))


def _model_override_problems(config) -> list:
    """Keys of model_overrides that the model class does not take, with close matches."""
    if not config.model_overrides:
        return []
    from ..models.config_bounds import size_problems
    from ..registry import model_spec

    cls, _ = model_spec(config.model)
    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return []
    known = [name for name in parameters if name != "self"]
    problems = []
    for key in config.model_overrides:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f". Did you mean {', '.join(close)}?" if close else ""
            problems.append(f"model_overrides.{key} is not a setting of {cls.__name__} (model={config.model!r}){hint}")
    return problems + size_problems(config.model_overrides, "model_overrides")


def _official_sampling_problems(config) -> list:
    """official_sampling saves ADM's epsilon sampler, known for the DiC / DiCo / DiffiT denoisers only."""
    from ..convert.official import family_of
    from ..registry import model_spec

    problems = []
    if config.task != "denoise" or config.objective != "epsilon":
        problems.append(f"official_sampling=true needs task 'denoise' and objective 'epsilon' (ADM's DDPM sampler), "
                        f"got task {config.task!r} and objective {config.objective!r}")
    try:
        family_of(model_spec(config.model)[0])
    except ValueError as error:
        problems.append(f"official_sampling=true: {error}")
    return problems


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


# Keys that say how a run is carried out, not what it trains: a resume may change them freely (extending
# max_train_steps included). Every other key changes the weights a run makes.
RUN_KEYS = {"max_train_steps", "max_train_seconds", "output_dir", "checkpointing_steps", "checkpoints_total_limit",
            "resume_from_checkpoint", "logging_steps", "report_to", "sample_steps", "sample_num_inference_steps",
            "sample_scheduler", "sample_guidance_scale", "sample_final_grid", "official_sampling",
            "dataloader_num_workers", "overwrite", "accept_changes", "compile", "gradient_checkpointing"}
CHANGES_FILE = "train_changes.yaml"


def resume_changes(config: TrainConfig, output_dir) -> dict:
    """On a resume, the keys whose values differ from the run's train_config.yaml: {key: (recorded, now)}.

    Refused (a ValueError naming them) when one changes what is trained, unless accept_changes is set; the
    run's record is then train_config.yaml plus the changes appended to train_changes.yaml (`record_changes`).
    """
    path = Path(output_dir) / "train_config.yaml"
    if config.resume_from_checkpoint is None or not path.is_file():
        return {}
    try:
        recorded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML ({str(error).splitlines()[0]}): the run's record is damaged; "
                         "restore it before resuming.") from error
    if not isinstance(recorded, dict):
        raise ValueError(f"{path} must hold the run's config as a mapping, got {recorded!r}.")
    now = dataclasses.asdict(config)
    changes = {key: (recorded.get(key), value) for key, value in now.items()
               if key not in ("output_dir", "resume_from_checkpoint", "overwrite", "accept_changes")
               and recorded.get(key, value) != value}
    refused = {key: change for key, change in changes.items() if key not in RUN_KEYS}
    if refused and not config.accept_changes:
        shown = "; ".join(f"{key}: {was!r} in the record, {new!r} now" for key, (was, new) in refused.items())
        raise ValueError(f"--resume would change what this run trains ({shown}), so {path} would no longer say how "
                         f"its weights were made. Resume with the recorded values (the same --config and overrides), "
                         f"start a new run in another output_dir, or pass --accept-changes to apply them from the "
                         f"resumed step and append them to {CHANGES_FILE}.")
    return changes


def record_changes(changes: dict, step: int, output_dir) -> None:
    """Append `changes` ({key: (was, now)}) with the step they take effect at to the run's train_changes.yaml."""
    path = Path(output_dir) / CHANGES_FILE
    entry = {"step": step, "changes": {key: {"was": was, "now": new} for key, (was, new) in changes.items()}}
    with open(path, "a") as handle:
        handle.write(yaml.safe_dump([entry], sort_keys=False))
