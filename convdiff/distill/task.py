"""`task: distill`: ΔConvFusion distillation through the one accelerate loop (Dong et al., ICCV 2025,
arXiv 2504.21292, §3).

The teacher is a trained pipeline folder (`task_options.teacher`); the student is a copy of its denoiser
with every self-attention swapped (`student: deltaconv | linear`, `kernel_sizes`, `scales`, `gate`). Only the
students train; everything else keeps the teacher's weights, frozen. Per micro batch, teacher (eval,
no grad) and student see the same x_t, t and conditioning, and

    loss = noise_weight * L_diffusion + teacher_weight * MSE(student, teacher) + feature_weight * sum_l MSE(h_l)

with h_l the state right after each self-attention residual add (taps.py); (1, 1, 1e-3) by default.

Teachers: a class-conditional pipeline folder (ClassConditionalPipeline, e.g. the MNIST demo teacher), with
data `mnist` / `image_folder` / `latents`; or a Stable Diffusion folder (StableDiffusionPipeline /
StableDiffusionXLPipeline layout: unet, vae, text_encoder, tokenizer, scheduler) with `data: image_folder`
and captions (TextToImageDistillTask below). The saved pipeline is the teacher's pipeline with the student inside.
`make_distill_task` reads the teacher folder and picks the task class (recipes name it `task: distill`).

Text-to-image data: an image-caption folder, `data: image_folder`, `data_path: <folder>`, `resolution: <px>`,
where every image has its caption in a `.txt` file of the same name (the common LoRA/fine-tune layout), or the
folder has a `metadata.jsonl` of {"file_name", "text"} rows (the Hugging Face imagefolder layout).
Per micro batch: VAE latents (a posterior sample, scaled), the teacher's noise schedule and prediction type
(from its scheduler config), caption dropout to "" with probability `label_dropout` (default 0.1), the
frozen CLIP text encoder; then the same 3-term loss as the class-conditional path. The saved pipeline is a
StableDiffusionPipeline folder whose `unet/` is converted: load it with
`StableDiffusionPipeline.from_pretrained(folder, unet=load_converted(folder + "/unet"))`.
SDXL teachers convert (convert_self_attention) but their two-encoder training path is not written here.
"""

import copy
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.image_folder import CaptionedImageFolder
from ..files import read_json
from ..grids import make_grid
from ..models.class_paths import check_pipeline_folder
from ..models.convfusion import convert_self_attention
from ..pipelines.saved_folder import pipeline_class_name
from ..pipelines.text_encoders import encode_prompts
from ..training.denoise_task import DenoiseTask, check_model_fits_data, model_config_holder
from ..training.objectives import make_objective
from ..training.task import Draws
from .losses import distillation_loss
from .taps import FeatureTaps

CONVERT_OPTIONS = ("student", "kernel_sizes", "scales", "gate")
WEIGHT_OPTIONS = {"noise_weight": 1.0, "teacher_weight": 1.0, "feature_weight": 1e-3}
TEXT_TO_IMAGE = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")


def teacher_class_name(folder) -> str:
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        raise ValueError(f"task_options.teacher={str(folder)!r} is not a pipeline folder (no model_index.json): give "
                         "a saved pipeline, e.g. outputs/distill-teacher-mnist/pipeline or a Stable Diffusion folder.")
    return pipeline_class_name(read_json(index).get("_class_name"), index)


def make_student(teacher, options: dict):
    """A frozen copy of `teacher` whose self-attention layers are replaced by trainable students."""
    kwargs = {k: options[k] for k in CONVERT_OPTIONS if k in options}
    student = convert_self_attention(copy.deepcopy(teacher), **kwargs)
    return student.train()


def freeze_teacher(teacher):
    return teacher.eval().requires_grad_(False)


class DistillTask(DenoiseTask):
    name = "distill"

    def __init__(self, config):
        super().__init__(config)
        unknown = set(self.options) - {"teacher", *CONVERT_OPTIONS, *WEIGHT_OPTIONS}
        if unknown:
            raise ValueError(f"Unknown distill task_options {sorted(unknown)}; known: teacher, "
                             f"{', '.join(CONVERT_OPTIONS)}, {', '.join(WEIGHT_OPTIONS)}.")
        self.weights = {k: float(self.options.get(k, v)) for k, v in WEIGHT_OPTIONS.items()}
        self.teacher_path = self.option("teacher", required=True)
        self.teacher_class = teacher_class_name(self.teacher_path)

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


class TextToImageDistillTask(DistillTask):
    """DistillTask for a Stable Diffusion teacher folder (chosen by make_distill_task when the folder holds one)."""

    def build_dataset(self):
        config = self.config
        if config.data != "image_folder" or not config.data_path or not config.resolution:
            raise ValueError("A Stable Diffusion teacher trains on an image-caption folder: set data=image_folder, "
                             "data_path=<folder> and resolution=<pixels>.")
        return CaptionedImageFolder(config.data_path, config.resolution)

    def build_model(self, dataset):
        from diffusers import DDPMScheduler, StableDiffusionPipeline

        if self.teacher_class != "StableDiffusionPipeline":
            raise ValueError(f"Distilling a {self.teacher_class} needs its two text encoders and size conditioning, "
                             "which this task does not provide; convert it with convert_self_attention instead.")
        check_pipeline_folder(self.teacher_path)  # diffusers' own class: the folder's components are checked here
        self.teacher_pipeline = StableDiffusionPipeline.from_pretrained(self.teacher_path, safety_checker=None,
                                                                        requires_safety_checker=False)
        pipe = self.teacher_pipeline
        self.teacher = freeze_teacher(pipe.unet)
        for frozen in (pipe.vae, pipe.text_encoder):
            frozen.eval().requires_grad_(False)
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.caption_dropout = 0.1 if self.config.label_dropout is None else self.config.label_dropout
        student = make_student(self.teacher, self.options)
        self.teacher_taps, self.student_taps = FeatureTaps(self.teacher), FeatureTaps(student)
        return student

    def to_device(self, accelerator):
        for module in (self.teacher, self.teacher_pipeline.vae, self.teacher_pipeline.text_encoder):
            module.to(accelerator.device)

    def loss_terms(self, model, batch, draws: Draws):
        images, captions = batch
        pipe, scheduler = self.teacher_pipeline, self.noise_scheduler
        drop = draws.rand() < self.caption_dropout
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        with torch.no_grad():
            posterior = pipe.vae.encode(images.to(pipe.vae.dtype)).latent_dist
            eps = draws.randn(*posterior.mean.shape[1:]).to(images.device)
            latents = (posterior.mean + posterior.std * eps) * pipe.vae.config.scaling_factor
            context = encode_prompts(pipe.tokenizer, pipe.text_encoder, captions, images.device)
        noise = draws.randn(*latents.shape[1:]).to(images.device)
        t = draws.randint(0, scheduler.config.num_train_timesteps).to(images.device)
        noisy = scheduler.add_noise(latents, noise, t)
        if scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, t)
        else:
            target = noise
        with self.student_taps.collect() as student_features:
            student = model(noisy, t, encoder_hidden_states=context).sample
        with torch.no_grad(), self.teacher_taps.collect() as teacher_features:
            teacher = self.teacher(noisy, t, encoder_hidden_states=context).sample
        diffusion = F.mse_loss(student.float(), target.float())
        return distillation_loss(diffusion, student, teacher, student_features, teacher_features, **self.weights)

    def build_pipeline(self, model):
        pipeline = copy.copy(self.teacher_pipeline)
        pipeline.register_modules(unet=model)
        return pipeline

    def save_samples(self, pipeline, path):
        prompts = [caption for _, caption in self.build_dataset().items[:4]]
        pipeline.set_progress_bar_config(disable=True)
        images = pipeline(prompts, num_inference_steps=self.config.sample_num_inference_steps,
                          height=self.config.resolution, width=self.config.resolution, output_type="np",
                          generator=torch.Generator().manual_seed(self.config.seed)).images
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        make_grid(images, len(images)).save(path)


def make_distill_task(config) -> DistillTask:
    """The distill task for the recipe's teacher folder: text-to-image for a Stable Diffusion folder."""
    teacher = dict(config.task_options).get("teacher")
    if teacher and teacher_class_name(teacher) in TEXT_TO_IMAGE:
        return TextToImageDistillTask(config)
    return DistillTask(config)
