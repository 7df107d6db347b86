"""The default task: train a registered backbone to denoise images or latents (class-conditional or not)."""

import inspect

import torch

from ..registry import create_model, model_spec
from .labels import conditioning_kwargs, disable_internal_label_dropout, null_class_and_dropout
from .objectives import make_objective
from .samples import build_pipeline
from .task import Draws, TrainingTask


def check_model_fits_data(model, dataset, config):
    """Fail before any training step when the model cannot take the data."""
    shape = dataset.sample_shape
    channels = model.config.in_channels
    if shape[0] != channels:
        raise ValueError(
            f"Model {config.model!r} takes {channels}-channel input but data {config.data!r} gives {shape[0]} channels "
            f"of size {shape[1]}x{shape[2]}: set model_overrides.in_channels={shape[0]}."
        )
    num_classes, _, _ = null_class_and_dropout(model)
    data_classes = getattr(dataset, "num_classes", 0)
    if num_classes and data_classes > num_classes:
        raise ValueError(f"The data has {data_classes} classes but the model only {num_classes}: "
                         f"set model_overrides.num_classes={data_classes}.")
    probe = torch.zeros(1, *shape)
    labels = torch.zeros(1, dtype=torch.long) if num_classes else None
    try:
        with torch.no_grad():
            model.eval()(probe, torch.zeros(1, dtype=torch.long), class_labels=labels)
    except (ValueError, RuntimeError) as error:
        raise ValueError(f"Model {config.model!r} does not fit data samples of shape {shape}: {error}") from error
    finally:
        model.train()


def model_overrides_for(config) -> dict:
    """The recipe's overrides, plus the objective recorded as prediction_type where the model config has one."""
    overrides = dict(config.model_overrides)
    cls, _ = model_spec(config.model)
    if "prediction_type" in inspect.signature(cls.__init__).parameters:
        overrides.setdefault("prediction_type", config.objective)
    return overrides


class DenoiseTask(TrainingTask):
    """x0 -> (x_t, t) -> the objective's loss, with classifier-free label dropout decided here (replays on resume)."""

    name = "denoise"

    def build_model(self, dataset):
        config = self.config
        model = create_model(config.model, **model_overrides_for(config))
        check_model_fits_data(model, dataset, config)
        self.setup_conditioning(model)
        self.flip_pairs = getattr(dataset, "has_flip_pairs", False)
        pixel_space = config.data != "latents"
        self.objective = make_objective(config.objective, model.config.out_channels == 2 * model.config.in_channels,
                                        pixel_space, config.timestep_sampling)
        return model

    def setup_conditioning(self, model):
        """Read the model's classes and null id, then switch off any label dropout it would do on its own."""
        config = self.config
        self.num_classes, self.null_id, self.dropout_prob = null_class_and_dropout(model)
        disable_internal_label_dropout(model)
        if config.label_dropout is not None:
            if config.label_dropout > 0 and self.null_id is None:
                raise ValueError(f"label_dropout={config.label_dropout} needs a null class, and model {config.model!r} "
                                 "has none (convdiff models: class_dropout_prob > 0 in model_overrides).")
            self.dropout_prob = config.label_dropout

    def augment(self, x0, draws: Draws):
        if self.flip_pairs:  # latents stored with their flipped twin: pick one of the pair
            return x0[torch.arange(len(x0), device=x0.device), draws.randint(0, 2).to(x0.device)]
        if self.config.random_flip:
            flip = (draws.rand() < 0.5).to(x0.device)
            return torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        return x0

    def label_drop(self, draws: Draws, batch_size: int):
        if self.null_id is None:
            return torch.zeros(batch_size, dtype=torch.bool)
        return draws.rand() < self.dropout_prob

    def draw_inputs(self, batch, draws: Draws, conditioned=None) -> dict:
        """The noisy input of one micro batch: x0, noise, t, x_t, model_t and the conditioning keywords.

        Draws in a fixed order (flip, noise, t, label drop) so tasks built on this one replay the same way.
        `conditioned` is the model whose config the keywords are for (default: the trained one's).
        """
        x0, labels = batch
        x0 = self.augment(x0, draws)
        noise = draws.randn(*x0.shape[1:]).to(x0.device)
        t = draws.take(self.objective.sample_timesteps(draws.global_batch, draws.generator)).to(x0.device)
        drop = self.label_drop(draws, len(x0)).to(x0.device)
        x_t, model_t = self.objective.noisy_input(x0, noise, t)
        cond = conditioning_kwargs(conditioned, labels if self.num_classes else None, drop)
        return {"x0": x0, "noise": noise, "t": t, "x_t": x_t, "model_t": model_t.to(x0.device), "cond": cond}

    def loss(self, model, batch, draws: Draws):
        inputs = self.draw_inputs(batch, draws, model_config_holder(model))
        out = model(inputs["x_t"], inputs["model_t"], **inputs["cond"]).sample
        return self.objective.loss(out, inputs["x0"], inputs["noise"], inputs["x_t"], inputs["t"]).mean()

    def build_pipeline(self, model):
        return build_pipeline(model, self.objective, self.config)


def model_config_holder(model):
    """The module whose .config describes the model: DDP and compiled wrappers keep it on `.module`."""
    while not hasattr(model, "config") and hasattr(model, "module"):
        model = model.module
    return model
