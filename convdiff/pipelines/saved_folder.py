"""How a saved convdiff pipeline folder presents itself to diffusers: the convention for pipelines outside it.

diffusers finds a pipeline class that is not its own through a code file in the folder: model_index.json names
`[file, class]` as `_class_name`, and `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` imports
`<file>.py` from the folder and takes the class from it (diffusers' custom-pipeline loading,
`pipeline_loading_utils._resolve_custom_pipeline_and_cls`). The file convdiff writes holds a single import from
the installed convdiff package, so the folder carries no code of its own. convdiff's own loaders
(`ClassConditionalPipeline.from_pretrained(folder)`, ...) read the class name out of the list and never run the
file (`DenoisingPipeline.load_config`), so they need no `trust_remote_code`.
"""

import json
from pathlib import Path

CODE_FILE = "convdiff_pipeline"  # <folder>/convdiff_pipeline.py, named by model_index.json's `_class_name`


def code_file_text(pipeline_class: type) -> str:
    return (f'"""Lets diffusers load this folder: DiffusionPipeline.from_pretrained(folder, trust_remote_code=True).\n\n'
            f"The pipeline's code is the installed convdiff package's (pip install convdiff); this file only imports "
            f"it.\nconvdiff's own loader, {pipeline_class.__name__}.from_pretrained(folder), does not run this file.\n"
            f'"""\n\nfrom {pipeline_class.__module__} import {pipeline_class.__name__}  # noqa: F401\n')


def is_convdiff_class(pipeline_class: type) -> bool:
    return pipeline_class.__module__.split(".")[0] == "convdiff"


def write_diffusers_entry(folder, pipeline_class: type) -> None:
    """The code file and the `[file, class]` `_class_name` in the model_index.json that `save_pretrained` wrote."""
    if not is_convdiff_class(pipeline_class):
        return  # a user's subclass: diffusers' own `_class_name` string, as save_pretrained wrote it
    folder = Path(folder)
    (folder / f"{CODE_FILE}.py").write_text(code_file_text(pipeline_class))
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index["_class_name"] = [CODE_FILE, pipeline_class.__name__]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def pipeline_class_name(class_name, source="model_index.json") -> str:
    """The class name of a model_index.json `_class_name`: diffusers' plain string or convdiff's `[file, class]`."""
    if isinstance(class_name, (list, tuple)) and len(class_name) == 2 and all(isinstance(p, str) for p in class_name):
        return class_name[1]
    if not isinstance(class_name, str):
        raise ValueError(f"{source} records _class_name={class_name!r}, expected the pipeline class name as a string "
                         f"or [{CODE_FILE!r}, class name] as convdiff writes it.")
    return class_name
