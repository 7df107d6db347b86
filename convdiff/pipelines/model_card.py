"""The model card (README.md with the Hub's YAML header) that every saved convdiff pipeline folder carries.

Filled from what the writer knows: the pipeline itself (classes, parameters, sample shape, conditioning, the
sampling a call uses by default), the training run when the training loop saves it (recipe values, steps,
wall time, machine), the conversion when `convdiff convert` does, and the figures when an evaluation ran
(`add_evaluation`). The header keys are the Hub's (library_name, pipeline_tag, tags, base_model, license).
"""

import platform
from pathlib import Path

import yaml

from ..files import replace_file

LICENSE = "apache-2.0"  # the project's (pyproject.toml); weights trained by convdiff are released under it too
EVALUATION_HEADING = "## Evaluation"


def machine() -> str:
    """The CPU (or GPU) model, thread count and torch version, for the training record."""
    import torch

    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = platform.processor() or platform.machine()
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.is_file():
            names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                     if line.startswith("model name")]
            device = names[0] if names else device
    return f"{device}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def pipeline_tag(pipeline) -> str:
    """The Hub's task for this pipeline (the Hub has no class-conditional tag: such models are listed as
    unconditional image generation, as diffusers' DiT checkpoints are)."""
    name = type(pipeline).__name__
    has_text = getattr(pipeline, "text_encoder", None) is not None
    if "ControlNet" in name:
        return "image-to-image"
    if name.startswith("FourD"):
        return "image-to-video"
    if name.startswith("Video"):
        return "text-to-video" if has_text else "unconditional-image-generation"
    return "text-to-image" if has_text else "unconditional-image-generation"


def usage(pipeline) -> str:
    """A call that works on this folder with its defaults."""
    name = type(pipeline).__name__
    denoiser = pipeline.denoiser
    if getattr(pipeline, "text_encoder", None) is not None:
        arguments = 'prompt="a handwritten digit seven"'
    elif denoiser.config.get("num_classes"):
        arguments = "class_labels=[0, 1, 2, 3]"
    else:
        arguments = "batch_size=4"
    if "ControlNet" in name:
        arguments = "condition_images, " + arguments
    return (f"from convdiff.pipelines import {name}\n"
            f'pipe = {name}.from_pretrained("path/to/this/folder")\n'
            f"output = pipe({arguments})  # the sampling defaults above; pass num_inference_steps= etc. to change them\n\n"
            "# or with diffusers alone (it imports convdiff_pipeline.py, which only imports the installed convdiff):\n"
            "from diffusers import DiffusionPipeline\n"
            'pipe = DiffusionPipeline.from_pretrained("path/to/this/folder", trust_remote_code=True)')


def describe(pipeline) -> list[str]:
    denoiser = pipeline.denoiser
    config = denoiser.config
    parameters = sum(p.numel() for p in denoiser.parameters()) / 1e6
    lines = [f"- pipeline: `{type(pipeline).__name__}`; denoiser: `{type(denoiser).__name__}`, {parameters:.2f}M parameters",
             f"- input: {config.get('in_channels')} channel(s) at {config.get('sample_size')} px"
             + (f", {config['num_classes']} classes" if config.get("num_classes") else "")
             + (", text prompts" if getattr(pipeline, "text_encoder", None) is not None else ""),
             f"- scheduler: `{type(pipeline.scheduler).__name__}`"]
    defaults = {**pipeline.builtin_sampling, **(pipeline.config.get("sampling_defaults") or {})}
    shown = ", ".join(f"{key}={value}" for key, value in defaults.items())
    lines.append(f"- a call with no sampling arguments uses: {shown}")
    return lines


def render_card(header: dict, title: str, lines: list[str], usage_code: str, records: dict,
                evaluation: list[str] | None = None) -> str:
    """README.md text: the Hub's YAML header, a description, a usage snippet, `{heading: {label: value}}` records,
    the evaluation (its figures, protocol and command) and the limits."""
    parts = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "", f"# {title}", "", *lines, "",
             "## Use", "", "```python", usage_code, "```", ""]
    for heading, record in records.items():
        if record:
            parts += [f"## {heading}", "", *(f"- {key}: {value}" for key, value in record.items()), ""]
    parts += [EVALUATION_HEADING, "", *(evaluation or ["No evaluation was run when this folder was written."]), "",
              "## Limits", "",
              "Trained and measured as the records above say, and nowhere else: a small or synthetic training set "
              "gives a model of that data only. Sampling with other settings than the defaults changes the figures.",
              ""]
    return "\n".join(parts)


def model_card(pipeline, training: dict | None = None, conversion: dict | None = None,
               evaluation: list[str] | None = None) -> str:
    """README.md text for a folder holding `pipeline`; `training` / `conversion`: `{label: value}` records."""
    family = type(pipeline.denoiser).__name__.removesuffix("Model").lower()
    header = {"library_name": "diffusers", "pipeline_tag": pipeline_tag(pipeline), "license": LICENSE,
              "tags": ["convdiff", family, type(pipeline).__name__]}
    base_model = (training or conversion or {}).get("base model")
    if base_model:
        header["base_model"] = str(base_model)
    title = type(pipeline).__name__ if training is None else f"{type(pipeline).__name__}, trained by convdiff"
    return render_card(header, title, describe(pipeline), usage(pipeline),
                       {"Training": training, "Conversion": conversion}, evaluation)


def write_model_card(folder, pipeline, training: dict | None = None, conversion: dict | None = None,
                     evaluation: list[str] | None = None) -> Path:
    path = Path(folder) / "README.md"
    path.write_text(model_card(pipeline, training, conversion, evaluation))
    return path


def add_evaluation(folder, lines: list[str]) -> Path:
    """Replace the card's evaluation section with `lines` (the figures, their protocol and the command)."""
    path = Path(folder) / "README.md"
    text = path.read_text()
    start = text.index(EVALUATION_HEADING)
    end = text.find("\n## ", start + len(EVALUATION_HEADING))
    section = "\n".join([EVALUATION_HEADING, "", *lines, ""])
    new_text = text[:start] + section + (text[end:] if end != -1 else "")
    return replace_file(path, lambda partial: partial.write_text(new_text))
