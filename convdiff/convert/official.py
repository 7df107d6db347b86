"""Convert official DiC / DiCo training checkpoints (`.pt`) into convdiff models and diffusers folders.

The official repos (YuchuanTian/DiC, shallowdream204/DiCo) save `{"model", "ema", "opt", "args"}` with
`torch.save`; their sampler loads `ckpt["ema"]` when present, else the file as a raw state dict. Our models
re-implement the same architectures with our own module names, so a checkpoint converts with a key map
and nothing else: no tensor is reshaped, split or re-ordered (chunk orders, the timestep formula and the
layouts are the same; see docs/parity.md for the measured output parity).

The key map is a list of rules, one per module, each a pair of templates (official name, our name) whose
`{placeholders}` stand for block/stage indices. The same rules run in both directions, so
`to_official_state_dict` is the exact inverse of `official_to_convdiff_state_dict`.

Nothing is inferred silently: a checkpoint whose keys or shapes do not fit the requested model raises a
ValueError listing missing, unexpected and mis-shaped keys (official names), with the registered size
(plus config overrides) that would fit when one does.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import pickle
import re
import warnings
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ..files import UnsafePickleError, first_line, load_weights_only, replace_folder
from ..models.config_bounds import check_model_config
from ..models.dic import DiCModel
from ..models.dico import DiCoModel
from ..registry import MODELS, model_spec, normalize_name
from . import diffit
from .sampling import official_sampling_defaults

# --------------------------------------------------------------------------------------------------------
# Key maps
# --------------------------------------------------------------------------------------------------------

_DIC_BLOCK_PARTS = [("norm0", "norm0"), ("conv0", "conv0"), ("affine.1", "modulation.proj"), ("norm1", "norm1"),
                    ("conv1", "conv1"), ("skip", "shortcut")]

DIC_RULES = [
    ("x_embedder.proj", "stem.proj"),
    ("t_embedder_ls.{k}.mlp.{l}", "conditioning.time_embedders.{k}.mlp.{l}"),
    ("y_embedder_ls.{k}.embedding_table", "conditioning.label_embedders.{k}.embedding_table"),
    *[(f"enc_blocks.{{s}}.{{b}}.conv.{theirs}", f"encoder.{{s}}.{{b}}.{ours}") for theirs, ours in _DIC_BLOCK_PARTS],
    *[(f"lat_blocks.0.{{b}}.conv.{theirs}", f"middle.{{b}}.{ours}") for theirs, ours in _DIC_BLOCK_PARTS],
    *[(f"dec_blocks.{{s}}.{{b}}.conv.{theirs}", f"decoder.{{s}}.{{b}}.{ours}") for theirs, ours in _DIC_BLOCK_PARTS],
    ("downs.{s}.body.0", "downsamplers.{s}.conv"),
    ("ups.{s}.body.0", "upsamplers.{s}.conv"),
    ("output", "output_conv"),
    ("final_layer.adaLN_modulation.1", "head.modulation.proj"),
    ("final_layer.out_proj", "head.proj"),
]

_DICO_BLOCK_PARTS = [("conv1", "pointwise_in"), ("conv2", "depthwise"), ("ca.1", "channel_attention.proj"),
                     ("conv3", "pointwise_out"), ("conv4", "ffn_in"), ("conv5", "ffn_out"),
                     ("adaLN_modulation.1", "modulation.proj")]
_DICO_STAGES = [("encoder_level_1", "encoder_1"), ("encoder_level_2", "encoder_2"), ("latent", "middle"),
                ("decoder_level_2", "decoder_2"), ("decoder_level_1", "decoder_1")]

DICO_RULES = [
    ("x_embedder.proj", "stem.proj"),
    *[(f"t_embedder_{k + 1}.mlp.{{l}}", f"conditioning.time_embedders.{k}.mlp.{{l}}") for k in range(3)],
    *[(f"y_embedder.embedding_table_{k}", f"conditioning.label_embedders.{k}.embedding_table") for k in range(3)],
    *[(f"{stage}.{{b}}.{theirs}", f"{ours_stage}.{{b}}.{ours}")
      for stage, ours_stage in _DICO_STAGES for theirs, ours in _DICO_BLOCK_PARTS],
    ("down1_2.body.0", "down_1.conv"),
    ("down2_3.body.0", "down_2.conv"),
    ("up3_2.body.0", "up_2.conv"),
    ("up2_1.body.0", "up_1.conv"),
    ("reduce_chan_level2", "reduce_2"),
    ("reduce_chan_level1", "reduce_1"),
    ("final_layer.adaLN_modulation.1", "head.modulation.proj"),
    ("final_layer.out_proj", "head.proj"),
]


def _template_regex(template: str) -> re.Pattern:
    pattern = ""
    for literal, name in re.findall(r"([^{]*)(?:\{(\w+)\})?", template):
        pattern += re.escape(literal) + (rf"(?P<{name}>\d+)" if name else "")
    return re.compile(rf"^{pattern}\.(?P<param>weight|bias)$")


class KeyMap:
    """Bidirectional, rule-based map between official state-dict keys and ours."""

    def __init__(self, family: str, rules):
        self.family = family
        self.rules = [(theirs, ours, _template_regex(theirs), _template_regex(ours)) for theirs, ours in rules]

    @staticmethod
    def _apply(key: str, source: re.Pattern, target: str):
        match = source.match(key)
        if match is None:
            return None
        values = match.groupdict()
        return target.format(**values) + "." + values["param"]

    def to_ours(self, official_key: str):
        """Our key for an official key, or None when no rule covers it."""
        for theirs, ours, theirs_re, _ in self.rules:
            mapped = self._apply(official_key, theirs_re, ours)
            if mapped is not None:
                return mapped
        return None

    def to_official(self, our_key: str):
        """The official key for one of ours, or None when no rule covers it."""
        for theirs, ours, _, ours_re in self.rules:
            mapped = self._apply(our_key, ours_re, theirs)
            if mapped is not None:
                return mapped
        return None


KEY_MAPS = {"dic": KeyMap("dic", DIC_RULES), "dico": KeyMap("dico", DICO_RULES)}
FAMILY_CLASSES = {"dic": DiCModel, "dico": DiCoModel}
FAMILY_NAMES = {"dic": "DiC (YuchuanTian/DiC)", "dico": "DiCo (shallowdream204/DiCo)"}
# A key that only one official code base has: tells which family a checkpoint comes from.
_FAMILY_SIGNATURES = {"dic": re.compile(r"^(t_embedder_ls|enc_blocks|lat_blocks|dec_blocks)\."),
                      "dico": re.compile(r"^(t_embedder_[123]|encoder_level_[12]|latent|decoder_level_[12])\.")}
# Hooks for families whose converter lives in its own module (convert/diffit.py), registered from its names:
STATE_DICT_PREPARERS = {}  # family -> fn(official state dict) -> the same dict, checked and completed
CONFIG_INFERERS = {}  # family -> fn(official state dict) -> config hints for error messages
for _family in (diffit,):
    KEY_MAPS[_family.FAMILY] = _family.KEY_MAP
    FAMILY_CLASSES[_family.FAMILY] = _family.FAMILY_CLASS
    FAMILY_NAMES[_family.FAMILY] = _family.FAMILY_NAME
    _FAMILY_SIGNATURES[_family.FAMILY] = _family.SIGNATURE
    STATE_DICT_PREPARERS[_family.FAMILY] = _family.prepare_state_dict
    CONFIG_INFERERS[_family.FAMILY] = _family.infer_config


def family_of(model_or_class) -> str:
    cls = model_or_class if isinstance(model_or_class, type) else type(model_or_class)
    for family, family_cls in FAMILY_CLASSES.items():
        if issubclass(cls, family_cls):
            return family
    raise ValueError(f"No official checkpoint format is known for {cls.__name__}; converters exist for "
                     f"{', '.join(c.__name__ for c in FAMILY_CLASSES.values())}.")


def detect_family(state_dict: Mapping):
    """'dic', 'dico' or None, from the official key names."""
    votes = {f: sum(1 for k in state_dict if sig.match(k)) for f, sig in _FAMILY_SIGNATURES.items()}
    best = max(votes, key=votes.get)
    return best if votes[best] else None


def official_to_convdiff_state_dict(state_dict: Mapping, family: str):
    """Rename official keys to ours. Returns (converted dict, list of official keys no rule covers)."""
    key_map = KEY_MAPS[family]
    converted, unexpected = {}, []
    for key, value in state_dict.items():
        ours = key_map.to_ours(key)
        if ours is None:
            unexpected.append(key)
        else:
            converted[ours] = value
    return converted, unexpected


def to_official_state_dict(model_or_state_dict, family: str | None = None) -> dict:
    """Our model (or its state dict) under the official key names: the inverse of the conversion."""
    if isinstance(model_or_state_dict, torch.nn.Module):
        family = family or family_of(model_or_state_dict)
        state_dict = model_or_state_dict.state_dict()
    else:
        if family is None:
            raise ValueError("pass family='dic' or 'dico' with a plain state dict.")
        state_dict = model_or_state_dict
    key_map = KEY_MAPS[family]
    out = {}
    for key, value in state_dict.items():
        official = key_map.to_official(key)
        if official is None:
            raise ValueError(f"{key!r} has no official counterpart in the {family} key map.")
        out[official] = value
    return out


def official_shapes(model: torch.nn.Module) -> dict:
    """{official key: shape} the official code would have for a model of this config."""
    return {k: tuple(v.shape) for k, v in to_official_state_dict(model).items()}


# --------------------------------------------------------------------------------------------------------
# Reading checkpoints
# --------------------------------------------------------------------------------------------------------

# The only Python object an official DiC / DiCo training checkpoint holds besides tensors and plain containers:
# the trainer's argparse.Namespace under "args" (their train.py saves `{"model", "ema", "opt", "args"}`).
SAFE_GLOBALS = (argparse.Namespace,)


def load_official_checkpoint(path, trust_pickle: bool = False):
    """Read an official `.pt` (or a `.safetensors` state dict) onto the CPU, never running code from it.

    `.pt` files are read with `torch.load(weights_only=True)`, allowing `argparse.Namespace` (SAFE_GLOBALS)
    besides tensors. A file that needs any other Python object is refused with a ValueError: unpickling it
    could run arbitrary code. Only `trust_pickle=True` (CLI: `--trust-pickle`) unpickles such a file fully,
    for files from a source you trust; there is no automatic fallback.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # noqa: BLE001  (safetensors raises its own error type for every defect)
            raise ValueError(f"{path} is not a readable .safetensors file, damaged or truncated "
                             f"({first_line(error)}).") from error
    # Memory-map (zip-format files): the "opt" and "model" entries of a training checkpoint are never read.
    mmap = zipfile.is_zipfile(path)
    if not trust_pickle:
        try:
            return load_weights_only(path, safe_globals=SAFE_GLOBALS, mmap=mmap)
        except UnsafePickleError as error:
            raise UnsafePickleError(f"{error} Refusing to load it. If you trust where the file comes from, rerun "
                                    "with trust_pickle=True (CLI: --trust-pickle), which runs whatever code it holds.") from error
    warnings.warn(f"trust_pickle=True: unpickling {path} fully (torch.load(weights_only=False)), which runs any code "
                  "it holds; only do this with files you trust.", stacklevel=2)
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"{path} is not a readable torch checkpoint ({first_line(error)}).") from error


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def select_state_dict(checkpoint: Mapping, use_ema: bool = True):
    """Pick the weights out of a loaded checkpoint: ("ema" | "model" | "state_dict", state dict).

    Like the official `find_model`: a training checkpoint gives its "ema" entry (or "model" with
    use_ema=False, or when there is no EMA); anything whose values are all tensors is a raw state dict.
    """
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"expected a checkpoint dict or a state dict, got {type(checkpoint).__name__}.")
    if _is_state_dict(checkpoint):
        return "state_dict", dict(checkpoint)
    if use_ema and "ema" in checkpoint:
        source = "ema"
    elif "model" in checkpoint:
        if use_ema:
            warnings.warn("the checkpoint has no 'ema' weights; converting its 'model' (raw, non-EMA) weights.", stacklevel=2)
        source = "model"
    else:
        wanted = "'ema' or 'model'" if use_ema else "'model' (use_ema=False)"
        raise ValueError(f"the checkpoint has no {wanted} entry and is not a state dict; its top-level keys are "
                         f"{sorted(map(str, checkpoint))[:10]}.")
    state_dict = checkpoint[source]
    if not _is_state_dict(state_dict):
        raise ValueError(f"checkpoint[{source!r}] is not a state dict of tensors (got {type(state_dict).__name__}).")
    return source, dict(state_dict)


def strip_prefixes(state_dict: Mapping, prefixes=("module.", "_orig_mod.")) -> dict:
    """Remove DDP's `module.` (and torch.compile's `_orig_mod.`) from the front of every key."""
    out = {}
    for key, value in state_dict.items():
        stripped = key
        changed = True
        while changed:
            changed = False
            for prefix in prefixes:
                if stripped.startswith(prefix):
                    stripped, changed = stripped[len(prefix):], True
        if stripped in out:
            raise ValueError(f"keys {key!r} and another one both become {stripped!r} once prefixes are stripped.")
        out[stripped] = value
    return out


# --------------------------------------------------------------------------------------------------------
# Fitting a checkpoint to a model config
# --------------------------------------------------------------------------------------------------------

def _full_config(cls, config: Mapping) -> dict:
    defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                if name != "self" and p.default is not inspect.Parameter.empty}
    full = {**defaults, **config}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in full.items()}


def _resolve(model_name_or_config, overrides: Mapping):
    """(display name, class, config) from a registry name, a (class, config) pair or a diffusers config dict."""
    if isinstance(model_name_or_config, str):
        cls, config = model_spec(model_name_or_config)
        name = normalize_name(model_name_or_config)
    elif isinstance(model_name_or_config, tuple) and len(model_name_or_config) == 2:
        cls, config = model_name_or_config[0], dict(model_name_or_config[1])
        name = cls.__name__
    elif isinstance(model_name_or_config, Mapping):
        by_name = {c.__name__: c for c in FAMILY_CLASSES.values()}
        class_name = model_name_or_config.get("_class_name")
        if class_name not in by_name:
            raise ValueError(f"a config dict needs '_class_name' set to one of {sorted(by_name)} (as in a saved config.json); "
                             f"got {class_name!r}.")
        cls = by_name[class_name]
        config = {k: v for k, v in model_name_or_config.items() if not k.startswith("_")}
        name = class_name
    else:
        raise ValueError("model_name_or_config must be a registry name (e.g. 'dico-xl'), a (class, config) pair or a "
                         f"config dict with '_class_name'; got {type(model_name_or_config).__name__}.")
    family_of(cls)  # raises for classes without an official format
    config.update(overrides)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - accepted)
    if unknown:
        raise ValueError(f"{cls.__name__} has no config option(s) {unknown}; it takes {sorted(accepted)}.")
    check_model_config(cls, config, f"the {name} config with overrides {dict(overrides)} (--set)" if overrides
                       else f"the {name} config")
    return name, cls, config


def _build_meta(cls, config):
    with torch.device("meta"):
        return cls(**config)


def infer_official_config(state_dict: Mapping, family: str) -> dict:
    """Best-effort config read off the official key names and shapes (used only for error hints)."""
    if family in CONFIG_INFERERS:
        return CONFIG_INFERERS[family](state_dict)
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    stem = shapes.get("x_embedder.proj.weight")
    head = shapes.get("final_layer.out_proj.weight")
    if stem is None or head is None:
        return {}
    hidden, in_channels = stem[0], stem[1]
    config = dict(hidden_size=hidden, in_channels=in_channels, learn_sigma=head[0] == 2 * in_channels)

    def count(prefix):
        pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
        return len({m.group(1) for k in shapes for m in [pattern.match(k)] if m})

    if family == "dico":
        config["depth"] = [count(stage) for stage, _ in _DICO_STAGES]
        ffn = next((s for k, s in shapes.items() if k.endswith(".conv4.weight")), None)
        if ffn is not None:
            ratio = ffn[0] / hidden
            config["mlp_ratio"] = int(ratio) if ratio == int(ratio) else ratio
        table = shapes.get("y_embedder.embedding_table_0.weight")
    else:
        levels = count("t_embedder_ls")
        widths = [shapes[f"t_embedder_ls.{k}.mlp.0.weight"][0] for k in range(levels)]
        dec_widths = [shapes[f"dec_blocks.{s}.0.conv.conv1.weight"][0] for s in range(levels - 1)
                      if f"dec_blocks.{s}.0.conv.conv1.weight" in shapes]
        if hidden and len(dec_widths) == levels - 1 and all(w % hidden == 0 for w in widths + dec_widths):
            config["mult_channels"] = [w // hidden for w in widths + dec_widths]
        enc = [count(f"enc_blocks.{s}") for s in range(levels - 1)]
        dec = [count(f"dec_blocks.{s}") for s in range(levels - 1)]
        config["depth"] = enc + [count("lat_blocks.0")] + dec
        with_skip = sorted(int(m.group(1)) for k in shapes for m in [re.match(r"^dec_blocks\.0\.(\d+)\.conv\.skip\.weight$", k)] if m)
        if len(with_skip) >= 2:
            config["skip_stride"] = with_skip[1] - with_skip[0]
        elif with_skip and dec and dec[0] > 3:
            config["skip_stride"] = dec[0]
        table = shapes.get("y_embedder_ls.0.embedding_table.weight")
    if table is not None:
        config["num_classes"] = table[0] - 1  # the official tables carry one null row for classifier-free guidance
    else:
        config["num_classes"] = 0
    return config


def _fits(cls, config, official: Mapping) -> bool:
    try:
        expected = official_shapes(_build_meta(cls, config))
    except Exception:  # noqa: BLE001  (an inferred config may simply be invalid)
        return False
    return expected == {k: tuple(v.shape) for k, v in official.items()}


def suggest_model(state_dict: Mapping, family: str | None = None) -> str:
    """A sentence naming the registered size (plus overrides) whose official keys and shapes the checkpoint has."""
    family = family or detect_family(state_dict)
    if family is None:
        return ("Its keys look like neither the official DiC nor DiCo code (expected keys such as "
                "'t_embedder_ls.0.mlp.0.weight' or 't_embedder_1.mlp.0.weight').")
    inferred = infer_official_config(state_dict, family)
    cls = FAMILY_CLASSES[family]
    candidates = []
    for name, (model_cls, config) in MODELS.items():
        if model_cls is not cls:
            continue
        full = _full_config(cls, config)
        overrides = {k: v for k, v in inferred.items() if full.get(k) != v}
        candidates.append((len(overrides), name, overrides))
    candidates.sort(key=lambda c: c[0])
    for _, name, overrides in candidates[:2]:
        if _fits(cls, {**model_spec(name)[1], **overrides}, state_dict):
            extra = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
            cli = " ".join(f"--set {k}={json.dumps(v, separators=(',', ':'))}" for k, v in overrides.items())
            return (f"It is a {FAMILY_NAMES[family]} checkpoint that fits {name!r}"
                    + (f" with config overrides {extra} (CLI: --model {name} {cli})." if extra
                       else f": convert it with model={name!r} (CLI: --model {name})."))
    shown = ", ".join(f"{k}={v!r}" for k, v in inferred.items())
    return (f"It is a {FAMILY_NAMES[family]} checkpoint, but no registered size fits it"
            + (f" (its shapes suggest {shown})." if shown else "."))


def _fit_error(name, cls, config, official: Mapping, expected: Mapping, unexpected, family) -> ValueError:
    given = {k: tuple(v.shape) for k, v in official.items()}
    missing = [k for k in expected if k not in given]
    unexpected = list(unexpected) + [k for k in given if k not in expected and k not in unexpected]
    mismatched = [f"{k}: checkpoint {given[k]} vs model {expected[k]}" for k in expected if k in given and given[k] != expected[k]]
    structural = {k: config[k] for k in ("hidden_size", "depth", "mlp_ratio", "num_classes") if k in config}
    lines = [f"The checkpoint does not fit {name} ({cls.__name__}, {', '.join(f'{k}={v}' for k, v in structural.items())}); "
             "keys are in the official naming:"]
    for label, items in (("missing key(s), in the model but not in the checkpoint", missing),
                         ("unexpected key(s), in the checkpoint but not in the model", unexpected),
                         ("shape mismatch(es)", mismatched)):
        if items:
            more = f", ... ({len(items) - 10} more)" if len(items) > 10 else ""
            lines.append(f"  {len(items)} {label}: {', '.join(items[:10])}{more}")
    checkpoint_family = detect_family(official)
    if checkpoint_family is not None and checkpoint_family != family:
        lines.append(f"This looks like a {FAMILY_NAMES[checkpoint_family]} checkpoint, not {FAMILY_NAMES[family]}.")
    try:
        lines.append(suggest_model(official, checkpoint_family))
    except Exception:  # noqa: BLE001  (a hint must never hide the real error)
        pass
    return ValueError("\n".join(lines))


# --------------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------------

def convert_official_checkpoint(checkpoint, model_name_or_config="dico-xl", use_ema: bool = True,
                                trust_pickle: bool = False, torch_dtype: torch.dtype = torch.float32, **config_overrides):
    """An official DiC/DiCo checkpoint as a convdiff model (eval mode, on the CPU).

    checkpoint: a path to the official `.pt` (or a `.safetensors` state dict), a loaded checkpoint dict
        ({"model", "ema", "opt", "args"}) or a raw state dict; a `module.` prefix is stripped.
    model_name_or_config: a registry name ("dico-xl", "dic-s", ...), a (class, config) pair, or a diffusers
        config dict with "_class_name"; `config_overrides` change it (e.g. sample_size=64 for a 512px model).
    use_ema: take the "ema" weights (like the official sampler); False takes "model".
    Raises ValueError, listing missing/unexpected/mis-shaped keys and a size that fits, when the checkpoint
    does not fit the model exactly.
    """
    name, cls, config = _resolve(model_name_or_config, config_overrides)
    family = family_of(cls)
    from_file = isinstance(checkpoint, (str, os.PathLike))
    if from_file:
        checkpoint = load_official_checkpoint(checkpoint, trust_pickle=trust_pickle)
    _, state_dict = select_state_dict(checkpoint, use_ema=use_ema)
    official = strip_prefixes(state_dict)
    official = STATE_DICT_PREPARERS.get(family, dict)(official)

    model = _build_meta(cls, config)
    expected = official_shapes(model)
    converted, unexpected = official_to_convdiff_state_dict(official, family)
    if unexpected or set(expected) != set(official) or any(tuple(official[k].shape) != s for k, s in expected.items()):
        raise _fit_error(name, cls, config, official, expected, unexpected, family)

    # From a file the tensors are memory-mapped: copy them so the model never depends on the file.
    converted = {k: (v.to(torch_dtype, copy=from_file) if v.is_floating_point() else v.clone() if from_file else v).contiguous()
                 for k, v in converted.items()}
    model.load_state_dict(converted, strict=True, assign=True)
    left_on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left_on_meta:  # a tensor the state dict does not carry (none today); never hand out a half-loaded model
        raise RuntimeError(f"{cls.__name__} has tensors the checkpoint cannot fill: {left_on_meta[:10]}.")
    return model.eval()


def _check_target(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a folder; choose another --output.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; pass overwrite=True (CLI: --overwrite) to replace it.")


def save_folder_atomically(model, output_dir, overwrite: bool = False, **save_kwargs) -> Path:
    """`save_pretrained` (safetensors) of a model or pipeline into a hidden partial folder beside `output_dir`, fsynced, then renamed
    into place (convdiff/files.py). On any failure the target is left exactly as it was and the partial folder
    is removed; a failed write (disk full, no permission) raises one OSError naming the folder and the cause.
    `save_kwargs` go to `save_pretrained` (a pipeline's model-card `conversion` record).
    """
    output_dir = Path(output_dir)
    _check_target(output_dir, overwrite)
    # it may have appeared meanwhile: checked again just before the swap
    return replace_folder(output_dir, lambda folder: model.save_pretrained(folder, safe_serialization=True, **save_kwargs),
                          check=lambda: _check_target(output_dir, overwrite))


def load_vae(vae):
    """An `AutoencoderKL` from a local folder (its own, or a pipeline's `vae/`); an AutoencoderKL passes through."""
    from diffusers import AutoencoderKL

    if vae is None or isinstance(vae, AutoencoderKL):
        return vae
    folder = Path(vae)
    if (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"No AutoencoderKL folder at {vae} (expected config.json + weights, e.g. a local copy "
                                "of stabilityai/sd-vae-ft-ema, the VAE the official samplers decode with).")
    return AutoencoderKL.from_pretrained(folder, local_files_only=True)


def official_pipeline(model, vae=None):
    """A ClassConditionalPipeline that samples a converted model as its official sample script does.

    The scheduler is ADM's 250-step DDPM sampler (`adm_scheduler`: learned-range variance, timesteps 999, 995,
    ..., no clipping), and `sampling_defaults` hold the script's steps, guidance scale, guidance channels
    (3) and schedule (power-cosine for 256px DiffiT): convert/sampling.py.
    """
    from ..pipelines import ClassConditionalPipeline
    from ..pipelines.schedulers import adm_scheduler

    config = model.config
    scheduler = adm_scheduler(learned_sigma=config.out_channels == 2 * config.in_channels)
    return ClassConditionalPipeline(transformer=model, scheduler=scheduler, vae=load_vae(vae),
                                    sampling_defaults=official_sampling_defaults(family_of(model), config))


def convert_official_to_folder(path, output_dir, model="dico-xl", use_ema: bool = True, overwrite: bool = False,
                               trust_pickle: bool = False, vae=None, **config_overrides) -> Path:
    """Convert an official checkpoint into a diffusers pipeline folder at `output_dir`.

    The folder holds `model_index.json`, `transformer/` (config.json + safetensors), `scheduler/` and, given
    `vae` (a local AutoencoderKL folder), `vae/`: `ClassConditionalPipeline.from_pretrained(output_dir)` samples
    like the official script without arguments (`official_pipeline`); the model alone loads with
    `DiCoModel.from_pretrained(output_dir, subfolder="transformer")`. Without a VAE the pipeline returns
    latents (`output_type="latent"`), or pass `vae=` to `from_pretrained`.
    The folder is written atomically; an existing non-empty folder is only replaced with overwrite=True.
    """
    _check_target(Path(output_dir), overwrite)  # fail before the (slow) load
    vae = load_vae(vae)
    converted = convert_official_checkpoint(path, model, use_ema=use_ema, trust_pickle=trust_pickle, **config_overrides)
    conversion = {"source checkpoint": Path(path).name, "model": model if isinstance(model, str) else "a config dict",
                  "weights": "EMA" if use_ema else "raw (use_ema=False)",
                  "sampling": "the official sample script's (ADM's DDPM, its steps and guidance): convert/sampling.py",
                  "checked against the official code": "docs/parity.md of the convdiff repository",
                  "date": time.strftime("%Y-%m-%d")}
    return save_folder_atomically(official_pipeline(converted, vae), output_dir, overwrite=overwrite,
                                  conversion=conversion)
