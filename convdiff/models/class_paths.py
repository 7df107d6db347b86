"""Classes recorded in a config by import path (a ControlNet's backbone, an inflated model's 2D base), and the one
way to import them back with a clear error."""

import importlib


def class_path(cls: type) -> str:
    """`module.QualifiedName` of a class, as configs record it."""
    return f"{cls.__module__}.{cls.__qualname__}"


def import_class(path: str, what: str) -> type:
    """The class at a recorded import path; a ValueError that names `what` it was for otherwise."""
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"Cannot import the {what} class {path!r} recorded in this model's config: {error}") from None
    if not isinstance(cls, type):
        raise ValueError(f"{path!r} recorded as the {what} class is not a class.")
    return cls
