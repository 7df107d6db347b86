"""Classes recorded in a config by import path (a ControlNet's backbone, an inflated model's 2D base, a pipeline
folder's model_index.json entries), and the one way to import them back.

A config may come from someone else's folder, and importing a module runs its top-level code. So a recorded
path is checked as a string before anything is imported: it must name a module inside one of the allowed
packages (convdiff and diffusers for classes; model_index.json components may also come from transformers,
as in diffusers' own pipelines), spelled as plain dotted identifiers. A package already imported is looked up
where it was imported from, never in the current directory or the folder (docs/security.md).
"""

import importlib
import importlib.util
import os
import sys

CLASS_PACKAGES = ("convdiff", "diffusers")
COMPONENT_PACKAGES = (*CLASS_PACKAGES, "transformers")


def class_path(cls: type) -> str:
    """`module.QualifiedName` of a class, as configs record it."""
    return f"{cls.__module__}.{cls.__qualname__}"


def check_module_name(module_name: str, what: str, packages=CLASS_PACKAGES) -> None:
    """Refuse, before any import, a module outside `packages` or one that is not a plain dotted name."""
    parts = module_name.split(".") if isinstance(module_name, str) else [""]
    if not all(part.isidentifier() for part in parts) or parts[0] not in packages:
        raise ValueError(f"The {what} names module {module_name!r}, which is not inside {' or '.join(packages)}: "
                         f"only their own classes are imported from a config, so a folder cannot run code. Record a "
                         f"class such as 'convdiff.models.dic.DiCModel' (docs/security.md).")
    top = parts[0]
    if top not in sys.modules:  # it must resolve to an installed package, not a copy in the current directory
        spec = importlib.util.find_spec(top)
        origin = os.path.abspath(spec.origin) if spec is not None and spec.origin else ""
        if not origin or origin.startswith(os.path.join(os.getcwd(), "")):
            raise ValueError(f"The {what} names package {top!r}, which resolves to {origin or 'nothing'} rather "
                             "than an installed package: install it (and start Python outside a folder holding a copy).")


def import_class(path: str, what: str) -> type:
    """The class at a recorded import path (inside convdiff or diffusers); a ValueError that names `what` it was
    for otherwise. Nothing is imported unless the path passes `check_module_name`."""
    if not isinstance(path, str):
        raise ValueError(f"The {what} class recorded in this model's config must be an import path string such as "
                         f"'convdiff.models.dic.DiCModel', got {path!r}.")
    module_name, _, class_name = path.rpartition(".")
    check_module_name(module_name, f"{what} class {path!r} recorded in this model's config")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"Cannot import the {what} class {path!r} recorded in this model's config: {error}") from None
    if not isinstance(cls, type):
        raise ValueError(f"{path!r} recorded as the {what} class is not a class.")
    return cls


def check_pipeline_folder(folder) -> None:
    """Vet a saved pipeline folder before diffusers loads it: every component model_index.json names must come
    from convdiff, diffusers or transformers (checked as strings, nothing imported first), and every model
    component's config.json must pass the size checks of config_bounds."""
    from pathlib import Path

    import diffusers.pipelines
    from diffusers import ConfigMixin, ModelMixin

    from ..files import read_json
    from .config_bounds import check_saved_config

    folder = Path(folder)
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        return  # not a local pipeline folder: diffusers says so, offline
    index = read_json(index_path, 'an object mapping components to ["library", "ClassName"]')
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, (list, tuple)) or entry[:1] == [None]:
            continue
        if len(entry) != 2 or not all(isinstance(part, str) for part in entry):
            raise ValueError(f"{index_path}: component {name!r} is {entry!r}, expected [\"library\", \"ClassName\"].")
        library, class_name = entry
        if library.isidentifier() and hasattr(diffusers.pipelines, library):
            continue  # a pipeline module of diffusers (["stable_diffusion", "StableDiffusionSafetyChecker"])
        check_module_name(library, f"component {name!r} of {index_path}", COMPONENT_PACKAGES)
        config_path = folder / name / "config.json"
        if library.split(".")[0] not in CLASS_PACKAGES or not config_path.is_file():
            continue
        cls = import_class(f"{library}.{class_name}", f"component {name!r}")
        if not (issubclass(cls, ModelMixin) and issubclass(cls, ConfigMixin)):  # a scheduler, or a model that loads
            continue  # its parts from their own folders (MultiControlNet)
        check_saved_config(cls, read_json(config_path), str(config_path))
