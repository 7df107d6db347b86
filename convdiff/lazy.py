"""Package attributes that import their module on first use, so importing a package stays light
(`import convdiff`, `convdiff <command> --help` import neither torch nor diffusers)."""

import importlib
import sys


def lazy_attributes(package: str, table: dict):
    """(__getattr__, __dir__) for `package`, whose names in `table` live in the modules it maps them to
    (absolute, or relative to the package)."""

    def __getattr__(name):
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name], package), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__():
        return sorted({*vars(sys.modules[package]), *table})

    return __getattr__, __dir__
