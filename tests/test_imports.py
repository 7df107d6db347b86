"""The import graph of convdiff: no cycle, lazy imports included, and no arrow from a lower layer up.

The layer order is the floor plan of docs/architecture.md. A module may import its own layer and the
layers below it; function-local (lazy) imports count for the direction too, so a lazy import cannot hide
an upward dependency. Read from the source with `ast`, so nothing here imports torch.
"""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "convdiff"

# Lowest first. A module belongs to the entry that names it, else to the one naming its nearest package.
LAYERS = [
    ("foundation", ["convdiff.files", "convdiff.grids", "convdiff.diffusion", "convdiff.lazy"]),
    ("nn", ["convdiff.nn"]),
    ("models", ["convdiff.models"]),
    ("registry", ["convdiff.registry"]),
    ("library", ["convdiff.data", "convdiff.pipelines", "convdiff.eval", "convdiff.convert"]),
    ("training", ["convdiff.training"]),
    ("distill", ["convdiff.distill"]),
    # The top: commands, demos and benchmarks (convdiff/apps/), the CLI that dispatches to them, the package
    # __init__ and the `python -m` entry points. They may import anything.
    ("applications", ["convdiff", "convdiff.__main__", "convdiff.convert.__main__", "convdiff.cli", "convdiff.apps"]),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> int:
    named = [(len(p), level) for level, (_, prefixes) in enumerate(LAYERS) for p in prefixes
             if module == p or (p != "convdiff" and module.startswith(p + "."))]
    if not named:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS here and to docs/architecture.md")
    return max(named)[1]


def imports(module: str):
    """[(imported convdiff module, at module level?)] of one module."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from package import submodule` imports the submodule; `from module import name` the module.
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source for a in node.names]
        for target in targets:
            if target == "convdiff" or target.startswith("convdiff."):
                while target not in MODULES:  # `import convdiff.x.y` of a name inside a module
                    target = target.rpartition(".")[0]
                found.append((target, id(node) in top_level))
    return found


GRAPH = {module: imports(module) for module in MODULES}


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_import_points_to_a_higher_layer():
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) -> {t} ({LAYERS[layer_of(t)][0]}){'' if top else ' [lazy]'}"
              for m, targets in GRAPH.items() for t, top in targets if layer_of(t) > layer_of(m)]
    assert not upward, "imports pointing up the layers:\n" + "\n".join(sorted(upward))


def cycles_of(edges: dict) -> list[str]:
    """Every cycle a depth-first walk of `edges` ({module: [imported modules]}) closes, as "a -> b -> a"."""
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in edges[node]:
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module)
    return cycles


def test_module_level_imports_have_no_cycle():
    edges = {m: sorted({t for t, top in targets if top and t != m}) for m, targets in GRAPH.items()}
    cycles = cycles_of(edges)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_cycle_through_function_local_imports():
    """A lazy import only defers a dependency: two modules that need each other are one tangle either way."""
    edges = {m: sorted({t for t, _ in targets if t != m}) for m, targets in GRAPH.items()}
    cycles = cycles_of(edges)
    assert not cycles, "import cycles (lazy imports included):\n" + "\n".join(cycles)


def test_the_layers_cover_the_house_rule():
    """nn -> models -> pipelines / training / distill / eval: the documented order holds in LAYERS."""
    order = [layer_of(m) for m in ("convdiff.nn", "convdiff.models", "convdiff.pipelines", "convdiff.training",
                                   "convdiff.distill", "convdiff.cli")]
    assert order == sorted(order) and layer_of("convdiff.nn") < layer_of("convdiff.models") < layer_of("convdiff.eval")


def test_nothing_below_the_applications_imports_them():
    """convdiff/apps/ is the top floor: the library layers never reach into it, not even lazily."""
    assert layer_of("convdiff.apps") == len(LAYERS) - 1 == layer_of("convdiff.apps.benchmarks.forward")
    into_apps = [f"{m} -> {t}" for m, targets in GRAPH.items() for t, _ in targets
                 if t.split(".")[:2] == ["convdiff", "apps"] and layer_of(m) < len(LAYERS) - 1]
    assert not into_apps, "library modules importing applications:\n" + "\n".join(sorted(into_apps))


def test_import_convdiff_stays_light():
    code = "import sys, convdiff; print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
