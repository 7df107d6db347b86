"""`task: distill`: ΔConvFusion distillation through the one accelerate loop (reference §1.3-§1.5).

The teacher is a trained pipeline folder (`task_options.teacher`); the student is a copy of its denoiser
with every self-attention swapped (`student: deltaconv | linear`, `kernel_sizes`, `scales`, `gate`). Only the
students train; everything else keeps the teacher's weights, frozen. Per micro batch, teacher (eval,
no grad) and student see the same x_t, t and conditioning, and

    loss = noise_weight * L_diffusion + teacher_weight * MSE(student, teacher) + feature_weight * sum_l MSE(h_l)

with h_l the state right after each self-attention residual add (taps.py); (1, 1, 1e-3) by default.

Teachers: a class-conditional pipeline folder (ClassConditionalPipeline, e.g. the MNIST demo teacher), with
data `mnist` / `image_folder` / `latents`; or a Stable Diffusion folder (StableDiffusionPipeline /
StableDiffusionXLPipeline layout: unet, vae, text_encoder, tokenizer, scheduler) with `data: image_folder`
and captions (text_to_image.py). The saved pipeline is the teacher's pipeline with the student inside.
"""

import copy
import json
from pathlib import Path

import torch

from ..training.denoise_task import DenoiseTask, check_model_fits_data, model_config_holder
from ..training.objectives import make_objective
from ..training.task import Draws
from .convert import convert_self_attention
from .losses import distillation_loss
from .taps import FeatureTaps

CONVERT_OPTIONS = ("student", "kernel_sizes", "scales", "gate")
WEIGHT_OPTIONS = {"noise_weight": 1.0, "teacher_weight": 1.0, "feature_weight": 1e-3}
TEXT_TO_IMAGE = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")


def pipeline_class_name(folder) -> str:
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        raise ValueError(f"task_options.teacher={str(folder)!r} is not a pipeline folder (no model_index.json): give "
                         "a saved pipeline, e.g. outputs/distill-teacher-mnist/pipeline or a Stable Diffusion folder.")
    return json.loads(index.read_text())["_class_name"]


def make_student(teacher, options: dict):
    """A frozen copy of `teacher` whose self-attention layers are replaced by trainable students."""
    kwargs = {k: options[k] for k in CONVERT_OPTIONS if k in options}
    student = convert_self_attention(copy.deepcopy(teacher), **kwargs)
    return student.train()


def freeze_teacher(teacher):
    return teacher.eval().requires_grad_(False)


class DistillTask(DenoiseTask):
    name = "distill"

    def __new__(cls, config):
        teacher = dict(config.task_options).get("teacher")
        if cls is DistillTask and teacher and pipeline_class_name(teacher) in TEXT_TO_IMAGE:
            from .text_to_image import TextToImageDistillTask

            return super().__new__(TextToImageDistillTask)
        return super().__new__(cls)

    def __init__(self, config):
        super().__init__(config)
        unknown = set(self.options) - {"teacher", *CONVERT_OPTIONS, *WEIGHT_OPTIONS}
        if unknown:
            raise ValueError(f"Unknown distill task_options {sorted(unknown)}; known: teacher, "
                             f"{', '.join(CONVERT_OPTIONS)}, {', '.join(WEIGHT_OPTIONS)}.")
        self.weights = {k: float(self.options.get(k, v)) for k, v in WEIGHT_OPTIONS.items()}
        self.teacher_path = self.option("teacher", required=True)
        self.teacher_class = pipeline_class_name(self.teacher_path)

    def build_model(self, dataset):
        from ..pipelines import ClassConditionalPipeline

        config = self.config
        if self.teacher_class != "ClassConditionalPipeline":
            raise ValueError(f"task_options.teacher holds a {self.teacher_class}; distill takes a ClassConditionalPipeline "
                             f"or one of {', '.join(TEXT_TO_IMAGE)} folder.")
        self.teacher_pipeline = ClassConditionalPipeline.from_pretrained(self.teacher_path)
        self.teacher = freeze_teacher(self.teacher_pipeline.transformer)
        student = make_student(self.teacher, self.options)
        check_model_fits_data(student, dataset, config)
        self.setup_conditioning(student)
        self.flip_pairs = getattr(dataset, "has_flip_pairs", False)
        learned_sigma = student.config.out_channels == 2 * student.config.in_channels
        self.objective = make_objective(config.objective, learned_sigma, config.data != "latents")
        self.teacher_taps, self.student_taps = FeatureTaps(self.teacher), FeatureTaps(student)
        return student

    def to_device(self, accelerator):
        self.teacher.to(accelerator.device)

    def distill(self, model, model_input, t, **cond):
        """(student output, teacher output, per-layer features of both) for one batch."""
        with self.student_taps.collect() as student_features:
            student = model(model_input, t, **cond).sample
        with torch.no_grad(), self.teacher_taps.collect() as teacher_features:
            teacher = self.teacher(model_input, t, **cond).sample
        return student, teacher, student_features, teacher_features

    def loss(self, model, batch, draws: Draws):
        loss, _ = self.loss_terms(model, batch, draws)
        return loss

    def loss_terms(self, model, batch, draws: Draws):
        """(total, {"noise", "teacher", "feature"}) of one micro batch, drawn exactly as the denoise task draws."""
        inputs = self.draw_inputs(batch, draws, model_config_holder(model))
        x0, noise, t, x_t, model_t, cond = (inputs[k] for k in ("x0", "noise", "t", "x_t", "model_t", "cond"))
        student, teacher, student_features, teacher_features = self.distill(model, x_t, model_t, **cond)
        diffusion = self.objective.loss(student, x0, noise, x_t, t).mean()
        return distillation_loss(diffusion, student, teacher, student_features, teacher_features, **self.weights)

    def build_pipeline(self, model):
        pipeline = copy.copy(self.teacher_pipeline)
        pipeline.register_modules(transformer=model)
        return pipeline
