"""Input checks and timestep broadcasting shared by the convdiff denoisers' forward passes.

Bad input fails here with a message that says what was expected, never deep inside torch.
"""

import torch


def broadcast_timesteps(timestep, batch_size: int, device) -> torch.Tensor:
    """Accept an int/float, a 0-d tensor or an (N,) tensor and return an (N,) tensor on `device`."""
    if not torch.is_tensor(timestep):
        timestep = torch.tensor([timestep], dtype=torch.float32 if isinstance(timestep, float) else torch.long)
    timestep = timestep.to(device)
    if timestep.ndim == 0:
        timestep = timestep[None]
    if timestep.ndim != 1 or timestep.shape[0] not in (1, batch_size):
        raise ValueError(f"timestep must be a scalar or have shape ({batch_size},), got shape {tuple(timestep.shape)}.")
    return timestep.expand(batch_size)


def check_sample(hidden_states: torch.Tensor, in_channels: int, stride: int, model_name: str) -> None:
    if hidden_states.ndim != 4:
        raise ValueError(f"{model_name} expects a (batch, channels, height, width) tensor, got shape {tuple(hidden_states.shape)}.")
    channels, height, width = hidden_states.shape[1:]
    if channels != in_channels:
        raise ValueError(
            f"{model_name} was built for in_channels={in_channels} but got {channels} channels: use a model with "
            f"in_channels={channels} (4 for SD-VAE latents, 1 or 3 for pixels) or pass data with {in_channels} channels."
        )
    if height % stride or width % stride:
        raise ValueError(
            f"{model_name} downsamples by {stride}, so height and width must be divisible by {stride}; got {height}x{width}. "
            f"Resize or pad the input to a multiple of {stride}."
        )


def check_class_labels(class_labels, batch_size: int, num_classes: int, has_null_class: bool, device, model_name: str):
    """Return labels as a long (N,) tensor (or None for an unconditional model), after range checks."""
    if num_classes == 0:
        if class_labels is not None:
            raise ValueError(f"{model_name} is unconditional (num_classes=0) but class_labels were given; pass class_labels=None.")
        return None
    if class_labels is None:
        null_hint = f" (or the null class id {num_classes} for an unconditional sample)" if has_null_class else ""
        raise ValueError(f"{model_name} is class-conditional (num_classes={num_classes}): pass class_labels{null_hint}.")
    labels = torch.as_tensor(class_labels, device=device).long().reshape(-1)
    if labels.shape[0] == 1 and batch_size > 1:
        labels = labels.expand(batch_size)
    if labels.shape[0] != batch_size:
        raise ValueError(f"got {labels.shape[0]} class labels for a batch of {batch_size}.")
    # A compiled graph cannot branch on values (a graph break per call); there the label table's own bounds
    # check (inductor asserts indirect indices) still fails loudly.
    if not torch.compiler.is_compiling():
        check_label_range(labels, num_classes, num_classes if has_null_class else None)
    return labels


def check_label_range(labels: torch.Tensor, num_classes: int, null_id) -> None:
    """Class ids in [0, num_classes - 1], or up to the null id where the model has one."""
    highest = num_classes if null_id is not None else num_classes - 1
    bad = (labels < 0) | (labels > highest)
    if bool(bad.any()):
        null_note = f" ({null_id} is the null class, for unconditional samples)" if null_id is not None else ""
        raise ValueError(f"class ids must lie in [0, {highest}]{null_note}; got {labels[bad].tolist()}.")


def label_ids(class_labels, num_classes: int, null_id) -> torch.Tensor:
    """A pipeline's class_labels (an int or a sequence of ints) as a long (N,) tensor of ids in range."""
    if isinstance(class_labels, str) or (isinstance(class_labels, (list, tuple))
                                         and any(isinstance(c, str) for c in class_labels)):
        raise ValueError("class_labels must be integer ids; map names with pipe.get_label_ids([...]) first.")
    labels = torch.as_tensor(class_labels).reshape(-1)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"class_labels must be integers, got dtype {labels.dtype}.")
    labels = labels.long()
    check_label_range(labels, num_classes, null_id)
    return labels


def class_info(config) -> tuple[int, int | None]:
    """(number of classes, null class id or None) read from a denoiser config.

    convdiff models: `num_classes` (0 = unconditional), null id = num_classes when `class_dropout_prob > 0`.
    diffusers' DiTTransformer2DModel: `num_embeds_ada_norm`; its label table always has the extra null row.
    diffusers' UNet2DModel: `num_class_embeds` (class_embed_type None), no null row (so no guidance).
    """
    if "num_classes" in config:
        num_classes = int(config["num_classes"] or 0)
        has_null = num_classes > 0 and float(config.get("class_dropout_prob", 0.0) or 0.0) > 0
        return num_classes, (num_classes if has_null else None)
    if config.get("num_embeds_ada_norm"):
        num_classes = int(config["num_embeds_ada_norm"])
        return num_classes, num_classes
    if config.get("num_class_embeds") and config.get("class_embed_type") is None:
        return int(config["num_class_embeds"]), None  # diffusers' UNet2DModel: a plain label table, no null row
    return 0, None


def resolve_out_channels(in_channels: int, out_channels, learn_sigma: bool) -> int:
    """2 * in_channels with learned sigma (epsilon + variance), else in_channels; a given value must agree."""
    expected = in_channels * (2 if learn_sigma else 1)
    if out_channels is not None and out_channels != expected:
        raise ValueError(f"out_channels={out_channels} does not match in_channels={in_channels} with "
                         f"learn_sigma={learn_sigma} ({expected}).")
    return expected


def stage_conditions(model, hidden_states, timestep, class_labels, force_drop_ids):
    """Check the inputs of a stage-conditioned conv denoiser (DiC, DiCo) and return its per-level conditions."""
    name = type(model).__name__
    check_sample(hidden_states, model.config.in_channels, model.stride, name)
    batch = hidden_states.shape[0]
    timesteps = broadcast_timesteps(timestep, batch, hidden_states.device)
    labels = check_class_labels(class_labels, batch, model.config.num_classes, model.config.class_dropout_prob > 0,
                                hidden_states.device, name)
    return [c.to(hidden_states.dtype) for c in model.conditioning(timesteps, labels, force_drop_ids, hidden_states.dtype)]
