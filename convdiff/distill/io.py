"""Save and load ΔConvFusion students: the student weights alone as a safetensors adapter, or a whole
converted model folder (`save_pretrained` + `load_converted`).

A converted model's config records the conversion under `convfusion`. Loading a folder therefore means:
build the base class from its config, convert it the recorded way, then load the saved weights strictly.
diffusers' own `from_pretrained` of the base class would silently drop the students, hence `load_converted`.
"""

import json
from pathlib import Path

import diffusers
from safetensors.torch import load_file, save_file

from .. import models
from ..files import read_json
from ..models.config_bounds import check_saved_config
from ..models.convfusion import conversion_of, convert_self_attention, student_modules, student_state_dict

ADAPTER_NAME = "convfusion_adapter.safetensors"


def save_adapter(model, path) -> Path:
    """Write the student weights (and the conversion recipe as metadata) to a .safetensors file or folder."""
    spec = conversion_of(model)
    if spec is None or not student_modules(model):
        raise ValueError("This model has no ΔConvFusion students to save: run convert_self_attention first.")
    path = Path(path)
    if path.suffix != ".safetensors":
        path.mkdir(parents=True, exist_ok=True)
        path = path / ADAPTER_NAME
    state = {k: v.detach().contiguous().cpu() for k, v in student_state_dict(model).items()}
    save_file(state, str(path), metadata={"convfusion": json.dumps(spec)})
    return path


def read_adapter(path):
    """(state dict, conversion recipe) of an adapter file or a folder holding one."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / ADAPTER_NAME
    if not path.is_file():
        raise FileNotFoundError(f"No ΔConvFusion adapter at {path}.")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if "convfusion" not in metadata:
        raise ValueError(f"{path} is not a ΔConvFusion adapter (its metadata has no 'convfusion' recipe).")
    return load_file(str(path)), json.loads(metadata["convfusion"])


def load_adapter(model, path):
    """Convert `model` as the adapter was made (unless already converted) and load the student weights.
    Every student weight must be in the adapter and every adapter weight must fit the model."""
    state, spec = read_adapter(path)
    if not student_modules(model):
        convert_self_attention(model, **spec)
    expected = student_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in set(state) & set(expected) if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"The adapter does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}, "
                         f"wrong shapes {wrong[:3]} (it was made for another base model or another conversion).")
    model.load_state_dict(state, strict=False)
    return model


def _model_class(name: str):
    for source in (diffusers, models) if isinstance(name, str) else ():
        if hasattr(source, name):
            return getattr(source, name)
    raise ValueError(f"Unknown model class {name!r} in the config: pass model_class= to load_converted.")


def load_converted(folder, model_class=None, torch_dtype=None):
    """A converted model saved with `save_pretrained`: base config -> convert as recorded -> strict weights."""
    from diffusers.models.model_loading_utils import load_state_dict

    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: is it a save_pretrained folder of a converted model?")
    config = read_json(config_path)
    model_class = model_class or _model_class(config.get("_class_name"))
    spec = config.pop("convfusion", None)
    if spec is None:
        raise ValueError(f"{folder} holds an unconverted {config['_class_name']}: load it with from_pretrained.")
    check_saved_config(model_class, config, str(config_path))
    model = model_class.from_config(config)
    convert_self_attention(model, **spec)
    weights = sorted(folder.glob("diffusion_pytorch_model*.safetensors")) or sorted(folder.glob("*.bin"))
    if not weights:
        raise FileNotFoundError(f"No weights (diffusion_pytorch_model.safetensors) in {folder}.")
    state = {}
    for file in weights:
        state.update(load_state_dict(str(file)))
    model.load_state_dict(state, strict=True)
    if torch_dtype is not None:
        model.to(torch_dtype)
    return model.eval()
