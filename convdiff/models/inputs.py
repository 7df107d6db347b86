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
    highest = num_classes if has_null_class else num_classes - 1
    # A compiled graph cannot branch on values (a graph break per call); there the label table's own bounds
    # check (inductor asserts indirect indices) still fails loudly.
    if not torch.compiler.is_compiling() and bool(((labels < 0) | (labels > highest)).any()):
        bad = labels[(labels < 0) | (labels > highest)].tolist()
        null_note = f"; {num_classes} is the null class" if has_null_class else ""
        raise ValueError(f"class ids must lie in [0, {highest}]{null_note}; got {bad}.")
    return labels


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")


def check_prediction_type(prediction_type: str, learn_sigma: bool) -> None:
    """The config records what the model predicts, so pipelines can refuse a sampler that does not fit."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}; got {prediction_type!r}.")
    if learn_sigma and prediction_type != "epsilon":
        raise ValueError(f"learned sigma goes with prediction_type='epsilon' (the ADM hybrid loss); "
                         f"set learn_sigma=False for {prediction_type!r}.")


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
    return [c.to(hidden_states.dtype) for c in model.conditioning(timesteps, labels, force_drop_ids)]
