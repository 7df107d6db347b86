"""Distil a Stable Diffusion UNet (`task: distill` with a StableDiffusionPipeline folder as the teacher).

Data: an image-caption folder, `data: image_folder`, `data_path: <folder>`, `resolution: <px>`, where every
image has its caption in a `.txt` file of the same name (the common LoRA/fine-tune layout), or the folder
has a `metadata.jsonl` of {"file_name", "text"} rows (the Hugging Face imagefolder layout).
Per micro batch: VAE latents (a posterior sample, scaled), the teacher's noise schedule and prediction type
(from its scheduler config), caption dropout to "" with probability `label_dropout` (default 0.1), the
frozen CLIP text encoder; then the same 3-term loss as the class-conditional path. The saved pipeline is a
StableDiffusionPipeline folder whose `unet/` is converted: load it with
`StableDiffusionPipeline.from_pretrained(folder, unet=load_converted(folder + "/unet"))`.
SDXL teachers convert (convert_self_attention) but their two-encoder training path is not written here.
"""

import copy
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.image_folder import center_crop_resize
from ..pipelines.text_encoders import encode_prompts
from ..training.task import Draws
from .losses import distillation_loss
from .task import DistillTask, freeze_teacher, make_student
from .taps import FeatureTaps

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


class CaptionedImageFolder(torch.utils.data.Dataset):
    """(image in [-1, 1] of shape (3, R, R), caption) pairs from `<image>.txt` files or a metadata.jsonl."""

    def __init__(self, root, resolution: int):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"Image-caption folder {root} does not exist.")
        self.resolution = resolution
        metadata = root / "metadata.jsonl"
        if metadata.is_file():
            rows = [json.loads(line) for line in metadata.read_text().splitlines() if line.strip()]
            self.items = [(root / row["file_name"], row["text"]) for row in rows]
        else:
            images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            self.items = [(p, p.with_suffix(".txt").read_text().strip()) for p in images if p.with_suffix(".txt").is_file()]
        if not self.items:
            raise ValueError(f"No captioned images in {root}: put a caption in <image name>.txt next to every image, "
                             "or write a metadata.jsonl with file_name and text per line.")

    @property
    def sample_shape(self):
        return (3, self.resolution, self.resolution)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        path, caption = self.items[index]
        image = center_crop_resize(Image.open(path).convert("RGB"), self.resolution)
        x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 127.5 - 1.0
        return x, caption


class TextToImageDistillTask(DistillTask):
    """DistillTask for a Stable Diffusion teacher folder (chosen by DistillTask when the folder holds one)."""

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
        from ..training.samples import make_grid

        prompts = [caption for _, caption in self.build_dataset().items[:4]]
        pipeline.set_progress_bar_config(disable=True)
        images = pipeline(prompts, num_inference_steps=self.config.sample_num_inference_steps,
                          height=self.config.resolution, width=self.config.resolution, output_type="np",
                          generator=torch.Generator().manual_seed(self.config.seed)).images
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        make_grid(images, len(images)).save(path)
