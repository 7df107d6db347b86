"""Training task `layered`: the layered U-Net with a loss at every scale, class- and/or text-conditional.

One micro step: draw one full-resolution noise and one time t ~ U[0, 1] per image; build the clean image
pyramid (average pooling) and the consistent noise of every scale (diffusion/multiscale.py); noise every scale on
its resolution-shifted cosine schedule; the model predicts every scale at once and the loss is
sum_s w_s * MSE_s (task_options.loss_weights, default all 1).

task_options:
  conditioning: class | text | both   (default class; class labels come from the data set)
  text_encoder: tiny | <folder>       (text: "tiny" = a random tiny CLIP built offline from the seed; a folder
                                       with a CLIP tokenizer and CLIPTextModel -- e.g. a Stable Diffusion
                                       pipeline folder with tokenizer/ and text_encoder/ -- works the same)
  text_hidden_size: 32                (width of the tiny encoder)
  caption_template: "a handwritten digit {name}"   (captions built from labels; {name} from class_names,
                                       {label} the id. A data set that yields caption strings is used as is.)
  class_names: [zero, one, ...]
  text_dropout: 0.1                   (captions replaced by "" for classifier-free guidance)
  loss_weights: [1, 1, 1]             (one per scale, top first)
  base_resolution: null               (resolution of the unshifted cosine schedule; null = the top scale)
The text encoder is frozen; the class label dropout is the recipe's label_dropout or the model's own.
"""

from pathlib import Path

import torch

from ..diffusion.multiscale import MultiScaleSchedule, consistent_noise, image_pyramid
from ..pipelines.layered import LayeredTextToImagePipeline
from ..pipelines.layered_scheduler import LayeredScheduler
from ..data.mnist import DIGIT_NAMES
from ..pipelines.text_encoders import encode_prompts, frozen_text_encoder
from ..registry import create_model
from .denoise_task import model_config_holder
from ..grids import grid_labels, make_grid
from .task import Draws, TrainingTask

CONDITIONINGS = ("class", "text", "both")


class LayeredTask(TrainingTask):
    name = "layered"
    records_sampler = False  # LayeredScheduler: one shifted schedule per scale, not a sample_scheduler name

    def __init__(self, config):
        super().__init__(config)
        self.conditioning = self.option("conditioning", "class")
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"task_options.conditioning must be one of {', '.join(CONDITIONINGS)}; "
                             f"got {self.conditioning!r}.")
        if config.objective not in ("epsilon", "v_prediction"):
            raise ValueError(f"task 'layered' trains with objective epsilon or v_prediction (on per-scale cosine "
                             f"schedules), not {config.objective!r}.")
        self.uses_text = self.conditioning in ("text", "both")
        self.uses_classes = self.conditioning in ("class", "both")
        self.caption_template = self.option("caption_template", "a handwritten digit {name}")
        self.class_names = list(self.option("class_names", DIGIT_NAMES))
        self.text_dropout = float(self.option("text_dropout", 0.1))
        self.tokenizer = self.text_encoder = None

    # ---- building -----------------------------------------------------------------------------------
    def build_text_encoder(self):
        return frozen_text_encoder(self.option("text_encoder", "tiny"), int(self.option("text_hidden_size", 32)),
                                   self.config.seed)

    def build_model(self, dataset):
        config = self.config
        overrides = dict(config.model_overrides)
        overrides["prediction_type"] = config.objective
        if self.uses_text:
            self.tokenizer, self.text_encoder = self.build_text_encoder()
            overrides["cross_attention_dim"] = self.text_encoder.config.hidden_size
        if not self.uses_classes:
            overrides["num_classes"] = 0
        model = create_model(config.model, **overrides)
        if not hasattr(model, "scale_sizes"):
            raise ValueError(f"task 'layered' needs a LayeredUNetModel (e.g. model: layered-unet-mnist), "
                             f"got {type(model).__name__}.")
        top = model.scale_sizes[0]
        expected = (model.config.in_channels, top, top)
        if tuple(dataset.sample_shape) != expected:
            raise ValueError(f"the model takes {expected[0]}x{top}x{top} images but the data gives "
                             f"{'x'.join(map(str, dataset.sample_shape))}: set resolution={top} (MNIST is padded to it) "
                             f"or model_overrides.sample_size / in_channels to match the data.")
        if self.uses_classes and not model.config.num_classes:
            raise ValueError("conditioning 'class' needs a class-conditional model: set model_overrides.num_classes.")
        self.schedule = MultiScaleSchedule(model.scale_sizes, self.option("base_resolution"))
        weights = self.option("loss_weights") or [1.0] * len(model.scale_sizes)
        if len(weights) != len(model.scale_sizes):
            raise ValueError(f"task_options.loss_weights needs one weight per scale {model.scale_sizes}, got {weights}.")
        self.loss_weights = [float(w) for w in weights]
        self.has_null = model.config.num_classes > 0 and model.config.class_dropout_prob > 0
        self.label_dropout = model.config.class_dropout_prob if config.label_dropout is None else config.label_dropout
        if self.label_dropout > 0 and self.uses_classes and not self.has_null:
            raise ValueError("label_dropout > 0 needs a null class: build the model with class_dropout_prob > 0.")
        return model

    def to_device(self, accelerator) -> None:
        if self.text_encoder is not None:
            self.text_encoder.to(accelerator.device)

    # ---- loss ---------------------------------------------------------------------------------------
    def captions(self, labels) -> list[str]:
        """Captions from class ids through the template, or the data set's own caption strings."""
        if isinstance(labels, (list, tuple)) and all(isinstance(c, str) for c in labels):
            return list(labels)
        names = self.class_names
        return [self.caption_template.format(label=int(y), name=names[int(y)] if int(y) < len(names) else int(y))
                for y in labels]

    def encode(self, captions, device) -> torch.Tensor:
        with torch.no_grad():
            return encode_prompts(self.tokenizer, self.text_encoder, captions, device)

    def scale_losses(self, model, x0, labels, draws: Draws) -> list[torch.Tensor]:
        """Per-scale MSE of the model's predictions (a list, top first). Draw order: noise, t, label drop, text drop."""
        device = x0.device
        noise = draws.randn(*x0.shape[1:]).to(device)
        t = draws.rand().to(device)
        label_drop = (draws.rand() < self.label_dropout).to(device)
        text_drop = (draws.rand() < self.text_dropout).tolist()
        sizes = self.schedule.sizes
        clean, noises = image_pyramid(x0, sizes), consistent_noise(noise, sizes)
        noisy = self.schedule.add_noise(clean, noises, t)
        prediction_type = model_config_holder(model).config.prediction_type
        targets = self.schedule.target(prediction_type, clean, noises, t)
        kwargs = {}
        if self.uses_classes:
            kwargs["class_labels"] = labels
            if self.has_null:
                kwargs["force_drop_ids"] = label_drop.long()
        if self.uses_text:
            captions = ["" if drop else caption for caption, drop in zip(self.captions(labels), text_drop)]
            kwargs["encoder_hidden_states"] = self.encode(captions, device)
        predictions = model(noisy, t * 1000, **kwargs).scales
        return [torch.mean((p.float() - target) ** 2) for p, target in zip(predictions, targets)]

    def loss(self, model, batch, draws: Draws) -> torch.Tensor:
        x0, labels = batch
        losses = self.scale_losses(model, x0, labels, draws)
        return sum(w * loss for w, loss in zip(self.loss_weights, losses))

    # ---- sampling -----------------------------------------------------------------------------------
    def build_pipeline(self, model):
        scheduler = LayeredScheduler(sample_sizes=list(model.scale_sizes), base_resolution=self.option("base_resolution"),
                                     prediction_type=model.config.prediction_type)
        return LayeredTextToImagePipeline(unet=model, scheduler=scheduler, text_encoder=self.text_encoder,
                                          tokenizer=self.tokenizer)

    def save_samples(self, pipeline, path) -> None:
        """A 10x10 grid (one column per class / caption) of the top scale, plus one grid per lower scale."""
        labels, columns = grid_labels(min(len(self.class_names), 10))
        kwargs = {}
        if self.uses_classes:
            kwargs["class_labels"] = labels
        if self.uses_text:
            kwargs["prompt"] = self.captions(labels)
        pipeline.set_progress_bar_config(disable=True)
        scales = pipeline(num_inference_steps=self.config.sample_num_inference_steps,
                          guidance_scale=self.config.sample_guidance_scale, output_type="np", return_all_scales=True,
                          generator=torch.Generator().manual_seed(self.config.seed), **kwargs).scales
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        make_grid(scales[0], columns).save(path)
        for size, images in zip(pipeline.unet.scale_sizes[1:], scales[1:]):
            make_grid(images, columns).save(path.with_name(f"{path.stem}-{size}px{path.suffix}"))
        return path
